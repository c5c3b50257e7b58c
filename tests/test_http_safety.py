"""The fetcher's guards, against real servers on loopback."""

import gzip
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import brotli
import pytest

from ingest.http import HTML_TYPES, Fetcher
from ingest.robots import RobotsRules
from newsmon.errors import AddressRefused, FetchError
from newsmon.net import AddressPolicy
from newsmon.settings import FetchSettings
from tests.support.harness import NEWSMON, spaced
from tests.support.sites import Page, TestSite


def _fetcher(**kw) -> Fetcher:
    values = dict(allow_private=["127.0.0.1/32"], connect_timeout=2, read_timeout=1, total_timeout=3, max_bytes=100_000)
    values.update(kw)
    return Fetcher(FetchSettings(**values))


@pytest.fixture
def site():
    with TestSite({"/ok": Page(b"<html>ok</html>")}) as s:
        yield s


def test_loopback_is_refused_unless_allow_listed(site):
    with pytest.raises(AddressRefused, match="127.0.0.1 is not public"):
        _fetcher(allow_private=[]).get(site.url("/ok"))
    assert _fetcher().get(site.url("/ok")).content == b"<html>ok</html>"
    assert site.requests and len(site.requests) == 1  # the refused request never reached the server


def test_host_names_are_checked_after_resolution(site):
    with pytest.raises(AddressRefused):
        _fetcher(allow_private=[]).get(f"http://localhost:{site.port}/ok")


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
                                     "::1", "fc00::1", "fe80::1", "::ffff:10.0.0.1", "0.0.0.0"])
def test_policy_refuses_non_public_addresses(address):
    assert AddressPolicy().refusal(address) is not None


def test_policy_accepts_public_and_allow_listed_addresses():
    assert AddressPolicy().refusal("93.184.216.34") is None
    assert AddressPolicy.from_strings(["10.0.0.0/8"]).refusal("10.9.9.9") is None


def test_every_redirect_hop_is_checked(site):
    # Only 127.0.0.1 is allowed; a redirect to 127.0.0.2 (also this machine) must be refused.
    site.routes["/hop"] = Page(status=302, headers={"Location": f"http://127.0.0.2:{site.port}/ok"})
    with pytest.raises(AddressRefused, match="127.0.0.2"):
        _fetcher().get(site.url("/hop"))


def test_redirects_are_followed_and_limited(site):
    site.routes["/a"] = Page(status=301, headers={"Location": "/b"})
    site.routes["/b"] = Page(status=302, headers={"Location": "/ok"})
    result = _fetcher().get(site.url("/a"))
    assert (result.final_url, result.redirects) == (site.url("/ok"), [site.url("/b"), site.url("/ok")])
    for i in range(8):
        site.routes[f"/r{i}"] = Page(status=302, headers={"Location": f"/r{i + 1}"})
    with pytest.raises(FetchError, match="more than 5 redirects"):
        _fetcher().get(site.url("/r0"))


def test_redirect_loops_are_stopped(site):
    site.routes["/loop1"] = Page(status=302, headers={"Location": "/loop2"})
    site.routes["/loop2"] = Page(status=302, headers={"Location": "/loop1"})
    with pytest.raises(FetchError, match="redirect loop"):
        _fetcher().get(site.url("/loop1"))


def test_only_http_schemes(site):
    site.routes["/file"] = Page(status=302, headers={"Location": "file:///etc/passwd"})
    with pytest.raises(FetchError, match="non-http"):
        _fetcher().get(site.url("/file"))


def test_size_cap_applies_while_streaming_and_after_decompression(site):
    site.routes["/big"] = Page(b"x" * 200_000)
    with pytest.raises(FetchError, match="exceeds the 100000-byte limit"):
        _fetcher().get(site.url("/big"))
    bomb = gzip.compress(b"\0" * 5_000_000)  # 5 KB on the wire, 5 MB decompressed
    site.routes["/bomb"] = Page(bomb, headers={"Content-Type": "text/html", "Content-Encoding": "gzip"})
    with pytest.raises(FetchError, match="exceeds the 100000-byte limit"):
        _fetcher().get(site.url("/bomb"))
    brotli_bomb = brotli.compress(b"\0" * 5_000_000)  # the same in brotli, which the fetcher accepts
    site.routes["/br-bomb"] = Page(brotli_bomb, headers={"Content-Type": "text/html", "Content-Encoding": "br"})
    with pytest.raises(FetchError, match="exceeds the 100000-byte limit"):
        _fetcher().get(site.url("/br-bomb"))
    site.routes["/br"] = Page(brotli.compress(b"<p>ok</p>"), headers={"Content-Type": "text/html", "Content-Encoding": "br"})
    assert _fetcher().get(site.url("/br")).content == b"<p>ok</p>"
    assert "br" in site.requests[-1][1]["Accept-Encoding"]


def test_content_type_check(site):
    site.routes["/doc.pdf"] = Page(b"%PDF-1.7", headers={"Content-Type": "application/pdf"})
    with pytest.raises(FetchError, match="'application/pdf' is not one of text/html"):
        _fetcher().get(site.url("/doc.pdf"), accept_types=HTML_TYPES)


def test_timeouts(site):
    site.routes["/slow"] = Page(b"late", delay=2.0)
    with pytest.raises(FetchError, match="timed out") as err:
        _fetcher().get(site.url("/slow"))
    assert err.value.transient
    site.routes["/trickle"] = Page(b"y" * 100, trickle=0.2)  # never idle for read_timeout, but slow overall
    started = time.monotonic()
    with pytest.raises(FetchError, match="longer than 3 s"):
        _fetcher().get(site.url("/trickle"))
    assert time.monotonic() - started < 5


def test_http_errors_say_whether_a_retry_can_help(site):
    site.routes["/gone"] = Page(b"", status=404)
    site.routes["/down"] = Page(b"", status=503)
    with pytest.raises(FetchError, match="HTTP 404") as err:
        _fetcher().get(site.url("/gone"))
    assert not err.value.transient
    with pytest.raises(FetchError, match="HTTP 503") as err:
        _fetcher().get(site.url("/down"), retries=2)
    assert err.value.transient
    assert sum(path == "/down" for path, _ in site.requests) == 3  # retried twice


def test_fetch_command_shows_the_response_or_the_refusal(tmp_path, config_dir):
    site = TestSite({"/old": Page(b"", 301, headers={"Location": "/feed.xml"}),
                     "/feed.xml": Page(b"<rss/>", headers={"Content-Type": "application/rss+xml", "ETag": '"v1"'})})
    env = {"NEWSMON_CONFIG_DIR": str(config_dir), "NEWSMON_DATA_DIR": str(tmp_path / "data"), "PATH": "/usr/bin:/bin"}
    with site:
        refused = subprocess.run(NEWSMON + ["fetch", site.url("/old")], env=env, capture_output=True, text=True,
                                 timeout=60)
        assert refused.returncode == 1
        assert "is not public" in refused.stderr and site.url("/old") in refused.stderr
        allowed = subprocess.run(NEWSMON + ["fetch", site.url("/old"), "--allow-private", "127.0.0.1/32", "--body"],
                                 env=env, capture_output=True, text=True, timeout=60)
    assert allowed.returncode == 0, allowed.stderr
    lines = allowed.stdout.splitlines()
    assert lines[0] == f"HTTP 200  {site.url('/feed.xml')}" and lines[1] == f"  redirected to {site.url('/feed.xml')}"
    assert 'etag: "v1"' in lines and "6 bytes (decompressed)" in lines and lines[-1] == "<rss/>"


def test_per_host_politeness_is_measured_by_the_server():
    """At most per_host requests in flight to one host and host_delay between starts; other hosts unaffected."""
    lock, state = threading.Lock(), {"now": 0, "max": 0, "starts": []}

    def slow(handler):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
            state["starts"].append(time.monotonic())
        time.sleep(0.3)
        with lock:
            state["now"] -= 1
        handler._send(Page(b"<rss/>"))

    fetcher = Fetcher(FetchSettings(allow_private=["127.0.0.0/8"], per_host=2, host_delay=0.1))
    with TestSite({"/f": slow}) as busy, TestSite({"/f": Page(b"<rss/>")}, host="127.0.0.2") as other:
        with ThreadPoolExecutor(8) as pool:
            jobs = [pool.submit(fetcher.get, busy.url("/f")) for _ in range(6)]
            time.sleep(0.05)
            started = time.monotonic()
            fetcher.get(other.url("/f"))  # another host: not queued behind the busy one
            assert time.monotonic() - started < 0.3
            assert all(job.result().status == 200 for job in jobs)
    assert state["max"] == 2
    assert spaced(state["starts"], 0.1), sorted(state["starts"])


def test_robots_txt_is_honoured_for_article_pages_and_cached_per_site():
    site = TestSite({"/robots.txt": Page(b"User-agent: *\nDisallow: /private/\n", headers={"Content-Type": "text/plain"}),
                     "/public/a.html": Page(b"<p>a</p>"), "/private/b.html": Page(b"<p>b</p>")})
    fetcher = _fetcher()
    robots = RobotsRules(fetcher)
    with site:
        robots.check(site.url("/public/a.html"))
        with pytest.raises(FetchError, match=r"disallowed by http://127\.0\.0\.1:\d+/robots\.txt for user agent 'newsmon'"):
            robots.check(site.url("/private/b.html"))
        assert [path for path, _ in site.requests].count("/robots.txt") == 1  # cached for the site
    with TestSite({}) as missing:  # no robots.txt (404): everything allowed
        RobotsRules(fetcher).check(missing.url("/any.html"))
    with TestSite({"/robots.txt": Page(b"down", 503)}) as broken:  # unreachable: not fetched for now
        with pytest.raises(FetchError, match="robots.txt of .* could not be read \\(HTTP 503\\)") as err:
            RobotsRules(fetcher).check(broken.url("/any.html"))
        assert err.value.transient
