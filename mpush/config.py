"""The server's configuration: one TOML file, parsed and validated once, passed in.

The tables and keys mirror MPush's ``reference.conf`` so an operator translates an
``mpush.conf`` line by line (``mp.core.max-packet-size`` -> ``[core] max-packet-size``;
keys of the root ``mp`` object go in ``[mpush]``).  Every key is checked: an unknown key
is almost always a typo, and a typo that silently falls back to a default is the worst
kind of configuration bug.  MPush keys that mean nothing here (JVM, Netty, ZooKeeper,
thread pools...) are accepted only because they are listed below, one by one; keys that
select a behaviour mpush does not implement are accepted only at the value mpush
implements.  ``etc/mpush.toml`` documents every key.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import difflib
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import quote, unquote, urlsplit

from mpush.origins import origin_key
from mpush.protocol.fields import INT32_MAX
from mpush.units import parse_duration, parse_size

__all__ = [
    "Config",
    "ConfigError",
    "CoreConfig",
    "NetConfig",
    "RedisConfig",
    "SecurityConfig",
    "apply_overrides",
    "check_workers",
    "config_path",
    "worker_config",
    "load_config",
    "parse_config",
    "parse_redis_url",
]

# The 13-byte frame header (spec 2.2) and the largest body whose length still starts
# with a 0x00 byte, so it never collides with the 0xDF heartbeat byte (spec 2.6).
HEADER_LENGTH = 13
MAX_PACKET_SIZE_LIMIT = 16 * 1024 * 1024
# Heartbeats travel as a Java int in HandshakeOk / FastConnectOk (spec 6.2, 6.4).
JAVA_INT_MAX = INT32_MAX
# [http] public-paths: the read-only paths an operator may open without the token.
PUBLIC_PATH_CHOICES = ("/healthz", "/metrics", "/v1/allot", "/v1/openapi.json")
# [cluster] workers: more processes than this on one box is a typo, not a plan.
MAX_WORKERS = 64


class ConfigError(Exception):
    """A configuration problem, rendered as ONE line that names the file and the key.

    ``str(e)`` is e.g. ``config /etc/mpush/mpush.toml: [core] max-packet-size: expected
    a size like 10k, got 'abc'``; ``source``, ``key`` and ``reason`` are also attributes
    so a caller can format them differently.
    """

    def __init__(self, reason: str, *, key: str | None = None, source: str | None = None):
        self.reason = reason
        self.key = key
        self.source = source
        prefix = f"config {source}: " if source else ""
        where = f"{key}: " if key else ""
        super().__init__(f"{prefix}{where}{reason}")

    def with_source(self, source: str | None) -> "ConfigError":
        """Return the same error attributed to ``source`` (a file or "overrides")."""
        return ConfigError(self.reason, key=self.key, source=source)


# --- value checks shared by the dataclasses (direct construction) and the parser ---

def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _describe(value: object) -> str:
    return f"{type(value).__name__} {value!r}"


def _need_int(key: str, value: object, low: int | None = None, high: int | None = None,
              what: str = "") -> None:
    if not _is_int(value):
        raise ConfigError(f"expected an integer, got {_describe(value)}", key=key)
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            bounds = f"at least {low}"
        elif low is None:
            bounds = f"at most {high}"
        else:
            bounds = f"between {low} and {high}"
        raise ConfigError(f"must be {bounds}{what}, got {value}", key=key)


def _need_port(key: str, value: object, *, zero_disables: bool) -> None:
    low = 0 if zero_disables else 1
    _need_int(key, value, low, 65535, " (0 disables it)" if zero_disables else "")


def _need_str(key: str, value: object) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"expected a string, got {_describe(value)}", key=key)


def _need_ip(key: str, value: object) -> None:
    """An IP literal or "" (auto-detect / any address): catches hostnames and typos."""
    _need_str(key, value)
    if value:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ConfigError(
                f"expected an IPv4 or IPv6 address or \"\", got {value!r}", key=key) from None


def _need_networks(key: str, values: object) -> None:
    """A tuple of CIDRs or single addresses ("10.0.0.0/8", "192.0.2.7")."""
    if not isinstance(values, tuple) or not all(isinstance(v, str) for v in values):
        raise ConfigError(f"expected a list of strings, got {_describe(values)}", key=key)
    for cidr in values:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ConfigError(f"not an address or network: {cidr!r}", key=key) from None


def _need_key(key: str, value: object) -> None:
    if value is None:
        return
    _need_str(key, value)
    if not value or re.search(r"\s", value) or value.startswith("-----"):
        raise ConfigError(
            "expected one line of base64 (the MPush form: no PEM header, no line breaks)",
            key=key)
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("is not valid base64", key=key) from None


_NODE = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/@\[\]]+):(?P<port>[0-9]{1,5})")


def _need_node(key: str, index: int, value: object) -> None:
    """A Redis node as MPush writes it: "host:port" (IPv6 as "[addr]:port")."""
    where = f"{key}[{index}]"
    _need_str(where, value)
    match = _NODE.fullmatch(value)
    if match is None:
        hint = ""
        if value.count(":") == 2 and not value.startswith("["):
            hint = " (MPush's \"ip:port:password\" form is not supported: use [redis] password)"
        raise ConfigError(f"expected \"host:port\", got {value!r}{hint}", key=where)
    host = match.group("host")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ConfigError(f"bad IPv6 address in {value!r}", key=where) from None
    port = int(match.group("port"))
    if not 1 <= port <= 65535:
        raise ConfigError(f"port must be between 1 and 65535, got {value!r}", key=where)


# --- the configuration objects ---

@dataclass(frozen=True, slots=True)
class CoreConfig:
    """``[core]`` (MPush ``mp.core``): framing limits, heartbeats, session lifetime."""

    max_packet_size: int = 10240          # bytes  ([core] max-packet-size)
    compress_threshold: int = 10240       # bytes
    min_heartbeat: int = 180000           # ms
    max_heartbeat: int = 180000           # ms
    max_hb_timeout_times: int = 2
    session_expired_time: int = 86400     # SECONDS (MPush keeps it in seconds; "1d" -> 86400)
    pre_handshake_heartbeat: int = 10000  # ms, idle check interval before handshake
    max_inflated_size: int = 1 << 20      # bytes, cap on an inflated (decompressed) body
    max_gateway_packet_size: int = 1 << 20  # bytes, inbound limit of the gateway port

    def __post_init__(self) -> None:
        _need_int("[core] max-packet-size", self.max_packet_size, HEADER_LENGTH + 1,
                  MAX_PACKET_SIZE_LIMIT, " bytes (more than the 13-byte header, at most 16m)")
        _need_int("[core] compress-threshold", self.compress_threshold, 0)
        _need_int("[core] min-heartbeat", self.min_heartbeat, 1, JAVA_INT_MAX, " ms")
        _need_int("[core] max-heartbeat", self.max_heartbeat, 1, JAVA_INT_MAX, " ms")
        _need_int("[core] max-hb-timeout-times", self.max_hb_timeout_times, 0)
        _need_int("[core] session-expired-time", self.session_expired_time, 0,
                  what=" seconds")
        _need_int("[core] pre-handshake-heartbeat", self.pre_handshake_heartbeat, 1,
                  JAVA_INT_MAX, " ms")
        _need_int("[core] max-inflated-size", self.max_inflated_size, 1, what=" bytes")
        _need_int("[core] max-gateway-packet-size", self.max_gateway_packet_size,
                  HEADER_LENGTH + 1, MAX_PACKET_SIZE_LIMIT, " bytes")


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """``[security]`` (MPush ``mp.security``): the RSA pair; None means generate one."""

    private_key: str | None = field(default=None, repr=False)  # base64 PKCS#8, one line
    public_key: str | None = None         # base64 X.509
    aes_key_length: int = 16              # only 16 is valid (spec 7.2)

    def __post_init__(self) -> None:
        _need_key("[security] private-key", self.private_key)
        _need_key("[security] public-key", self.public_key)
        if self.public_key is not None and self.private_key is None:
            raise ConfigError(
                "given without [security] private-key: set both, or neither to use the "
                "generated pair in [mpush] state-dir", key="[security] public-key")
        _need_int("[security] aes-key-length", self.aes_key_length)
        if self.aes_key_length != 16:
            raise ConfigError(
                f"only 16 works (the IV is aes-key-length bytes and AES-CBC needs 16), "
                f"got {self.aes_key_length}", key="[security] aes-key-length")


@dataclass(frozen=True, slots=True)
class NetConfig:
    """``[net]`` (MPush ``mp.net``): addresses and listening ports."""

    local_ip: str = ""
    public_ip: str = ""
    connect_server_bind_ip: str = ""
    connect_server_port: int = 3000
    connect_server_backlog: int = 4096  # accept queue: a reconnect storm arrives at once
    gateway_server_bind_ip: str = "127.0.0.1"  # MPush: every address; see SECURITY.md 3.1
    gateway_server_port: int = 3001
    gateway_allow: tuple[str, ...] = ()    # source networks; () = any that reaches the port
    admin_server_bind_ip: str = "127.0.0.1"
    admin_server_port: int = 3002
    ws_server_port: int = 0
    ws_allowed_origins: tuple[str, ...] = ()  # () = the port's own origin only; "*" = any
    http_server_bind_ip: str = ""
    http_server_port: int = 8080
    connect_server_write_high: int = 65536  # bytes buffered for a client before pushes fail

    def __post_init__(self) -> None:
        for name in ("local_ip", "public_ip", "connect_server_bind_ip",
                     "gateway_server_bind_ip", "admin_server_bind_ip", "http_server_bind_ip"):
            _need_ip(f"[net] {name.replace('_', '-')}", getattr(self, name))
        _need_port("[net] connect-server-port", self.connect_server_port, zero_disables=False)
        _need_int("[net] connect-server-backlog", self.connect_server_backlog, 1, 65535)
        _need_port("[net] gateway-server-port", self.gateway_server_port, zero_disables=True)
        _need_networks("[net] gateway-allow", self.gateway_allow)
        _need_port("[net] admin-server-port", self.admin_server_port, zero_disables=True)
        _need_port("[net] ws-server-port", self.ws_server_port, zero_disables=True)
        for origin in self.ws_allowed_origins:
            if origin != "*":
                try:
                    origin_key(origin)
                except ValueError as error:
                    raise ConfigError(str(error), key="[net] ws-allowed-origins") from None
        _need_port("[net] http-server-port", self.http_server_port, zero_disables=True)
        _need_int("[net] write-buffer-water-mark.connect-server-high",
                  self.connect_server_write_high, 1024, what=" bytes")


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """``[redis]`` (MPush ``mp.redis``): empty ``nodes`` means in-memory stores."""

    nodes: tuple[str, ...] = ()   # "host:port" as in MPush; the sentinels with "sentinel", seeds with "cluster"
    password: str = field(default="", repr=False)
    db: int = 0
    cluster_model: str = "single"  # or "sentinel" or "cluster"
    sentinel_master: str = ""      # the master's name, with "sentinel"
    #: After a session write, WAIT until this many replicas have it (0: don't).
    wait_replicas: int = 0
    #: How long that WAIT may hold a handshake's reply, in milliseconds.
    wait_timeout: int = 100

    def __post_init__(self) -> None:
        if not isinstance(self.nodes, tuple):
            raise ConfigError(f"expected a list of \"host:port\" strings, got "
                              f"{_describe(self.nodes)}", key="[redis] nodes")
        for index, node in enumerate(self.nodes):
            _need_node("[redis] nodes", index, node)
        _need_str("[redis] password", self.password)
        _need_int("[redis] db", self.db, 0)
        if self.cluster_model not in ("single", "sentinel", "cluster"):
            raise ConfigError(f"expected \"single\", \"sentinel\" or \"cluster\", got {self.cluster_model!r}",
                              key="[redis] cluster-model")
        if self.cluster_model == "cluster" and self.db:
            raise ConfigError("a Redis Cluster has only db 0", key="[redis] db")
        _need_str("[redis] sentinel-master", self.sentinel_master)
        if self.cluster_model == "sentinel" and self.nodes and not self.sentinel_master:
            raise ConfigError("cluster-model \"sentinel\" needs the master's name",
                              key="[redis] sentinel-master")
        _need_int("[redis] wait-replicas", self.wait_replicas, 0, 16, what=" replicas")
        # WAIT 0 would mean "forever", and a session write has 2 s in all.
        _need_int("[redis] wait-timeout", self.wait_timeout, 1, 1000, what=" ms")

    def url(self) -> str | None:
        """
        ``redis://[:password@]host:port/db`` for the first node, or with
        Sentinel ``redis+sentinel://[:password@]sentinel,.../master/db``, or
        with Redis Cluster ``redis+cluster://[:password@]seed,...``; None
        without nodes.
        """
        if not self.nodes:
            return None
        if self.cluster_model == "cluster":
            from mpush.store.redis_connection import cluster_url

            return cluster_url(self.nodes, self.password)
        if self.cluster_model == "sentinel":
            from mpush.store.redis_connection import sentinel_url

            return sentinel_url(self.nodes, self.sentinel_master, self.db, self.password)
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.nodes[0]}/{self.db}"


@dataclass(frozen=True, slots=True)
class PushConfig:
    """
    ``[push]`` (MPush ``mp.push``): flow control and push behaviour.

    Flow control shapes bursts: a push over the rate waits for the next
    window instead of failing.  ``limit`` pushes per ``duration``; ``max`` is a
    total cap (0: none) — per broadcast task for ``broadcast``.
    """

    global_limit: int = 5000
    global_max: int = 0
    global_duration: int = 1000           # ms
    broadcast_limit: int = 3000
    broadcast_max: int = 100000
    broadcast_duration: int = 1000        # ms
    tag_match: str = "substring"          # "substring" (MPush) or "exact"
    default_timeout: int = 3000           # ms, for a GATEWAY_PUSH with timeout <= 0

    def __post_init__(self) -> None:
        _need_int("[push] flow-control.global.limit", self.global_limit, 0)
        _need_int("[push] flow-control.global.max", self.global_max, 0)
        _need_int("[push] flow-control.global.duration", self.global_duration, 1, what=" ms")
        _need_int("[push] flow-control.broadcast.limit", self.broadcast_limit, 0)
        _need_int("[push] flow-control.broadcast.max", self.broadcast_max, 0)
        _need_int("[push] flow-control.broadcast.duration", self.broadcast_duration, 1,
                  what=" ms")
        if self.tag_match not in ("substring", "exact"):
            raise ConfigError(f"expected \"substring\" or \"exact\", got {self.tag_match!r}",
                              key="[push] tag-match")
        _need_int("[push] default-timeout", self.default_timeout, 1, JAVA_INT_MAX, " ms")


@dataclass(frozen=True, slots=True)
class BindConfig:
    """
    ``[bind]``: the bind validator (MPush's ``BindValidator`` SPI).

    ``validator`` is "" (accept every bind, MPush's default), "hmac" (the
    bind's data must be hex HMAC-SHA256 of the user id under ``hmac-secret``)
    or "package.module:name" of an L{IBindValidator} factory.
    """

    validator: str = ""
    hmac_secret: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        _need_str("[bind] validator", self.validator)
        _need_str("[bind] hmac-secret", self.hmac_secret)
        if self.validator and self.validator != "hmac" and ":" not in self.validator:
            raise ConfigError(
                f"expected \"\", \"hmac\" or \"package.module:name\", got {self.validator!r}",
                key="[bind] validator")
        if self.validator == "hmac" and not self.hmac_secret:
            raise ConfigError("validator \"hmac\" needs [bind] hmac-secret",
                              key="[bind] validator")


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """
    ``[cluster]`` (ours; MPush used ZooKeeper): how nodes sharing one Redis
    see each other.  A node re-announces itself every ``node-refresh``; one
    silent for ``node-ttl`` is dead, and its routes are marked offline.
    """

    node_ttl: int = 10000                 # ms
    node_refresh: int = 3000              # ms
    drain_timeout: int = 10000            # ms a stopping node waits for pushes and acks
    workers: int = 1                      # server processes on this box (1: no children)

    def __post_init__(self) -> None:
        _need_int("[cluster] workers", self.workers, 1, MAX_WORKERS)
        _need_int("[cluster] node-ttl", self.node_ttl, 100, what=" ms")
        _need_int("[cluster] node-refresh", self.node_refresh, 50, what=" ms")
        _need_int("[cluster] drain-timeout", self.drain_timeout, 0, what=" ms")
        if self.node_refresh >= self.node_ttl:
            raise ConfigError(f"must be shorter than [cluster] node-ttl ({self.node_ttl} ms), "
                              f"got {self.node_refresh} ms", key="[cluster] node-refresh")


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """
    ``[http]``: the HTTP push API (ours).  Without ``api-token`` the API
    listens on loopback only, whatever ``[net] http-server-bind-ip`` says.
    (MPush's ``mp.http`` keys configure its HTTP proxy and are accepted here.)
    """

    api_token: str = field(default="", repr=False)
    max_body_size: int = 1 << 20          # bytes
    public_paths: tuple[str, ...] = ("/healthz",)  # answered without the token

    def __post_init__(self) -> None:
        _need_str("[http] api-token", self.api_token)
        _need_int("[http] max-body-size", self.max_body_size, 1024, 64 << 20, " bytes")
        if not isinstance(self.public_paths, tuple):
            raise ConfigError(f"expected a list of paths, got {_describe(self.public_paths)}",
                              key="[http] public-paths")
        for path in self.public_paths:
            if path not in PUBLIC_PATH_CHOICES:
                raise ConfigError(
                    f"{path!r} cannot be public; choose among {', '.join(PUBLIC_PATH_CHOICES)}",
                    key="[http] public-paths")


@dataclass(frozen=True, slots=True)
class OfflineConfig:
    """
    ``[offline]`` (ours): pushes kept for users who are offline, when the
    push asks for it with an ``offline_ttl``.
    """

    max_count: int = 100                  # messages per user
    max_bytes: int = 256 * 1024           # content bytes per user
    lease: int = 30000                    # ms a delivered message waits for its ack

    def __post_init__(self) -> None:
        _need_int("[offline] max-count", self.max_count, 1)
        _need_int("[offline] max-bytes", self.max_bytes, 1, what=" bytes")
        _need_int("[offline] lease", self.lease, 100, what=" ms")


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_describe(value)}")
    return value


def _str_list(value: object) -> tuple:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {_describe(value)}")
    return tuple(value)


def _dns_mapping(value: object) -> tuple:
    if not isinstance(value, dict):
        raise ValueError(f"expected a table of \"domain\" = [\"ip:port\", ...], got {_describe(value)}")
    mapping = []
    for domain, targets in value.items():
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            raise ValueError(f"{domain!r}: expected a non-empty list of \"ip[:port]\" strings")
        mapping.append((domain, tuple(targets)))
    return tuple(mapping)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """
    ``[limits]`` (ours): what one client may cost.  0 means no limit.  Each
    refusal is logged and counted in ``mpush_refused_total{reason}``.
    """

    max_connections: int = 0              # per node
    max_connections_per_ip: int = 0
    # RSA blocks per second per node: 2000 x 153 us (RSA-1024 as benchmarked
    # on a busy node) is under a third of a core, above the 1,713 handshakes/s
    # one node completes, and keeps the fuzzer's rsa-burn flood from
    # starving pushes (tests.test_fuzz_server).  0 = no limit.
    handshake_rate: int = 2000
    handshake_burst: int = 0              # bucket size; 0 = handshake-rate
    pre_handshake_timeout: int = 30000    # ms from accept to a completed handshake
    max_pending_packets: int = 1024       # packets queued behind a busy handler
    max_read_size: int = 1 << 20          # bytes buffered for one incomplete frame

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_connections_per_ip", "handshake_rate", "handshake_burst"):
            _need_int(f"[limits] {name.replace('_', '-')}", getattr(self, name), 0)
        _need_int("[limits] pre-handshake-timeout", self.pre_handshake_timeout, 0, what=" ms")
        _need_int("[limits] max-pending-packets", self.max_pending_packets, 1)
        _need_int("[limits] max-read-size", self.max_read_size, 64, what=" bytes")


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """
    ``[tls]`` (ours): TLS on the client, WebSocket and HTTP API ports, from
    one PEM certificate chain and key.
    """

    cert_file: str = ""
    key_file: str = ""
    connect_server: bool = False
    ws_server: bool = False
    http_server: bool = False

    def __post_init__(self) -> None:
        _need_str("[tls] cert-file", self.cert_file)
        _need_str("[tls] key-file", self.key_file)
        wanted = self.connect_server or self.ws_server or self.http_server
        if wanted and not (self.cert_file and self.key_file):
            raise ConfigError("TLS is enabled on a port but cert-file and key-file are not both set",
                              key="[tls] cert-file")


#: MPush's default ``mp.zk.digest``: public, so no credential (see SECURITY.md).
MPUSH_ZK_DIGEST = "mpush"


@dataclass(frozen=True, slots=True)
class ZkConfig:
    """
    ``[zk]`` (MPush ``mp.zk``): registration of this node in ZooKeeper, for
    MPush's Java PushSender and alloc service.  Off unless ``enabled``.
    """

    enabled: bool = False
    server_address: str = "127.0.0.1:2181"
    namespace: str = "mpush"
    digest: str = field(default=MPUSH_ZK_DIGEST, repr=False)
    session_timeout: int = 5000           # ms (MPush sessionTimeoutMs)
    connection_timeout: int = 5000        # ms (MPush connectionTimeoutMs)

    def __post_init__(self) -> None:
        _need_str("[zk] server-address", self.server_address)
        _need_str("[zk] namespace", self.namespace)
        _need_str("[zk] digest", self.digest)
        _need_int("[zk] sessionTimeoutMs", self.session_timeout, 1, what=" ms")
        _need_int("[zk] connectionTimeoutMs", self.connection_timeout, 1, what=" ms")
        if self.enabled and not self.server_address:
            raise ConfigError("must not be empty when [zk] enabled = true", key="[zk] server-address")


def split_host_port(text: str) -> tuple:
    """
    ``"host[:port]"`` or ``"[v6 host][:port]"`` as ``(host, port or None)``;
    a bare IPv6 host (more than one colon) has no port.

    @raise ValueError: not of that form, or a port outside 1..65535.
    """
    if not isinstance(text, str):
        raise ValueError(f"not a string: {text!r}")
    host, port = text, None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"expected [host]:port, got {text!r}")
        port = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    if port is None:
        return host, None
    if not (port.isascii() and port.isdigit() and 0 < int(port) <= 65535):
        raise ValueError(f"unusable port in {text!r}")
    return host, int(port)


def parse_allow_entry(text: str) -> tuple:
    """
    One ``[http] proxy-allow`` entry: ``"10.1.2.0/24"`` (every port),
    ``"10.1.2.3:8080"``, ``"10.1.2.0/24:8080"``, ``"[fd00::/64]:443"``, as
    ``(ip_network, port or None)``.

    @raise ValueError: not of that form.
    """
    network, port = split_host_port(text)
    try:
        return ipaddress.ip_network(network, strict=False), port
    except ValueError:
        raise ValueError(f"not an address or network: {text!r}") from None


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """
    The HTTP proxy over the long connection (MPush ``mp.http``, spec 13),
    off by default as in MPush.  Private, loopback, link-local and metadata
    addresses are refused, after DNS, unless listed in ``proxy-allow``.
    """

    enabled: bool = False
    max_conn_per_host: int = 5
    default_read_timeout: int = 10000     # ms
    max_content_length: int = 5 << 20     # bytes
    dns_mapping: tuple = ()               # ((domain, ("ip:port", ...)), ...)
    allow: tuple = ()                     # e.g. ("10.1.2.0/24", "10.1.3.4:8080", "[fd00::/64]:443")
    max_in_flight_per_connection: int = 8
    max_in_flight: int = 256

    def __post_init__(self) -> None:
        _need_int("[http] max-conn-per-host", self.max_conn_per_host, 1)
        _need_int("[http] default-read-timeout", self.default_read_timeout, 1, what=" ms")
        _need_int("[http] max-content-length", self.max_content_length, 1, what=" bytes")
        _need_int("[http] proxy-max-in-flight-per-connection", self.max_in_flight_per_connection, 1)
        _need_int("[http] proxy-max-in-flight", self.max_in_flight, 1)
        for entry in self.allow:
            try:
                parse_allow_entry(entry)
            except ValueError as error:
                raise ConfigError(str(error), key="[http] proxy-allow") from None


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; ``source`` is informational and not compared."""

    core: CoreConfig = field(default_factory=CoreConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    net: NetConfig = field(default_factory=NetConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    push: "PushConfig" = field(default_factory=lambda: PushConfig())
    bind: "BindConfig" = field(default_factory=lambda: BindConfig())
    cluster: "ClusterConfig" = field(default_factory=lambda: ClusterConfig())
    http: "HttpConfig" = field(default_factory=lambda: HttpConfig())
    offline: "OfflineConfig" = field(default_factory=lambda: OfflineConfig())
    limits: "LimitsConfig" = field(default_factory=lambda: LimitsConfig())
    tls: "TlsConfig" = field(default_factory=lambda: TlsConfig())
    zk: "ZkConfig" = field(default_factory=lambda: ZkConfig())
    proxy: "ProxyConfig" = field(default_factory=lambda: ProxyConfig())
    state_dir: str = "/var/lib/mpush"   # [mpush] state-dir: generated keys live here
    source: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for name, kind in (("core", CoreConfig), ("security", SecurityConfig),
                           ("net", NetConfig), ("redis", RedisConfig),
                           ("push", PushConfig), ("bind", BindConfig),
                           ("cluster", ClusterConfig), ("http", HttpConfig),
                           ("offline", OfflineConfig), ("limits", LimitsConfig),
                           ("tls", TlsConfig), ("zk", ZkConfig), ("proxy", ProxyConfig)):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(f"expected a {kind.__name__}, got "
                                  f"{_describe(getattr(self, name))}", key=f"[{name}]")
        _need_str("[mpush] state-dir", self.state_dir)
        if not self.state_dir:
            raise ConfigError("must not be empty", key="[mpush] state-dir")

    def replace(self, **changes: Any) -> "Config":
        """A copy with ``changes`` applied (``dataclasses.replace``), validated again."""
        return dataclasses.replace(self, **changes)


# --- TOML schema ---
#
# A table maps each TOML key either to a field (_Field) or to an accepted-but-unused
# MPush key: _ANY (any value, ignored), _Only(value) (accepted only at the one value
# mpush implements), or a nested dict (a sub-table whose own keys are listed).

@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    convert: Callable[[object], object]


@dataclass(frozen=True, slots=True)
class _Only:
    value: object
    why: str


_ANY = object()        # accepted MPush key with no meaning here; its value is ignored
_ANY_TABLE = object()  # accepted MPush map whose keys are user data (e.g. dns-mapping)


def _size(value: object) -> int:
    return parse_size(value)  # type: ignore[arg-type]


def _millis(value: object) -> int:
    return parse_duration(value)  # type: ignore[arg-type]


def _seconds(value: object) -> int:
    # A bare integer counts seconds here: this key is documented in seconds.
    millis = parse_duration(value, default_unit="s")  # type: ignore[arg-type]
    if millis % 1000:
        raise ValueError(f"{value!r} is not a whole number of seconds")
    return millis // 1000


def _same(value: object) -> object:
    return value  # the dataclass checks the type


def _optional_key(value: object) -> object:
    return None if value == "" else value  # "" means: generate / use the stored pair


def _node_list(value: object) -> object:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of \"host:port\" strings, got {_describe(value)}")
    return tuple(value)


_TRAFFIC_SHAPING_KEYS = {k: _ANY for k in (
    "enabled", "check-interval", "write-global-limit", "read-global-limit",
    "write-channel-limit", "read-channel-limit")}
_POOL_KEYS = {k: _ANY for k in ("min", "max", "queue-size")}
_FLOW_KEYS = {k: _ANY for k in ("limit", "max", "duration")}

_SCHEMA: dict[str, dict[str, object]] = {
    "mpush": {
        "state-dir": _Field("state_dir", _same),
        "home": _ANY, "log-level": _ANY, "log-dir": _ANY, "log-conf-path": _ANY,
    },
    "core": {
        "max-packet-size": _Field("max_packet_size", _size),
        "compress-threshold": _Field("compress_threshold", _size),
        "min-heartbeat": _Field("min_heartbeat", _millis),
        "max-heartbeat": _Field("max_heartbeat", _millis),
        "max-hb-timeout-times": _Field("max_hb_timeout_times", _same),
        "session-expired-time": _Field("session_expired_time", _seconds),
        "pre-handshake-heartbeat": _Field("pre_handshake_heartbeat", _millis),
        "max-inflated-size": _Field("max_inflated_size", _size),
        "max-gateway-packet-size": _Field("max_gateway_packet_size", _size),
        "epoll-provider": _ANY,
    },
    "security": {
        "private-key": _Field("private_key", _optional_key),
        "public-key": _Field("public_key", _optional_key),
        "aes-key-length": _Field("aes_key_length", _same),
    },
    "net": {
        "local-ip": _Field("local_ip", _same),
        "public-ip": _Field("public_ip", _same),
        "connect-server-bind-ip": _Field("connect_server_bind_ip", _same),
        "connect-server-port": _Field("connect_server_port", _same),
        "connect-server-backlog": _Field("connect_server_backlog", _same),
        "gateway-server-bind-ip": _Field("gateway_server_bind_ip", _same),
        "gateway-server-port": _Field("gateway_server_port", _same),
        "gateway-allow": _Field("gateway_allow", _str_list),
        "admin-server-bind-ip": _Field("admin_server_bind_ip", _same),
        "admin-server-port": _Field("admin_server_port", _same),
        "ws-server-port": _Field("ws_server_port", _same),
        "ws-allowed-origins": _Field("ws_allowed_origins", _str_list),
        "http-server-bind-ip": _Field("http_server_bind_ip", _same),
        "http-server-port": _Field("http_server_port", _same),
        # Checked against local-ip in _check_net: it is written into user routes.
        "gateway-server-register-ip": _ANY,
        "connect-server-register-ip": _ANY,
        "connect-server-register-attr": _ANY_TABLE,
        "gateway-server-net": _Only("tcp", "the UDP/SCTP/UDT gateways are not implemented"),
        "ws-path": _Only("/", "the WebSocket server serves only \"/\""),
        "public-host-mapping": _Only({}, "set public-ip instead"),
        "gateway-client-port": _ANY,
        "gateway-server-multicast": _ANY,
        "gateway-client-multicast": _ANY,
        "gateway-client-num": _ANY,
        "snd_buf": {k: _ANY for k in ("connect-server", "gateway-server", "gateway-client")},
        "rcv_buf": {k: _ANY for k in ("connect-server", "gateway-server", "gateway-client")},
        "write-buffer-water-mark": {
            "connect-server-high": _Field("connect_server_write_high", _size),
            "connect-server-low": _ANY, "gateway-server-low": _ANY, "gateway-server-high": _ANY,
        },
        "traffic-shaping": {k: dict(_TRAFFIC_SHAPING_KEYS) for k in (
            "connect-server", "gateway-server", "gateway-client")},
    },
    "redis": {
        "nodes": _Field("nodes", _node_list),
        "password": _Field("password", _same),
        "db": _Field("db", _same),
        "cluster-model": _Field("cluster_model", _same),
        "sentinel-master": _Field("sentinel_master", _same),
        "wait-replicas": _Field("wait_replicas", _same),
        "wait-timeout": _Field("wait_timeout", _millis),
        "write-to-zk": _ANY,
        "config": {k: _ANY for k in (
            "maxTotal", "maxIdle", "minIdle", "lifo", "fairness", "maxWaitMillis",
            "minEvictableIdleTimeMillis", "softMinEvictableIdleTimeMillis",
            "numTestsPerEvictionRun", "testOnCreate", "testOnBorrow", "testOnReturn",
            "testWhileIdle", "timeBetweenEvictionRunsMillis", "blockWhenExhausted",
            "jmxEnabled", "jmxNamePrefix", "jmxNameBase")},
    },
    "zk": {
        "enabled": _Field("enabled", _bool),
        "server-address": _Field("server_address", _same),
        "namespace": _Field("namespace", _same),
        "digest": _Field("digest", _same),
        "watch-path": _ANY,
        "retry": {k: _ANY for k in ("baseSleepTimeMs", "maxRetries", "maxSleepMs")},
        "connectionTimeoutMs": _Field("connection_timeout", _millis),
        "sessionTimeoutMs": _Field("session_timeout", _millis),
    },
    "limits": {
        "max-connections": _Field("max_connections", _same),
        "max-connections-per-ip": _Field("max_connections_per_ip", _same),
        "handshake-rate": _Field("handshake_rate", _same),
        "handshake-burst": _Field("handshake_burst", _same),
        "pre-handshake-timeout": _Field("pre_handshake_timeout", _millis),
        "max-pending-packets": _Field("max_pending_packets", _same),
        "max-read-size": _Field("max_read_size", _size),
    },
    "tls": {
        "cert-file": _Field("cert_file", _same),
        "key-file": _Field("key_file", _same),
        "connect-server": _Field("connect_server", _bool),
        "ws-server": _Field("ws_server", _bool),
        "http-server": _Field("http_server", _bool),
    },
    "offline": {
        "max-count": _Field("max_count", _same),
        "max-bytes": _Field("max_bytes", _size),
        "lease": _Field("lease", _millis),
    },
    "http": {
        "api-token": _Field("api_token", _same),
        "max-body-size": _Field("max_body_size", _size),
        "public-paths": _Field("public_paths", _str_list),
        "proxy-enabled": _Field("proxy.enabled", _bool),
        "max-conn-per-host": _Field("proxy.max_conn_per_host", _same),
        "default-read-timeout": _Field("proxy.default_read_timeout", _millis),
        "max-content-length": _Field("proxy.max_content_length", _size),
        "dns-mapping": _Field("proxy.dns_mapping", _dns_mapping),
        "proxy-allow": _Field("proxy.allow", _str_list),
        "proxy-max-in-flight-per-connection": _Field("proxy.max_in_flight_per_connection", _same),
        "proxy-max-in-flight": _Field("proxy.max_in_flight", _same),
    },
    "thread": {
        "pool": {
            "conn-work": _ANY, "gateway-server-work": _ANY, "http-work": _ANY,
            "ack-timer": _ANY, "push-task": _ANY, "gateway-client-work": _ANY,
            "push-client": _ANY, "event-bus": dict(_POOL_KEYS), "mq": dict(_POOL_KEYS),
        },
    },
    "push": {
        "flow-control": {
            "global": {
                "limit": _Field("global_limit", _same),
                "max": _Field("global_max", _same),
                "duration": _Field("global_duration", _millis),
            },
            "broadcast": {
                "limit": _Field("broadcast_limit", _same),
                "max": _Field("broadcast_max", _same),
                "duration": _Field("broadcast_duration", _millis),
            },
        },
        "tag-match": _Field("tag_match", _same),
        "default-timeout": _Field("default_timeout", _millis),
    },
    "cluster": {
        "node-ttl": _Field("node_ttl", _millis),
        "node-refresh": _Field("node_refresh", _millis),
        "drain-timeout": _Field("drain_timeout", _millis),
        "workers": _Field("workers", _same),
    },
    "bind": {
        "validator": _Field("validator", _same),
        "hmac-secret": _Field("hmac_secret", _same),
    },
    "monitor": {k: _ANY for k in (
        "dump-dir", "dump-stack", "dump-period", "print-log", "profile-enabled",
        "profile-slowly-duration")},
    "spi": {"thread-pool-factory": _ANY, "dns-mapping-manager": _ANY},
}

_CLASSES = {"core": CoreConfig, "security": SecurityConfig, "net": NetConfig,
            "redis": RedisConfig, "push": PushConfig, "bind": BindConfig,
            "cluster": ClusterConfig, "http": HttpConfig, "offline": OfflineConfig,
            "limits": LimitsConfig, "tls": TlsConfig, "zk": ZkConfig}


def config_path(key: str) -> tuple[str, ...] | None:
    """
    Where the TOML key C{key} lives in the Config (as field names), for
    C{"core.max-packet-size"} or MPush's C{"mp.core.max-packet-size"}
    (root C{mp} keys are in C{[mpush]}): C{("core", "max_packet_size")}.
    C{None} for a key mpush does not read (unknown, or an MPush key it
    accepts and ignores); C{()} for C{"mp"}, the whole configuration.
    """
    parts = key.split(".")
    if parts[0] == "mp":
        parts = parts[1:]
        if not parts:
            return ()
        if parts[0] not in _SCHEMA:
            parts = ["mpush", *parts]
    if not parts or parts[0] not in _SCHEMA:
        return None
    spec: object = _SCHEMA[parts[0]]
    for part in parts[1:]:
        if not isinstance(spec, dict) or part not in spec:
            return None
        spec = spec[part]
    if not isinstance(spec, _Field):
        return None
    if "." in spec.name:
        return tuple(spec.name.split("."))        # proxy.enabled: [http] keys of ProxyConfig
    if parts[0] == "mpush":
        return (spec.name,)                       # state-dir: a field of Config itself
    return (parts[0], spec.name)


def _unknown(key: str, known: list[str], what: str) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"unknown {what}" + (f" (did you mean {close[0]!r}?)" if close else "")


def _check_table(path: str, data: object, schema: dict[str, object],
                 fields: dict[str, object] | None) -> None:
    """Walk one table: convert its fields into ``fields``, vet the accepted extras."""
    if not isinstance(data, dict):
        raise ConfigError(f"expected a table, got {_describe(data)}", key=f"[{path}]")
    for key, value in data.items():
        where = f"[{path}] {key}"
        spec = schema.get(key)
        if spec is None:
            raise ConfigError(_unknown(key, sorted(schema), "key"), key=where)
        if isinstance(spec, _Field):
            assert fields is not None
            try:
                fields[spec.name] = spec.convert(value)
            except ValueError as e:
                raise ConfigError(str(e), key=where) from None
        elif isinstance(spec, _Only):
            if type(value) is not type(spec.value) or value != spec.value:
                raise ConfigError(f"only {spec.value!r} is supported by mpush "
                                  f"({spec.why}), got {value!r}", key=where)
        elif spec is _ANY_TABLE:
            if not isinstance(value, dict):
                raise ConfigError(f"expected a table, got {_describe(value)}", key=where)
        elif isinstance(spec, dict):
            _check_table(f"{path}.{key}", value, spec, fields)


def _check_net(data: dict, net: NetConfig) -> None:
    """MPush writes gateway-server-register-ip into user routes; mpush writes local-ip."""
    register = data.get("net", {}).get("gateway-server-register-ip")
    if register is not None and register not in ("", net.local_ip):
        raise ConfigError(
            f"mpush registers [net] local-ip ({net.local_ip!r}) in user routes; set local-ip "
            f"to {register!r} instead", key="[net] gateway-server-register-ip")


def parse_config(data: dict, source: str | None = None) -> Config:
    """Build a validated Config from parsed TOML (``tomllib`` output)."""
    try:
        if not isinstance(data, dict):
            raise ConfigError(f"expected a table of tables, got {_describe(data)}")
        fields: dict[str, dict[str, object]] = {name: {} for name in _SCHEMA}
        for table, content in data.items():
            schema = _SCHEMA.get(table)
            if schema is None:
                if isinstance(content, dict):
                    raise ConfigError(_unknown(table, sorted(_SCHEMA), "table"),
                                      key=f"[{table}]")
                raise ConfigError(f"{_unknown(table, sorted(_SCHEMA), 'top-level key')}; "
                                  f"options live in tables such as [core]", key=table)
            _check_table(table, content, schema, fields[table])
        proxy_fields = {name[len("proxy."):]: fields["http"].pop(name)
                        for name in list(fields["http"]) if name.startswith("proxy.")}
        parts = {name: kind(**fields[name]) for name, kind in _CLASSES.items()}
        parts["proxy"] = ProxyConfig(**proxy_fields)
        _check_net(data, parts["net"])
        return Config(**parts, **fields["mpush"], source=source)
    except ConfigError as e:
        raise e.with_source(source) from None


def load_config(path: str | None = None) -> Config:
    """Read and validate the TOML file at ``path``; None gives every default."""
    if path is None:
        return Config()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read the file: {e.strerror or e}", source=path) from None
    except UnicodeDecodeError:
        raise ConfigError("the file is not valid UTF-8", source=path) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"TOML syntax error: {e}", source=path) from None
    return parse_config(data, source=path)


_CLUSTER_URL = "redis+cluster://"


def _mask(url: str) -> str:
    """Hide a password before a URL goes into an error message or a log."""
    return re.sub(r"//.*@", "//***@", url)


def parse_redis_url(url: str) -> RedisConfig:
    """
    ``redis://[:password@]host[:port][/db]`` -> RedisConfig (port 6379, db 0
    default); ``redis+cluster://[:password@]host:port,...`` -> a Redis
    Cluster's seed nodes.
    """
    if not isinstance(url, str):
        raise ConfigError(f"expected a redis:// URL string, got {type(url).__name__}",
                          key="redis url")
    shown = _mask(url)
    if url.startswith(_CLUSTER_URL):
        where, _, path = url[len(_CLUSTER_URL):].partition("/")
        auth, at, hosts = where.rpartition("@")
        try:
            if path.strip("/") not in ("", "0"):
                raise ConfigError("a Redis Cluster has only db 0", key="redis url")
            return RedisConfig(nodes=tuple(hosts.split(",")), password=unquote(auth.partition(":")[2]) if at else "",
                               cluster_model="cluster")
        except ConfigError as e:
            raise ConfigError(f"{e.reason} in {shown!r} (expected redis+cluster://[:password@]host:port,...)",
                              key="redis url") from None

    def bad(reason: str) -> ConfigError:
        return ConfigError(f"{reason} in {shown!r} (expected "
                           f"redis://[:password@]host:port/db)", key="redis url")

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise bad(f"malformed URL ({_mask(str(e))})") from None
    if parts.scheme != "redis":
        raise bad(f"unsupported scheme {parts.scheme!r}")
    if parts.query or parts.fragment:
        raise bad("query strings and fragments are not supported")
    if parts.username:
        raise bad("a user name (Redis ACL) is not supported, only \":password@\"")
    host = parts.hostname
    if not host:
        raise bad("missing host")
    db_text = parts.path[1:] if parts.path.startswith("/") else parts.path
    if db_text and not (db_text.isascii() and db_text.isdigit()):
        raise bad(f"the database must be a number, got {db_text!r}")
    host = f"[{host}]" if ":" in host else host
    try:
        return RedisConfig(nodes=(f"{host}:{6379 if port is None else port}",),
                           password=unquote(parts.password or ""),
                           db=int(db_text or 0))
    except ConfigError as e:
        raise bad(e.reason) from None


def apply_overrides(config: Config, *, connect_port: int | None = None,
                    gateway_port: int | None = None, admin_port: int | None = None,
                    redis_url: str | None = None, http_port: int | None = None,
                    workers: int | None = None) -> Config:
    """Command-line overrides on top of the file; each is validated like the file."""
    net_changes = {name: value for name, value in (
        ("connect_server_port", connect_port), ("gateway_server_port", gateway_port),
        ("admin_server_port", admin_port), ("http_server_port", http_port)) if value is not None}
    try:
        changes: dict[str, object] = {}
        if net_changes:
            changes["net"] = dataclasses.replace(config.net, **net_changes)
        if redis_url is not None:
            changes["redis"] = parse_redis_url(redis_url)
        if workers is not None:
            changes["cluster"] = dataclasses.replace(config.cluster, workers=workers)
        return config.replace(**changes) if changes else config
    except ConfigError as e:
        raise e.with_source("overrides") from None


def check_workers(config: Config) -> None:
    """What ``[cluster] workers = N`` with N > 1 needs, checked once the command line's
    overrides are in: shared state in Redis, a gateway, and room for the per-worker ports.

    Worker ``i`` (0-based) listens on ``gateway-server-port + i`` and, when the console is
    on, ``admin-server-port + i``; the client, WebSocket and HTTP ports are shared.
    """
    count = config.cluster.workers
    if count <= 1:
        return
    key = "[cluster] workers"
    if config.redis.url() is None:
        raise ConfigError(
            f"workers = {count} needs Redis: set [redis] nodes (or --redis); the in-memory "
            f"session and route stores cannot be shared between processes", key=key)
    net = config.net
    if not net.gateway_server_port:
        raise ConfigError(
            f"workers = {count} needs the gateway ([net] gateway-server-port is 0): pushes "
            f"reach a worker's users through that worker's own gateway port", key=key)
    ranges = [("[net] gateway-server-port", net.gateway_server_port, count)]
    if net.admin_server_port:
        ranges.append(("[net] admin-server-port", net.admin_server_port, count))
    for name, first, n in ranges:
        if first + n - 1 > 65535:
            raise ConfigError(
                f"workers = {count} needs ports {first}-{first + n - 1} for {name} + 0..{n - 1}, "
                f"beyond 65535", key=key)
    shared = [("[net] connect-server-port", net.connect_server_port, 1)]
    if net.http_server_port:
        shared.append(("[net] http-server-port", net.http_server_port, 1))
    if net.ws_server_port:
        shared.append(("[net] ws-server-port", net.ws_server_port, 1))
    everything = ranges + shared
    for index, (name, first, n) in enumerate(ranges):
        for other, start, m in everything[index + 1:]:
            if first <= start + m - 1 and start <= first + n - 1:
                shown = f"{start}" if m == 1 else f"{start}-{start + m - 1}"
                raise ConfigError(
                    f"workers = {count} gives each worker its own port from {name} "
                    f"({first}-{first + n - 1}), which overlaps {other} ({shown}); move one "
                    f"of them", key=key)


def worker_config(config: Config, index: int) -> Config:
    """The configuration worker ``index`` (0-based) runs: its own gateway port and
    console port (``+ index``); every other setting as configured."""
    net = config.net
    changes = {"gateway_server_port": net.gateway_server_port + index}
    if net.admin_server_port:
        changes["admin_server_port"] = net.admin_server_port + index
    return config.replace(net=dataclasses.replace(net, **changes))
