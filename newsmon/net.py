"""The address policy of every outgoing request to a third party's URL, and httpx transports that enforce it.

Feed, page and alert-channel URLs come from outside, so a request may only connect to a
global (public) address, unless the operator allow-lists a network (``fetch.allow_private``).
The host is resolved here and every address checked; the connection then goes to the address
that was checked, so a second DNS answer (rebinding) cannot swap it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import httpcore
import httpx
from httpcore._backends.anyio import AnyIOBackend

from newsmon.errors import AddressRefused

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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


def _vetted_address(host: str, infos: list, policy: AddressPolicy, port: int) -> str:
    """The first resolved address the policy accepts; AddressRefused naming every reason otherwise."""
    reasons = []
    for *_, sockaddr in infos:
        reason = policy.refusal(sockaddr[0])
        if reason is None:
            return sockaddr[0]
        reasons.append(reason)
    raise AddressRefused(f"{host}:{port}", "; ".join(sorted(set(reasons))))


class GuardedBackend(httpcore.SyncBackend):
    """Resolves the host itself and connects only to an address the policy accepts."""

    def __init__(self, policy: AddressPolicy):
        self.policy = policy

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        # Connect to the vetted address, not the name: no second DNS answer can redirect us.
        address = _vetted_address(host, infos, self.policy, port)
        return super().connect_tcp(address, port, timeout, local_address, socket_options)


class GuardedAsyncBackend(AnyIOBackend):
    """The same guard for the asyncio fetcher: the event loop's resolver, every address checked,
    the connection made to the vetted address (TLS still verifies and sends SNI for the name)."""

    def __init__(self, policy: AddressPolicy):
        self.policy = policy

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        try:
            async with asyncio.timeout(timeout):
                infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} took longer than {timeout} s") from None
        address = _vetted_address(host, infos, self.policy, port)
        return await super().connect_tcp(address, port, timeout, local_address, socket_options)


def guarded_transport(policy: AddressPolicy) -> httpx.HTTPTransport:
    transport = httpx.HTTPTransport(retries=0)
    # httpx has no public parameter for httpcore's network backend; the pool exposes it as this attribute
    # (pinned httpx<0.29; tests/test_http_safety.py fails if the hook stops working). The asyncio
    # pools of ``ingest.http`` set the same attribute to ``GuardedAsyncBackend``.
    transport._pool._network_backend = GuardedBackend(policy)
    return transport
