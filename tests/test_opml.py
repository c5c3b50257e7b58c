"""OPML import: `newsmon feeds import` merges a feed reader's subscription list into feeds.yaml, safely."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from ingest.opml import OpmlFeed, read_opml
from newsmon import settings as config
from tests.support.harness import NEWSMON, write_feeds

EXISTING = [
    {"name": "Euronews (fr)", "url": "https://fr.euronews.com/rss", "interval": 900, "language": "fr"},
    {"name": "BBC News World", "url": "https://feeds.bbci.co.uk/news/world/rss.xml", "interval": 600},
]

SUBSCRIPTIONS = """<?xml version="1.0" encoding="UTF-8"?>
<opml version="2.0">
  <head><title>Abonnements</title><dateCreated>Mon, 03 Nov 2025 09:00:00 GMT</dateCreated></head>
  <body>
    <outline text="Actualités" title="Actualités">
      <outline type="rss" text="euronews" title="Euronews FR" xmlUrl="  https://fr.euronews.com/rss  "/>
      <outline type="rss" text="Le Monde — International" xmlUrl="https://www.lemonde.fr/international/rss_full.xml"
               htmlUrl="https://www.lemonde.fr/international/" language="fr"/>
      <outline text="Welt">
        <outline type="rss" text="Süddeutsche   Zeitung" xmlUrl="https://rss.sueddeutsche.de/rss/Topthemen" language="de"/>
        <outline type="rss" text="" xmlUrl="https://www3.nhk.or.jp/rss/news/cat0.xml" language="ja"/>
      </outline>
    </outline>
    <outline text="Tech">
      <outline type="rss" text="Gopher news" xmlUrl="gopher://gopher.example.org/1/news"/>
      <outline type="rss" text="BBC (again)" xmlUrl="https://feeds.bbci.co.uk/news/world/rss.xml"/>
    </outline>
    <outline type="rss" text="Le Monde, listed twice" xmlUrl="https://www.lemonde.fr/international/rss_full.xml"/>
    <outline type="link" text="Not a feed" url="https://example.org/"/>
  </body>
</opml>
"""

# Ten levels of ten: a billion "lol"s (3 GB) if expanded.
BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE opml [
  <!ENTITY lol "lol">
""" + "".join(f'  <!ENTITY lol{i} "{f"&lol{i - 1};" * 10 if i > 1 else "&lol;" * 10}">\n' for i in range(1, 10)) + """]>
<opml version="2.0"><head><title>&lol9;</title></head>
  <body><outline text="&lol9;" xmlUrl="https://example.org/rss"/></body>
</opml>
"""


@pytest.fixture
def env(config_dir: Path, tmp_path: Path) -> dict[str, str]:
    write_feeds(config_dir, EXISTING)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NEWSMON_")}
    return {**clean, "NEWSMON_CONFIG_DIR": str(config_dir), "NEWSMON_DATA_DIR": str(tmp_path / "data")}


def newsmon(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(NEWSMON + list(args), env=env, capture_output=True, text=True, timeout=60)


def opml_file(tmp_path: Path, text: str, name: str = "subscriptions.opml") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return path


def test_import_merges_new_feeds_skips_known_and_names_invalid_outlines(env, config_dir, tmp_path):
    mine = "# My feeds: keep this comment.\n" + (config_dir / "feeds.yaml").read_text().replace(
        "feeds:\n", "feeds:  # the newsroom's list\n", 1)
    (config_dir / "feeds.yaml").write_text(mine)
    source = opml_file(tmp_path, SUBSCRIPTIONS)
    result = newsmon(env, "feeds", "import", str(source), "--interval", "1800")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "imported 3 feeds, skipped 3 (already configured), 1 invalid"
    assert "+ Actualités / Welt / Süddeutsche Zeitung  https://rss.sueddeutsche.de/rss/Topthemen" in result.stdout
    assert "= Actualités / Euronews FR  https://fr.euronews.com/rss  (already configured)" in result.stdout
    assert result.stderr.strip() == (f"{source}: outline 'Tech / Gopher news': "
                                     "'gopher://gopher.example.org/1/news' is not an http(s) URL: skipped")

    written = (config_dir / "feeds.yaml").read_text(encoding="utf-8")
    assert written.startswith(mine)  # the operator's file as it was, comments included, then the new feeds
    assert "Süddeutsche Zeitung" in written  # unicode kept readable, not escaped
    assert yaml.safe_load(written)["feeds"] == EXISTING + [
        # Title when given, else text; the existing feeds are kept as they were.
        {"name": "Le Monde — International", "url": "https://www.lemonde.fr/international/rss_full.xml",
         "interval": 1800, "language": "fr"},
        {"name": "Süddeutsche Zeitung", "url": "https://rss.sueddeutsche.de/rss/Topthemen", "interval": 1800,
         "language": "de"},
        {"name": "www3.nhk.or.jp", "url": "https://www3.nhk.or.jp/rss/news/cat0.xml", "interval": 1800,
         "language": "ja"},  # no title or text: the host names it
    ]
    assert not list(config_dir.glob("*.tmp"))  # written through a temporary file, then renamed

    listed = newsmon(env, "feeds", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    feeds = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [f["name"] for f in feeds] == ["Euronews (fr)", "BBC News World", "Le Monde — International",
                                          "Süddeutsche Zeitung", "www3.nhk.or.jp"]
    assert feeds[2] == {"name": "Le Monde — International", "url": "https://www.lemonde.fr/international/rss_full.xml",
                        "interval": 1800, "language": "fr", "conditional": True}
    assert newsmon(env, "config", "check").returncode == 0  # what was written is a valid configuration

    again = newsmon(env, "feeds", "import", str(source))
    assert again.stdout.splitlines()[-1] == "imported 0 feeds, skipped 6 (already configured), 1 invalid"
    assert (config_dir / "feeds.yaml").read_text(encoding="utf-8") == written


def test_nothing_new_leaves_the_file_and_its_comments_alone(env, config_dir, tmp_path):
    (config_dir / "feeds.yaml").write_text("# hand-written\n" + yaml.safe_dump({"feeds": EXISTING}))
    before = (config_dir / "feeds.yaml").read_bytes()
    source = opml_file(tmp_path, '<opml version="1.0"><body><outline text="BBC" '
                                 'xmlUrl="https://feeds.bbci.co.uk/news/world/rss.xml"/></body></opml>')
    result = newsmon(env, "feeds", "import", str(source))
    assert result.stdout.splitlines()[-1] == "imported 0 feeds, skipped 1 (already configured), 0 invalid"
    assert (config_dir / "feeds.yaml").read_bytes() == before


def test_dry_run_prints_the_changes_and_writes_nothing(env, config_dir, tmp_path):
    before = (config_dir / "feeds.yaml").read_bytes()
    result = newsmon(env, "feeds", "import", str(opml_file(tmp_path, SUBSCRIPTIONS)), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "+ Actualités / Le Monde — International  https://www.lemonde.fr/international/rss_full.xml" in result.stdout
    assert result.stdout.splitlines()[-1] == (f"dry run, would have imported 3 feeds, skipped 3 (already configured), "
                                              f"1 invalid; {config_dir / 'feeds.yaml'} not changed")
    assert (config_dir / "feeds.yaml").read_bytes() == before
    assert sorted(p.name for p in config_dir.iterdir()) == ["feeds.yaml", "keywords.yaml", "pipeline.yaml",
                                                            "subscribers.yaml"]


def test_an_interval_below_the_minimum_is_refused(env, config_dir, tmp_path):
    before = (config_dir / "feeds.yaml").read_bytes()
    result = newsmon(env, "feeds", "import", str(opml_file(tmp_path, SUBSCRIPTIONS)), "--interval", "5")
    assert result.returncode == 2 and "--interval" in result.stderr
    assert (config_dir / "feeds.yaml").read_bytes() == before


def test_billion_laughs_is_refused_quickly_without_expansion(env, config_dir, tmp_path):
    started = time.monotonic()
    with pytest.raises(ValueError, match="declares the XML entity 'lol'") as refused:
        read_opml(BILLION_LAUGHS.encode())
    assert time.monotonic() - started < 1.0
    assert "lollol" not in str(refused.value)

    before = (config_dir / "feeds.yaml").read_bytes()
    bomb = opml_file(tmp_path, BILLION_LAUGHS, "bomb.opml")
    result = newsmon(env, "feeds", "import", str(bomb))
    assert result.returncode == 1
    assert f"{bomb}: refused: the file declares the XML entity 'lol'" in result.stderr
    assert "lollol" not in result.stdout + result.stderr
    assert (config_dir / "feeds.yaml").read_bytes() == before


def test_external_entities_and_dtds_are_never_read_or_fetched(tmp_path):
    requests: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            requests.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'<!ENTITY remote "FETCHED">')

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    try:
        for declaration in (f'<!ENTITY ext SYSTEM "{secret.as_uri()}">', f'<!ENTITY ext SYSTEM "{base}/ext">'):
            document = (f'<?xml version="1.0"?><!DOCTYPE opml [{declaration}]>'
                        '<opml version="2.0"><body><outline text="&ext;" xmlUrl="https://example.org/rss"/></body></opml>')
            with pytest.raises(ValueError, match="declares the external entity 'ext'.*not read or fetched") as refused:
                read_opml(document.encode())
            assert "TOP-SECRET" not in str(refused.value)
        # An external DTD is not an entity declaration: the file is read, the DTD never fetched.
        document = (f'<?xml version="1.0"?><!DOCTYPE opml SYSTEM "{base}/evil.dtd">'
                    '<opml version="2.0"><body><outline text="Fine" xmlUrl="https://example.org/rss"/></body></opml>')
        assert read_opml(document.encode()) == [OpmlFeed("Fine", "https://example.org/rss", None, "")]
    finally:
        server.shutdown()
        server.server_close()
    assert requests == []


@pytest.mark.parametrize(("content", "reason"), [
    (b"name,url\nBBC,https://feeds.bbci.co.uk/news/world/rss.xml\n", "not XML: "),
    (b"", "not XML: no element found"),
    (b'<?xml version="1.0"?><rss version="2.0"><channel><title>x</title></channel></rss>',
     "not an OPML file: the root element is <rss>, expected <opml>"),
    (b'<opml version="2.0"><head><title>x</title></head></opml>', "not an OPML file: <opml> has no <body>"),
])
def test_not_opml_exits_1_naming_the_file_and_the_reason(env, config_dir, tmp_path, content, reason):
    path = tmp_path / "feeds.opml"
    path.write_bytes(content)
    before = (config_dir / "feeds.yaml").read_bytes()
    result = newsmon(env, "feeds", "import", str(path))
    assert result.returncode == 1
    assert f"Error: {path}: {reason}" in result.stderr
    assert (config_dir / "feeds.yaml").read_bytes() == before


def test_read_opml_versions_encodings_and_nesting():
    # OPML 1.0 as old readers wrote it: text only, lower-case attribute names, Latin-1.
    latin1 = ('<?xml version="1.0" encoding="ISO-8859-1"?><opml version="1.0"><head/><body>'
              '<outline text="Presse française"><outline text="Libération" type="rss" '
              'xmlurl="https://www.liberation.fr/arc/outboundfeeds/rss/"/></outline></body></opml>').encode("latin-1")
    assert read_opml(latin1) == [OpmlFeed("Libération", "https://www.liberation.fr/arc/outboundfeeds/rss/", None,
                                          "Presse française")]
    # Deeper than Python's recursion limit: walked without recursion.
    depth = 5000
    deep = ('<opml version="2.0"><body>' + '<outline text="d">' * depth
            + '<outline text="Bottom" xmlUrl="https://example.org/deep"/>' + "</outline>" * depth + "</body></opml>")
    [feed] = read_opml(deep.encode())
    assert feed.url == "https://example.org/deep" and feed.folder.count(" / ") == depth - 1
    # A namespace, which OPML does not use but some exporters add, changes nothing.
    spaced = b'<opml xmlns="http://opml.org/spec2" version="2.0"><body><outline text="N" xmlUrl="https://n.example/rss"/></body></opml>'
    assert read_opml(spaced) == [OpmlFeed("N", "https://n.example/rss", None, "")]


def test_feeds_list_text(env):
    result = newsmon(env, "feeds", "list")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "Euronews (fr)  https://fr.euronews.com/rss  (every 900 s, language fr)",
        "BBC News World  https://feeds.bbci.co.uk/news/world/rss.xml  (every 600 s)",
    ]


def test_the_imported_file_is_what_the_settings_load(env, config_dir, tmp_path):
    assert newsmon(env, "feeds", "import", str(opml_file(tmp_path, SUBSCRIPTIONS))).returncode == 0
    feeds = config.load(config_dir, tmp_path / "data").feeds
    assert len(feeds) == 5 and feeds[-1].interval == 900
