"""
The text that routes, kicks and push results are shared as, byte for byte
with MPush's Java nodes and push client (spec 11.4, 11.8, 12.6, 19).

Everything a Redis key, hash field, channel or JSON value looks like lives
here, sans-I/O, so the in-memory and the Redis routers cannot drift apart and
a Java node sharing the same Redis reads what we write.

JSON strings: Java builds the ClientLocation JSON by hand and does not escape
strings (a quote in a deviceId breaks it); we write valid JSON with
C{json.dumps} per value and C{ensure_ascii=False}, which is byte-identical to
Java's output for every string without a quote, backslash or control
character.  Kick and push-result JSON come from fastjson in Java, which does
escape; C{json.dumps} agrees with it on ordinary strings.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Iterable

from mpush.protocol.client_type import ClientType, classify
from mpush.protocol.fields import INT32_MAX, INT32_MIN

__all__ = [
    "NODES_KEY",
    "NODE_ROUTES_PREFIX",
    "ONLINE_IPS_KEY",
    "OFFLINE_CHANNEL",
    "ONLINE_CHANNEL",
    "ClientLocation",
    "InvalidKick",
    "InvalidLocation",
    "InvalidNodeInfo",
    "InvalidPushResult",
    "InvalidRouteField",
    "KickRequest",
    "NodeInfo",
    "client_type_field",
    "decode_kick",
    "decode_location",
    "decode_node_member",
    "decode_push_result",
    "decode_route_member",
    "encode_kick",
    "encode_location",
    "encode_node_member",
    "encode_push_result",
    "encode_route_member",
    "kick_channel",
    "node_key",
    "node_online_key",
    "node_routes_key",
    "online_counts_key",
    "online_users_key",
    "parse_client_type_field",
    "user_route_key",
]

#: Channel of the user-online event; the message is the bare userId.
ONLINE_CHANNEL = "/mpush/online/"
#: Channel of the user-offline event; the message is the bare userId.
OFFLINE_CHANNEL = "/mpush/offline/"

_KICK_CHANNEL_PREFIX = "/mpush/kick/"
_USER_ROUTE_PREFIX = "mp:ur:"
_ONLINE_USERS_PREFIX = "mp:oul:"
# Ours, not MPush's (Java nodes neither read nor write them): a per-node
# index of the routes it registered, and the node registry.
#: Prefix of the per-node route index keys (ours).
NODE_ROUTES_PREFIX = "mp:nr:"
_NODE_PREFIX = "mp:node:"
#: Set of C{<host>:<port>} of every registered node (ours).
NODES_KEY = "mp:nodes"
# Ours too: who put each user in an online list shared by several nodes
# (every set of workers), so that one node's start or death takes out only
# its own users.
_ONLINE_COUNTS_PREFIX = "mp:oulc:"
_NODE_ONLINE_PREFIX = "mp:ouln:"
#: Hash of C{<host>:<port>} -> the public IP whose online list that node
#: writes (ours): what a survivor needs to clean up after a dead node.
ONLINE_IPS_KEY = "mp:oulip"

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


class InvalidLocation(ValueError):
    """A ClientLocation value that is not JSON of the right shape (or cannot be written)."""


class InvalidKick(ValueError):
    """A kick message that is not JSON of the right shape (or cannot be written)."""


class InvalidPushResult(ValueError):
    """A gateway push result that is not JSON of the right shape (or cannot be written)."""


class InvalidNodeInfo(ValueError):
    """A node registration or node member string that is not ours."""


class InvalidRouteField(ValueError):
    """A field of C{mp:ur:<userId>} or a route-index member that is not a client type."""


# ---------------------------------------------------------------------------
# Keys and channels


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be text, not {type(value).__name__}")
    return value


def user_route_key(user_id: str) -> str:
    """C{mp:ur:<userId>}: the hash of a user's routes, field = client type."""
    return _USER_ROUTE_PREFIX + _text(user_id, "user id")


def online_users_key(public_ip: str) -> str:
    """C{mp:oul:<publicIp>}: the sorted set of users online on servers behind that IP."""
    return _ONLINE_USERS_PREFIX + _text(public_ip, "public ip")


def online_counts_key(public_ip: str) -> str:
    """C{mp:oulc:<publicIp>}: how many nodes have each user of that online list online (ours)."""
    return _ONLINE_COUNTS_PREFIX + _text(public_ip, "public ip")


def node_online_key(host: str, port: int) -> str:
    """C{mp:ouln:<host>:<port>}: the users that gateway endpoint's node put online (ours)."""
    return f"{_NODE_ONLINE_PREFIX}{_text(host, 'host')}:{_port(port)}"


def kick_channel(host: str, port: int) -> str:
    """C{/mpush/kick/<host>:<port>}: where the server owning that gateway endpoint listens."""
    return f"{_KICK_CHANNEL_PREFIX}{_text(host, 'host')}:{_port(port)}"


def node_routes_key(host: str, port: int) -> str:
    """C{mp:nr:<host>:<port>}: routes registered through that gateway endpoint (ours)."""
    return f"{NODE_ROUTES_PREFIX}{_text(host, 'host')}:{_port(port)}"


def node_key(host: str, port: int) -> str:
    """C{mp:node:<host>:<port>}: a live node's L{NodeInfo}, with a TTL (ours)."""
    return f"{_NODE_PREFIX}{_text(host, 'host')}:{_port(port)}"


def _port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {port!r}")
    return port


def client_type_field(client_type: int) -> str:
    """The hash field of a client type: its decimal code (C{"1"}, C{"-1"})."""
    if isinstance(client_type, bool) or not isinstance(client_type, int):
        raise TypeError(f"client type must be an int, not {client_type!r}")
    return str(int(client_type))


def parse_client_type_field(field: str | bytes) -> int:
    """
    The client type a hash field names.  Java writes any int, so any int32
    is accepted, not only the four known codes.

    @raise InvalidRouteField: not a decimal int32.
    """
    if isinstance(field, bytes):
        try:
            field = field.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidRouteField(f"client type field is not ASCII: {field!r}") from None
    if not isinstance(field, str):
        raise InvalidRouteField(f"client type field must be text, not {type(field).__name__}")
    body = field[1:] if field[:1] in ("-", "+") else field
    if not body or not body.isascii() or not body.isdigit():
        raise InvalidRouteField(f"client type field is not a number: {field!r}")
    value = int(field)
    if not INT32_MIN <= value <= INT32_MAX:
        raise InvalidRouteField(f"client type field out of range: {field!r}")
    return value


def encode_route_member(user_id: str, client_type: int) -> str:
    """C{<userId>\\t<clientType>}: a member of a node's route index."""
    return f"{_text(user_id, 'user id')}\t{client_type_field(client_type)}"


def decode_route_member(member: str | bytes) -> tuple[str, int]:
    """
    (userId, clientType) of a route-index member; the last tab splits, so a
    userId may itself contain tabs.

    @raise InvalidRouteField: no tab or no client type after it.
    """
    if isinstance(member, bytes):
        try:
            member = member.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRouteField(f"route member is not UTF-8: {member!r}") from None
    if not isinstance(member, str):
        raise InvalidRouteField(f"route member must be text, not {type(member).__name__}")
    user_id, tab, field = member.rpartition("\t")
    if not tab:
        raise InvalidRouteField(f"route member has no tab: {member!r}")
    return user_id, parse_client_type_field(field)


def encode_node_member(host: str, port: int) -> str:
    """C{<host>:<port>}: a member of L{NODES_KEY}."""
    return f"{_text(host, 'host')}:{_port(port)}"


def decode_node_member(member: str | bytes) -> tuple[str, int]:
    """
    (host, port) of a L{NODES_KEY} member; the last colon splits, so an IPv6
    host works.

    @raise InvalidNodeInfo: not C{host:port}.
    """
    if isinstance(member, bytes):
        try:
            member = member.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidNodeInfo(f"node member is not UTF-8: {member!r}") from None
    if not isinstance(member, str):
        raise InvalidNodeInfo(f"node member must be text, not {type(member).__name__}")
    host, colon, port = member.rpartition(":")
    if not colon or not host or not port.isascii() or not port.isdigit():
        raise InvalidNodeInfo(f"node member is not host:port: {member!r}")
    return host, int(port)


# ---------------------------------------------------------------------------
# JSON helpers


#: What json.dumps(ensure_ascii=False) would escape in a string.
_JSON_ESCAPED = re.compile(r'["\\\x00-\x1f]')


def _dump(value: object) -> str:
    if type(value) is str and _JSON_ESCAPED.search(value) is None:
        # Most ids and names: nothing to escape (json.dumps is 10x dearer).
        return '"' + value + '"'
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _load_object(text: str | bytes, error: type[ValueError], what: str) -> dict:
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise error(f"{what} is not UTF-8") from None
    if not isinstance(text, str):
        raise error(f"{what} must be text or bytes, not {type(text).__name__}")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise error(f"{what} is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise error(f"{what} is not a JSON object: {text[:80]!r}")
    return value


def _optional_str(obj: dict, key: str, error: type[ValueError], what: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise error(f"{what} {key} must be a string, not {value!r}")
    return value


def _int(obj: dict, key: str, error: type[ValueError], what: str, *, low=INT32_MIN, high=INT32_MAX) -> int:
    # Missing or null reads as 0, like fastjson into a Java int field.
    value = obj.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{what} {key} must be an integer, not {value!r}")
    if not low <= value <= high:
        raise error(f"{what} {key} out of range: {value}")
    return value


def _check_str(value: object, key: str, error: type[ValueError], what: str) -> None:
    if value is not None and not isinstance(value, str):
        raise error(f"{what} {key} must be text or None, not {type(value).__name__}")


def _check_int(value: object, key: str, error: type[ValueError], what: str, *, low=INT32_MIN, high=INT32_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{what} {key} must be an int, not {value!r}")
    if not low <= value <= high:
        raise error(f"{what} {key} out of range: {value}")
    return int(value)


# ---------------------------------------------------------------------------
# ClientLocation (spec 11.4)


@dataclass(frozen=True, slots=True)
class ClientLocation:
    """
    Where one route of a user lives: the owning server's B{gateway}
    endpoint, the device, and the connection id while online.
    """

    host: str | None
    port: int
    device_id: str | None
    os_name: str | None
    client_version: str | None
    conn_id: str | None

    @property
    def online(self) -> bool:
        """Online routes carry the id of the connection that bound them."""
        return self.conn_id is not None

    @property
    def client_type(self) -> ClientType:
        """Recomputed from osName, as every MPush reader does."""
        return classify(self.os_name)

    @property
    def gateway(self) -> tuple[str | None, int]:
        """(host, port) of the owning server's gateway: "is this me?"."""
        return (self.host, self.port)

    def offline(self) -> "ClientLocation":
        """The same route marked offline: routes are never deleted."""
        return replace(self, conn_id=None)

    def owned_by(self, conn_id: str | None = None, device_id: str | None = None) -> bool:
        """
        Whether this route is online and belongs to the caller: the same
        connection id, or (UNBIND, spec 11.5) the same device.  With neither
        given, nobody owns it.
        """
        if self.conn_id is None:
            return False
        if conn_id is not None and self.conn_id == conn_id:
            return True
        return device_id is not None and self.device_id == device_id


# (json key, attribute) in the order Java writes them, after "port".
_LOCATION_KEYS = (
    ("host", "host"),
    ("deviceId", "device_id"),
    ("osName", "os_name"),
    ("clientVersion", "client_version"),
    ("connId", "conn_id"),
)


def encode_location(location: ClientLocation) -> str:
    """
    MPush's ClientLocation JSON: C{port} first, then host, deviceId, osName,
    clientVersion, connId, each left out when C{None}; compact.

    @raise InvalidLocation: a field of the wrong type.
    """
    if not isinstance(location, ClientLocation):
        raise InvalidLocation(f"not a ClientLocation: {type(location).__name__}")
    port = _check_int(location.port, "port", InvalidLocation, "location")
    parts = [f'{{"port":{port}']
    for key, attribute in _LOCATION_KEYS:
        value = getattr(location, attribute)
        if value is None:
            continue
        _check_str(value, key, InvalidLocation, "location")
        parts.append(f',"{key}":{_dump(value)}')
    parts.append("}")
    return "".join(parts)


def decode_location(text: str | bytes) -> ClientLocation:
    """
    Read a ClientLocation as fastjson would: any key order, unknown keys
    ignored, a missing (or null) key is C{None}, a missing port is 0.

    @raise InvalidLocation: not UTF-8 JSON, not an object, or a value of the
        wrong type (port must be an integer, the rest strings or null).
    """
    obj = _load_object(text, InvalidLocation, "location")
    port = _int(obj, "port", InvalidLocation, "location")
    values = {
        attribute: _optional_str(obj, key, InvalidLocation, "location")
        for key, attribute in _LOCATION_KEYS
    }
    return ClientLocation(port=port, **values)


# ---------------------------------------------------------------------------
# Kick (spec 11.8)


@dataclass(frozen=True, slots=True)
class KickRequest:
    """
    "Kick connection C{conn_id} of C{user_id} if you still have it", sent to
    the server whose gateway endpoint is target_server:target_port.

    C{close} (ours: an operator's kick) asks that the connection be closed
    after the KICK; it is written only when true, so MPush's re-login kick
    keeps MPush's exact form, and MPush nodes (fastjson) ignore the key.
    """

    user_id: str | None
    device_id: str | None
    conn_id: str | None
    client_type: int
    target_server: str | None
    target_port: int
    close: bool = False


# fastjson's alphabetical order.
_KICK_KEYS = (
    ("clientType", "client_type", int),
    ("connId", "conn_id", str),
    ("deviceId", "device_id", str),
    ("targetPort", "target_port", int),
    ("targetServer", "target_server", str),
    ("userId", "user_id", str),
)


def encode_kick(kick: KickRequest) -> str:
    """
    fastjson's form of MPush's kick message: alphabetical keys, compact,
    null strings left out (the two ints are always written).

    @raise InvalidKick: a field of the wrong type.
    """
    if not isinstance(kick, KickRequest):
        raise InvalidKick(f"not a KickRequest: {type(kick).__name__}")
    parts = []
    for key, attribute, kind in _KICK_KEYS:
        value = getattr(kick, attribute)
        if kind is int:
            parts.append(f'"{key}":{_check_int(value, key, InvalidKick, "kick")}')
        elif value is not None:
            _check_str(value, key, InvalidKick, "kick")
            parts.append(f'"{key}":{_dump(value)}')
    if kick.close is True:
        parts.insert(1, '"close":true')  # alphabetical: after clientType
    elif kick.close is not False:
        raise InvalidKick(f"kick close must be a bool, not {kick.close!r}")
    return "{" + ",".join(parts) + "}"


def decode_kick(text: str | bytes) -> KickRequest:
    """
    Read a kick message: any key order, missing strings C{None}, missing
    ints 0.

    @raise InvalidKick: not UTF-8 JSON, not an object, or a wrongly typed value.
    """
    obj = _load_object(text, InvalidKick, "kick")
    values = {}
    for key, attribute, kind in _KICK_KEYS:
        if kind is int:
            values[attribute] = _int(obj, key, InvalidKick, "kick")
        else:
            values[attribute] = _optional_str(obj, key, InvalidKick, "kick")
    close = obj.get("close", False)
    if not isinstance(close, bool):
        raise InvalidKick(f"kick close must be a boolean, not {close!r}")
    return KickRequest(**values, close=close)


# ---------------------------------------------------------------------------
# Gateway push result (spec 12.6)


def _time_point_pairs(time_points: Iterable) -> list[tuple[str, int]]:
    items = list(time_points)
    if all(isinstance(item, (tuple, list)) for item in items):
        pairs = items
    else:
        if len(items) % 2:
            raise InvalidPushResult("flat time points must alternate name and time")
        pairs = list(zip(items[0::2], items[1::2]))
    checked = []
    for pair in pairs:
        if len(pair) != 2:
            raise InvalidPushResult(f"a time point is (name, ms), not {pair!r}")
        name, ms = pair
        if not isinstance(name, str):
            raise InvalidPushResult(f"time point name must be text, not {name!r}")
        checked.append((name, _check_int(ms, "timePoints", InvalidPushResult, "push result",
                                         low=_INT64_MIN, high=_INT64_MAX)))
    return checked


def encode_push_result(
    user_id: str | None,
    client_type: int,
    time_points: Iterable,
) -> str:
    """
    The C{data} of a gateway OK/ERROR reply: alphabetical keys, C{clientType}
    left out when <= 0, C{userId} left out when C{None}, C{timePoints} one flat
    list alternating name and milliseconds.

    @param time_points: (name, ms) pairs, or already flat
        C{[name, ms, name, ms, ...]}.
    @raise InvalidPushResult: a value of the wrong type.
    """
    _check_str(user_id, "userId", InvalidPushResult, "push result")
    client_type = _check_int(client_type, "clientType", InvalidPushResult, "push result")
    try:
        pairs = _time_point_pairs(time_points)
    except TypeError:
        raise InvalidPushResult(f"time points must be iterable, not {time_points!r}") from None
    flat: list = []
    for name, ms in pairs:
        flat.append(name)
        flat.append(ms)
    parts = []
    if client_type > 0:
        parts.append(f'"clientType":{client_type}')
    parts.append(f'"timePoints":{_dump(flat)}')
    if user_id is not None:
        parts.append(f'"userId":{_dump(user_id)}')
    return "{" + ",".join(parts) + "}"


def decode_push_result(text: str | bytes) -> tuple[str | None, int, list[tuple[str, int]]]:
    """
    (userId, clientType, [(name, ms), ...]) of a push result; a missing
    clientType is 0, missing timePoints an empty list.

    @raise InvalidPushResult: not UTF-8 JSON, not an object, or a wrongly
        typed value (odd-length or misordered timePoints).
    """
    obj = _load_object(text, InvalidPushResult, "push result")
    user_id = _optional_str(obj, "userId", InvalidPushResult, "push result")
    client_type = _int(obj, "clientType", InvalidPushResult, "push result")
    flat = obj.get("timePoints")
    if flat is None:
        return user_id, client_type, []
    if not isinstance(flat, list):
        raise InvalidPushResult(f"push result timePoints must be a list, not {flat!r}")
    if len(flat) % 2:
        raise InvalidPushResult("push result timePoints must alternate name and time")
    return user_id, client_type, _time_point_pairs(zip(flat[0::2], flat[1::2]))


# ---------------------------------------------------------------------------
# Node registry (ours)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """
    A live mpush node as the registry announces it: its gateway endpoint
    (host, port; the identity routes point at) and its public connection
    endpoint.  C{started_ms} tells a restarted node from its predecessor.
    """

    host: str
    port: int
    connect_host: str | None
    connect_port: int
    started_ms: int

    @property
    def gateway(self) -> tuple[str, int]:
        return (self.host, self.port)

    def to_json(self) -> str:
        """Alphabetical keys, compact, nulls left out (the fastjson style of spec 19.3)."""
        if not isinstance(self.host, str) or not self.host:
            raise InvalidNodeInfo(f"node host must be non-empty text, not {self.host!r}")
        port = _check_int(self.port, "port", InvalidNodeInfo, "node")
        connect_port = _check_int(self.connect_port, "connectPort", InvalidNodeInfo, "node")
        started = _check_int(self.started_ms, "startedMs", InvalidNodeInfo, "node",
                             low=_INT64_MIN, high=_INT64_MAX)
        _check_str(self.connect_host, "connectHost", InvalidNodeInfo, "node")
        parts = []
        if self.connect_host is not None:
            parts.append(f'"connectHost":{_dump(self.connect_host)}')
        parts.append(f'"connectPort":{connect_port}')
        parts.append(f'"host":{_dump(self.host)}')
        parts.append(f'"port":{port}')
        parts.append(f'"startedMs":{started}')
        return "{" + ",".join(parts) + "}"

    @classmethod
    def from_member(cls, member: str | bytes) -> "NodeInfo":
        """
        What is known of a node from its L{NODES_KEY} member alone (its
        registration is gone): host and port, nothing else.

        @raise InvalidNodeInfo: not C{host:port}.
        """
        host, port = decode_node_member(member)
        return cls(host=host, port=port, connect_host=None, connect_port=0, started_ms=0)

    @classmethod
    def from_json(cls, text: str | bytes) -> "NodeInfo":
        """
        @raise InvalidNodeInfo: not JSON of this shape; C{host} is required.
        """
        obj = _load_object(text, InvalidNodeInfo, "node")
        host = _optional_str(obj, "host", InvalidNodeInfo, "node")
        if not host:
            raise InvalidNodeInfo("node has no host")
        return cls(
            host=host,
            port=_int(obj, "port", InvalidNodeInfo, "node"),
            connect_host=_optional_str(obj, "connectHost", InvalidNodeInfo, "node"),
            connect_port=_int(obj, "connectPort", InvalidNodeInfo, "node"),
            started_ms=_int(obj, "startedMs", InvalidNodeInfo, "node", low=_INT64_MIN, high=_INT64_MAX),
        )
