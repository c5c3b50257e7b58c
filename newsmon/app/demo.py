"""The bundled sample news site, served on 127.0.0.1 for ``newsmon demo`` and the tests.

Files under ``demo_site/`` use ``{{BASE_URL}}`` for the site root; it is replaced
when served. Responses carry ETag and Last-Modified and answer conditional
requests with 304, as a well-behaved news site does.
"""

from __future__ import annotations

import hashlib
import threading
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SITE_DIR = Path(__file__).parent / "demo_site"
_TYPES = {"rss.xml": "application/rss+xml", "atom.xml": "application/atom+xml"}
_STARTED = formatdate(usegmt=True)


def demo_feeds(base_url: str) -> list[dict]:
    return [
        {"name": "Demo wire (RSS)", "url": f"{base_url}/rss.xml", "interval": 60},
        {"name": "Demo wire (Atom)", "url": f"{base_url}/atom.xml", "interval": 60},
    ]


class _Handler(BaseHTTPRequestHandler):
    server_version = "newsmon-demo-site"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.path.split("?", 1)[0].split("#", 1)[0].lstrip("/") or "index.html"
        file = (SITE_DIR / path).resolve()
        if SITE_DIR.resolve() not in file.parents or not file.is_file():
            self.send_error(404)
            return
        body = file.read_bytes().replace(b"{{BASE_URL}}", self.server.base_url.encode())
        etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        self.send_response(200)
        # No charset parameter: pages declare their own in <meta charset>, one of them not UTF-8.
        self.send_header("Content-Type", _TYPES.get(file.name, "text/html" if file.suffix == ".html" else "application/octet-stream"))
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", _STARTED)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # quiet: the pipeline logs what matters
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver listens with a backlog of 5: the pipeline opens more connections than that at once, and
    # on a loaded machine the ones beyond it waited for SYN retries until the fetcher's connect timeout.
    request_queue_size = 128


class DemoSite:
    """Serve the demo site in a background thread: ``with DemoSite(port) as site: site.base_url``."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1"):
        self._server = _Server((host, port), _Handler)
        self.base_url = f"http://{host}:{self._server.server_address[1]}"
        self._server.base_url = self.base_url
        self._thread = threading.Thread(target=self._server.serve_forever, name="demo-site", daemon=True)

    def __enter__(self) -> DemoSite:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
