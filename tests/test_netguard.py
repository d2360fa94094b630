"""Address classifier, host allow-list and the pinned, address-checked connection backend."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import httpcore
import httpx
import pytest

from imgproxy.netguard import (
    AddressNotAllowed,
    AddressPolicy,
    GuardedBackend,
    compile_host_pattern,
    host_allowed,
    is_public_address,
    parse_ip_literal,
)

pytestmark = pytest.mark.timeout(10)
ip = ipaddress.ip_address


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.mark.parametrize(
    "host, expected",
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),  # one decimal number
        ("0x7f000001", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),  # one octal number
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7F.0.0.0x1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("10.0.65535", "10.0.255.255"),
        ("127.0.0.1.", "127.0.0.1"),  # one trailing dot
        ("0", "0.0.0.0"),
        ("0x", "0.0.0.0"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("[::1]", "::1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("[::ffff:7f00:1]", "::ffff:7f00:1"),
        ("fe80::1%25eth0", "fe80::1%eth0"),
        ("fe80::1%eth0", "fe80::1%eth0"),
    ],
)
def test_ip_literal_spellings(host, expected):
    assert parse_ip_literal(host) == ip(expected)


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "localhost",
        "1.2.3.4.5",
        "256.0.0.1",
        "1.2.3.256",
        "1.2.65536",
        "4294967296",
        "08.0.0.1",  # 8 is not an octal digit
        "0xg.0.0.1",
        "1..2",
        "",
        "\u0661\u0662\u0667.0.0.1",  # Arabic-Indic digits are not an address
        "[not-an-ip]",
        "0x7f.1.evil.com",
    ],
)
def test_names_are_not_ip_literals(host):
    assert parse_ip_literal(host) is None


TEREDO_DOC_CLIENT = "2001:0:4136:e378:8000:63bf:3fff:fdd2"  # RFC 4380 example: client 192.0.2.45
TEREDO_LOOPBACK_CLIENT = "2001:0:4136:e378:8000:63bf:80ff:fffe"  # client 127.0.0.1, XOR-obfuscated
TEREDO_PUBLIC = "2001:0:4136:e378:8000:63bf:f7f7:f7f7"  # server 65.54.227.120, client 8.8.8.8


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.255.254",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.255",
        "0.0.0.0",
        "0.1.2.3",
        "255.255.255.255",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "192.0.0.8",
        "192.0.2.1",
        "198.51.100.7",
        "203.0.113.9",
        "198.18.0.1",
        "198.19.255.255",
        "192.88.99.1",
        "::",
        "::1",
        "fe80::1",
        "febf::1",
        "fc00::1",
        "fd12:3456::1",
        "ff02::1",
        "2001:db8::1",
        "100::1",
        "fec0::1",
        "3fff::1",
        "5f00::1",
        "4000::1",
        "2001:2::1",
        "2001:10::1",
        "::ffff:0:7f00:1",
        "::ffff:0:808:808",  # SIIT IPv4-translated
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::ffff:0.0.0.0",
        "::127.0.0.1",
        "::10.0.0.1",
        "::0.0.0.2",  # IPv4-compatible
        "64:ff9b::127.0.0.1",
        "64:ff9b::10.0.0.1",
        "64:ff9b::169.254.169.254",  # NAT64
        "64:ff9b:1::808:808",  # local-use NAT64, refused whatever it embeds
        "2002:7f00:1::1",
        "2002:a9fe:a9fe::1",
        "2002:c0a8:101::1",  # 6to4 of private IPv4
        TEREDO_DOC_CLIENT,
        TEREDO_LOOPBACK_CLIENT,
        "fe80::1%eth0",
        "2606:4700:4700::1111%eth0",  # zones only make sense for local scopes
    ],
)
def test_non_public_addresses_are_refused(address):
    assert not is_public_address(ip(address))


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "100.63.255.255",
        "100.128.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "192.169.0.1",
        "169.253.255.255",
        "223.255.255.255",
        "198.20.0.0",
        "2606:4700:4700::1111",
        "2a00:1450:4001::1",
        "::ffff:8.8.8.8",
        "64:ff9b::8.8.8.8",
        "2002:808:808::1",
        TEREDO_PUBLIC,
    ],
)
def test_public_addresses_pass(address):
    assert is_public_address(ip(address))


def test_policy_switches():
    assert not AddressPolicy().allows(ip("127.0.0.1"))
    assert AddressPolicy(allow_private=True).allows(ip("127.0.0.1"))
    trusted = AddressPolicy(trusted_networks=["127.0.0.1/32"])
    assert trusted.allows(ip("127.0.0.1"))
    assert not trusted.allows(ip("127.0.0.2"))
    assert not trusted.allows(ip("169.254.169.254"))
    assert trusted.allows(ip("8.8.8.8"))


@pytest.mark.parametrize(
    "host, patterns, allowed",
    [
        ("allowed.com", ["allowed.com"], True),
        ("ALLOWED.com.", ["allowed.com"], True),
        ("allowedXcom", ["allowed.com"], False),  # `.` is not a wildcard
        ("allowed.com.evil.com", ["allowed.com"], False),
        ("evilallowed.com", ["allowed.com"], False),
        ("evil.com", ["allowed.com"], False),
        ("a.example.com", ["*.example.com"], True),
        ("a.b.example.com", ["*.example.com"], True),  # any subdomain depth
        ("example.com", ["*.example.com"], False),  # not the apex
        ("aexample.com", ["*.example.com"], False),
        ("example.com.evil.com", ["*.example.com"], False),
        ("img-1.example.com", ["img-*.example.com"], True),
        ("img-1.evil.example.com", ["img-*.example.com"], False),  # inner `*` stays in its label
        ("img.example.com", ["img-*.example.com"], False),
        ("anything.org", ["*"], True),
        ("b\u00fccher.de", ["xn--bcher-kva.de"], True),
        ("xn--bcher-kva.de", ["b\u00fccher.de"], True),
        ("127.0.0.1", ["127.0.0.1"], True),
        ("2130706433", ["127.0.0.1"], True),  # IP literals compare canonically
        ("0x7f.1", ["127.0.0.1"], True),
        ("127.0.0.2", ["127.0.0.1"], False),
        ("::1", ["[::1]"], True),
        ("[0:0::1]", ["::1"], True),
        ("other.com", ["allowed.com", "other.com"], True),
        ("allowed.com", [], False),
    ],
)
def test_host_allowed(host, patterns, allowed):
    assert host_allowed(host, patterns) is allowed


def test_credentials_trick_is_judged_on_the_real_host():
    # httpx (which does the fetching) sees evil.com as the host, and so does the check
    url = httpx.URL("http://allowed.com@evil.com/")
    assert not host_allowed(url.host, ["allowed.com"])


@pytest.mark.parametrize(
    "pattern", ["", "a..b", "a/b", "[a-z].example.com", "x?.com", "user@host", "a b.com", "a.com.."]
)
def test_bad_patterns_are_rejected(pattern):
    with pytest.raises(ValueError):
        compile_host_pattern(pattern)


# --- the backend: resolves with the injected resolver, checks, connects to the checked address ---


class Resolver:
    """A resolver for tests: fixed answers, and a record of what was asked."""

    def __init__(self, answers: dict[str, list[str]]):
        self.answers = answers
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int):
        self.asked.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [ip(a) for a in self.answers[host]]


@pytest.fixture
async def listener():
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


@pytest.mark.anyio
@pytest.mark.parametrize(
    "answer", [["10.0.0.1"], ["127.0.0.1"], ["169.254.169.254"], ["::ffff:127.0.0.1"], ["fd00::1"]]
)
async def test_names_resolving_to_private_addresses_are_refused(answer, listener, caplog):
    # refused like a name that does not resolve (a connect error): a 403 of its own would tell
    # anyone which names point inside; the log says why
    resolver = Resolver({"rebind.test": answer})
    backend = GuardedBackend(AddressPolicy(), resolver)
    with pytest.raises(httpcore.ConnectError, match="rebind.test"):
        await backend.connect_tcp("rebind.test", listener, timeout=2)
    assert resolver.asked == ["rebind.test"]
    assert [r.getMessage() for r in caplog.records] == [
        f"refused upstream rebind.test: it resolves only to addresses not allowed ({ip(answer[0])})"
    ]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "host", ["127.0.0.1", "2130706433", "0x7f.1", "0177.0.0.1", "127.1", "::ffff:127.0.0.1", "::1"]
)
async def test_ip_literals_are_checked_without_resolving(host, listener):
    resolver = Resolver({})
    with pytest.raises(AddressNotAllowed):
        await GuardedBackend(AddressPolicy(), resolver).connect_tcp(host, listener, timeout=2)
    assert resolver.asked == []


@pytest.mark.anyio
async def test_connection_goes_to_the_checked_address(listener):
    # The system resolver knows nothing of origin.test: connecting at all proves the socket
    # went to the address that was resolved and checked here, not to a second lookup.
    resolver = Resolver({"origin.test": ["10.0.0.1", "127.0.0.1"]})
    backend = GuardedBackend(AddressPolicy(trusted_networks=["127.0.0.1/32"]), resolver)
    stream = await backend.connect_tcp("origin.test", listener, timeout=2)
    try:
        peer = stream.get_extra_info("socket").getpeername()
    finally:
        await stream.aclose()
    assert peer == ("127.0.0.1", listener)  # 10.0.0.1 was skipped, never tried
    assert resolver.asked == ["origin.test"]


@pytest.mark.anyio
async def test_resolver_failures_are_connect_errors(listener):
    backend = GuardedBackend(AddressPolicy(), Resolver({}))
    with pytest.raises(httpcore.ConnectError):
        await backend.connect_tcp("unknown.test", listener, timeout=2)


@pytest.mark.anyio
@pytest.mark.parametrize("host", ["a" * 64 + ".example", "a..example"])
async def test_names_dns_cannot_carry_are_connect_errors(host, listener):
    # the system resolver's IDNA encoding raises UnicodeError for them, before any lookup
    with pytest.raises(httpcore.ConnectError, match="cannot resolve"):
        await GuardedBackend(AddressPolicy()).connect_tcp(host, listener, timeout=2)


@pytest.mark.anyio
async def test_resolver_is_bounded_by_the_connect_timeout(listener):
    async def hanging(host, port):
        await asyncio.sleep(30)

    with pytest.raises(httpcore.ConnectTimeout):
        await GuardedBackend(AddressPolicy(), hanging).connect_tcp("slow.test", listener, timeout=0.2)


@pytest.mark.anyio
async def test_unix_sockets_are_refused():
    with pytest.raises(AddressNotAllowed):
        await GuardedBackend(AddressPolicy(allow_private=True)).connect_unix_socket("/var/run/docker.sock")
