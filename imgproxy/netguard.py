"""Where the remote source may connect: host allow-list and public-address checks.

The host check runs on the host httpx parsed (so it is the host that will be connected to); the
address check runs inside the connection pool's network backend, on the very address the socket
then connects to. That pins every connection — redirect hops included — to an address that was
checked, so DNS answers that change between check and connect (rebinding) cannot slip through.

What a client learns: an IP literal that is not allowed is refused as such (403, the client wrote
the address). A name that resolves only to such addresses fails like one that does not resolve or
does not answer (a connect error, 502): a status or message of its own would let anyone probe
which names point inside the network. The difference goes to the log.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import typing
from collections.abc import Awaitable, Callable, Iterable
from functools import lru_cache

import httpcore
import httpx
import idna

from .errors import Forbidden

log = logging.getLogger("imgproxy.netguard")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]


class AddressNotAllowed(Forbidden):
    """The host is an IP literal the remote source must not connect to."""


def _parse_ipv4_part(part: str) -> int | None:
    """One inet_aton part: 0x-prefixed hex, 0-prefixed octal or decimal."""
    if part[:2] in ("0x", "0X"):
        digits, base = part[2:] or "0", 16
    elif len(part) > 1 and part[0] == "0":
        digits, base = part[1:], 8
    else:
        digits, base = part, 10
    if not digits.isascii() or not digits.isalnum():
        return None
    try:
        return int(digits, base)
    except ValueError:
        return None


def _parse_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """Every spelling inet_aton (and browsers' URL parser) accepts: `127.1`, `0x7f.1`, `2130706433`."""
    parts = host.split(".")
    if parts[-1] == "" and len(parts) > 1:  # one trailing dot is allowed
        parts.pop()
    if not 1 <= len(parts) <= 4 or "" in parts:
        return None
    parsed = [_parse_ipv4_part(p) for p in parts]
    numbers = [n for n in parsed if n is not None]
    if len(numbers) != len(parsed):
        return None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for i, n in enumerate(head):
        value += n << (8 * (3 - i))
    return ipaddress.IPv4Address(value)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address `host` spells, or None when it is a name. Accepts brackets and zones (`%25eth0`)."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host.replace("%25", "%", 1))
        except ValueError:
            return None
    return _parse_ipv4(host)


def _networks(*cidrs: str) -> tuple:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# Not reachable on the public internet, or not meant to be connected to (IANA special-purpose
# registries). Listed here rather than taken from ipaddress.is_global, whose tables change
# between Python releases.
_NON_PUBLIC_V4 = _networks(
    "0.0.0.0/8",  # "this network", includes the unspecified 0.0.0.0
    "10.0.0.0/8",
    "100.64.0.0/10",  # carrier-grade NAT
    "127.0.0.0/8",
    "169.254.0.0/16",  # link-local, cloud metadata (169.254.169.254)
    "172.16.0.0/12",
    "192.0.0.0/24",  # IETF protocol assignments
    "192.0.2.0/24",  # documentation
    "192.88.99.0/24",  # 6to4 relay anycast
    "192.168.0.0/16",
    "198.18.0.0/15",  # benchmarking
    "198.51.100.0/24",  # documentation
    "203.0.113.0/24",  # documentation
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, includes the broadcast 255.255.255.255
)
# IPv6: only global unicast (2000::/3) is routed publicly — that alone rules out ::1, ::,
# unique-local fc00::/7, link-local fe80::/10, multicast ff00::/8, discard 100::/64, local-use
# NAT64 64:ff9b:1::/48 and SIIT ::ffff:0:0:0/96. Forms that embed IPv4 are judged by that IPv4.
_GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")
_NON_PUBLIC_V6 = _networks(
    "2001::/23",  # IETF protocol assignments (Teredo, inside it, is judged by its IPv4s first)
    "2001:db8::/32",  # documentation
    "3fff::/20",  # documentation
)
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """IPv4 addresses an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo), if any."""
    if ip.ipv4_mapped:
        return (ip.ipv4_mapped,)
    if ip in _IPV4_COMPATIBLE or ip in _NAT64:
        return (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF),)
    if ip.sixtofour:
        return (ip.sixtofour,)
    if ip.teredo:
        return ip.teredo  # (server, client), the client already de-obfuscated
    return ()


def is_public_address(ip: IPAddress) -> bool:
    """True only for unicast addresses routed on the public internet."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return False  # a zone only makes sense for link-local and site-local addresses
        inner = embedded_ipv4(ip)
        if inner:
            return all(is_public_address(v4) for v4 in inner)
        return ip in _GLOBAL_UNICAST_V6 and not any(ip in net for net in _NON_PUBLIC_V6)
    return not any(ip in net for net in _NON_PUBLIC_V4)


def is_host_shaped(host: str) -> bool:
    """An IP literal, or a name DNS can carry: labels of 1 to 63 characters, 253 in all."""
    if parse_ip_literal(host) is not None:
        return True
    name = host.removesuffix(".")
    return len(name) <= 253 and all(0 < len(label) <= 63 for label in name.split("."))


def _a_label(label: str) -> str:
    return label if label.isascii() else idna.encode(label, uts46=True).decode("ascii")


def normalize_host(host: str) -> str:
    """Lower-case A-label form without brackets or trailing dot; IP literals in canonical form."""
    host = host.strip().lower().removesuffix(".")
    ip = parse_ip_literal(host)
    if ip is not None:
        return str(ip)
    try:
        return ".".join(_a_label(label) for label in host.split("."))
    except idna.IDNAError:
        return host  # not a valid name: it matches no pattern either


@lru_cache(maxsize=256)
def compile_host_pattern(pattern: str) -> re.Pattern[str]:
    """`*.example.com`: any subdomain depth (not the apex); `*` alone: any host; `*` inside a
    label matches within that label only (`img-*.example.com`). Everything else is literal — `.`
    included — so `allowed.com` never matches `allowedXcom`. Raises ValueError for a bad pattern.
    """
    literal = parse_ip_literal(pattern)
    if literal is not None:
        return re.compile(re.escape(str(literal)))
    labels = pattern.strip().lower().removesuffix(".").split(".")
    if not all(labels) or not all(re.fullmatch(r"[^\s/@:?#\[\]\\]+", label) for label in labels):
        raise ValueError(f"bad host pattern {pattern!r}")
    parts = []
    for i, label in enumerate(labels):
        if label == "*" and i == 0:
            parts.append(r"[^.]+(?:\.[^.]+)*")
        elif "*" in label:
            parts.append("[^.]*".join(re.escape(piece) for piece in label.split("*")))
        else:
            try:
                parts.append(re.escape(_a_label(label)))
            except idna.IDNAError:
                raise ValueError(f"bad host pattern {pattern!r}") from None
    return re.compile(r"\.".join(parts))


def host_allowed(host: str, patterns: Iterable[str]) -> bool:
    name = normalize_host(host)
    return any(compile_host_pattern(p).fullmatch(name) for p in patterns)


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0]) for info in infos]


class AddressPolicy:
    """Which resolved addresses may be connected to."""

    def __init__(self, allow_private: bool = False, trusted_networks: Iterable[str] = ()):
        self.allow_private = allow_private
        self.trusted = tuple(ipaddress.ip_network(n) for n in trusted_networks)

    def allows(self, ip: IPAddress) -> bool:
        return self.allow_private or is_public_address(ip) or any(ip in net for net in self.trusted)


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves hosts itself, refuses addresses the policy forbids and connects to the checked one.

    TLS still uses the hostname for SNI and certificate checks: httpcore passes its origin's host
    to start_tls, not the address.
    """

    def __init__(self, policy: AddressPolicy, resolver: Resolver | None = None):
        self.policy = policy
        self.resolver = resolver or system_resolver
        self.inner = httpcore.AnyIOBackend()

    async def resolve(self, host: str, port: int, timeout: float | None) -> list[IPAddress]:
        literal = parse_ip_literal(host)
        if literal is not None:
            return [literal]
        try:
            async with asyncio.timeout(timeout):
                return await self.resolver(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        except (OSError, UnicodeError) as exc:  # UnicodeError: not a DNS name (empty or 64+ character label)
            raise httpcore.ConnectError(f"cannot resolve {host}") from exc

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        resolved = await self.resolve(host, port, timeout)
        addresses = [ip for ip in resolved if self.policy.allows(ip)]
        if not addresses:
            if parse_ip_literal(host) is not None:
                raise AddressNotAllowed(f"address not allowed: {host} is a private or reserved address")
            shown = ", ".join(str(ip) for ip in resolved)
            log.warning("refused upstream %s: it resolves only to addresses not allowed (%s)", host, shown)
            raise httpcore.ConnectError(f"{host} resolves only to addresses not allowed")
        *others, last = addresses
        for ip in others:
            try:
                return await self.inner.connect_tcp(str(ip), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout):
                continue  # like socket.create_connection: try the next address
        return await self.inner.connect_tcp(str(last), port, timeout, local_address, socket_options)

    async def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options=None):
        raise AddressNotAllowed("address not allowed: unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a connection pool whose every connection goes through GuardedBackend.

    httpx takes no network backend, so the pool is built here; the parent's request handling and
    error mapping only use `self._pool`.
    """

    def __init__(self, backend: GuardedBackend, limits: httpx.Limits = httpx.Limits()):
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )
