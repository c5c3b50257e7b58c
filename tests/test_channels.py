"""Alert channels against real local receivers: an HTTP server that verifies signatures, aiosmtpd, files."""

from __future__ import annotations

import email
import email.policy
import email.utils
import html
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from newsmon.errors import ChannelError, DeliveryError
from newsmon.settings import SmtpSettings
from newsmon.text import MARK_CLOSE, MARK_OPEN
from sinks.channels import Channel, parse_channel, send, sign_webhook, verify_webhook

NOW = 1_790_000_000.0


def _item(n: int = 1, title: str = "Les alliés de l'OTAN débloquent 35 milliards") -> dict:
    return {"rule_id": "desk-fr/1", "matched_terms": ["OTAN", "Ukraine"],
            "snippet": f"… les alliés de l'{MARK_OPEN}OTAN{MARK_CLOSE} pour l'Ukraine …",
            "id": f"id{n}", "url": f"https://news.example.org/a{n}", "title": title, "source": "Euronews",
            "language": "fr", "published": "2026-02-12T16:45:00Z"}


def _alert(kind: str = "alert", items: list[dict] | None = None, more: int = 0, delivery_id: str = "b1c2d3") -> dict:
    return {"delivery_id": delivery_id, "subscriber": "desk-fr", "kind": kind, "topic": "nato",
            "items": items if items is not None else [_item()], "more": more, "created": "2026-11-25T16:00:00Z"}


# -- a webhook receiver doing what the README tells receivers to do ---------------------------------------------


class Receiver:
    """Verifies X-Newsmon-Signature with verify_webhook, refuses stale timestamps (401) and exact replays (409)."""

    def __init__(self, secrets: list[str] | None):
        self.secrets = secrets  # None: accept anything (Slack stand-in)
        self.now: float | None = None  # the receiver's clock; None = real time
        self.respond: tuple[int, dict, bytes] | None = None  # forced answer, for the status tests
        self.hang = threading.Event()  # while clear and hanging is asked, requests get no answer
        self.hanging = False
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.deliveries: list[dict] = []
        self.seen: set[tuple[str, str]] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                receiver.requests.append((self.path, headers, body))
                if receiver.hanging:
                    receiver.hang.wait(5)
                    return
                status, extra, answer = receiver.respond or receiver.check(headers, body)
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def check(self, headers: dict[str, str], body: bytes) -> tuple[int, dict, bytes]:
        if self.secrets is None:
            self.deliveries.append(json.loads(body))
            return 200, {}, b"ok"
        timestamp, signature = headers.get("x-newsmon-timestamp", ""), headers.get("x-newsmon-signature", "")
        if not verify_webhook(self.secrets, timestamp, body, signature, now=self.now):
            return 401, {}, b"bad signature or stale timestamp"
        if (timestamp, signature) in self.seen:
            return 409, {}, b"replay"
        self.seen.add((timestamp, signature))
        self.deliveries.append(json.loads(body))
        return 204, {}, b""

    def stop(self) -> None:
        self.hang.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers():
    started: list[Receiver] = []

    def start(secrets: list[str] | None = ["s3cret"]) -> Receiver:  # noqa: B006 - never mutated
        started.append(Receiver(secrets))
        return started[-1]

    yield start
    for receiver in started:
        receiver.stop()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _resend(request: tuple[str, dict[str, str], bytes], url: str, body: bytes | None = None) -> int:
    _, headers, original = request
    keep = {k: v for k, v in headers.items() if k.startswith("x-newsmon-") or k == "content-type"}
    return httpx.post(url, content=original if body is None else body, headers=keep).status_code



def _received(alert: dict) -> dict:
    """What JSON receivers get: the alert with each snippet as escaped HTML, matches in <mark>."""
    items = [{**item, "snippet": html.escape(item["snippet"]).replace(MARK_OPEN, "<mark>").replace(MARK_CLOSE, "</mark>")}
             for item in alert["items"]]
    return {**alert, "items": items}

def test_signed_webhook_is_accepted_with_its_headers(receivers):
    rec = receivers()
    rec.now = NOW + 20  # clocks differ a little: within tolerance
    alert = _alert()
    send(parse_channel(rec.url), alert, secrets=["s3cret"], now=lambda: NOW)
    assert rec.deliveries == [_received(alert)]
    _, headers, body = rec.requests[0]
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == "newsmon-alerts"
    assert headers["x-newsmon-delivery"] == "b1c2d3"
    assert headers["x-newsmon-timestamp"] == str(int(NOW))
    assert headers["x-newsmon-signature"].startswith("v1=")
    assert "alliés".encode() in body and b": " not in body  # UTF-8, compact


def test_tampered_body_and_replays_are_rejected(receivers):
    rec = receivers()
    rec.now = NOW
    send(parse_channel(rec.url), _alert(), secrets=["s3cret"], now=lambda: NOW)
    captured = rec.requests[0]
    tampered = bytearray(captured[2])
    tampered[tampered.index(b"nato")] = ord("m")
    assert _resend(captured, rec.url, bytes(tampered)) == 401
    assert _resend(captured, rec.url) == 409  # exact replay while still fresh
    rec.now = NOW + 301  # later: the captured timestamp is too old whatever the signature
    assert _resend(captured, rec.url) == 401
    assert len(rec.deliveries) == 1


def test_secret_rotation_verifies_on_old_and_new_receivers(receivers):
    old, new, other = receivers(["old"]), receivers(["new"]), receivers(["other"])
    for rec in (old, new):
        send(parse_channel(rec.url), _alert(), secrets=["new", "old"])
        assert len(rec.deliveries) == 1
    with pytest.raises(DeliveryError) as err:
        send(parse_channel(other.url), _alert(), secrets=["new", "old"])
    assert not err.value.transient and "401" in err.value.reason


def test_verify_webhook_edge_cases():
    body = b'{"a":1}'
    sig = sign_webhook(["k"], "1000", body)
    assert verify_webhook(["k"], "1000", body, sig, now=1000)
    assert verify_webhook(["x", "k"], "1000", body, "v0=abc, " + sig, now=1299)
    assert not verify_webhook(["k"], "1000", body, sig, now=1301)
    assert not verify_webhook(["k"], "1000", body, sig, now=699)  # from the future
    assert not verify_webhook(["k"], "1000", body + b" ", sig, now=1000)
    assert not verify_webhook(["k"], "1001", body, sig, now=1000)  # the timestamp is signed too
    assert not verify_webhook(["k"], "soon", body, sig, now=1000)
    assert not verify_webhook(["k"], "1000", body, "v1=é", now=1000)  # no TypeError on non-ASCII
    assert not verify_webhook([], "1000", body, sig, now=1000)


def test_webhook_without_secret_is_not_sent(receivers):
    rec = receivers()
    with pytest.raises(DeliveryError) as err:
        send(parse_channel(rec.url), _alert(), secrets=[])
    assert not err.value.transient and "no signing secret" in err.value.reason
    assert rec.requests == []


@pytest.mark.parametrize("status, headers, retriable, retry_after", [
    (500, {}, True, None),
    (503, {"Retry-After": email.utils.formatdate(NOW + 30, usegmt=True)}, True, 30.0),
    (429, {"Retry-After": "7"}, True, 7.0),
    (408, {}, True, None),
    (404, {"Retry-After": "7"}, False, None),
    (400, {}, False, None),
])
def test_http_status_classification(receivers, status, headers, retriable, retry_after):
    rec = receivers()
    rec.respond = (status, headers, b"why: " + b"x" * 1000)
    with pytest.raises(DeliveryError) as err:
        send(parse_channel(rec.url), _alert(), secrets=["s3cret"], now=lambda: NOW)
    assert err.value.transient is retriable
    assert err.value.retry_after == retry_after
    assert f"HTTP {status}" in err.value.reason and rec.url in err.value.reason
    assert "why: xxx" in err.value.reason and len(err.value.reason) < len(rec.url) + 250  # body excerpt, capped


def test_redirects_are_not_followed(receivers):
    rec, elsewhere = receivers(), receivers()
    rec.respond = (302, {"Location": elsewhere.url}, b"")
    with pytest.raises(DeliveryError) as err, httpx.Client(follow_redirects=True) as client:
        send(parse_channel(rec.url), _alert(), secrets=["s3cret"], http=client)
    assert not err.value.transient and "redirects are not followed" in err.value.reason
    assert len(rec.requests) == 1 and elsewhere.requests == []


def test_connection_refused_and_timeout_are_retriable(receivers):
    with pytest.raises(DeliveryError) as err:
        send(parse_channel(f"http://127.0.0.1:{_closed_port()}/hook"), _alert(), secrets=["s3cret"])
    assert err.value.transient and "ConnectError" in err.value.reason
    rec = receivers()
    rec.hanging = True
    started = time.monotonic()
    with pytest.raises(DeliveryError) as err:
        send(parse_channel(rec.url), _alert(), secrets=["s3cret"], timeout=0.3)
    assert err.value.transient and "Timeout" in err.value.reason
    assert time.monotonic() - started < 1.5


def test_credentials_in_the_url_never_show(receivers):
    rec = receivers()
    rec.respond = (404, {}, b"not here")
    channel = parse_channel(rec.url.replace("http://", "http://user:hunter2@"))
    with pytest.raises(DeliveryError) as err:
        send(channel, _alert(), secrets=["s3cret"])
    assert "hunter2" not in str(err.value) and "user:***@" in str(err.value)
    assert "hunter2" not in repr(channel)


# -- Slack / Mattermost ---------------------------------------------------------------------------------------


def test_slack_webhook_gets_mrkdwn_text(receivers):
    rec = receivers(None)
    channel = parse_channel(rec.url.replace("http://", "slack+http://").replace("/hook", "/hooks/x"))
    assert channel.kind == "slack" and channel.target.startswith("http://127.0.0.1:")
    items = [_item(1), _item(2, title="Budget <script>alert(1)</script> & co")]
    send(channel, _alert("digest", items, more=3))
    path, headers, _ = rec.requests[0]
    assert path == "/hooks/x" and headers["content-type"] == "application/json"
    assert "x-newsmon-signature" not in headers
    [payload] = rec.deliveries
    assert list(payload) == ["text"]
    text = payload["text"]
    assert f"<https://news.example.org/a1|{_item()['title']}>" in text
    assert "&lt;script&gt;" in text and "<script>" not in text and "&amp; co" in text
    assert "l'*OTAN*" in text and "Euronews" in text and "OTAN, Ukraine" in text
    assert "5 articles" in text and "and 3 more" in text


# -- e-mail through a real SMTP server ------------------------------------------------------------------------


class Inbox:
    def __init__(self):
        self.envelopes: list = []
        self.data_reply: str | None = None  # e.g. "451 try later"
        self.rcpt_replies: dict[str, str] = {}  # address -> refusal
        self.logins: list[tuple[bytes, bytes]] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.rcpt_replies:
            return self.rcpt_replies[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_reply:
            return self.data_reply
        self.envelopes.append(envelope)
        return "250 OK"

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        self.logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=True)

    def message(self, n: int = 0) -> email.message.EmailMessage:
        return email.message_from_bytes(self.envelopes[n].content, policy=email.policy.default)


class _Smtpd(Controller):
    def _trigger_server(self):  # bound to port 0: learn the real port before aiosmtpd's self-check connects
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


@pytest.fixture
def smtpd():
    inbox = Inbox()
    controller = _Smtpd(inbox, hostname="127.0.0.1", port=0, authenticator=inbox.authenticate,
                        auth_require_tls=False)
    controller.start()
    inbox.port = controller.port
    yield inbox
    controller.stop()


def test_email_alert_via_smtp_url(smtpd):
    channel = parse_channel(f"smtp://127.0.0.1:{smtpd.port}/?to=desk@example.org,chief@example.org"
                            "&from=alerts@example.org&security=none")
    alert = _alert(items=[_item(title="OTAN <script>alert(1)</script> sommet")])
    send(channel, alert, env={})
    [envelope] = smtpd.envelopes
    assert envelope.mail_from == "alerts@example.org"
    assert envelope.rcpt_tos == ["desk@example.org", "chief@example.org"]
    msg = smtpd.message()
    assert msg["From"] == "alerts@example.org" and msg["To"] == "desk@example.org, chief@example.org"
    assert msg["Subject"] == "[newsmon] nato: OTAN <script>alert(1)</script> sommet"
    assert msg["X-Newsmon-Delivery"] == "b1c2d3" and "b1c2d3" in msg["Message-ID"]
    text = msg.get_body(("plain",)).get_content()
    page = msg.get_body(("html",)).get_content()
    assert "l'[OTAN] pour" in text and "https://news.example.org/a1" in text and "Euronews · fr" in text
    assert "<mark>OTAN</mark>" in page and "&lt;script&gt;" in page and "<script>" not in page
    assert MARK_OPEN not in text + page and smtpd.logins == []


def test_email_digest_via_mailto_and_settings_with_login(smtpd):
    settings = SmtpSettings(host="127.0.0.1", port=smtpd.port, security="none", sender="newsmon@example.org")
    alert = _alert("digest", [_item(1), _item(2)], more=3, delivery_id="dg-9")
    env = {"NEWSMON_SMTP_USERNAME": "bot", "NEWSMON_SMTP_PASSWORD": "pw"}
    for _ in range(2):  # a resend carries the same Message-ID
        send(parse_channel("mailto:desk@example.org"), alert, smtp=settings, env=env)
    first, second = smtpd.message(0), smtpd.message(1)
    assert first["Subject"] == "[newsmon] desk-fr: 5 articles"
    assert first["From"] == "newsmon@example.org" and first["To"] == "desk@example.org"
    assert first["Message-ID"] == second["Message-ID"]
    assert "and 3 more" in first.get_body(("plain",)).get_content()
    assert "a2" in first.get_body(("html",)).get_content()
    assert smtpd.logins == [(b"bot", b"pw")] * 2


@pytest.mark.parametrize("reply, retriable", [("451 try later", True), ("550 no such user", False)])
def test_smtp_data_replies_are_classified(smtpd, reply, retriable):
    smtpd.data_reply = reply
    with pytest.raises(DeliveryError) as err:
        send(parse_channel(f"smtp://127.0.0.1:{smtpd.port}/?to=a@example.org&security=none"), _alert())
    assert err.value.transient is retriable and reply.split()[0] in err.value.reason


def test_smtp_refused_recipients(smtpd):
    url = f"smtp://127.0.0.1:{smtpd.port}/?to=a@example.org,b@example.org&security=none"
    smtpd.rcpt_replies = {"a@example.org": "450 mailbox busy", "b@example.org": "450 mailbox busy"}
    with pytest.raises(DeliveryError) as err:
        send(parse_channel(url), _alert())
    assert err.value.transient and "a@example.org: 450" in err.value.reason
    smtpd.rcpt_replies["b@example.org"] = "550 no such user"
    with pytest.raises(DeliveryError) as err:
        send(parse_channel(url), _alert())
    assert not err.value.transient
    del smtpd.rcpt_replies["b@example.org"]  # one accepted: delivered, a retry would duplicate it
    send(parse_channel(url), _alert())
    assert smtpd.envelopes[0].rcpt_tos == ["b@example.org"]


def test_smtp_connection_problems(smtpd):
    with pytest.raises(DeliveryError) as err:
        send(parse_channel(f"smtp://127.0.0.1:{_closed_port()}/?to=a@example.org&security=none"), _alert())
    assert err.value.transient
    # The server offers no STARTTLS: refuse to send in clear rather than downgrade silently.
    with pytest.raises(DeliveryError) as err:
        send(parse_channel(f"smtp://127.0.0.1:{smtpd.port}/?to=a@example.org&security=starttls"), _alert())
    assert not err.value.transient and "STARTTLS" in err.value.reason
    assert smtpd.envelopes == []


# -- files ----------------------------------------------------------------------------------------------------


def test_file_channel_appends_json_lines(tmp_path):
    channel = parse_channel("file://out/alerts.jsonl", data_dir=tmp_path)
    assert channel.target == str(tmp_path / "out" / "alerts.jsonl")
    first, second = _alert(delivery_id="one"), _alert("digest", delivery_id="two")
    send(channel, first)
    send(channel, second)
    raw = (tmp_path / "out" / "alerts.jsonl").read_bytes()
    assert "alliés".encode() in raw
    assert [json.loads(line) for line in raw.splitlines()] == [_received(first), _received(second)]


def test_file_channel_lines_stay_whole_under_concurrency(tmp_path):
    channel = parse_channel(f"file://{tmp_path}/alerts.jsonl")
    big = _alert(items=[_item(n) for n in range(100)])
    threads = [threading.Thread(target=send, args=(channel, {**big, "delivery_id": str(n)})) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    lines = (tmp_path / "alerts.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["delivery_id"] for line in lines) == [str(n) for n in range(8)]


def test_file_channel_stdout_and_errors(tmp_path, capsys):
    send(parse_channel("file://-"), _alert())
    send(parse_channel("stdout://"), _alert(delivery_id="2"))
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["delivery_id"] for line in lines] == ["b1c2d3", "2"]
    (tmp_path / "blocker").write_text("a file, not a directory")
    with pytest.raises(DeliveryError) as err:
        send(parse_channel(f"file://{tmp_path}/blocker/alerts.jsonl"), _alert())
    assert err.value.transient


# -- parsing --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url, kind, target", [
    ("https://hooks.example.org/newsmon", "webhook", "https://hooks.example.org/newsmon"),
    ("http://127.0.0.1:8080/in", "webhook", "http://127.0.0.1:8080/in"),
    ("mailto:a@example.org,b@example.org", "email", "a@example.org,b@example.org"),
    ("mailto://a@example.org", "email", "a@example.org"),
    ("slack://hooks.slack.com/services/T1/B2/xyz", "slack", "https://hooks.slack.com/services/T1/B2/xyz"),
    ("slack+http://127.0.0.1:8065/hooks/abc", "slack", "http://127.0.0.1:8065/hooks/abc"),
    ("file:///var/lib/newsmon/alerts.jsonl", "file", "/var/lib/newsmon/alerts.jsonl"),
    ("file://-", "file", "-"),
    ("stdout://", "file", "-"),
])
def test_parse_valid_channels(url, kind, target):
    channel = parse_channel(url)
    assert (channel.url, channel.kind, channel.target) == (url, kind, target)
    assert channel.smtp_host is None


def test_parse_smtp_channel(tmp_path):
    channel = parse_channel("smtp://mail.example.org:2525/?to=a+news@x.org,b@y.org&from=n@x.org&security=tls")
    assert channel == Channel(channel.url, "email", "a+news@x.org,b@y.org", smtp_host="mail.example.org",
                              smtp_port=2525, smtp_security="tls", sender="n@x.org")
    defaults = parse_channel("smtp://mail.example.org/?to=a@x.org")
    assert (defaults.smtp_port, defaults.smtp_security, defaults.sender) == (587, "starttls", None)
    assert parse_channel("file://alerts.jsonl", data_dir=tmp_path).target == str(tmp_path / "alerts.jsonl")


@pytest.mark.parametrize("url, reason", [
    ("ftp://x", "unsupported scheme"),
    ("mailto:", "no recipient"),
    ("mailto:not-an-address", "not an e-mail address"),
    ("mailto:a@x.org,b c@y.org", "not an e-mail address"),
    ("smtp://host/", "missing to="),
    ("smtp://host/?to=a@x.org&security=ssl", "expected starttls, tls or none"),
    ("smtp://host/?to=a@x.org&too=b", "unknown parameter"),
    ("slack://", "missing host"),
    ("slack://hooks.slack.com", "missing the webhook path"),
    ("https://", "missing host"),
    ("https://host:99999/x", "out of range"),
    ("file://relative.jsonl", "needs the data directory"),
    ("file://", "missing path"),
    ("just text", "not a channel URL"),
])
def test_parse_invalid_channels(url, reason):
    with pytest.raises(ChannelError) as err:
        parse_channel(url)
    assert reason in str(err.value) and isinstance(err.value, ValueError)


def test_secrets_are_masked_in_errors_and_repr():
    with pytest.raises(ChannelError) as err:
        parse_channel("https://user:secret@/x")
    assert "secret" not in str(err.value) and "user:***@" in str(err.value)
    with pytest.raises(ChannelError) as err:
        parse_channel("smtp://user:secret@mail.example.org/?to=a@x.org")
    assert "secret" not in str(err.value) and "NEWSMON_SMTP_USERNAME" in str(err.value)
    channel = parse_channel("https://user:secret@host/x?token=tok123")
    assert channel.target == "https://user:secret@host/x?token=tok123"  # what is used stays intact
    assert "secret" not in repr(channel) and "tok123" not in repr(channel)
    assert "T1/B2/xyz" not in repr(parse_channel("slack://hooks.slack.com/services/T1/B2/xyz"))
