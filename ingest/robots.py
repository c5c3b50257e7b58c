"""robots.txt for article pages (RFC 9309), fetched through the guarded fetcher and cached per site.

Feeds are published to be polled, so only article pages are checked. The rules are
those of the stdlib's ``urllib.robotparser`` for our user agent's product token. As the
RFC says: a robots.txt that is missing (4xx) allows everything; one that cannot be
fetched (5xx, network failure) disallows for now (tried again after 5 minutes): the
article goes to the dead letters with that reason, to be replayed.
"""

from __future__ import annotations

import threading
import time
from urllib.parse import urlsplit
from urllib.robotparser import RobotFileParser

from ingest.http import Fetcher
from newsmon.errors import FetchError

_KEEP_S = 3600  # a site's rules are fetched again after an hour
_KEEP_FAILED_S = 300  # an unreachable robots.txt is tried again sooner
_MAX_BYTES = 500_000  # RFC 9309 asks crawlers to read at least 500 KiB


class RobotsRules:
    def __init__(self, fetcher: Fetcher):
        self.fetcher = fetcher
        agent = fetcher.client.headers.get("User-Agent", "newsmon")
        self.agent = agent.split("/", 1)[0].split()[0] or "newsmon"  # the product token, e.g. "newsmon"
        self._lock = threading.Lock()
        self._sites: dict[str, tuple[float, RobotFileParser | str]] = {}  # site -> (expires, rules or failure)

    def check(self, url: str) -> None:
        """Return if ``url`` may be fetched; raise FetchError saying why not."""
        parts = urlsplit(url)
        site = f"{parts.scheme}://{parts.netloc}"
        with self._lock:
            expires, rules = self._sites.get(site, (0.0, ""))
        if time.monotonic() >= expires:
            rules = self._fetch(site)
            with self._lock:
                self._sites[site] = (time.monotonic() + (_KEEP_FAILED_S if isinstance(rules, str) else _KEEP_S), rules)
        if isinstance(rules, str):
            raise FetchError(url, f"robots.txt of {site} could not be read ({rules}): not fetched for now",
                             transient=True)
        if not rules.can_fetch(self.agent, url):
            raise FetchError(url, f"disallowed by {site}/robots.txt for user agent {self.agent!r}")

    def _fetch(self, site: str) -> RobotFileParser | str:
        rules = RobotFileParser()
        try:
            response = self.fetcher.get(f"{site}/robots.txt")
        except FetchError as exc:
            if exc.status is not None and 400 <= exc.status < 500:
                rules.parse([])  # no robots.txt: everything is allowed
                return rules
            return exc.reason
        rules.parse(response.content[:_MAX_BYTES].decode("utf-8", "replace").splitlines())
        return rules
