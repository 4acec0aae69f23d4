"""
What the server knows about the device at the other end of one connection.

A connection's life is a small explicit state machine (L{ConnectionState});
the L{SessionContext} is the data that a handshake establishes and that fast
connect restores from the reusable-session cache.  Both use C{__slots__}:
a node holds one of each per connected device.
"""

import enum

from mpush.protocol.client_type import classify
from mpush.protocol.session import ReusableSession


class ConnectionState(enum.Enum):
    """
    Where a connection is in its life.

    NEW: accepted, no keys agreed; only HANDSHAKE, FAST_CONNECT and
    heartbeats make sense.  HANDSHAKEN: a session cipher is in force (by a
    handshake or a fast connect).  BOUND: handshaken and a user bound, so
    routes point here.  CLOSED: the transport is gone.
    """

    NEW = "new"
    HANDSHAKEN = "handshaken"
    BOUND = "bound"
    CLOSED = "closed"


class SessionContext:
    """
    The device, keys and bound user of one connection.

    C{cipher} is what the server encrypts its "send" packets with and
    decrypts non-handshake packets with.  C{heartbeat} is in milliseconds.
    C{user_id} and C{tags} are set by BIND; a restored session has neither.
    """

    __slots__ = (
        "device_id",
        "os_name",
        "os_version",
        "client_version",
        "heartbeat",
        "cipher",
        "user_id",
        "tags",
        "client_type",
    )

    def __init__(
        self,
        heartbeat,
        cipher=None,
        device_id=None,
        os_name=None,
        os_version=None,
        client_version=None,
    ):
        self.heartbeat = heartbeat
        self.cipher = cipher
        self.device_id = device_id
        self.os_name = os_name
        self.os_version = os_version
        self.client_version = client_version
        self.user_id = None
        self.tags = None
        self.client_type = classify(os_name)

    @property
    def handshaken(self):
        """
        MPush's own test: a handshake sets a non-empty device id.
        """
        return bool(self.device_id)

    def to_reusable_session(self, session_key, iv):
        """
        The part of this context that survives a reconnect.
        """
        return ReusableSession(
            os_name=self.os_name,
            os_version=self.os_version,
            client_version=self.client_version,
            device_id=self.device_id,
            session_key=session_key,
            iv=iv,
        )

    def __repr__(self):
        return (
            f"<SessionContext device={self.device_id!r} os={self.os_name!r} "
            f"user={self.user_id!r} heartbeat={self.heartbeat}>"
        )
