"""
The HTTP API's keep-alive fast path: the plain requests back-ends send (an
HTTP/1.1 request line, a few ordinary headers, a C{Content-Length} body) are
parsed here, answered by the same L{mpush.http.api.ApiResource}, and written
to the socket in the turn that answers them.

twisted.web costs about 120 us of CPU per request before any push work: more
than the push it carries, several times over.  Anything this module does not
recognise as plainly well-formed (chunked bodies, C{Expect}, HTTP/1.0, query
strings, escapes, folded or odd headers, paths outside C{/v1}) hands the
connection, with every byte not yet served, to twisted.web for good, so
validation and errors stay twisted.web's.  Requests are served one at a
time and in order; a client that sends ahead is read no further than one
full request plus a body.
"""

from __future__ import annotations

import io
import re
import time
from email.utils import formatdate

from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES

from mpush.server.device.write_now import no_delay, write_now

__all__ = ["FastApiChannel", "MAX_HEAD_BYTES"]

log = Logger()

#: Request line and headers larger than this go to twisted.web (whose line
#: limit is 16 KiB).
MAX_HEAD_BYTES = 8192
_HEAD_END = b"\r\n\r\n"
#: One header line: a token name, a value without control characters.
_HEADER = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*")
_METHODS = frozenset([b"GET", b"POST"])
#: Headers whose presence means "not plain": twisted.web handles them.
_NOT_PLAIN = frozenset([b"transfer-encoding", b"expect", b"upgrade", b"http2-settings"])


class _Headers:
    """The request headers, lower-cased names, as C{getRawHeaders} gives them."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[bytes, list[bytes]]) -> None:
        self._values = values

    def getRawHeaders(self, name: bytes, default=None):
        return self._values.get(name.lower(), default)


class _ResponseHeaders:
    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: dict[bytes, list[bytes]] = {}

    def setRawHeaders(self, name: bytes, values: list[bytes]) -> None:
        self.items[name] = list(values)


class _Date:
    """The Date header's value, made once a second."""

    __slots__ = ("second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""

    def now(self) -> bytes:
        second = int(time.time())
        if second != self.second:
            self.second = second
            self.value = formatdate(second, usegmt=True).encode("ascii")
        return self.value


_DATE = _Date()


class FastRequest:
    """
    One request on the fast path, with the part of twisted.web's request
    that L{mpush.http.api.ApiResource} uses.
    """

    __slots__ = ("channel", "method", "uri", "postpath", "requestHeaders", "content", "close",
                 "code", "responseHeaders", "finished", "_body", "_watchers")

    def __init__(self, channel, method: bytes, uri: bytes, headers: _Headers, body: bytes,
                 close: bool) -> None:
        self.channel = channel
        self.method = method
        self.uri = uri
        self.postpath = uri.split(b"/")[2:]
        self.requestHeaders = headers
        self.content = io.BytesIO(body)
        self.close = close
        self.code = 200
        self.responseHeaders = _ResponseHeaders()
        self.finished = False
        self._body: list[bytes] = []
        self._watchers: list[defer.Deferred] = []

    def notifyFinish(self) -> defer.Deferred:
        watcher = defer.Deferred()
        self._watchers.append(watcher)
        return watcher

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def write(self, data: bytes) -> None:
        self._body.append(data)

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        reason = RESPONSES.get(self.code, b"Unknown")
        lines = [b"HTTP/1.1 %d %s" % (self.code, reason), b"Date: " + _DATE.now()]
        for name, values in self.responseHeaders.items.items():
            lines.extend(name + b": " + value for value in values)
        if self.close:
            lines.append(b"Connection: close")
        lines.append(b"\r\n")
        head = b"\r\n".join(lines)
        watchers, self._watchers = self._watchers, []
        self.channel.answered(self, head + b"".join(self._body))
        for watcher in watchers:
            watcher.callback(None)

    def lost(self, reason: Failure) -> None:
        """The connection went before the answer."""
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            watcher.errback(reason)


def _parse_head(head: bytes):
    """
    C{(method, target, headers, close, length)} of a plain request head,
    or C{None} for anything else.
    """
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or parts[0] not in _METHODS:
        return None
    target = parts[1]
    if not (target.startswith(b"/v1/") or target == b"/v1") or b"?" in target or b"%" in target \
            or b"#" in target:
        return None
    values: dict[bytes, list[bytes]] = {}
    for line in lines[1:]:
        match = _HEADER.fullmatch(line)
        if match is None:
            return None
        name, value = match.groups()
        values.setdefault(name.lower(), []).append(value)
    if not _NOT_PLAIN.isdisjoint(values):
        return None
    lengths = values.get(b"content-length")
    if lengths is None:
        length = 0
    elif len(lengths) != 1 or not lengths[0].isdigit() or len(lengths[0]) > 12:
        return None
    else:
        length = int(lengths[0])
    connection = b",".join(values.get(b"connection", ())).lower()
    tokens = {token.strip() for token in connection.split(b",")} - {b""}
    if not tokens <= {b"close", b"keep-alive"}:
        return None
    return parts[0], target, _Headers(values), b"close" in tokens, length


class FastApiChannel(protocol.Protocol):
    """
    Serves plain API requests itself; hands the connection to twisted.web's
    channel (built by C{fallback()}) at the first request that is not.

    @param api: the L{mpush.http.api.ApiResource} serving C{/v1}.
    @param fallback: builds twisted.web's protocol for this connection.
    @param body_limit: larger bodies go to twisted.web (which answers 413).
    @param clock: for the idle timeout.
    @param idle_timeout: seconds a connection may wait between requests.
    """

    def __init__(self, api, fallback, body_limit: int, clock, idle_timeout: float | None) -> None:
        self.api = api
        self.fallback = fallback
        self.body_limit = body_limit
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.handed_over = None
        self.pending: FastRequest | None = None
        self.served = 0
        self._buffer = b""
        self._idle = None
        self._paused = False
        self._closing = False
        self._serving = False

    # -- twisted ---------------------------------------------------------------

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        if self.handed_over is not None:
            self.handed_over.dataReceived(data)
            return
        if self._closing:
            return
        self._buffer += data
        self._serve()

    def connectionLost(self, reason=protocol.connectionDone) -> None:
        self._disarm()
        if self.handed_over is not None:
            self.handed_over.connectionLost(reason)
            return
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.lost(reason)

    # -- serving ---------------------------------------------------------------

    def _serve(self) -> None:
        if self._serving:
            # An answer given while rendering: the loop below goes on.
            return
        self._serving = True
        try:
            self._serve_buffered()
        finally:
            self._serving = False

    def _serve_buffered(self) -> None:
        while self.pending is None and self._buffer and self.handed_over is None and not self._closing:
            buffer = self._buffer
            end = buffer.find(_HEAD_END, 0, MAX_HEAD_BYTES + 4)
            if end < 0:
                if len(buffer) > MAX_HEAD_BYTES:
                    self._hand_over()
                return
            parsed = _parse_head(buffer[:end])
            if parsed is None or parsed[4] > self.body_limit:
                self._hand_over()
                return
            method, target, headers, close, length = parsed
            total = end + 4 + length
            if len(buffer) < total:
                return
            self._buffer = buffer[total:]
            request = FastRequest(self, method, target, headers, buffer[end + 4:total], close)
            self.pending = request
            self.served += 1
            self.api.render(request)
        if self.pending is not None and len(self._buffer) > MAX_HEAD_BYTES + self.body_limit \
                and not self._paused:
            # Sending ahead: read no further until this answer is out.
            self._paused = True
            self.transport.pauseProducing()

    def answered(self, request: FastRequest, data: bytes) -> None:
        """C{request}'s whole answer: out now, then the next request."""
        if request is not self.pending:
            return
        self.pending = None
        write_now(self.transport, data)
        if request.code >= 400:
            log.info("HTTP API {method} {uri}: {code}", method=request.method.decode("ascii"),
                     uri=request.uri[:200].decode("utf-8", "replace"), code=request.code)
        if request.close:
            self._closing = True
            self.transport.loseConnection()
            return
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()
        self._arm()
        self._serve()

    def _hand_over(self) -> None:
        """From here on twisted.web serves this connection, from the first unserved byte."""
        self._disarm()
        channel = self.fallback()
        self.handed_over = channel
        channel.makeConnection(self.transport)
        data, self._buffer = self._buffer, b""
        if data:
            channel.dataReceived(data)

    # -- idle timeout ----------------------------------------------------------

    def _arm(self) -> None:
        """
        Idle from now: the one timer of the connection is moved later (a
        cheap C{reset}: no timer made or cancelled per request).  A request
        being served is never idle: the timer finding one re-arms.
        """
        if self.idle_timeout and self.handed_over is None:
            idle = self._idle
            if idle is not None and idle.active():
                idle.reset(self.idle_timeout)
            else:
                self._idle = self.clock.callLater(self.idle_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._idle is not None:
            if self._idle.active():
                self._idle.cancel()
            self._idle = None

    def _timed_out(self) -> None:
        self._idle = None
        if self.handed_over is not None:
            return
        if self.pending is not None:
            self._arm()
            return
        self._closing = True
        self.transport.loseConnection()
