"""
Where the HTTP proxy may connect: an address policy, and the endpoint that
enforces it on the addresses it actually connects to.

A device can ask the proxy (spec 13) for any URL, so without a policy it can
reach what only the server can reach: loopback services, the private
network, a cloud metadata endpoint.  Checking the URL's host name is not
enough (any name can resolve to 127.0.0.1, and a name can resolve to
something else a moment later: DNS rebinding), so the check runs on the
addresses a name resolves to, ALL of them, and the connection then goes to
one of those checked addresses: there is no second lookup between the check
and the connect.  TLS (SNI and certificate checks) and the Host header keep
the name.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, Iterable, Sequence, Union

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.error import ConnectError
from twisted.internet.error import ConnectionRefusedError as ConnectRefused
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IResolutionReceiver, IStreamClientEndpoint
from twisted.web.error import SchemeNotSupported
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import Interface, implementer

from mpush.config import parse_allow_entry

if TYPE_CHECKING:
    from twisted.web.client import URI

#: An IPv4 or IPv6 address, network.
IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

__all__ = [
    "AddressPolicy",
    "AddressRefused",
    "GuardedEndpoint",
    "GuardedEndpointFactory",
    "HostNotFound",
    "IHostResolver",
    "ReactorHostResolver",
    "UpstreamUnreachable",
    "classify",
]

# What a refused address is; the text goes into logs and refusals.
LOOPBACK = "loopback"
PRIVATE = "private"
LINK_LOCAL = "link-local"
UNSPECIFIED = "unspecified"
MULTICAST = "multicast"
RESERVED = "reserved"
CGNAT = "shared (CGNAT)"
METADATA = "cloud metadata"
INVALID = "not an IP address"

#: Addresses tried in turn when a name resolves to several and the first
#: ones refuse the connection; each try has the full connect timeout.
MAX_CONNECT_ATTEMPTS = 3


def _table(rows: Iterable[tuple[str, str]]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(cidr), category) for cidr, category in rows)


# First match wins, so single addresses come before the ranges holding them.
_IPV4 = _table([
    ("169.254.169.254/32", METADATA),   # AWS, GCP, Azure, OpenStack...
    ("100.100.100.200/32", METADATA),   # Alibaba Cloud
    ("192.0.0.192/32", METADATA),       # Oracle Cloud
    ("0.0.0.0/8", UNSPECIFIED),         # "this network"; 0.0.0.0 reaches the host itself
    ("10.0.0.0/8", PRIVATE),
    ("100.64.0.0/10", CGNAT),
    ("127.0.0.0/8", LOOPBACK),
    ("169.254.0.0/16", LINK_LOCAL),
    ("172.16.0.0/12", PRIVATE),
    ("192.0.0.0/24", RESERVED),         # IETF protocol assignments
    ("192.0.2.0/24", RESERVED),         # documentation
    ("192.88.99.0/24", RESERVED),       # 6to4 relay anycast
    ("192.168.0.0/16", PRIVATE),
    ("198.18.0.0/15", RESERVED),        # benchmarking
    ("198.51.100.0/24", RESERVED),      # documentation
    ("203.0.113.0/24", RESERVED),       # documentation
    ("224.0.0.0/4", MULTICAST),
    ("240.0.0.0/4", RESERVED),          # includes 255.255.255.255
])

_IPV6 = _table([
    ("fd00:ec2::254/128", METADATA),    # AWS over IPv6
    ("::/128", UNSPECIFIED),
    ("::1/128", LOOPBACK),
    ("::/96", RESERVED),                # deprecated IPv4-compatible addresses
    ("100::/64", RESERVED),             # discard-only
    ("64:ff9b:1::/48", RESERVED),       # local-use NAT64
    ("2001::/23", RESERVED),            # IETF protocol assignments (Teredo...)
    ("2001:db8::/32", RESERVED),        # documentation
    ("3fff::/20", RESERVED),            # documentation
    ("fc00::/7", PRIVATE),              # unique local
    ("fe80::/10", LINK_LOCAL),
    ("fec0::/10", PRIVATE),             # deprecated site-local
    ("ff00::/8", MULTICAST),
])

# IPv6 ranges that carry an IPv4 address, checked as that address: otherwise
# ::ffff:127.0.0.1 or 64:ff9b::a9fe:a9fe would walk around the IPv4 table.
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")
# The only IPv6 space allocated for global unicast; the rest is reserved.
_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")


class AddressRefused(Exception):
    """
    The proxy will not connect to C{address} (on C{port}), which C{host}
    resolved to.  The text is for the log: devices are not told why.
    """

    def __init__(self, host: str, address: str, category: str, port: int | None = None) -> None:
        self.host = host
        self.address = address
        self.category = category
        self.port = port
        on = "" if port is None else f" (port {port})"
        if host == address:
            super().__init__(f"{host} is a {category} address{on}")
        else:
            super().__init__(f"{host} resolves to a {category} address: {address}{on}")


class HostNotFound(ConnectError):
    """
    The name resolved to no address at all.
    """

    def __init__(self, host: str, detail: str | None = None) -> None:
        self.host = host
        self.detail = f"cannot resolve {host}: {detail or 'no address found'}"
        super().__init__(string=self.detail)


class UpstreamUnreachable(ConnectError):
    """
    No checked address of the host accepted a connection.
    """

    def __init__(self, host: str, port: int, addresses: Iterable[str], last: BaseException | None) -> None:
        self.host = host
        self.port = port
        self.addresses = tuple(addresses)
        self.last = last
        self.detail = f"cannot connect to {host}:{port}: {_short(last)}"
        super().__init__(string=f"{self.detail} (tried {', '.join(self.addresses)})")


def _short(error: BaseException | None) -> str:
    if isinstance(error, ConnectRefused):
        return "connection refused"
    if isinstance(error, ConnectTimeout):
        return "connect timed out"
    return type(error).__name__ if error is not None else "no address tried"


def _parse(address: object) -> IPAddress | None:
    """
    C{address} as an C{ipaddress} object (a zone index is ignored: the range
    decides), or C{None} when it is not an IP address.
    """
    if not isinstance(address, str):
        return None
    try:
        return ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """
    The IPv4 address an IPv6 address stands for, if it is in one of the
    ranges that carry one, else C{None}.
    """
    if address.version != 6:
        return None
    if address in _MAPPED:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return address.sixtofour
    return None


def classify(address: str | IPAddress) -> str | None:
    """
    Why C{address} (a string or an C{ipaddress} address) is not a public
    unicast address: one of the category strings, or C{None} when it is one.
    """
    if isinstance(address, str):
        address = _parse(address)
        if address is None:
            return INVALID
    inner = _embedded_ipv4(address)
    if inner is not None:
        return classify(inner)
    table = _IPV4 if address.version == 4 else _IPV6
    for network, category in table:
        if address in network:
            return category
    if address.version == 6 and address not in _GLOBAL_UNICAST:
        return RESERVED
    return None


class AddressPolicy:
    """
    Public unicast addresses are allowed; the others only inside one of the
    C{allow} entries (L{parse_allow_entry}: a network, on every port or on
    one), e.g. the operator's own back-ends.  A port keeps a device from
    scanning every port of an allowed host.
    """

    __slots__ = ("_allow",)

    def __init__(self, allow: Iterable[str] = ()) -> None:
        self._allow = tuple(parse_allow_entry(entry) for entry in allow)

    def _allowed(self, address: IPAddress, port: int | None) -> bool:
        candidates = [address]
        inner = _embedded_ipv4(address)
        if inner is not None:
            candidates.append(inner)
        return any(
            candidate in network and allowed_port in (None, port)
            for candidate in candidates
            for network, allowed_port in self._allow
        )

    def refusal(self, address: str, port: int | None = None) -> str | None:
        """
        The category that refuses C{address} (on C{port}; C{None}: on no
        port in particular), or C{None} if it may be used.
        """
        parsed = _parse(address)
        if parsed is None:
            return INVALID
        if self._allowed(parsed, port):
            return None
        return classify(parsed)

    def check(self, host: str, addresses: Sequence[str], port: int | None = None) -> None:
        """
        Raise L{AddressRefused} unless EVERY address may be used: a name with
        one private address among public ones is refused, since which one a
        connection would go to is not ours to predict.
        """
        if not addresses:
            raise HostNotFound(host)
        for address in addresses:
            category = self.refusal(address, port)
            if category is not None:
                raise AddressRefused(host, address, category, port)


class IHostResolver(Interface):
    """
    Turns a host name into the addresses to check and connect to.
    """

    def resolve(host: str, port: int) -> Deferred:
        """
        @return: a L{Deferred} firing with a list of IP address strings
            (possibly empty), or failing when the lookup fails.
        """


@implementer(IResolutionReceiver)
class _Addresses:
    __slots__ = ("deferred", "addresses")

    def __init__(self, deferred: Deferred) -> None:
        self.deferred = deferred
        self.addresses = []

    def resolutionBegan(self, resolution: object) -> None:
        pass

    def addressResolved(self, address: object) -> None:
        host = getattr(address, "host", None)
        if host is not None and host not in self.addresses:
            self.addresses.append(host)

    def resolutionComplete(self) -> None:
        if not self.deferred.called:
            self.deferred.callback(self.addresses)


@implementer(IHostResolver)
class ReactorHostResolver:
    """
    The reactor's own name resolver (getaddrinfo in a thread by default),
    asking for every address family.
    """

    __slots__ = ("_reactor",)

    def __init__(self, reactor: Any) -> None:
        # Looked up at each resolve, so building a node on a test clock works.
        self._reactor = reactor

    def resolve(self, host: str, port: int) -> Deferred:
        deferred = Deferred()
        self._reactor.nameResolver.resolveHostName(_Addresses(deferred), host, port)
        return deferred


@implementer(IStreamClientEndpoint)
class GuardedEndpoint:
    """
    A client endpoint to C{host}:C{port} that resolves the name once,
    checks every address against the policy and connects to a checked one.

    @ivar trusted: skip the policy, for targets the operator named
        (C{[http] dns-mapping}): their addresses are configuration, not
        anything a device or DNS chose.
    """

    def __init__(
        self,
        reactor: Any,
        resolver: IHostResolver,
        policy: AddressPolicy,
        host: str,
        port: int,
        timeout: float,
        tls: Any = None,
        trusted: bool = False,
    ) -> None:
        self._reactor = reactor
        self._resolver = resolver
        self._policy = policy
        self.host = host
        self.port = port
        self._timeout = timeout
        self._tls = tls
        self.trusted = trusted

    def __repr__(self) -> str:
        return f"<GuardedEndpoint {self.host}:{self.port}{' tls' if self._tls else ''}>"

    def connect(self, protocol_factory: IProtocolFactory) -> Deferred:
        return Deferred.fromCoroutine(self._connect(protocol_factory))

    async def _addresses(self) -> list[str]:
        literal = _parse(self.host)
        if literal is not None:
            return [str(literal)]
        try:
            addresses = await self._resolver.resolve(self.host, self.port)
        except (CancelledError, ConnectError):
            raise
        except Exception as error:
            raise HostNotFound(self.host, str(error) or type(error).__name__) from error
        return list(addresses)

    async def _connect(self, protocol_factory: IProtocolFactory) -> IProtocol:
        addresses = await self._addresses()
        if not addresses:
            raise HostNotFound(self.host)
        if not self.trusted:
            self._policy.check(self.host, addresses, self.port)
        last = None
        for address in addresses[:MAX_CONNECT_ATTEMPTS]:
            endpoint = self._tcp(address)
            if self._tls is not None:
                endpoint = wrapClientTLS(self._tls, endpoint)
            try:
                return await endpoint.connect(protocol_factory)
            except ConnectError as error:
                last = error
        raise UpstreamUnreachable(self.host, self.port, addresses[:MAX_CONNECT_ATTEMPTS], last)

    def _tcp(self, address: str) -> IStreamClientEndpoint:
        kind = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
        return kind(self._reactor, address, self.port, timeout=self._timeout)


@implementer(IAgentEndpointFactory)
class GuardedEndpointFactory:
    """
    What a twisted.web L{Agent<twisted.web.client.Agent>} connects with:
    a L{GuardedEndpoint} per URI, TLS-wrapped for https with the name as SNI
    and as the identity the certificate must prove.

    @param trusted: C{(host, port)} pairs that skip the policy (lower-case
        host, no brackets).
    """

    def __init__(
        self,
        reactor: Any,
        resolver: IHostResolver,
        policy: AddressPolicy,
        tls_policy: IPolicyForHTTPS,
        connect_timeout: float,
        trusted: Iterable[tuple[str, int]] = frozenset(),
    ) -> None:
        self._reactor = reactor
        self._resolver = resolver
        self._policy = policy
        self._tls_policy = tls_policy
        self._connect_timeout = connect_timeout
        self._trusted = frozenset(trusted)

    def endpointForURI(self, uri: URI) -> GuardedEndpoint:
        host = uri.host.decode("ascii").lower()
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        tls = None
        if uri.scheme == b"https":
            tls = self._tls_policy.creatorForNetloc(host.encode("ascii"), uri.port)
        elif uri.scheme != b"http":
            raise SchemeNotSupported(f"unsupported scheme: {uri.scheme!r}")
        return GuardedEndpoint(
            self._reactor,
            self._resolver,
            self._policy,
            host,
            uri.port,
            self._connect_timeout,
            tls=tls,
            trusted=(host, uri.port) in self._trusted,
        )
