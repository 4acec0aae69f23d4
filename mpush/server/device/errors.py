"""
The errors a handler raises, and the one place they become MPush ERROR replies.

Handlers never write ERROR packets themselves: they raise (or errback with)
one of these, and the dispatcher maps it through L{error_reply}, so every
client-visible error code and its close policy is decided here (spec 14).
"""

from mpush.protocol.errors import ErrorCode


class ConnectionClosed(Exception):
    """
    The connection went away before a reply could be written; nothing to answer.
    """


class Rejection(Exception):
    """
    A request the server answers with ERROR.

    @cvar code: the MPush error code (0 when only a reason is given).
    @cvar reason: the exact text MPush sends.
    @cvar close: whether the connection is closed after the reply.
    """

    code = ErrorCode.UNKNOWN
    reason = ErrorCode.UNKNOWN.reason
    close = True

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.reason)
        self.detail = detail


class ParamInvalid(Rejection):
    """
    A handshake with a missing device id or keys of the wrong size.
    MPush answers code 0 and closes; the Java client then stops for good.
    """

    code = 0
    reason = "Param invalid"


class RepeatHandshake(Rejection):
    """
    A second handshake from the device already established here; harmless.
    """

    code = ErrorCode.REPEAT_HANDSHAKE
    reason = ErrorCode.REPEAT_HANDSHAKE.reason
    close = False


class SessionExpired(Rejection):
    """
    Fast connect to a session that is unknown, expired or unreadable; the
    client handshakes on the same connection.
    """

    code = ErrorCode.SESSION_EXPIRED
    reason = ErrorCode.SESSION_EXPIRED.reason
    close = False


class InvalidDevice(Rejection):
    """
    Fast connect to a session that belongs to another device.
    """

    code = ErrorCode.INVALID_DEVICE
    reason = ErrorCode.INVALID_DEVICE.reason
    close = False


class UnsupportedCommand(Rejection):
    """
    No handler for the command on this listener.
    """

    code = ErrorCode.UNSUPPORTED_CMD
    reason = ErrorCode.UNSUPPORTED_CMD.reason


class DispatchError(Rejection):
    """
    Anything else that went wrong decoding or handling a packet.
    """

    code = ErrorCode.DISPATCH_ERROR
    reason = ErrorCode.DISPATCH_ERROR.reason


class NotEncrypted(DispatchError):
    """
    A body in clear on a session that has a cipher.  MPush clients encrypt
    every body once they have one, so this comes from someone who has the
    session id (sent in clear by FAST_CONNECT) but not the session key.
    """


def error_reply(exception: BaseException) -> tuple[int, str, bool] | None:
    """
    Map what a handler raised to C{(code, reason, close)}, or C{None} when
    there is nobody left to answer.
    """
    if isinstance(exception, ConnectionClosed):
        return None
    if not isinstance(exception, Rejection):
        exception = DispatchError()
    return int(exception.code), exception.reason, exception.close


class InvalidParam(Rejection):
    """
    BIND or UNBIND without a user id.
    """

    code = 0
    reason = "invalid param"


class NotHandshaken(Rejection):
    """
    BIND or UNBIND on a connection that has no session yet.
    """

    code = 0
    reason = "not handshake"


class BindFailed(Rejection):
    """
    The bind validator refused the user.
    """

    code = 0
    reason = "bind failed"
