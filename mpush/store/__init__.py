"""
Where reusable sessions live: the L{ISessionStore} seam and its in-memory
implementation.

The Redis implementation is in L{mpush.store.redis} (connection pool in
L{mpush.store.redis_connection}); it is not imported here because txredisapi
imports the global reactor, which must not happen before a reactor is chosen.
"""

from mpush.store.interfaces import ISessionStore, StoreUnavailable
from mpush.store.memory import MemorySessionStore

__all__ = ["ISessionStore", "MemorySessionStore", "StoreUnavailable"]
