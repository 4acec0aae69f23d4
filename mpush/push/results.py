"""
What a push-side caller gets back: the ack model it asks for, the outcome of
each push and of each node's broadcast, and how a gateway's answer (spec 12.6,
14.1) maps to an outcome.

The mapping lives here, apart from sockets and Redis, so the push client, the
CLI and the lead's gateway server agree on one table.  It imports no Twisted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mpush.protocol.client_type import ClientType
from mpush.protocol.errors import ErrorCode
from mpush.protocol.packet import Command

__all__ = [
    "REPORT_TIMEOUTS",
    "AckModel",
    "BroadcastResult",
    "PushResult",
    "PushStatus",
    "client_type_name",
    "node_name",
    "status_for_error",
]

#: GATEWAY_PUSH flag bit of ours: "tell me about timeouts" (ERROR 4
#: ACK_TIMEOUT).  MPush's Java PushSender never sets it, so Java push clients
#: keep getting MPush's silence on a timeout and only we are told.
REPORT_TIMEOUTS = 0x40


class AckModel(enum.IntEnum):
    """
    Whether and how the device must acknowledge a push; the value is the
    GATEWAY_PUSH (and PUSH) flag bits (spec 6.13, 12.4).
    """

    NO_ACK = 0
    AUTO_ACK = 0x08
    BIZ_ACK = 0x04


class PushStatus(enum.Enum):
    """
    The outcome of one push.  The values are the lower-case words the CLI
    prints and C{to_json_dict} writes.
    """

    SUCCESS = "success"
    FAILURE = "failure"
    OFFLINE = "offline"
    TIMEOUT = "timeout"
    ACK_TIMEOUT = "ack_timeout"


_STATUS_BY_CODE = {
    ErrorCode.OFFLINE: PushStatus.OFFLINE,
    ErrorCode.PUSH_CLIENT_FAILURE: PushStatus.FAILURE,
    ErrorCode.ACK_TIMEOUT: PushStatus.ACK_TIMEOUT,
}


def status_for_error(cmd: int, code: int) -> PushStatus | None:
    """
    The final status an ERROR reply {cmd, code} means, or C{None} for
    ROUTER_CHANGE, which is not final: the push follows the user.

    Codes MPush's PushSender never completes on (100, 101, anything else),
    and replies about another command, are failures here, never a hang.
    """
    if cmd != Command.GATEWAY_PUSH:
        return PushStatus.FAILURE
    if code == ErrorCode.ROUTER_CHANGE:
        return None
    return _STATUS_BY_CODE.get(code, PushStatus.FAILURE)


def client_type_name(client_type: int) -> str:
    """
    C{MOBILE}, C{PC}, C{WEB}, C{UNKNOWN}; C{ANY} for 0 (embedded-mode pushes
    to every type and broadcasts); the number for anything else.
    """
    if client_type == 0:
        return "ANY"
    try:
        return ClientType(client_type).name
    except ValueError:
        return str(client_type)


def node_name(host: str, port: int) -> str:
    """C{host:port}, with IPv6 literals bracketed so the port stays readable."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class PushResult:
    """
    The outcome of a push to one client type of one user.

    @ivar client_type: the route's client type; for an embedded-mode push
        (sent with type 0) the type the node reports having delivered to, or
        0 when it did not say.
    @ivar node: C{host:port} of the gateway that was asked; C{None} when no
        node was contacted (no route, offline route, lookup failure).
    @ivar code: the MPush error code of an ERROR reply, else C{None}.
    @ivar time_points: (name, ms) in order: ours (C{send}, C{reply},
        C{timeout}, C{redirect}, ...) around the node's own (spec 12.6).
    @ivar redirected: the push followed a ROUTER_CHANGE to another route.
    """

    user_id: str
    client_type: int
    status: PushStatus
    node: str | None = None
    code: int | None = None
    reason: str | None = None
    time_points: tuple[tuple[str, int], ...] = ()
    redirected: bool = False

    @property
    def ok(self) -> bool:
        return self.status is PushStatus.SUCCESS

    def to_json_dict(self) -> dict:
        """
        A JSON-ready dict with MPush-style camelCase keys; time points as
        C{[name, ms]} pairs.
        """
        return {
            "userId": self.user_id,
            "clientType": self.client_type,
            "status": self.status.value,
            "node": self.node,
            "code": self.code,
            "reason": self.reason,
            "timePoints": [[name, ms] for name, ms in self.time_points],
            "redirected": self.redirected,
        }


@dataclass(frozen=True, slots=True)
class BroadcastResult:
    """
    The outcome of a broadcast on one node.

    @ivar count: connections the node wrote to, when it said (OK data
        C{{"count": N}}).
    """

    node: str
    status: PushStatus
    count: int | None = None
    reason: str | None = None
    code: int | None = None

    @property
    def ok(self) -> bool:
        return self.status is PushStatus.SUCCESS

    def to_json_dict(self) -> dict:
        return {
            "node": self.node,
            "status": self.status.value,
            "count": self.count,
            "reason": self.reason,
            "code": self.code,
        }
