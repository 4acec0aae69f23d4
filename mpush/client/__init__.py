"""
A Twisted MPush client that behaves like mpush-client-java 0.8.1 on the wire:
for trying a server by hand (C{mpush-client}) and for end-to-end tests.
"""

from mpush.client.config import ClientConfig, ClientConfigError
from mpush.client.protocol import (
    BadServerReply,
    BindTimeout,
    ClientError,
    ClientState,
    ConnectFailed,
    ConnectionClosed,
    HandshakeFailed,
    HandshakeTimeout,
    HeartbeatTimeout,
    MPushClientProtocol,
    NotEstablished,
    PingTimeout,
    PushTimeout,
    ReceivedPush,
    RequestTimeout,
    ServerError,
    TlsVerifyFailed,
    connect_client,
    java_packet_ids,
)
from mpush.client.session_file import SessionFile, SessionFileError

__all__ = [
    "BadServerReply",
    "BindTimeout",
    "ClientConfig",
    "ClientConfigError",
    "ClientError",
    "ClientState",
    "ConnectFailed",
    "ConnectionClosed",
    "HandshakeFailed",
    "HandshakeTimeout",
    "HeartbeatTimeout",
    "MPushClientProtocol",
    "NotEstablished",
    "PingTimeout",
    "PushTimeout",
    "ReceivedPush",
    "RequestTimeout",
    "ServerError",
    "SessionFile",
    "SessionFileError",
    "TlsVerifyFailed",
    "connect_client",
    "java_packet_ids",
]
