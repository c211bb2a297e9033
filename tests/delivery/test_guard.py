"""The SSRF guard: which addresses deliveries may reach, judged at connect and on the wire.

Unit tests resolve through a fake upstream that answers what the test chooses, so no
public name is ever looked up; the only real traffic goes to a receiver on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from ipaddress import ip_address

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from mqpy.delivery.connections import DeliveryFailed, ReceiverConnections
from mqpy.delivery.guard import (
    AddressPolicy,
    AddressRefused,
    GuardedResolver,
    check_receiver_url,
)
from tests.support.receiver import Receiver

DEFAULT = AddressPolicy()
DENY_PRIVATE = AddressPolicy(deny_private=True)

# (address, words the reason must contain)
ALWAYS_REFUSED = [
    ("169.254.169.254", "cloud metadata service"),
    ("169.254.170.2", "ECS task metadata"),
    ("169.254.1.1", "link-local (169.254.0.0/16)"),
    ("fe80::1", "link-local (fe80::/10)"),
    ("fe80::1%eth0", "link-local (fe80::/10)"),
    ("fd00:ec2::254", "AWS IPv6 metadata"),
    ("100.100.100.200", "Alibaba Cloud metadata"),
    ("192.0.0.192", "Oracle Cloud metadata"),
    ("0.0.0.0", "0.0.0.0/8"),
    ("0.1.2.3", "0.0.0.0/8"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("100::1", "reserved"),
    ("::ffff:169.254.169.254", "carries the IPv4 address 169.254.169.254"),
    ("::ffff:0:169.254.169.254", "carries the IPv4 address 169.254.169.254"),
    ("::169.254.169.254", "carries the IPv4 address 169.254.169.254"),
    ("2002:a9fe:a9fe::1", "carries the IPv4 address 169.254.169.254"),
    ("64:ff9b::169.254.169.254", "carries the IPv4 address 169.254.169.254"),
    ("64:ff9b:1:a9fe:a9:fe00::", "carries the IPv4 address 169.254.169.254"),
    ("::ffff:0.0.0.0", "0.0.0.0/8"),
]

PRIVATE = [
    ("127.0.0.1", "loopback"),
    ("127.8.8.8", "loopback"),
    ("::1", "loopback"),
    ("10.1.2.3", "10.0.0.0/8"),
    ("172.16.0.1", "172.16.0.0/12"),
    ("192.168.1.1", "192.168.0.0/16"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("fd12:3456::1", "unique local"),
    ("fec0::1", "site-local"),
    ("198.18.0.1", "not globally reachable"),
    ("::ffff:10.1.2.3", "carries the IPv4 address 10.1.2.3"),
    ("::ffff:127.0.0.1", "carries the IPv4 address 127.0.0.1"),
    ("2002:a00:1::1", "carries the IPv4 address 10.0.0.1"),
    ("64:ff9b::10.0.0.1", "carries the IPv4 address 10.0.0.1"),
]

PUBLIC = [
    "93.184.216.34",
    "2606:2800:220:1:248:1893:25c8:1946",
    "::ffff:93.184.216.34",
    "64:ff9b::93.184.216.34",
    "2002:5db8:d822::1",
]


@pytest.mark.parametrize("policy", [DEFAULT, DENY_PRIVATE], ids=["default", "deny_private"])
@pytest.mark.parametrize(("address", "words"), ALWAYS_REFUSED)
def test_always_refused(policy: AddressPolicy, address: str, words: str) -> None:
    reason = policy.refusal(ip_address(address))
    assert reason is not None, f"{address} must be refused"
    assert words in reason
    named = str(ip_address(address.split("%")[0]))
    assert reason.startswith(named), "the reason names the address"


@pytest.mark.parametrize(("address", "words"), PRIVATE)
def test_private_allowed_by_default_refused_with_deny_private(address: str, words: str) -> None:
    assert DEFAULT.refusal(ip_address(address)) is None
    reason = DENY_PRIVATE.refusal(ip_address(address))
    assert reason is not None, f"{address} must be refused with deny_private"
    assert words in reason
    assert "--deny-private-receivers" in reason


@pytest.mark.parametrize("policy", [DEFAULT, DENY_PRIVATE], ids=["default", "deny_private"])
@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_allowed(policy: AddressPolicy, address: str) -> None:
    assert policy.refusal(ip_address(address)) is None


def answer(host: str, address: str, port: int = 0) -> ResolveResult:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return ResolveResult(hostname=host, host=address, port=port, family=family, proto=0, flags=0)


class FakeUpstream(AbstractResolver):
    """Answers each lookup with the next list of addresses; records what was asked."""

    def __init__(self, *answers: list[str] | OSError) -> None:
        self.answers = list(answers)
        self.lookups: list[tuple[str, int]] = []
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.lookups.append((host, port))
        addresses = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(addresses, OSError):
            raise addresses
        return [answer(host, address, port) for address in addresses]

    async def close(self) -> None:
        self.closed = True


class SlowUpstream(FakeUpstream):
    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        await asyncio.sleep(10)
        raise AssertionError("the lookup should have been given up")


async def test_resolver_passes_good_answers_through() -> None:
    upstream = FakeUpstream(["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
    answers = await GuardedResolver(DENY_PRIVATE, upstream).resolve("receiver.test", 443)
    assert [a["host"] for a in answers] == ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"]
    assert upstream.lookups == [("receiver.test", 443)]


@pytest.mark.parametrize(
    "addresses",
    [["93.184.216.34", "169.254.169.254"], ["169.254.169.254", "93.184.216.34"]],
    ids=["bad-last", "bad-first"],
)
async def test_resolver_refuses_a_mix_of_good_and_bad(addresses: list[str]) -> None:
    resolver = GuardedResolver(DEFAULT, FakeUpstream(addresses))
    with pytest.raises(AddressRefused) as refused:
        await resolver.resolve("rebind.test", 80)
    assert isinstance(refused.value, OSError)
    assert "rebind.test resolves to 169.254.169.254" in str(refused.value)
    assert "cloud metadata service" in str(refused.value)


async def test_resolver_judges_every_lookup_so_rebinding_is_caught() -> None:
    resolver = GuardedResolver(DEFAULT, FakeUpstream(["93.184.216.34"], ["169.254.169.254"]))
    await resolver.resolve("rebind.test", 80)
    with pytest.raises(AddressRefused, match=r"resolves to 169\.254\.169\.254"):
        await resolver.resolve("rebind.test", 80)


@pytest.mark.parametrize(
    ("address", "words"),
    [("fe80::1%eth0", "link-local"), ("not-an-address", "is not an IP address")],
)
async def test_resolver_refuses_scoped_and_garbled_answers(address: str, words: str) -> None:
    with pytest.raises(AddressRefused, match=words):
        await GuardedResolver(DEFAULT, FakeUpstream([address])).resolve("odd.test", 80)


async def test_resolver_passes_lookup_failures_and_close_through() -> None:
    upstream = FakeUpstream(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    resolver = GuardedResolver(DEFAULT, upstream)
    with pytest.raises(socket.gaierror):
        await resolver.resolve("missing.test", 80)
    await resolver.close()
    assert upstream.closed


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata service"),
        ("http://[::ffff:169.254.169.254]/hook", "carries the IPv4 address 169.254.169.254"),
        ("http://[fd00:ec2::254]/hook", "AWS IPv6 metadata"),
        ("http://0.0.0.0:8080/hook", "0.0.0.0/8"),
    ],
)
async def test_connect_check_refuses_literals_without_a_lookup(url: str, words: str) -> None:
    upstream = FakeUpstream(["93.184.216.34"])
    reason = await check_receiver_url(url, DEFAULT, upstream)
    assert reason is not None
    assert words in reason
    assert upstream.lookups == []


async def test_connect_check_allows_a_public_literal_without_a_lookup() -> None:
    upstream = FakeUpstream(["169.254.169.254"])
    assert await check_receiver_url("http://93.184.216.34/hook", DENY_PRIVATE, upstream) is None
    assert upstream.lookups == []


async def test_connect_check_resolves_names_with_the_url_port() -> None:
    upstream = FakeUpstream(["93.184.216.34"], ["10.0.0.7", "93.184.216.34"])
    assert await check_receiver_url("https://good.test/hook", DENY_PRIVATE, upstream) is None
    reason = await check_receiver_url("http://inside.test:8081/hook", DENY_PRIVATE, upstream)
    assert reason is not None
    assert reason.startswith("inside.test resolves to 10.0.0.7; 10.0.0.7 is private")
    assert upstream.lookups == [("good.test", 443), ("inside.test", 8081)]


async def test_connect_check_accepts_a_guarded_resolver() -> None:
    resolver = GuardedResolver(DEFAULT, FakeUpstream(["169.254.169.254"]))
    reason = await check_receiver_url("http://meta.test/hook", DEFAULT, resolver)
    assert reason is not None
    assert "meta.test resolves to 169.254.169.254" in reason


@pytest.mark.parametrize(
    "upstream",
    [FakeUpstream(socket.gaierror(socket.EAI_NONAME, "Name or service not known")), SlowUpstream()],
    ids=["unresolvable", "too-slow"],
)
async def test_connect_check_does_not_refuse_hosts_that_do_not_resolve(
    upstream: FakeUpstream,
) -> None:
    assert (
        await check_receiver_url("http://later.test/hook", DENY_PRIVATE, upstream, timeout=0.1)
        is None
    )


async def test_connect_check_refuses_urls_without_a_host() -> None:
    reason = await check_receiver_url("http:///hook", DEFAULT, FakeUpstream(["93.184.216.34"]))
    assert reason is not None
    assert "has no host" in reason


ConnectionsFactory = Callable[..., ReceiverConnections]


@pytest.fixture
async def connections_for() -> AsyncIterator[ConnectionsFactory]:
    made: list[ReceiverConnections] = []

    def make(
        policy: AddressPolicy, resolver: AbstractResolver | None = None
    ) -> ReceiverConnections:
        made.append(ReceiverConnections(policy, resolver=resolver))
        return made[-1]

    yield make
    for connections in made:
        await connections.close()


async def post(connections: ReceiverConnections, url: str) -> int:
    headers = [("Content-Type", "application/json")]
    answer = await connections.post(url, b'{"body": "hi"}', headers, timeout=5)
    return answer.status


async def test_real_post_refused_with_deny_private_and_delivered_without(
    receiver: Receiver, connections_for: ConnectionsFactory
) -> None:
    by_name = f"http://localhost:{receiver.port}/hook"
    denied = connections_for(DENY_PRIVATE)
    for url, kind in [(receiver.url, "literal"), (by_name, "name")]:
        with pytest.raises(DeliveryFailed) as refused:
            await post(denied, url)
        assert refused.value.reason.startswith("cannot connect to "), kind
        assert "receiver address refused: " in refused.value.reason, kind
        assert "is loopback" in refused.value.reason, kind
        assert "--deny-private-receivers" in refused.value.reason, kind
    assert receiver.attempts == [], "nothing reached the receiver"

    allowed = connections_for(DEFAULT)
    assert await post(allowed, receiver.url) == 204
    assert await post(allowed, by_name) == 204
    assert len(receiver.received) == 2


async def test_client_refuses_a_name_answering_good_and_bad(
    receiver: Receiver, connections_for: ConnectionsFactory
) -> None:
    # 0.0.0.0 is always refused and, were it tried, would stay on this host.
    upstream = FakeUpstream(["127.0.0.1", "0.0.0.0"], ["127.0.0.1"])
    connections = connections_for(DEFAULT, upstream)
    url = f"http://receiver.test:{receiver.port}/hook"
    with pytest.raises(DeliveryFailed, match=r"resolves to 0\.0\.0\.0"):
        await post(connections, url)
    assert receiver.attempts == []
    assert await post(connections, url) == 204, "a refusal is not cached"
    assert upstream.lookups == [("receiver.test", receiver.port)] * 2


async def test_client_judges_ip_literals_without_the_resolver(
    receiver: Receiver, connections_for: ConnectionsFactory
) -> None:
    upstream = FakeUpstream(["93.184.216.34"])
    connections = connections_for(DENY_PRIVATE, upstream)
    with pytest.raises(DeliveryFailed, match=r"127\.0\.0\.1 is loopback"):
        await post(connections, receiver.url)
    assert upstream.lookups == [], "IP literals are never looked up"
    assert receiver.attempts == []


async def test_client_looks_a_name_up_once_for_deliveries_that_start_together(
    receiver: Receiver, connections_for: ConnectionsFactory
) -> None:
    upstream = FakeUpstream(["127.0.0.1"])
    connections = connections_for(DEFAULT, upstream)
    url = f"http://receiver.test:{receiver.port}/hook"
    statuses = await asyncio.gather(*(post(connections, url) for _ in range(8)))
    assert statuses == [204] * 8
    assert upstream.lookups == [("receiver.test", receiver.port)], "one lookup, then cached"
