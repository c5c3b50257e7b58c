"""A webhook receiver on 127.0.0.1 for the alert tests: verifies signatures like a subscriber would."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sinks.channels import verify_webhook


class WebhookReceiver:
    """Records the alerts it accepts. ``statuses`` are answered first (e.g. [500, 500]), with
    ``retry_after`` if given, then 200; ``delay`` holds every answer that long. A bad signature
    or a replayed request gets 401. ``max_in_flight``: the most requests it was handling at once."""

    def __init__(self, secrets: list[str], statuses: list[int] | None = None, delay: float = 0.0,
                 retry_after: str | None = None):
        self.secrets, self.statuses, self.delay, self.retry_after = secrets, list(statuses or []), delay, retry_after
        self.accepted: list[dict] = []  # alerts, in arrival order
        self.arrived: list[float] = []  # time.time() of each accepted alert
        self.answers: list[int] = []  # every status answered
        self.seen: set[tuple[str, str]] = set()
        self.in_flight = self.max_in_flight = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    receiver.in_flight += 1
                    receiver.max_in_flight = max(receiver.max_in_flight, receiver.in_flight)
                if receiver.delay:
                    time.sleep(receiver.delay)
                stamp, signature = self.headers.get("X-Newsmon-Timestamp", ""), self.headers.get("X-Newsmon-Signature", "")
                with lock:
                    if not verify_webhook(receiver.secrets, stamp, body, signature) or (stamp, signature) in receiver.seen:
                        status = 401
                    elif receiver.statuses:
                        status = receiver.statuses.pop(0)
                    else:
                        status = 200
                        receiver.seen.add((stamp, signature))
                        receiver.accepted.append(json.loads(body))
                        receiver.arrived.append(time.time())
                    receiver.answers.append(status)
                    receiver.in_flight -= 1
                self.send_response(status)
                if status != 200 and receiver.retry_after:
                    self.send_header("Retry-After", receiver.retry_after)
                self.send_header("Content-Length", "0")
                self.end_headers()

        lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
