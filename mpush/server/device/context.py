"""
What the server knows about the device at the other end of one connection.

The L{SessionContext} is the data that a handshake establishes and that fast
connect restores from the reusable-session cache; it uses C{__slots__}: a
node holds one per connected device.  Where a connection is in its life is
not here but in its L{mpush.server.device.state.ConnectionStateMachine}
(C{ConnectionState} is imported from here too, for older callers).
"""

from mpush.protocol.client_type import classify
from mpush.protocol.crypto import AesCipher
from mpush.protocol.session import ReusableSession
from mpush.server.device.state import ConnectionState

__all__ = ["ConnectionState", "SessionContext"]


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
        heartbeat: int,
        cipher: AesCipher | None = None,
        device_id: str | None = None,
        os_name: str | None = None,
        os_version: str | None = None,
        client_version: str | None = None,
    ) -> None:
        self.heartbeat = heartbeat
        self.cipher = cipher
        self.device_id = device_id
        self.os_name = os_name
        self.os_version = os_version
        self.client_version = client_version
        self.user_id = None
        self.tags = None
        self.client_type = classify(os_name)

    def to_reusable_session(self, session_key: bytes, iv: bytes) -> ReusableSession:
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

    def __repr__(self) -> str:
        return (
            f"<SessionContext device={self.device_id!r} os={self.os_name!r} "
            f"user={self.user_id!r} heartbeat={self.heartbeat}>"
        )
