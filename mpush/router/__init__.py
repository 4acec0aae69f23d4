"""
Routing state: which connection serves a user here (L{LocalRouter}), where a
user is bound across the cluster, online-user events, remote kicks and the
live-node registry (the interfaces, with an in-memory implementation).

The Redis implementations are in L{mpush.router.redis}; they are not imported
here because txredisapi imports the global reactor, which must not happen
before a reactor is chosen.
"""

from mpush.router.interfaces import (
    IKickChannel,
    INodeRegistry,
    IRemoteRouter,
    IUserEvents,
    NodeInfo,
    RouterUnavailable,
)
from mpush.router.local import LocalRouter
from mpush.router.memory import (
    MemoryKickChannel,
    MemoryNodeRegistry,
    MemoryRemoteRouter,
    MemoryRoutingState,
    MemoryUserEvents,
)

__all__ = [
    "IKickChannel",
    "INodeRegistry",
    "IRemoteRouter",
    "IUserEvents",
    "LocalRouter",
    "MemoryKickChannel",
    "MemoryNodeRegistry",
    "MemoryRemoteRouter",
    "MemoryRoutingState",
    "MemoryUserEvents",
    "NodeInfo",
    "RouterUnavailable",
]
