"""
Offline messages: a push with an offline TTL to a user who is not connected
waits in a bounded per-user queue (in memory, or in Redis when configured)
and is delivered, in order and once, when the user next binds.

L{interfaces} holds the store contract and the message type, L{memory} and
L{redis} the two stores, L{delivery} what a bind runs.  The Redis store is
not imported here: importing txredisapi imports the global reactor.
"""

from mpush.offline.delivery import OfflineDelivery, ack_model_of_flags
from mpush.offline.interfaces import (
    AddResult,
    IOfflineStore,
    InvalidOfflineMessage,
    OfflineInputError,
    OfflineMessage,
    OfflineStoreUnavailable,
    new_offline_message,
)
from mpush.offline.memory import MemoryOfflineStore

__all__ = [
    "AddResult",
    "IOfflineStore",
    "InvalidOfflineMessage",
    "MemoryOfflineStore",
    "OfflineDelivery",
    "OfflineInputError",
    "OfflineMessage",
    "OfflineStoreUnavailable",
    "ack_model_of_flags",
    "new_offline_message",
]
