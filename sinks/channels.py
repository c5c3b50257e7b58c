"""Alert delivery channels: one URL per subscriber says where and how alerts go (in the spirit of Apprise).

- ``https://host/path`` (or ``http://``): a signed JSON webhook, see :func:`verify_webhook` for receivers;
- ``mailto:a@example.org,b@example.org``: e-mail through the pipeline's ``alerts.smtp`` server;
- ``smtp://host:port/?to=a@x.org&from=n@x.org&security=starttls|tls|none``: e-mail through that server;
- ``slack://host/path`` (``slack+http://`` for a local Mattermost): a Slack/Mattermost incoming webhook;
- ``file:///abs/alerts.jsonl``, ``file://relative.jsonl`` (under the data directory), ``file://-`` or ``stdout://``.

URLs are parsed once, at start-up, so a bad one fails there. :func:`send` makes exactly one attempt and
either returns or raises :class:`DeliveryError` saying whether a retry can help; retrying and
scheduling belong to the dispatcher. Secrets never appear in messages: URLs are shown through :func:`mask`.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import html
import json
import logging
import os
import re
import smtplib
import ssl
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from email.message import EmailMessage
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

from newsmon.errors import ChannelError, DeliveryError
from newsmon.retry import retriable_status, retry_after_seconds
from newsmon.settings import SmtpSettings
from newsmon.text import MARK_CLOSE, MARK_OPEN, snippet_html

log = logging.getLogger(__name__)

_SCHEMES = "https://, http://, mailto:, smtp://, slack://, slack+http://, file:// or stdout://"
_SECRET_PARAMS = {"token", "secret", "key", "api_key", "apikey", "access_token", "password", "sig", "signature", "auth"}
_TOKEN_PATH_AFTER = {"hooks", "webhooks", "services"}  # Slack, Mattermost, Discord: the rest of the path is a token
_SMTP_PORTS = {"tls": 465, "starttls": 587, "none": 25}
_USER_AGENT = "newsmon-alerts"
_FILE_LOCK = threading.Lock()  # one writer at a time, so concurrent alerts never interleave within a line


def mask(url: str) -> str:
    """The URL fit for logs and errors: password, secret-looking query values and hook tokens replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<malformed URL>"  # cannot tell where a secret would be
    if not parts.scheme:  # a path or an address list: nothing to hide
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}{':***' if colon else ''}@{hostport}"
    segments = parts.path.split("/")
    for i, segment in enumerate(segments):
        if segment.lower() in _TOKEN_PATH_AFTER and parts.scheme.startswith(("http", "slack")):
            segments[i + 1:] = ["***" if s else s for s in segments[i + 1:]]
            break
    query = "&".join(f"{k}=***" if k.lower() in _SECRET_PARAMS else f"{k}{eq}{v}"
                     for k, eq, v in (p.partition("=") for p in parts.query.split("&") if p))
    masked = f"{parts.scheme}://{netloc}" if url.partition(":")[2].startswith("//") else f"{parts.scheme}:"
    return masked + "/".join(segments) + (f"?{query}" if query else "") + ("#…" if parts.fragment else "")


@dataclass(frozen=True, repr=False)
class Channel:
    url: str  # as configured
    kind: str  # "webhook" | "email" | "slack" | "file"
    target: str  # webhook/slack: the URL to POST to; email: comma-separated recipients; file: absolute path or "-"
    smtp_host: str | None = None  # smtp:// channels: their own server, overriding alerts.smtp
    smtp_port: int | None = None
    smtp_security: str | None = None
    sender: str | None = None

    def __repr__(self) -> str:  # channels end up in logs: never show their secrets
        values = ", ".join(f"{f.name}={mask(v) if f.name in ('url', 'target') else v!r}"
                           for f in fields(self) if (v := getattr(self, f.name)) is not None)
        return f"Channel({values})"


def _addresses(url: str, text: str) -> str:
    recipients = [a.strip() for a in unquote(text).split(",") if a.strip()]
    if not recipients:
        raise ChannelError(mask(url), "no recipient address")
    for address in recipients:
        local, at, domain = address.partition("@")
        if not (at and local and domain) or "@" in domain or any(c.isspace() or not c.isprintable() for c in address):
            raise ChannelError(mask(url), f"{address!r} is not an e-mail address")
    return ",".join(recipients)


def _host_parts(url: str):
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ChannelError(mask(url), str(exc)) from None
    if not parts.hostname:
        raise ChannelError(mask(url), "missing host")
    return parts


def parse_channel(url: str, *, data_dir: Path | None = None) -> Channel:
    """Parse and check a channel URL at start-up; raises ChannelError naming the (masked) URL and the problem."""
    text = url.strip()
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    if not colon or not scheme:
        raise ChannelError(mask(url), f"not a channel URL (expected {_SCHEMES})")
    if scheme in ("http", "https"):
        _host_parts(text)
        return Channel(url, "webhook", text)
    if scheme in ("slack", "slack+http", "slack+https"):
        if _host_parts(text).path.strip("/") == "":
            raise ChannelError(mask(url), "missing the webhook path (e.g. slack://hooks.slack.com/services/T…/B…/…)")
        return Channel(url, "slack", ("http" if scheme == "slack+http" else "https") + text[len(scheme):])
    if scheme == "mailto":
        rest = rest.removeprefix("//")
        if "?" in rest:
            raise ChannelError(mask(url), "mailto: takes addresses only (for options use smtp://host/?to=…)")
        return Channel(url, "email", _addresses(url, rest))
    if scheme == "smtp":
        parts = _host_parts(text)
        if "@" in parts.netloc:  # settings rule: credentials come from the environment, never from config files
            raise ChannelError(mask(url), "credentials do not belong in the URL: set NEWSMON_SMTP_USERNAME/PASSWORD")
        params = parse_qs(parts.query.replace("+", "%2B"), keep_blank_values=True)  # a+tag@x.org keeps its +
        if unknown := sorted(set(params) - {"to", "from", "security"}):
            raise ChannelError(mask(url), f"unknown parameter(s) {', '.join(unknown)} (known: to, from, security)")
        if not any(v.strip() for v in params.get("to", [])):
            raise ChannelError(mask(url), "missing to= (the recipient addresses)")
        security = params.get("security", ["starttls"])[-1]
        if security not in _SMTP_PORTS:
            raise ChannelError(mask(url), f"security={security!r}: expected starttls, tls or none")
        sender = _addresses(url, params["from"][-1]) if "from" in params else None
        if sender and "," in sender:
            raise ChannelError(mask(url), "from= takes one address")
        return Channel(url, "email", _addresses(url, ",".join(params["to"])), smtp_host=parts.hostname,
                       smtp_port=parts.port or _SMTP_PORTS[security], smtp_security=security, sender=sender)
    if scheme == "stdout":
        if rest not in ("", "//"):
            raise ChannelError(mask(url), "stdout:// takes no path")
        return Channel(url, "file", "-")
    if scheme == "file":
        if not rest.startswith("//") or not (path := unquote(rest[2:])):
            raise ChannelError(mask(url), "missing path (file:///absolute/path.jsonl, file://relative.jsonl or file://-)")
        if path == "-":
            return Channel(url, "file", "-")
        if path.endswith("/"):
            raise ChannelError(mask(url), "is a directory, not a file")
        if not path.startswith("/"):
            if data_dir is None:
                raise ChannelError(mask(url), "a relative path needs the data directory")
            path = str(Path(data_dir).absolute() / path)
        return Channel(url, "file", path)
    raise ChannelError(mask(url), f"unsupported scheme {scheme!r} (expected {_SCHEMES})")


def sign_webhook(secrets: Sequence[str], timestamp: str, body: bytes) -> str:
    """The X-Newsmon-Signature value: one ``v1=`` per secret, so receivers on the old or new secret both verify."""
    message = f"{timestamp}.".encode() + body
    return ",".join("v1=" + hmac.new(s.encode(), message, hashlib.sha256).hexdigest() for s in secrets)


def verify_webhook(secrets: list[str], timestamp: str, body: bytes, signature_header: str, *,
                   tolerance: float = 300, now: float | None = None) -> bool:
    """For receivers: True if the request is recent and signed with one of `secrets`.

    `timestamp`: the X-Newsmon-Timestamp header; `body`: the raw request body, as received;
    `signature_header`: X-Newsmon-Signature. An exact copy of a request still verifies within
    `tolerance`, so also refuse a (timestamp, signature) pair you have already seen.
    """
    try:
        sent = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((time.time() if now is None else now) - sent) > tolerance:
        return False  # too old (or from the future): a replayed capture
    message = f"{timestamp}.".encode() + body
    expected = [hmac.new(s.encode(), message, hashlib.sha256).hexdigest().encode() for s in secrets if s]
    for part in (signature_header or "").split(","):
        scheme, _, value = part.strip().partition("=")
        if scheme == "v1" and any(hmac.compare_digest(value.encode(), e) for e in expected):
            return True
    return False


def send(channel: Channel, alert: dict, *, secrets: Sequence[str] = (), smtp: SmtpSettings | None = None,
         timeout: float = 10.0, http: httpx.Client | None = None, env: Mapping[str, str] | None = None,
         now: Callable[[], float] = time.time) -> None:
    """Deliver one alert on one channel, once. Returns on success; any delivery failure is a DeliveryError.

    ``env`` (default: os.environ) holds NEWSMON_SMTP_USERNAME/PASSWORD. It defaults to None rather than
    os.environ so that help() and signature introspection never print the environment's secrets.
    """
    try:
        body = json.dumps(_as_json(alert), ensure_ascii=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise DeliveryError(f"the alert is not JSON-serialisable: {exc}", transient=False) from exc
    if channel.kind == "webhook":
        secrets = [s for s in secrets if s]
        if not secrets:
            raise DeliveryError(f"webhook {mask(channel.target)} has no signing secret", transient=False)
        timestamp = str(int(now()))
        _post(channel.target, body, {
            "X-Newsmon-Delivery": _delivery(alert), "X-Newsmon-Timestamp": timestamp,
            "X-Newsmon-Signature": sign_webhook(secrets, timestamp, body)}, timeout, http, now)
    elif channel.kind == "slack":
        text = json.dumps({"text": slack_text(alert)}, ensure_ascii=False).encode()
        _post(channel.target, text, {}, timeout, http, now)
    elif channel.kind == "email":
        _send_email(channel, alert, smtp or SmtpSettings(), timeout, os.environ if env is None else env, now)
    elif channel.kind == "file":
        _append(channel.target, body + b"\n")
    else:
        raise DeliveryError(f"unknown channel kind {channel.kind!r}", transient=False)


def _as_json(alert: dict) -> dict:
    """The alert as webhook and file receivers get it: snippets in HTML, as ``newsmon search --json`` has them."""
    return {**alert, "items": [{**item, "snippet": snippet_html(item.get("snippet"))} for item in alert.get("items", [])]}


# -- HTTP (webhook, Slack) ----------------------------------------------------------------------


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float, http: httpx.Client | None,
          now: Callable[[], float]) -> None:
    where = mask(url)
    headers = {"Content-Type": "application/json", "User-Agent": _USER_AGENT, **headers}
    client = http or httpx.Client(timeout=timeout)
    try:
        with client.stream("POST", url, content=body, headers=headers, timeout=timeout,
                           follow_redirects=False) as response:
            status = response.status_code
            if 200 <= status < 300:
                return  # delivered; the body does not matter
            if 300 <= status < 400:  # a redirect could send a signed alert somewhere unintended
                location = mask(response.headers.get("location", ""))
                raise DeliveryError(f"POST {where}: HTTP {status}: redirects are not followed (to {location})",
                                    transient=False)
            excerpt = _excerpt(response)
    except httpx.TransportError as exc:  # refused, reset, timed out: the receiver may be back later
        raise DeliveryError(f"POST {where}: {type(exc).__name__}: {_scrub(str(exc), url)}", transient=True) from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise DeliveryError(f"POST {where}: {type(exc).__name__}: {_scrub(str(exc), url)}", transient=False) from exc
    finally:
        if http is None:
            client.close()
    transient = retriable_status(status)
    retry_after = retry_after_seconds(response.headers.get("retry-after"), now()) if transient else None
    raise DeliveryError(f"POST {where}: HTTP {status}: {excerpt}", transient=transient, retry_after=retry_after)


def _excerpt(response: httpx.Response, limit: int = 200) -> str:
    data = b""
    for chunk in response.iter_bytes():  # read a little only: an error page can be huge
        data += chunk
        if len(data) >= 4 * limit:
            break
    return " ".join(data.decode("utf-8", errors="replace").split())[:limit]


def _scrub(text: str, url: str) -> str:
    text, password = text.replace(url, mask(url)), urlsplit(url).password
    return text.replace(password, "***") if password else text


# -- rendering ------------------------------------------------------------------------------------


def _delivery(alert: dict) -> str:  # for headers: ASCII, no line breaks (ids are hex anyway)
    return re.sub(r"[^A-Za-z0-9._-]", "-", str(alert.get("delivery_id") or ""))


def _oneline(value) -> str:
    return " ".join(str(value or "").split())  # headers and subjects must not carry line breaks


def _heading(alert: dict) -> tuple[list[dict], int, str]:
    items, more = list(alert.get("items") or []), int(alert.get("more") or 0)
    n = len(items) + more
    if alert.get("kind") == "digest":
        return items, more, f"{_oneline(alert.get('subscriber'))}: {n} article{'' if n == 1 else 's'}"
    title = _oneline(items[0].get("title")) if items else ""
    return items, more, f"{_oneline(alert.get('topic'))}: {title}"


def _meta(item: dict) -> str:
    return " · ".join(_oneline(item.get(k)) for k in ("source", "language", "published") if item.get(k))


def _is_link(url) -> bool:
    return isinstance(url, str) and url.startswith(("https://", "http://"))  # never javascript: or data: links


def email_text(alert: dict) -> str:
    """The plain-text body. Highlighted terms in snippets are shown as [term]."""
    items, more, heading = _heading(alert)
    lines = [f"newsmon {alert.get('kind', 'alert')}: {heading}"]
    for item in items:
        lines += ["", _oneline(item.get("title")) or "(untitled)", _meta(item), str(item.get("url") or ""),
                  "Matched: " + ", ".join(map(str, item.get("matched_terms") or [])),
                  str(item.get("snippet") or "").replace(MARK_OPEN, "[").replace(MARK_CLOSE, "]")]
    if more:
        lines += ["", f"and {more} more"]
    return "\n".join(lines) + "\n"


def email_html(alert: dict) -> str:
    """The HTML alternative: everything escaped, highlighted terms in <mark>."""
    esc = html.escape
    items, more, heading = _heading(alert)
    parts = [f"<h2>newsmon {esc(str(alert.get('kind', 'alert')))}: {esc(heading)}</h2>"]
    for item in items:
        title = esc(_oneline(item.get("title")) or "(untitled)")
        url = item.get("url")
        link = f'<a href="{esc(url)}">{title}</a>' if _is_link(url) else title
        snippet = snippet_html(item.get("snippet"))
        terms = esc(", ".join(map(str, item.get("matched_terms") or [])))
        parts.append(f"<h3>{link}</h3><p>{esc(_meta(item))}<br>Matched: {terms}</p><blockquote>{snippet}</blockquote>")
    if more:
        parts.append(f"<p>and {more} more</p>")
    return "<!DOCTYPE html><html><body>" + "\n".join(parts) + "</body></html>\n"


def slack_text(alert: dict) -> str:
    """Slack mrkdwn (Mattermost reads it too): <url|title> links, highlighted terms in *bold*."""
    def esc(text) -> str:  # the three characters Slack requires escaped
        return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    items, more, heading = _heading(alert)
    lines = [f"newsmon {esc(alert.get('kind', 'alert'))}: {esc(heading)}"]
    for item in items:
        title, url = esc(_oneline(item.get("title")) or "(untitled)"), item.get("url")
        link = f"<{url.replace('|', '%7C').replace('>', '%3E')}|{title}>" if _is_link(url) else title
        snippet = esc(_oneline(item.get("snippet"))).replace(MARK_OPEN, "*").replace(MARK_CLOSE, "*")
        lines += ["", f"*{link}*", esc(_meta(item)),
                  "Matched: " + esc(", ".join(map(str, item.get("matched_terms") or []))), f"> {snippet}"]
    if more:
        lines += ["", f"and {more} more"]
    return "\n".join(lines)


# -- e-mail and file --------------------------------------------------------------------------------


def _message(alert: dict, sender: str, recipients: str, now: float) -> EmailMessage:
    delivery = _delivery(alert)
    msg = EmailMessage()
    msg["From"], msg["To"] = sender, ", ".join(recipients.split(","))
    msg["Subject"] = "[newsmon] " + _heading(alert)[2]
    msg["Date"] = email.utils.formatdate(now, usegmt=True)
    domain = sender.rpartition("@")[2] or "newsmon.invalid"
    # Derived from the delivery id, so every retry of one delivery carries the same Message-ID.
    msg["Message-ID"] = (f"<{delivery}.newsmon@{domain}>" if delivery
                         else email.utils.make_msgid("newsmon", domain))
    msg["X-Newsmon-Delivery"] = delivery
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation auto-replies to alerts
    msg.set_content(email_text(alert))
    msg.add_alternative(email_html(alert), subtype="html")
    return msg


def _send_email(channel: Channel, alert: dict, smtp: SmtpSettings, timeout: float, env: Mapping[str, str],
                now: Callable[[], float]) -> None:
    host, port = channel.smtp_host or smtp.host, channel.smtp_port or smtp.port
    security = channel.smtp_security or smtp.security
    where = f"smtp://{host}:{port}"
    try:
        msg = _message(alert, channel.sender or smtp.sender, channel.target, now())
        if security == "tls":
            client = smtplib.SMTP_SSL(host, port, timeout=timeout, context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(host, port, timeout=timeout)
        try:
            if security == "starttls":  # raises if the server does not offer it: no silent downgrade
                client.starttls(context=ssl.create_default_context())
            if env.get("NEWSMON_SMTP_USERNAME"):
                client.login(env["NEWSMON_SMTP_USERNAME"], env.get("NEWSMON_SMTP_PASSWORD", ""))
            refused = client.send_message(msg)
        finally:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        detail = "; ".join(f"{rcpt}: {code} {_decode(text)}" for rcpt, (code, text) in exc.recipients.items())
        raise DeliveryError(f"{where}: recipients refused: {detail}",
                            transient=bool(codes) and all(400 <= c < 500 for c in codes)) from exc
    except smtplib.SMTPResponseException as exc:  # 4xx: temporary by definition; 5xx: permanent
        raise DeliveryError(f"{where}: {exc.smtp_code} {_decode(exc.smtp_error)}",
                            transient=400 <= exc.smtp_code < 500) from exc
    except smtplib.SMTPServerDisconnected as exc:
        raise DeliveryError(f"{where}: disconnected: {exc}", transient=True) from exc
    except smtplib.SMTPException as exc:  # e.g. no STARTTLS or no AUTH offered: configuration, not luck
        raise DeliveryError(f"{where}: {exc}", transient=False) from exc
    except ssl.SSLCertVerificationError as exc:
        raise DeliveryError(f"{where}: {exc}", transient=False) from exc
    except OSError as exc:  # refused, unreachable, timed out
        raise DeliveryError(f"{where}: {type(exc).__name__}: {exc}", transient=True) from exc
    except ValueError as exc:  # an address or header the mail library cannot encode
        raise DeliveryError(f"{where}: {exc}", transient=False) from exc
    if refused:  # others got it: a retry would duplicate theirs, so report and count it delivered
        log.warning("%s: delivery %s refused for %s", where, alert.get("delivery_id"), ", ".join(refused))


def _decode(text) -> str:
    return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)


def _append(target: str, line: bytes) -> None:
    try:
        with _FILE_LOCK:
            if target == "-":
                sys.stdout.flush()  # keep order with text already written through sys.stdout
                if out := getattr(sys.stdout, "buffer", None):  # bytes: UTF-8 whatever the locale
                    out.write(line)
                    out.flush()
                else:
                    sys.stdout.write(line.decode())
                    sys.stdout.flush()
                return
            path = Path(target)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as f:  # O_APPEND and one write per line: lines land whole at the end
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
    except OSError as exc:
        raise DeliveryError(f"{target}: {exc}", transient=True) from exc
