"""Keeps the broker from being aimed at addresses it must never reach (SSRF).

A receiver URL is judged when it is registered (`check_receiver_url`) and again at every
connection the delivery client opens (`connections.py`). The second check is the one
that holds: a hostname's DNS answer can change between the two (DNS rebinding), so the
client judges the very addresses it is about to connect to.

The client judges twice. Its `GuardedResolver` refuses a hostname when any address in
the answer is refused, since whoever controls the name controls the whole answer. Then
`address_refusal` judges every address right before its socket is made, which also
covers IP literals, which never pass through a resolver.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

IPAddress = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

# A cached answer has already passed the policy, and the client judges every
# connection's address again, so the cache cannot let a refused address through. It
# only delays noticing that a receiver moved; it saves a thread-pool lookup per new
# connection.
DNS_CACHE_SECONDS = 5

# At /connect a slow DNS server must not hold up the request; an answer that does not
# come in time is treated like no answer (the receiver may not be up yet).
CONNECT_LOOKUP_SECONDS = 5.0

_METADATA: dict[IPAddress, str] = {
    IPv4Address("169.254.169.254"): "is the cloud metadata service (AWS, GCP, Azure, OpenStack)",
    IPv4Address("169.254.170.2"): "is the AWS ECS task metadata service",
    IPv6Address("fd00:ec2::254"): "is the AWS IPv6 metadata service",
    IPv4Address("100.100.100.200"): "is the Alibaba Cloud metadata service",
    IPv4Address("192.0.0.192"): "is the Oracle Cloud metadata service",
    IPv4Address("168.63.129.16"): "is the Azure platform endpoint (WireServer)",
}

_ALWAYS_REFUSED: tuple[tuple[Network, str], ...] = (
    (IPv4Network("0.0.0.0/8"), "is in 0.0.0.0/8 ('this network', which reaches this host)"),
    (
        IPv4Network("169.254.0.0/16"),
        "is link-local (169.254.0.0/16), where cloud metadata services such as "
        "169.254.169.254 live",
    ),
    (IPv6Network("::/128"), "is the unspecified address"),
    (IPv6Network("fe80::/10"), "is link-local (fe80::/10)"),
    (IPv4Network("224.0.0.0/4"), "is multicast"),
    (IPv6Network("ff00::/8"), "is multicast"),
    (IPv4Network("255.255.255.255/32"), "is the broadcast address"),
    (IPv4Network("240.0.0.0/4"), "is reserved (240.0.0.0/4)"),
)

_PRIVATE: tuple[tuple[Network, str], ...] = (
    (IPv4Network("127.0.0.0/8"), "is loopback (127.0.0.0/8)"),
    (IPv6Network("::1/128"), "is loopback (::1)"),
    (IPv4Network("10.0.0.0/8"), "is private (10.0.0.0/8)"),
    (IPv4Network("172.16.0.0/12"), "is private (172.16.0.0/12)"),
    (IPv4Network("192.168.0.0/16"), "is private (192.168.0.0/16)"),
    (IPv4Network("100.64.0.0/10"), "is carrier-grade NAT space (100.64.0.0/10)"),
    (IPv6Network("fc00::/7"), "is unique local (fc00::/7)"),
    (IPv6Network("fec0::/10"), "is site-local (fec0::/10)"),
)

_DENY_PRIVATE_NOTE = "refused because private receivers are denied (--deny-private-receivers)"

# IPv6 forms that reach an IPv4 address: the IPv4 inside is what gets connected to.
_IPV4_TRANSLATED = IPv6Network("::ffff:0:0:0/96")
_IPV4_COMPATIBLE = IPv6Network("::/96")
_NAT64_WELL_KNOWN = IPv6Network("64:ff9b::/96")
_NAT64_LOCAL_USE = IPv6Network("64:ff9b:1::/48")


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which addresses deliveries may reach.

    Link-local, cloud metadata, unspecified, multicast, broadcast and reserved
    addresses are always refused. `deny_private` also refuses loopback and private
    ranges, for deployments where receivers belong to other tenants.
    """

    deny_private: bool = False

    def refusal(self, ip: IPAddress) -> str | None:
        """Why `ip` may not be reached, as a sentence naming it, or None if it may."""
        ip = _without_scope(ip)
        if isinstance(ip, IPv6Address):
            inner = _embedded_ipv4(ip)
            if inner:
                for address in inner:
                    why = self._why_refused(address)
                    if why is not None:
                        return f"{ip} carries the IPv4 address {address}, which {why}"
                return None
        why = self._why_refused(ip)
        return None if why is None else f"{ip} {why}"

    def _why_refused(self, ip: IPAddress) -> str | None:
        why = _always_refused(ip)
        if why is None and self.deny_private:
            why = _private(ip)
            if why is not None:
                why = f"{why}, {_DENY_PRIVATE_NOTE}"
        return why


class AddressRefused(OSError):
    """A receiver address the policy refuses.

    An OSError, as a failed lookup or connect is, so a client reports it the same way:
    `cannot connect to host:port: receiver address refused: ...`.
    """

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.message = f"receiver address refused: {reason}"
        super().__init__(errno.EACCES, self.message)

    def __str__(self) -> str:
        return self.message


class GuardedResolver(AbstractResolver):
    """Resolves through `upstream` and refuses the host if any answer is refused.

    Without an `upstream` it uses `aiohttp.ThreadedResolver`, which must be created
    inside a running event loop, as aiohttp's own connector does.
    """

    def __init__(self, policy: AddressPolicy, upstream: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._upstream = upstream if upstream is not None else aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self._upstream.resolve(host, port, family)
        reason = _answers_refusal(self._policy, host, answers)
        if reason is not None:
            raise AddressRefused(reason)
        return answers

    async def close(self) -> None:
        await self._upstream.close()


async def check_receiver_url(
    url: str,
    policy: AddressPolicy,
    resolver: AbstractResolver,
    *,
    timeout: float = CONNECT_LOOKUP_SECONDS,
) -> str | None:
    """Why deliveries to `url` would be refused, or None.

    A host that does not resolve (or not within `timeout`) is not refused: its receiver
    may not be up yet, and every delivery is judged again when it connects.
    """
    try:
        parsed = URL(url)
    except ValueError:
        return f"{url!r} is not a valid URL"
    host = parsed.raw_host
    if not host:
        return f"{url!r} has no host"
    literal = parse_ip(host)
    if literal is not None:
        return policy.refusal(literal)
    try:
        async with asyncio.timeout(timeout):
            answers = await resolver.resolve(host, parsed.port or 0, socket.AF_UNSPEC)
    except AddressRefused as refused:
        return refused.reason
    except (OSError, UnicodeError):
        return None
    return _answers_refusal(policy, host, answers)


def _answers_refusal(policy: AddressPolicy, host: str, answers: list[ResolveResult]) -> str | None:
    for answer in answers:
        reason = address_refusal(policy, answer["host"])
        if reason is not None:
            return f"{host} resolves to {answer['host']}; {reason}"
    return None


def address_refusal(policy: AddressPolicy, address: str) -> str | None:
    """Why the IP address written as `address` may not be reached, or None if it may."""
    ip = parse_ip(address)
    if ip is None:
        return f"{address!r} is not an IP address"
    return policy.refusal(ip)


def parse_ip(text: str) -> IPAddress | None:
    """`text` as an IP address, or None if it is not one (a name, say)."""
    try:
        return ip_address(text)
    except ValueError:
        return None


def _without_scope(ip: IPAddress) -> IPAddress:
    # fe80::1%eth0 is fe80::1 on one interface; the zone must not hide it from the tables.
    return IPv6Address(int(ip)) if isinstance(ip, IPv6Address) and ip.scope_id else ip


def _embedded_ipv4(ip: IPv6Address) -> list[IPv4Address]:
    """The IPv4 addresses an IPv6 address reaches, if it is one of the forms that
    carry one: mapped, translated, compatible, 6to4 or NAT64."""
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip in _IPV4_TRANSLATED or ip in _NAT64_WELL_KNOWN:
        return [_rfc6052_ipv4(ip, 96)]
    if ip in _NAT64_LOCAL_USE:
        # The operator picks the prefix length, so every length inside the /48 counts.
        return [_rfc6052_ipv4(ip, length) for length in (48, 56, 64, 96)]
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:
        return [_rfc6052_ipv4(ip, 96)]
    return []


def _rfc6052_ipv4(ip: IPv6Address, prefix_length: int) -> IPv4Address:
    # RFC 6052 section 2.2: the IPv4 bytes follow the prefix, skipping byte 8 (bits 64-71).
    packed = ip.packed
    positions = [i for i in range(prefix_length // 8, 16) if i != 8][:4]
    return IPv4Address(bytes(packed[i] for i in positions))


def _always_refused(ip: IPAddress) -> str | None:
    if ip in _METADATA:
        return _METADATA[ip]
    for network, why in _ALWAYS_REFUSED:
        if ip in network:
            return why
    if ip.is_reserved and not ip.is_loopback:  # ::1 sits in the reserved ::/8
        return "is reserved by the IETF"
    return None


def _private(ip: IPAddress) -> str | None:
    for network, why in _PRIVATE:
        if ip in network:
            return why
    if ip.is_private:
        return "is a special-purpose address that is not globally reachable"
    return None
