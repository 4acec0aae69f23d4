"""
What one node lets its clients cost, and what it does when they ask for more.

A node shares one L{NodeLimits}: the count of live client connections, in
all and per source address, and a token bucket for RSA work.  RSA is the
one thing a client can make the server do that is expensive (a private-key
operation per 128 or 256 bytes of handshake body), and it runs on the
reactor thread: without a bound, a flood of handshakes would delay every
heartbeat and push of the clients already bound.

Every refusal goes through L{NodeLimits.refused}: it is always counted in
the node's metrics, and logged at most once per reason per second, the line
saying how many were not logged since, so a flood cannot flood the log too.

All time comes from the injected clock.
"""

import ipaddress
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mpush.config import LimitsConfig
from mpush.log_throttle import LogThrottle
from mpush.metrics import IMetrics

__all__ = [
    "LOG_INTERVAL",
    "MAX_CONNECTIONS",
    "PENDING_PACKETS",
    "PER_IP",
    "PRE_HANDSHAKE_TIMEOUT",
    "HANDSHAKE_RATE",
    "READ_SIZE",
    "SLOW_READER",
    "SLOW_READER_HEARTBEATS",
    "ConnectionSlot",
    "LimitExceeded",
    "NodeLimits",
    "TokenBucket",
    "rsa_blocks",
    "source_of",
]

# Refusal reasons: the label of mpush_refused_total{reason}.
MAX_CONNECTIONS = "max_connections"
PER_IP = "per_ip"
HANDSHAKE_RATE = "handshake_rate"
PRE_HANDSHAKE_TIMEOUT = "pre_handshake_timeout"
PENDING_PACKETS = "pending_packets"
READ_SIZE = "read_size"
SLOW_READER = "slow_reader"

#: Seconds between two log lines of the same refusal reason.
LOG_INTERVAL = 1.0

#: Heartbeats a connection may stay not writable (its peer reads nothing
#: while the send buffer is over the high-water mark) before it is taken
#: for a dead or hostile reader and aborted.
SLOW_READER_HEARTBEATS = 2


class LimitExceeded(Exception):
    """
    A limit refused a connection or a request.

    @ivar reason: one of this module's reason constants.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def source_of(address: object) -> str | None:
    """
    The key a connection's source address is counted under: the IP as
    text, an IPv4-mapped IPv6 address as its IPv4 (one host, however its
    socket reports it), or C{None} when the address has no IP (a UNIX
    socket, a test transport without a peer): such connections count only
    towards the node-wide limit.
    """
    host = getattr(address, "host", None)
    if not isinstance(host, str) or not host:
        return None
    if ":" not in host and host[-1].isdigit():
        # An IPv4 peer: the kernel's dotted quad is already canonical.
        return host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped if mapped is not None else ip)


def rsa_blocks(key: Any, length: int) -> int:
    """
    How many private-key operations decrypting C{length} bytes with C{key}
    costs: one per C{key_size_bytes} block, and at least one.  A real
    client's handshake is one block; a hostile one may fill a whole frame.
    """
    size = key.key_size_bytes
    return max(1, -(-length // size))


class TokenBucket:
    """
    C{rate} tokens a second, at most C{capacity} saved up.

    L{take} succeeds when at least one token is there and then charges the
    whole cost, even into debt: a request costing more than the bucket
    holds still passes when the bucket is full, and the debt it leaves
    holds back what follows, so the long-run rate stays C{rate}.

    A clock that steps backwards (the wall clock, corrected) adds nothing
    and restarts the refill from the new time.
    """

    __slots__ = ("rate", "capacity", "_clock", "_tokens", "_stamp")

    def __init__(self, rate: float, capacity: float, clock: IReactorTime, tokens: float | None = None) -> None:
        """
        @param tokens: what the bucket starts with (full by default; at most
            C{capacity}).
        """
        if not rate > 0:
            raise ValueError(f"token rate must be positive, got {rate!r}")
        if not capacity >= 1:
            raise ValueError(f"token bucket capacity must be at least 1, got {capacity!r}")
        self.rate = float(rate)
        self.capacity = float(capacity)
        self._clock = clock
        self._tokens = self.capacity if tokens is None else min(float(tokens), self.capacity)
        self._stamp = clock.seconds()

    @property
    def tokens(self) -> float:
        """
        The tokens there now (negative while in debt).
        """
        self._refill()
        return self._tokens

    def take(self, cost: float = 1) -> bool:
        """
        Spend C{cost} tokens if at least one is there.

        @return: whether the request may go ahead.
        """
        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
            raise ValueError(f"a token cost is a positive int, got {cost!r}")
        self._refill()
        if self._tokens < 1:
            return False
        self._tokens -= cost
        return True

    def _refill(self) -> None:
        now = self._clock.seconds()
        elapsed = now - self._stamp
        self._stamp = now
        if elapsed > 0:
            self._tokens = min(self.capacity, self._tokens + elapsed * self.rate)


class ConnectionSlot:
    """
    One admitted connection's place in the counts; released exactly once
    however often L{release} is called.
    """

    __slots__ = ("_limits", "source", "_held")

    def __init__(self, limits: "NodeLimits", source: str | None) -> None:
        self._limits = limits
        self.source = source
        self._held = True

    @property
    def held(self) -> bool:
        return self._held

    def release(self) -> None:
        if self._held:
            self._held = False
            self._limits._release(self.source)


class NodeLimits:
    """
    The limits of one node, from its C{[limits]} config.

    @ivar config: the L{mpush.config.LimitsConfig}.
    """

    log = Logger()

    def __init__(self, config: LimitsConfig, clock: IReactorTime, log_interval: float = LOG_INTERVAL) -> None:
        self.config = config
        self.clock = clock
        self._connections = 0
        self._per_source = {}
        self._rsa = self._bucket(config, None)
        self._throttle = LogThrottle(clock, log_interval)

    @property
    def log_interval(self) -> float:
        """
        Seconds between two log lines of one reason.
        """
        return self._throttle.interval

    def _bucket(self, config: LimitsConfig, current: TokenBucket | None) -> TokenBucket | None:
        rate = config.handshake_rate
        if not rate:
            return None
        tokens = None if current is None else current.tokens
        return TokenBucket(rate, config.handshake_burst or rate, self.clock, tokens)

    def reconfigure(self, config: LimitsConfig) -> None:
        """
        Apply a reloaded C{[limits]}: new bounds hold for what comes next
        (connections over a lowered bound are not closed), and a new
        handshake rate keeps the tokens saved up, within the new burst.
        """
        old, self.config = self.config, config
        if (old.handshake_rate, old.handshake_burst) != (config.handshake_rate, config.handshake_burst):
            self._rsa = self._bucket(config, self._rsa)

    # -- connection counts ---------------------------------------------------

    @property
    def connections(self) -> int:
        """
        Live admitted connections on this node.
        """
        return self._connections

    def connections_from(self, source: str | None) -> int:
        """
        Live admitted connections whose L{source_of} is C{source}.
        """
        return self._per_source.get(source, 0)

    def admit(self, address: object) -> ConnectionSlot:
        """
        Count a new connection from C{address}.

        @return: its L{ConnectionSlot}, to release when it closes.
        @raise LimitExceeded: the node, or this source, is full.
        """
        config = self.config
        if config.max_connections and self._connections >= config.max_connections:
            raise LimitExceeded(
                MAX_CONNECTIONS, f"node has {self._connections} connections (max-connections)"
            )
        source = source_of(address)
        if source is not None and config.max_connections_per_ip:
            held = self._per_source.get(source, 0)
            if held >= config.max_connections_per_ip:
                raise LimitExceeded(
                    PER_IP, f"{source} has {held} connections (max-connections-per-ip)"
                )
        self._connections += 1
        if source is not None:
            self._per_source[source] = self._per_source.get(source, 0) + 1
        return ConnectionSlot(self, source)

    def _release(self, source: str | None) -> None:
        self._connections -= 1
        if source is not None:
            left = self._per_source[source] - 1
            if left:
                self._per_source[source] = left
            else:
                del self._per_source[source]

    # -- RSA work ------------------------------------------------------------

    def allow_rsa(self, blocks: int = 1) -> bool:
        """
        Whether C{blocks} RSA private-key operations may run now; if so they
        are charged.  Always true when C{handshake-rate} is 0.
        """
        return self._rsa is None or self._rsa.take(blocks)

    # -- refusals ------------------------------------------------------------

    def refused(self, metrics: IMetrics, reason: str, peer: str, detail: str) -> None:
        """
        Count a refusal in C{metrics} and log it, unless a refusal of the
        same reason was logged less than C{log_interval} ago.
        """
        metrics.refused(reason)
        unlogged = self._throttle.admit(reason)
        if unlogged is None:
            return
        if unlogged:
            self.log.warn(
                "refused {peer} ({reason}): {detail}; {unlogged} more {reason} "
                "refusals since the last such line",
                peer=peer,
                reason=reason,
                detail=detail,
                unlogged=unlogged,
            )
        else:
            self.log.warn(
                "refused {peer} ({reason}): {detail}", peer=peer, reason=reason, detail=detail
            )
