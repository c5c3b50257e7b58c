"""One guarded HTTP fetcher for feeds and article pages.

Feed and page URLs come from third parties, so every request is treated as
hostile by default:
- only http and https;
- the host is resolved and every address checked against the address policy
  (``newsmon.net``: no loopback, private, link-local, metadata or other non-global
  address unless the operator allow-lists it); the connection goes to the address
  that was checked, so DNS rebinding cannot swap it afterwards;
- redirects are followed one hop at a time, each hop checked again, with a
  limit and loop detection;
- connect/read timeouts, a total deadline, and a size cap applied while
  streaming the *decompressed* body, so a gzip bomb stops early.

Two fetchers apply these rules: ``Fetcher`` (blocking, for article pages on the
extract stage's threads) and ``AsyncFetcher`` (asyncio, HTTP/2 where offered, for
polling thousands of feeds). They share the per-response decisions (the pure
functions below) and one ``HostLimits``, so feeds and pages of a host draw on one
politeness budget.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import httpx

from newsmon import __version__
from newsmon.errors import AddressRefused, FetchError
from newsmon.net import AddressPolicy, GuardedAsyncBackend, guarded_transport
from newsmon.retry import backoff, retriable_status, retry_after_seconds
from newsmon.settings import FetchSettings


class _PoolPerOrigin(httpx.AsyncBaseTransport):
    """One small connection pool per origin. httpcore's pool looks at every connection it holds for
    each request, so a single pool over thousands of feed hosts costs quadratic CPU; per origin it
    holds at most ``per_host`` connections. HTTP/2 is negotiated by ALPN on https only (plain http
    stays HTTP/1.1); connections are kept alive, so a host's feeds share them within a cycle."""

    def __init__(self, policy: AddressPolicy, per_host: int, verify: ssl.SSLContext | bool = True):
        self.policy, self.per_host = policy, per_host
        # One TLS context for all pools: loading the CA bundle costs ~50 ms each time.
        self.ssl_context = verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify=verify)
        self._pools: dict[tuple[bytes, bytes, int | None], httpx.AsyncHTTPTransport] = {}

    def _pool(self, url: httpx.URL) -> httpx.AsyncHTTPTransport:
        origin = (url.raw_scheme, url.raw_host, url.port)
        if (pool := self._pools.get(origin)) is None:
            pool = httpx.AsyncHTTPTransport(
                retries=0, http2=True, verify=self.ssl_context,
                limits=httpx.Limits(max_connections=self.per_host, max_keepalive_connections=self.per_host),
            )
            pool._pool._network_backend = GuardedAsyncBackend(self.policy)  # the hook of guarded_transport
            self._pools[origin] = pool
        return pool

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._pool(request.url).handle_async_request(request)

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()
        self._pools.clear()


class HostLimits:
    """Politeness per host, shared by every request of the process (feeds and article pages, the
    asyncio poller and the extract stage's threads): at most ``per_host`` requests in flight and
    ``delay`` seconds between two starts.

    A start is claimed under one threading lock at the moment it happens, so both worlds see
    one budget; threads wait on the condition, coroutines with ``asyncio.sleep`` (never blocking
    the event loop)."""

    recheck = 0.02  # seconds a coroutine waits before looking again at a host that is full

    def __init__(self, per_host: int, delay: float):
        self.per_host, self.delay = per_host, delay
        self._changed = threading.Condition()
        self._in_flight: dict[str, int] = {}
        self._next_start: dict[str, float] = {}

    def claim(self, host: str) -> float:
        """0 after claiming a start on ``host`` now (``release`` it afterwards); else the seconds
        to wait before asking again."""
        with self._changed:
            if (wait := self._wait(host)) > 0:
                return wait
            self._in_flight[host] = self._in_flight.get(host, 0) + 1
            self._next_start[host] = time.monotonic() + self.delay
            return 0.0

    def release(self, host: str) -> None:
        with self._changed:
            self._in_flight[host] -= 1
            if not self._in_flight[host]:
                del self._in_flight[host]
            self._changed.notify_all()

    @contextmanager
    def slot(self, host: str) -> Iterator[None]:
        with self._changed:  # re-entrant: claim() takes the same lock
            while (wait := self.claim(host)) > 0:
                self._changed.wait(wait)
        try:
            yield
        finally:
            self.release(host)

    @asynccontextmanager
    async def async_slot(self, host: str, in_flight: asyncio.Semaphore) -> AsyncIterator[None]:
        """A start on ``host`` and one of the ``in_flight`` (global) slots. The global slot is taken
        only once the host may start, so coroutines waiting out a host's delay do not hold it."""
        while True:
            with self._changed:
                wait = self._wait(host)
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            await in_flight.acquire()
            if self.claim(host) == 0:
                break
            in_flight.release()  # another request to the host started meanwhile: wait again
        try:
            yield
        finally:
            self.release(host)
            in_flight.release()

    def _wait(self, host: str) -> float:
        """Seconds before ``host`` may start another request (0 or less: now); call holding the lock."""
        if self._in_flight.get(host, 0) >= self.per_host:
            return self.recheck
        return self._next_start.get(host, 0.0) - time.monotonic()


@dataclass
class FetchResult:
    final_url: str  # after redirects
    status: int
    headers: httpx.Headers
    content: bytes
    redirects: list[str]
    charset: str | None  # as the Content-Type header declares it, if it does
    redirect_statuses: list[int] = field(default_factory=list)  # one per hop in ``redirects``
    http_version: str = ""  # of the last response: "HTTP/1.1", "HTTP/2"

    @property
    def moved_permanently(self) -> bool:
        """Every hop was a permanent redirect (301/308): the URL to use from now on is ``final_url``."""
        return bool(self.redirect_statuses) and all(s in (301, 308) for s in self.redirect_statuses)


HTML_TYPES = ("text/html", "application/xhtml+xml")


@dataclass
class _Hops:
    """One request on its way through redirects; both fetchers step it with the functions below."""

    url: str  # as requested
    current: str
    settings: FetchSettings
    deadline: float | None = None  # set when the first hop starts: waiting for politeness does not count
    redirects: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def too_late(self) -> FetchError:
        return FetchError(self.url, f"took longer than {self.settings.total_timeout:g} s", transient=True)


def _hop_host(hops: _Hops) -> str:
    """Before each hop: the deadline and the scheme; the host whose politeness budget the hop uses."""
    if hops.deadline is not None and time.monotonic() > hops.deadline:
        raise hops.too_late()
    parts = urlsplit(hops.current)
    if parts.scheme.lower() not in ("http", "https"):
        raise FetchError(hops.url, f"refusing non-http(s) URL {hops.current!r}")
    return parts.hostname or ""


def _start_hop(hops: _Hops) -> float:
    """The hop starts now: seconds left before the total deadline."""
    if hops.deadline is None:
        hops.deadline = time.monotonic() + hops.settings.total_timeout
    return hops.deadline - time.monotonic()


def _send_error(url: str, exc: Exception) -> FetchError:
    if isinstance(exc, AddressRefused):
        return AddressRefused(url, f"refused to connect to {exc.url}: {exc.reason}")
    if isinstance(exc, httpx.TimeoutException):
        return FetchError(url, f"timed out ({type(exc).__name__})", transient=True)
    return FetchError(url, f"connection failed: {exc or type(exc).__name__}", transient=True)


SEND_ERRORS = (AddressRefused, httpx.TransportError, httpx.InvalidURL)


def _followed_redirect(hops: _Hops, response: httpx.Response) -> bool:
    """True if ``response`` is a redirect, now followed (``hops.current`` is its target)."""
    if not response.has_redirect_location:
        return False
    target = urljoin(hops.current, response.headers.get("location", ""))
    hops.redirects.append(target)
    hops.statuses.append(response.status_code)
    if target == hops.current or target in hops.redirects[:-1] or target == hops.url:
        raise FetchError(hops.url, f"redirect loop at {target}")
    if len(hops.redirects) > hops.settings.max_redirects:
        raise FetchError(hops.url, f"more than {hops.settings.max_redirects} redirects")
    hops.current = target
    return True


def _check_response(hops: _Hops, response: httpx.Response, accept_types: tuple[str, ...] | None) -> None:
    """A final (non-redirect) response whose body may be read; FetchError with the reason otherwise."""
    url, status = hops.url, response.status_code
    if 300 <= status < 400 and status != 304:
        raise FetchError(url, f"HTTP {status} without a usable Location header")
    if status >= 400:
        raise FetchError(url, f"HTTP {status}", transient=retriable_status(status), status=status,
                         retry_after=retry_after_seconds(response.headers.get("retry-after")))
    content_type = response.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if accept_types and status != 304 and content_type not in accept_types:
        raise FetchError(url, f"content type {content_type or 'missing'!r} is not one of {', '.join(accept_types)}")
    declared, limit = response.headers.get("content-length", ""), hops.settings.max_bytes
    if declared.isdigit() and int(declared) > limit and "content-encoding" not in response.headers:
        raise FetchError(url, f"response of {declared} bytes exceeds the {limit}-byte limit")


def _take_chunk(hops: _Hops, chunks: list[bytes], size: int, chunk: bytes) -> int:
    """Keep one decompressed chunk, within the size cap and the deadline; the new size."""
    size += len(chunk)
    if size > hops.settings.max_bytes:
        raise FetchError(hops.url, f"response exceeds the {hops.settings.max_bytes}-byte limit")
    if time.monotonic() > hops.deadline:
        raise hops.too_late()
    chunks.append(chunk)
    return size


def _body_error(url: str, exc: Exception) -> FetchError:
    if isinstance(exc, httpx.TimeoutException):
        return FetchError(url, "timed out while reading the body", transient=True)
    if isinstance(exc, httpx.DecodingError):
        return FetchError(url, f"cannot decode the body: {exc}")
    return FetchError(url, f"connection broke while reading the body: {exc}", transient=True)


BODY_ERRORS = (httpx.TimeoutException, httpx.DecodingError, httpx.TransportError)


def _result(hops: _Hops, response: httpx.Response, content: bytes) -> FetchResult:
    return FetchResult(hops.current, response.status_code, response.headers, content, hops.redirects,
                       response.charset_encoding, hops.statuses, response.http_version)


_ACCEPT_ENCODING = "gzip, deflate, br"  # what httpx's responses decode (brotli is a dependency)


def _user_agent(settings: FetchSettings) -> str:
    return settings.user_agent or f"newsmon/{__version__} (news monitoring)"


class Fetcher:
    """The blocking fetcher: article pages, robots.txt, ``newsmon fetch``."""

    def __init__(self, settings: FetchSettings):
        self.settings = settings
        self.policy = AddressPolicy.from_strings(settings.allow_private)
        self.limits = HostLimits(settings.per_host, settings.host_delay)
        self.client = httpx.Client(
            transport=guarded_transport(self.policy),
            timeout=httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout),
            headers={"User-Agent": _user_agent(settings)},
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
                time.sleep(backoff(attempt, 0.5, 8.0))
        raise AssertionError("unreachable")

    def _get_once(self, url: str, headers: dict[str, str], accept_types: tuple[str, ...] | None) -> FetchResult:
        hops = _Hops(url, url, self.settings)
        while True:
            with self.limits.slot(_hop_host(hops)):  # politeness: per hop, per host
                _start_hop(hops)
                try:
                    response = self.client.send(self.client.build_request("GET", hops.current, headers=headers),
                                                stream=True)
                except SEND_ERRORS as exc:
                    raise _send_error(url, exc) from None
                try:
                    if _followed_redirect(hops, response):
                        continue
                    _check_response(hops, response, accept_types)
                    chunks, size = [], 0
                    try:
                        for chunk in response.iter_bytes():  # decompressed: the cap bounds memory, not wire size
                            size = _take_chunk(hops, chunks, size, chunk)
                    except BODY_ERRORS as exc:
                        raise _body_error(url, exc) from None
                    return _result(hops, response, b"".join(chunks))
                finally:
                    response.close()


class AsyncFetcher:
    """The asyncio fetcher for feed polling: the same rules as ``Fetcher``, HTTP/2 where the server
    offers it, connections pooled per origin, at most ``concurrency`` requests in flight overall, and
    the per-host budget of ``limits`` (pass the blocking fetcher's to share it with article pages).

    Create and use it inside one running event loop; ``aclose`` it there.
    """

    def __init__(self, settings: FetchSettings, *, concurrency: int, limits: HostLimits | None = None,
                 verify: ssl.SSLContext | bool = True):
        self.settings = settings
        self.policy = AddressPolicy.from_strings(settings.allow_private)
        self.limits = limits or HostLimits(settings.per_host, settings.host_delay)
        self._in_flight = asyncio.Semaphore(concurrency)
        # The transport without httpx's client layer: redirects, cookies and base URLs are nothing
        # the poller wants, and at 10,000 feeds a cycle the layer costs a sixth of the poller's CPU.
        self.transport = _PoolPerOrigin(self.policy, self.limits.per_host, verify)  # verify: a test CA
        self._headers = {"User-Agent": _user_agent(settings), "Accept": "*/*", "Accept-Encoding": _ACCEPT_ENCODING}
        self._timeout = httpx.Timeout(settings.read_timeout, connect=settings.connect_timeout).as_dict()

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def get(self, url: str, *, headers: dict[str, str] | None = None,
                  accept_types: tuple[str, ...] | None = None) -> FetchResult:
        """GET ``url``; returns 2xx and 304 responses, raises FetchError for anything else (no retries:
        a feed that fails is polled again on its schedule)."""
        hops = _Hops(url, url, self.settings)
        while True:
            async with self.limits.async_slot(_hop_host(hops), self._in_flight):
                left = _start_hop(hops)
                try:
                    # The deadline is enforced around the whole hop, headers included: a server
                    # trickling a byte per second is cut off at total_timeout, not read_timeout.
                    async with asyncio.timeout(left):
                        if (result := await self._hop(hops, headers or {}, accept_types)) is not None:
                            return result
                except TimeoutError:
                    raise hops.too_late() from None

    async def _hop(self, hops: _Hops, headers: dict[str, str], accept_types) -> FetchResult | None:
        """One request; None when it redirected (``hops.current`` is then the next URL)."""
        try:
            request = httpx.Request("GET", hops.current, headers={**self._headers, **headers},
                                    extensions={"timeout": self._timeout})
            response = await self.transport.handle_async_request(request)
        except SEND_ERRORS as exc:
            raise _send_error(hops.url, exc) from None
        response.request = request
        try:
            if _followed_redirect(hops, response):
                return None
            _check_response(hops, response, accept_types)
            chunks, size = [], 0
            try:
                async for chunk in response.aiter_bytes():
                    size = _take_chunk(hops, chunks, size, chunk)
            except BODY_ERRORS as exc:
                raise _body_error(hops.url, exc) from None
            return _result(hops, response, b"".join(chunks))
        finally:
            await response.aclose()
