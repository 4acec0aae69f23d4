"""
The client's settings, one immutable object validated once (spec 18.1).

Defaults are the Java client's (C{ClientConfig} / C{Constants} of
mpush-client-java 0.8.1) so that, unless told otherwise, this client looks
exactly like a stock Android client to the server.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpush.protocol.crypto import RsaPublicKey
from mpush.protocol.fields import INT32_MAX
from mpush.tls import TrustFileError, client_tls_options

__all__ = ["ClientConfig", "ClientConfigError", "JAVA_MAX_INT"]

#: Heartbeats travel as Java ints.
JAVA_MAX_INT = INT32_MAX


class ClientConfigError(ValueError):
    """
    A client setting is unusable; the message names the setting.
    """


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """
    Where to connect, who to be, and the client's timeouts.

    C{public_key} is the server's RSA public key as MPush prints it: base64 of
    an X.509 SubjectPublicKeyInfo, one line.  Timeouts are in seconds,
    heartbeats in milliseconds (as on the wire).

    C{tls} wraps the connection in TLS (a node's client port with ``[tls]
    connect-server``; stock MPush clients speak plain TCP).  The server's
    certificate is verified against C{ca_file} (PEM; None: the system's trust
    store) and must name C{server_name} (None: C{host}, which may be an IP
    address matched against the certificate's IP entries).
    """

    host: str
    port: int
    public_key: str
    device_id: str
    os_name: str = "android"
    os_version: str = ""
    client_version: str = ""
    user_id: str | None = None
    tags: str | None = None
    min_heartbeat: int = 240000
    max_heartbeat: int = 240000
    session_file: str | None = None
    handshake_timeout: float = 3.0
    bind_timeout: float = 3.0
    compress_limit: int = 1024
    connect_timeout: float = 5.0
    tls: bool = False
    ca_file: str | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ClientConfigError("host must be a non-empty string")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ClientConfigError(f"port must be an integer in 1..65535, got {self.port!r}")
        if not isinstance(self.device_id, str) or not self.device_id:
            raise ClientConfigError("device_id must be a non-empty string (the server rejects an empty one)")
        for name in ("min_heartbeat", "max_heartbeat"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= JAVA_MAX_INT:
                raise ClientConfigError(
                    f"{name} must be a positive number of milliseconds below 2**31, got {value!r}"
                )
        for name in ("handshake_timeout", "bind_timeout", "connect_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ClientConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if isinstance(self.compress_limit, bool) or not isinstance(self.compress_limit, int) \
                or self.compress_limit < 0:
            raise ClientConfigError(
                f"compress_limit must be a non-negative number of bytes, got {self.compress_limit!r}"
            )
        if self.user_id is not None and (not isinstance(self.user_id, str) or not self.user_id):
            raise ClientConfigError("user_id must be None or a non-empty string")
        # Parse once so a bad key is reported before any connection is made.
        self.rsa_public_key()
        if not isinstance(self.tls, bool):
            raise ClientConfigError(f"tls must be True or False, got {self.tls!r}")
        for name in ("ca_file", "server_name"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ClientConfigError(f"{name} must be None or a non-empty string, got {value!r}")
            if value is not None and not self.tls:
                raise ClientConfigError(f"{name} is set but tls is off: it would not be used")
        # Likewise an unreadable CA file or an impossible name.
        self.tls_options()

    def tls_options(self):
        """
        The client TLS settings (an C{IOpenSSLClientConnectionCreator}), or
        None without C{tls}.
        @raise ClientConfigError: C{ca_file} or the name to verify is unusable.
        """
        if not self.tls:
            return None
        try:
            return client_tls_options(self.host, self.ca_file, self.server_name)
        except (TrustFileError, ValueError) as exc:
            raise ClientConfigError(str(exc)) from None

    def rsa_public_key(self) -> RsaPublicKey:
        """
        The parsed server key.
        @raise ClientConfigError: C{public_key} is not a usable X.509 RSA key.
        """
        if not isinstance(self.public_key, str) or not self.public_key.strip():
            raise ClientConfigError("public_key is required (base64 X.509 RSA public key)")
        try:
            return RsaPublicKey.from_x509_base64(self.public_key)
        except (ValueError, TypeError) as exc:
            raise ClientConfigError(f"public_key is not a base64 X.509 RSA public key: {exc}") from exc
