"""A small HTTP proxy on 127.0.0.1 in front of the real search node, for the faults a node will not
produce on demand. Everything else is the node's own answer.

- ``bulk_statuses``: the next whole ``_bulk`` requests get these statuses (429, 503) without reaching the node;
- ``item_statuses``: per document id, the statuses of its next attempts: the document is left out of the
  bulk request the node sees and its item answered with that status, as a node under pressure answers;
- ``root``: the answer to ``GET /`` (another product or version, for the sink's detection);
- ``hang(path, count)``: the next ``count`` requests to ``path…`` get no answer (a hung connection) until
  the client gives up or the proxy closes;
- ``stop()`` / ``start(port)``: an outage (connections refused), and its end on the same port.

It records ``(method, path, request body bytes)`` of every request in ``requests``.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

_FORWARDED = ("Content-Type", "Accept", "Authorization")


def error_body(kind: str, reason: str, status: int) -> dict:
    """An error in the REST API's shape."""
    return {"error": {"root_cause": [{"type": kind, "reason": reason}], "type": kind, "reason": reason}, "status": status}


WHOLE_REQUEST_ERRORS = {
    429: ("es_rejected_execution_exception", "rejected execution of coordinating operation"),
    503: ("cluster_block_exception", "blocked by: [SERVICE_UNAVAILABLE/1/state not recovered / initialized];"),
}


class EsProxy:
    def __init__(self, upstream: str, verify=True):
        self._client = httpx.Client(base_url=upstream.rstrip("/"), verify=verify, timeout=60)
        self.requests: list[tuple[str, str, int]] = []
        self.bulk_statuses: list[int] = []
        self.item_statuses: dict[str, list[int]] = {}
        self.root: dict | None = None
        self._hangs: dict[str, int] = {}
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hang(self, path: str, count: int = 1) -> None:
        self._hangs[path] = count

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, port: int = 0) -> EsProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {name: self.headers[name] for name in _FORWARDED if self.headers.get(name)}
                answer = proxy._handle(self.command, self.path, headers, body)
                if answer is None:  # hung: the connection closes without an answer
                    self.close_connection = True
                    return
                status, content_type, content = answer
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _answer

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Go down: connections are refused until ``start(self.port)``."""
        self._server.shutdown()
        self._server.server_close()

    def close(self) -> None:
        self._closing.set()
        self.stop()
        self._client.close()

    # -- requests ------------------------------------------------------------------------------

    def _handle(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, str, bytes] | None:
        with self._lock:
            self.requests.append((method, path, len(body)))
            hung = next((p for p, left in self._hangs.items() if left and path.startswith(p)), None)
            if hung:
                self._hangs[hung] -= 1
        if hung:
            self._closing.wait(60)
            return None
        if method == "GET" and path == "/" and self.root is not None:
            return _json(200, self.root)
        if path.startswith("/_bulk"):
            return self._bulk(method, path, headers, body)
        return self._forward(method, path, headers, body)

    def _forward(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, str, bytes]:
        answer = self._client.request(method, path, headers=headers, content=body)
        return answer.status_code, answer.headers.get("Content-Type", "application/json"), answer.content

    def _bulk(self, method: str, path: str, headers: dict, body: bytes) -> tuple[int, str, bytes]:
        with self._lock:
            status = self.bulk_statuses.pop(0) if self.bulk_statuses else None
        if status is not None:
            kind, reason = WHOLE_REQUEST_ERRORS[status]
            return _json(status, error_body(kind, reason, status))
        lines = body.splitlines(keepends=True)
        actions = [lines[i:i + 2] for i in range(0, len(lines), 2)]  # newsmon sends index and update: two lines each
        kept, refused = [], {}
        for position, (action, _) in enumerate(actions):
            (kind, meta), = json.loads(action).items()
            with self._lock:
                queued = self.item_statuses.get(meta["_id"])
                status = queued.pop(0) if queued else None
            if status is None:
                kept.append(position)
            else:
                refused[position] = {kind: {"_index": meta["_index"], "_id": meta["_id"], "status": status, "error": {
                    "type": "es_rejected_execution_exception", "reason": "rejected execution of primary operation"}}}
        if not kept:
            return _json(200, {"took": 0, "errors": True, "items": [refused[p] for p in range(len(actions))]})
        status, content_type, content = self._forward(method, path, headers,
                                                      b"".join(b"".join(actions[p]) for p in kept))
        if status != 200 or not refused:
            return status, content_type, content
        answer = json.loads(content)
        items = iter(answer["items"])
        answer["items"] = [refused[p] if p in refused else next(items) for p in range(len(actions))]
        answer["errors"] = True
        return _json(200, answer)


def _json(status: int, body: dict) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(body).encode()
