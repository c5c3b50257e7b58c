"""One guarded HTTP fetcher for feeds and article pages.

Feed and page URLs come from third parties, so every request is treated as
hostile by default:
- only http and https;
- the host is resolved here and every address is checked against the policy
  (no loopback, private, link-local, metadata or other non-global address unless
  the operator allow-lists it); the connection goes to the address that was
  checked, so DNS rebinding cannot swap it afterwards;
- redirects are followed one hop at a time, each hop checked again, with a
  limit and loop detection;
- connect/read timeouts, a total deadline, and a size cap applied while
  streaming the *decompressed* body, so a gzip bomb stops early.
"""

from __future__ import annotations

import email.utils
import ipaddress
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timezone
from urllib.parse import urljoin, urlsplit

import httpcore
import httpx

from newsmon import __version__
from newsmon.settings import FetchSettings

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class FetchError(Exception):
    """A URL could not be fetched. ``transient`` errors may succeed if tried again later."""

    def __init__(self, url: str, reason: str, *, transient: bool = False, status: int | None = None,
                 retry_after: float | None = None):
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason
        self.transient = transient
        self.status = status
        self.retry_after = retry_after  # seconds the server asked us to wait (429/503 Retry-After)


class AddressRefused(FetchError):
    pass


@dataclass(frozen=True)
class AddressPolicy:
    """Which resolved addresses requests may connect to: global ones, plus the allow-list."""

    allow: tuple[Network, ...] = ()

    @classmethod
    def from_strings(cls, cidrs: Iterable[str]) -> AddressPolicy:
        return cls(tuple(ipaddress.ip_network(c, strict=False) for c in cidrs))

    def refusal(self, address: str) -> str | None:
        """Why ``address`` may not be contacted, or None if it may."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
        if any(ip in net for net in self.allow):
            return None
        if not ip.is_global:
            return f"address {ip} is not public (loopback, private, link-local or reserved) and is not allow-listed"
        return None


class _GuardedBackend(httpcore.SyncBackend):
    """Resolves the host itself and connects only to an address the policy accepts."""

    def __init__(self, policy: AddressPolicy):
        self.policy = policy

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        reasons = []
        for *_, sockaddr in infos:
            reason = self.policy.refusal(sockaddr[0])
            if reason is None:
                # Connect to the vetted address, not the name: no second DNS answer can redirect us.
                return super().connect_tcp(sockaddr[0], port, timeout, local_address, socket_options)
            reasons.append(reason)
        raise AddressRefused(f"{host}:{port}", "; ".join(sorted(set(reasons))))


def _guarded_transport(policy: AddressPolicy) -> httpx.HTTPTransport:
    transport = httpx.HTTPTransport(retries=0)
    # httpx has no public parameter for httpcore's network backend; the pool exposes it as this attribute
    # (pinned httpx<0.29; tests/test_http_safety.py fails if the hook stops working).
    transport._pool._network_backend = _GuardedBackend(policy)
    return transport


class HostLimits:
    """Politeness per host, shared by every request of a fetcher (feeds and article pages):
    at most ``per_host`` requests in flight and ``delay`` seconds between two starts."""

    def __init__(self, per_host: int, delay: float):
        self.per_host, self.delay = per_host, delay
        self._lock = threading.Lock()
        self._slots: dict[str, threading.BoundedSemaphore] = {}
        self._next_start: dict[str, float] = {}

    @contextmanager
    def slot(self, host: str) -> Iterator[None]:
        with self._lock:
            slots = self._slots.setdefault(host, threading.BoundedSemaphore(self.per_host))
        with slots:
            with self._lock:  # reserve a start time, then wait for it outside the lock
                now = time.monotonic()
                start = max(now, self._next_start.get(host, now))
                self._next_start[host] = start + self.delay
            if start > now:
                time.sleep(start - now)
            yield


@dataclass
class FetchResult:
    url: str  # as requested
    final_url: str  # after redirects
    status: int
    headers: httpx.Headers
    content: bytes
    redirects: list[str]
    charset: str | None  # as the Content-Type header declares it, if it does
    redirect_statuses: list[int] = field(default_factory=list)  # one per hop in ``redirects``

    @property
    def moved_permanently(self) -> bool:
        """Every hop was a permanent redirect (301/308): the URL to use from now on is ``final_url``."""
        return bool(self.redirect_statuses) and all(s in (301, 308) for s in self.redirect_statuses)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP-date; None if absent or unreadable."""
    value = (value or "").strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)  # HTTP-dates are GMT
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


HTML_TYPES = ("text/html", "application/xhtml+xml")


class Fetcher:
    def __init__(self, settings: FetchSettings):
        self.settings = settings
        self.policy = AddressPolicy.from_strings(settings.allow_private)
        self.limits = HostLimits(settings.per_host, settings.host_delay)
        self.client = httpx.Client(
            transport=_guarded_transport(self.policy),
            timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
            headers={"User-Agent": settings.user_agent or f"newsmon/{__version__} (news monitoring)"},
            follow_redirects=False,
        )

    def close(self) -> None:
        self.client.close()

    def get(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        accept_types: tuple[str, ...] | None = None,
        retries: int = 0,
    ) -> FetchResult:
        """GET ``url``; returns 2xx and 304 responses, raises FetchError for anything else.

        Transient failures (timeouts, connection errors, 408/429/5xx) are retried
        ``retries`` times with exponential backoff.
        """
        for attempt in range(retries + 1):
            try:
                return self._get_once(url, headers or {}, accept_types)
            except FetchError as exc:
                if not exc.transient or attempt == retries:
                    raise
                time.sleep(min(0.5 * 2**attempt, 8.0))
        raise AssertionError("unreachable")

    def _get_once(self, url: str, headers: dict[str, str], accept_types: tuple[str, ...] | None) -> FetchResult:
        s = self.settings
        deadline = time.monotonic() + s.total_timeout
        current, redirects, statuses = url, [], []
        while True:
            if time.monotonic() > deadline:
                raise FetchError(url, f"took longer than {s.total_timeout:g} s", transient=True)
            if urlsplit(current).scheme.lower() not in ("http", "https"):
                raise FetchError(url, f"refusing non-http(s) URL {current!r}")
            with self.limits.slot(urlsplit(current).hostname or ""):  # politeness: per hop, per host
                try:
                    response = self.client.send(self.client.build_request("GET", current, headers=headers), stream=True)
                except AddressRefused as exc:
                    raise AddressRefused(url, f"refused to connect to {exc.url}: {exc.reason}") from None
                except httpx.TimeoutException as exc:
                    raise FetchError(url, f"timed out ({type(exc).__name__})", transient=True) from None
                except (httpx.TransportError, httpx.InvalidURL) as exc:
                    raise FetchError(url, f"connection failed: {exc or type(exc).__name__}", transient=True) from None
                try:
                    if response.has_redirect_location:
                        target = urljoin(current, response.headers.get("location", ""))
                        redirects.append(target)
                        statuses.append(response.status_code)
                        if target == current or target in redirects[:-1] or target == url:
                            raise FetchError(url, f"redirect loop at {target}")
                        if len(redirects) > s.max_redirects:
                            raise FetchError(url, f"more than {s.max_redirects} redirects")
                        current = target
                        continue
                    if 300 <= response.status_code < 400 and response.status_code != 304:
                        raise FetchError(url, f"HTTP {response.status_code} without a usable Location header")
                    if response.status_code >= 400:
                        transient = response.status_code in (408, 429) or response.status_code >= 500
                        raise FetchError(
                            url, f"HTTP {response.status_code}", transient=transient, status=response.status_code,
                            retry_after=retry_after_seconds(response.headers.get("retry-after")),
                        )
                    content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
                    if accept_types and response.status_code != 304 and content_type not in accept_types:
                        raise FetchError(url, f"content type {content_type or 'missing'!r} is not one of {', '.join(accept_types)}")
                    declared = response.headers.get("content-length", "")
                    if declared.isdigit() and int(declared) > s.max_bytes and "content-encoding" not in response.headers:
                        raise FetchError(url, f"response of {declared} bytes exceeds the {s.max_bytes}-byte limit")
                    content = self._read_capped(url, response, deadline)
                    return FetchResult(url, current, response.status_code, response.headers, content, redirects,
                                       response.charset_encoding, statuses)
                finally:
                    response.close()

    def _read_capped(self, url: str, response: httpx.Response, deadline: float) -> bytes:
        limit = self.settings.max_bytes
        chunks, size = [], 0
        try:
            for chunk in response.iter_bytes():  # decompressed bytes: the cap bounds memory, not wire size
                size += len(chunk)
                if size > limit:
                    raise FetchError(url, f"response exceeds the {limit}-byte limit")
                if time.monotonic() > deadline:
                    raise FetchError(url, f"took longer than {self.settings.total_timeout:g} s", transient=True)
                chunks.append(chunk)
        except httpx.TimeoutException:
            raise FetchError(url, "timed out while reading the body", transient=True) from None
        except httpx.DecodingError as exc:
            raise FetchError(url, f"cannot decode the body: {exc}") from None
        except httpx.TransportError as exc:
            raise FetchError(url, f"connection broke while reading the body: {exc}", transient=True) from None
        return b"".join(chunks)
