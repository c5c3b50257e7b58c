"""Local HTTP servers on 127.0.0.1 for the tests: a site whose routes the test defines."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Page:
    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "text/html; charset=utf-8"})
    delay: float = 0.0  # seconds before answering
    trickle: float = 0.0  # seconds between body bytes


Route = Page | Callable[[BaseHTTPRequestHandler], None]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        site: TestSite = self.server.site
        site.requests.append((self.path, dict(self.headers)))
        route = site.routes.get(self.path.split("?", 1)[0])
        try:
            if route is None:
                self._send(Page(b"not found", 404))
            elif isinstance(route, Page):
                self._send(route)
            else:
                route(self)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on purpose (size cap, timeout)

    def _send(self, page: Page) -> None:
        if page.delay:
            time.sleep(page.delay)
        body = page.body.replace(b"{{BASE_URL}}", self.server.site.base_url.encode())
        self.send_response(page.status)
        for name, value in page.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if page.trickle:
            for i in range(len(body)):
                self.wfile.write(body[i : i + 1])
                self.wfile.flush()
                time.sleep(page.trickle)
        else:
            self.wfile.write(body)

    def log_message(self, format, *args) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's listen backlog is 5: a burst of connections would wait for SYN retries

    def handle_error(self, request, client_address) -> None:
        pass  # clients that hang up early (size caps, timeouts) are what many tests are about


class TestSite:
    """``with TestSite({"/feed.xml": Page(...)}) as site: site.url("/feed.xml")``"""

    __test__ = False  # not a pytest test class

    def __init__(self, routes: dict[str, Route] | None = None, host: str = "127.0.0.1"):
        self.routes: dict[str, Route] = dict(routes or {})
        self.requests: list[tuple[str, dict]] = []
        self._server = _Server((host, 0), _Handler)
        self._server.site = self
        self.port = self._server.server_address[1]
        self.base_url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return self.base_url + path

    def __enter__(self) -> TestSite:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def rss(items: list[tuple[str, str]], title: str = "Test feed") -> bytes:
    """An RSS 2.0 document with (title, link) items."""
    entries = "".join(
        f"<item><title>{t}</title><link>{link}</link><pubDate>Thu, 12 Feb 2026 10:00:00 GMT</pubDate></item>"
        for t, link in items
    )
    return (
        f'<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>{title}</title>'
        f"<link>http://example.org/</link><description>test</description>{entries}</channel></rss>"
    ).encode()


def article_html(title: str, paragraphs: list[str], lang: str = "en", chrome: bool = True) -> bytes:
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    nav = "<nav><ul><li><a href='/'>Home</a></li><li><a href='/world'>World</a></li></ul></nav>" if chrome else ""
    return (
        f'<!DOCTYPE html><html lang="{lang}"><head><meta charset="utf-8"><title>{title}</title></head>'
        f"<body><header>{nav}</header><main><article><h1>{title}</h1>{body}</article></main>"
        f"<footer><p>© Test Site</p></footer></body></html>"
    ).encode()
