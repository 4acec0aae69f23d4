"""
The push client for Python back-ends: push to users and broadcast through
mpush (or MPush) gateway servers, with a result for every push (spec 12.7).
"""

from mpush.push.client import (
    DEFAULT_BROADCAST_TIMEOUT,
    DEFAULT_TIMEOUT,
    InvalidPush,
    PushBackendUnavailable,
    PushClient,
    PushClientClosed,
    wire_timeout,
)
from mpush.push.gateway_client import (
    BadGatewayReply,
    GatewayClosed,
    GatewayConnectFailed,
    GatewayConnection,
    GatewayConnectionLost,
    GatewayError,
    GatewayPool,
    GatewayReply,
    GatewayTimeout,
    PushTooLarge,
)
from mpush.push.results import (
    REPORT_TIMEOUTS,
    AckModel,
    BroadcastResult,
    PushResult,
    PushStatus,
)

__all__ = [
    "DEFAULT_BROADCAST_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "REPORT_TIMEOUTS",
    "AckModel",
    "BadGatewayReply",
    "BroadcastResult",
    "GatewayClosed",
    "GatewayConnectFailed",
    "GatewayConnection",
    "GatewayConnectionLost",
    "GatewayError",
    "GatewayPool",
    "GatewayReply",
    "GatewayTimeout",
    "InvalidPush",
    "PushBackendUnavailable",
    "PushClient",
    "PushClientClosed",
    "PushResult",
    "PushStatus",
    "PushTooLarge",
    "wire_timeout",
]
