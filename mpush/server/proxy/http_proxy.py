"""
HTTP_PROXY (cmd 12, spec 13): a device's HTTP request, made by the server.

The Java client sends an HttpRequestMessage over its long connection and
waits for an HttpResponseMessage with the same packet session id.  The
handler starts the upstream request and returns at once, so the
connection's next packets are not held up by a slow web server; the answer
is written whenever it is ready.  An upstream response (any status) goes the
"send" way, encrypted and compressed above the threshold; the statuses the
proxy makes up itself (400, 408, 502, 503, 504) go raw, as in MPush.

What mpush does beyond MPush: an empty uri gets one 400 and nothing else
(spec 21.2 item 7); https works, with certificates checked; where the proxy
may connect is decided by L{mpush.server.proxy.ssrf} on the resolved addresses;
every way of not reaching the upstream (refused by that policy, no such
name, connection refused, timed out) gets the same answer, so devices
cannot map the inside with it; in-flight requests are bounded per
connection and per node.
"""

from __future__ import annotations

import ipaddress
import random
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import quote, urljoin, urlsplit

from service_identity import CertificateError, VerificationError
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IConsumer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import HEADER, STATUS, HTTP11ClientProtocol
from twisted.web.client import (
    Agent,
    BrowserLikePolicyForHTTPS,
    HostnameCachingHTTPSPolicy,
    HTTPConnectionPool,
    PotentialDataLoss,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
    _HTTP11ClientFactory,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from zope.interface import implementer

from mpush.config import ConfigError, split_host_port
from mpush.protocol.fields import INT32_MAX
from mpush.protocol.messages import HttpRequestMessage, HttpResponseMessage
from mpush.protocol.packet import Command, Packet
from mpush.server.device.dispatcher import DeviceHandler
from mpush.server.proxy.ssrf import (
    AddressPolicy,
    AddressRefused,
    GuardedEndpointFactory,
    IHostResolver,
    ReactorHostResolver,
)

if TYPE_CHECKING:
    from mpush.config import ProxyConfig

#: A device's connection, TCP or WebSocket (an IDeviceConnection).
DeviceConnection = Any

__all__ = [
    "BadHeader",
    "BadUri",
    "DnsMapping",
    "HeadersTooLarge",
    "HttpProxyHandler",
    "Overloaded",
    "ProxyFailure",
    "ProxyRequest",
    "ResponseTooLarge",
    "Target",
    "failure_reply",
    "read_timeout_ms",
    "request_headers",
    "response_headers",
]

#: Seconds to wait for a TCP connection to the web server (MPush: 4 s).
CONNECT_TIMEOUT = 4.0
#: Redirects followed before the next redirect response is handed over as is.
MAX_REDIRECTS = 5
#: What MPush follows; 308 is not among them.
REDIRECT_CODES = frozenset({300, 301, 302, 303, 305, 307})
#: A device may ask for a longer read timeout than the default, up to this
#: (or the default, if that is longer): every waiting request holds an
#: in-flight slot and an upstream connection.
MAX_READ_TIMEOUT_MS = 120_000
#: The client header that carries the request's timeout in ms (spec 13.2).
READ_TIMEOUT_HEADER = "readtimeout"
#: Bytes of an upstream response's status line and headers read before the
#: response is refused (MPush's Netty decoder stops at 8 KiB).
MAX_HEADER_BYTES = 64 * 1024
#: Headers (continuation lines not counted) read before it is refused.
MAX_HEADERS = 100
#: What a device is told when the upstream cannot be reached, whatever the
#: reason: the log says which.
UNREACHABLE = "upstream not reachable"
#: Response header that says why the proxy answered an error itself.
ERROR_HEADER = "x-mpush-proxy-error"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_JAVA_INT = re.compile(r"-?[0-9]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
# Everything printable in ASCII but the space stays as it is in a path or
# query (including '%', so escapes already made are kept); the rest is
# percent-encoded as UTF-8.
_URL_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))

# Client headers the proxy sets itself or must not pass on: framing and
# hop-by-hop headers belong to each connection, the x-forwarded-* headers
# name the real peer (a device cannot choose them), and readTimeout is
# addressed to the proxy.
_DROPPED = frozenset({
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
    "trailer", "upgrade", "proxy-connection", "proxy-authorization",
    "x-forwarded-for", "x-forwarded-port", READ_TIMEOUT_HEADER,
})
# The only client headers a redirect carries to another origin: the
# CORS-safelisted ones and User-Agent, which describe the request and are
# never credentials.  Any other header may be one (X-Api-Key, X-Auth-Token...).
_CROSS_ORIGIN = frozenset({"accept", "accept-language", "content-language", "content-type", "user-agent"})

_PHRASES = {
    400: "Bad Request",
    408: "Request Timeout",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


# -- errors: what the proxy answers itself --------------------------------


class ProxyFailure(Exception):
    """
    A request the proxy answers with an HTTP status of its own, raw.
    """

    status = 502

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def phrase(self) -> str:
        return _PHRASES[self.status]


class BadUri(ProxyFailure):
    """
    The uri (or a redirect's Location) is not an http or https URL we can
    request.  MPush answers an unusable URL with 502.
    """


class BadHeader(ProxyFailure):
    """
    A client header that cannot go on the wire: MPush's HTTP client throws,
    and the client gets 502.
    """


class ResponseTooLarge(ProxyFailure):
    """
    The response, headers and body, is longer than C{[http]
    max-content-length}.
    """


class HeadersTooLarge(ProxyFailure):
    """
    The upstream response has more header bytes or headers than the proxy
    reads (L{MAX_HEADER_BYTES}, L{MAX_HEADERS}).
    """


class Overloaded(ProxyFailure):
    """
    Too many requests in flight, on the connection or on the node.
    """

    status = 503


# -- URLs ------------------------------------------------------------------


def _host_of(text: str) -> str:
    """
    The host of a URL or a mapping target, normalised: an IP address in its
    canonical form, or a lower-case ASCII (IDNA) name.
    """
    if not text or "%" in text:
        raise BadUri(f"unusable host {text!r}")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if ":" in text:
        raise BadUri(f"unusable host {text!r}")
    try:
        name = text.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise BadUri(f"unusable host {text!r}") from None
    if not _HOST_NAME.fullmatch(name):
        raise BadUri(f"unusable host {text!r}")
    return name


@dataclass(frozen=True, slots=True)
class Target:
    """
    Where one request goes: scheme, host (no brackets), port, and the path
    with its query as sent in the request line.
    """

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, uri: str) -> Target:
        """
        @raise BadUri: not an absolute http(s) URL.  User info and fragment
            are dropped; spaces and non-ASCII in the path are percent-encoded.
        """
        if not isinstance(uri, str) or not uri:
            raise BadUri("empty uri")
        if _CONTROL.search(uri) or uri != uri.strip():
            raise BadUri("uri has control characters or surrounding spaces")
        try:
            parts = urlsplit(uri)
            port = parts.port
        except ValueError as error:
            raise BadUri(f"unusable uri: {error}") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise BadUri(f"not an http or https URL (scheme {scheme!r})")
        host = _host_of(parts.hostname)
        if port is None:
            port = 443 if scheme == "https" else 80
        elif port == 0:
            raise BadUri("port 0")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(scheme, host, port, quote(path, safe=_URL_SAFE))

    @property
    def default_port(self) -> bool:
        return self.port == (443 if self.scheme == "https" else 80)

    @property
    def _bracketed(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    def text(self) -> str:
        return f"{self.scheme}://{self._bracketed}:{self.port}{self.path}"

    def url(self) -> bytes:
        """
        The URL for twisted.web's Agent (always with the port).
        """
        return self.text().encode("ascii")

    def host_header(self) -> bytes:
        """
        The Host header: the host, with the port when it is not the default.
        """
        if self.default_port:
            return self._bracketed.encode("ascii")
        return f"{self._bracketed}:{self.port}".encode("ascii")

    def for_log(self) -> str:
        """
        The URL without its query, which may hold secrets.
        """
        return f"{self.scheme}://{self._bracketed}:{self.port}{self.path.split('?', 1)[0]}"

    def follow(self, location: str) -> Target:
        """
        The target of a redirect to C{location}, relative or absolute.

        @raise BadUri: the location is not a usable http(s) URL.
        """
        return Target.parse(urljoin(self.text(), location))

    def moved_to(self, host: str, port: int) -> Target:
        return Target(self.scheme, host, port, self.path)


def _mapping_target(text: str) -> tuple[str, int]:
    """
    C{"ip[:port]"} (C{"[v6]:port"}) from C{[http] dns-mapping}: C{(host,
    port)}, the port C{None} when omitted, meaning the URL scheme's default.

    @raise ValueError: not of that form.
    """
    host, port = split_host_port(text)
    try:
        return _host_of(host), port
    except BadUri:
        raise ValueError(f"unusable host in {text!r}") from None


class DnsMapping:
    """
    C{[http] dns-mapping}: requests for a domain go to one of the
    operator's targets, picked at random (spec 13.2 step 2).
    """

    __slots__ = ("_targets", "_choice")

    def __init__(
        self,
        entries: Iterable[tuple[str, Iterable[str]]] = (),
        choice: Callable[[Sequence[tuple[str, int]]], tuple[str, int]] = random.choice,
    ) -> None:
        self._targets = {}
        self._choice = choice
        for domain, targets in entries:
            try:
                name = _host_of(domain)
                parsed = tuple(_mapping_target(target) for target in targets)
            except (BadUri, ValueError) as error:
                raise ConfigError(f"{domain!r}: {error}", key="[http] dns-mapping") from None
            if not parsed:
                raise ConfigError(f"{domain!r}: no target", key="[http] dns-mapping")
            self._targets[name] = parsed

    def __bool__(self) -> bool:
        return bool(self._targets)

    @property
    def trusted(self) -> frozenset[tuple[str, int]]:
        """
        Every C{(host, port)} a mapping can send a request to: the operator
        named them, so the address policy does not apply to requests
        translated through a mapped name (and only to those: asked for
        directly, or reached by a redirect from elsewhere, they are checked).
        """
        pairs = set()
        for targets in self._targets.values():
            for host, port in targets:
                pairs.update([(host, port)] if port is not None else [(host, 80), (host, 443)])
        return frozenset(pairs)

    def translate(self, target: Target) -> Target | None:
        """
        C{target} sent to a mapped address, or C{None} when its host is not
        mapped.  The path and query are kept (MPush drops user info and the
        fragment, as L{Target} always does).
        """
        targets = self._targets.get(target.host)
        if not targets:
            return None
        host, port = self._choice(targets)
        if port is None:
            port = 443 if target.scheme == "https" else 80
        return target.moved_to(host, port)


# -- headers -----------------------------------------------------------------


def read_timeout_ms(
    headers: Mapping[str, str | None] | None, default: int, maximum: int = MAX_READ_TIMEOUT_MS
) -> int:
    """
    The request timeout in ms: the client's C{readTimeout} header when it is
    a positive Java int (MPush's rule), else C{default}; never more than
    C{max(maximum, default)}.
    """
    for name, value in (headers or {}).items():
        if name.lower() == READ_TIMEOUT_HEADER:
            if value is not None and _JAVA_INT.fullmatch(value):
                number = int(value)
                if 0 < number <= INT32_MAX:
                    return min(number, max(maximum, default))
            return default
    return default


def forwarded_headers(headers: Mapping[str, str | None] | None) -> tuple[tuple[bytes, bytes], ...]:
    """
    The client's headers to pass on, as C{(name, value)} bytes pairs: all of
    them but the ones in C{_DROPPED}, and those with no value (the
    header-map quirk of spec 3.3 can yield one).

    @raise BadHeader: a name that is not an HTTP token, or a value with a
        line break or NUL in it.
    """
    pairs = []
    for name, value in (headers or {}).items():
        if value is None or name.lower() in _DROPPED:
            continue
        if not _TOKEN.fullmatch(name):
            raise BadHeader(f"header name {name!r} is not an HTTP token")
        if "\r" in value or "\n" in value or "\x00" in value:
            raise BadHeader(f"header {name!r} has a line break or NUL in its value")
        pairs.append((name.encode("ascii"), value.encode("utf-8")))
    return tuple(pairs)


def cross_origin_headers(pairs: tuple) -> tuple:
    """
    What of the client's headers a redirect to another origin keeps: none
    that could be a credential for the first one.
    """
    return tuple((name, value) for name, value in pairs if name.lower().decode("ascii") in _CROSS_ORIGIN)


def request_headers(
    pairs: Iterable[tuple[bytes, bytes]], target: Target, peer_host: object, peer_port: object
) -> Headers:
    """
    The upstream request's headers (spec 13.2 step 3): the client's, then
    Host, C{Connection: keep-alive} and the peer as C{x-forwarded-for} and
    C{x-forwarded-port}.  Content-Length comes from the body producer.
    """
    headers = Headers()
    for name, value in pairs:
        headers.addRawHeader(name, value)
    headers.setRawHeaders(b"Host", [target.host_header()])
    headers.setRawHeaders(b"Connection", [b"keep-alive"])
    headers.setRawHeaders(b"x-forwarded-for", [str(peer_host).encode("utf-8")])
    headers.setRawHeaders(b"x-forwarded-port", [str(peer_port).encode("utf-8")])
    return headers


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def response_headers(headers: Headers, body: bytes) -> dict[str, str] | None:
    """
    The upstream response's headers as the HttpResponseMessage map: a
    repeated name keeps its last value (MPush's HashMap), Transfer-Encoding
    is dropped (the body is whole), and C{content-length} is added when
    there is a body, as MPush adds it, beside the server's own.
    """
    out = {}
    for raw_name, values in headers.getAllRawHeaders():
        name = _text(raw_name)
        if not values or name.lower() == "transfer-encoding":
            continue
        value = _text(values[-1])
        if not name or ":" in name or "\n" in name or "\n" in value:
            continue
        out[name] = value
    if body:
        out["content-length"] = str(len(body))
    return out or None


def _location(headers: Headers) -> str | None:
    values = headers.getRawHeaders(b"location")
    return _text(values[-1]) if values else None


# -- failures -----------------------------------------------------------------


try:
    from OpenSSL.SSL import Error as _OpenSSLError
except ImportError:  # without pyOpenSSL there is no https, but http works
    _OpenSSLError = VerificationError
_TLS_ERRORS = (_OpenSSLError, VerificationError, CertificateError)
# Failures that are the web server's or the request's, not a bug of ours.
_EXPECTED = (
    AddressRefused, ProxyFailure, ConnectError, DNSLookupError,
    RequestTransmissionFailed, ResponseFailed,
)


def _tls_failed(error: BaseException) -> bool:
    return any(reason.check(*_TLS_ERRORS) for reason in getattr(error, "reasons", None) or ())


# Every way of not getting a connection to the upstream (HostNotFound and
# UpstreamUnreachable are ConnectErrors).
_UNREACHABLE = (AddressRefused, ConnectError, DNSLookupError)


def failure_reply(failure: Failure) -> tuple[int, str, str]:
    """
    The status, reason phrase and detail text the client is answered with
    for a failed upstream request (spec 13.2 step 5).
    """
    error = failure.value
    if isinstance(error, ProxyFailure):
        return error.status, error.phrase, error.detail
    if isinstance(error, _UNREACHABLE):
        # Refused by the address policy, no such name, refused, timed out:
        # one answer, else a device maps internal names and scans ports.
        return 504, _PHRASES[504], UNREACHABLE
    if _tls_failed(error):
        return 502, _PHRASES[502], "TLS handshake or certificate verification failed"
    if isinstance(error, RequestTransmissionFailed):
        return 503, _PHRASES[503], "the request could not be written"
    if isinstance(error, ResponseNeverReceived):
        return 502, _PHRASES[502], "the connection closed before a response"
    if isinstance(error, ResponseFailed):
        for reason in error.reasons:
            if reason.check(ProxyFailure):
                return reason.value.status, reason.value.phrase, reason.value.detail
        return 502, _PHRASES[502], "the response was broken off"
    return 502, _PHRASES[502], f"{type(error).__name__}: {error}"


# -- the response head ---------------------------------------------------------------


class _HeadCounter:
    """
    Stands in for one response parser's C{lineReceived}, which keeps every
    header line it is given: counts the status line and the headers, and
    refuses the response past the caps.  The client protocol turns the
    exception into a dropped connection and a failed response, so a server
    that streams headers forever costs at most C{max_bytes}.
    """

    __slots__ = ("_parser", "_line_received", "_max_bytes", "_max_headers", "size", "headers")

    def __init__(self, parser: Any, max_bytes: int, max_headers: int) -> None:
        self._parser = parser
        self._line_received = parser.lineReceived
        self._max_bytes = max_bytes
        self._max_headers = max_headers
        self.size = 0
        self.headers = 0

    def __call__(self, line: bytes) -> None:
        state = self._parser.state
        if state in (STATUS, HEADER):
            self.size += len(line) + 1
            if self.size > self._max_bytes:
                raise HeadersTooLarge(f"response headers over {self._max_bytes} bytes")
            text = line[:-1] if line.endswith(b"\r") else line
            if state == HEADER and text and text[:1] not in b" \t":
                self.headers += 1
                if self.headers > self._max_headers:
                    raise HeadersTooLarge(f"more than {self._max_headers} response headers")
        return self._line_received(line)


class _CappedClientProtocol(HTTP11ClientProtocol):
    """
    twisted.web's HTTP/1.1 client with the response head capped (its parser
    caps a line, not the number of lines).
    """

    def request(self, request: Any) -> Deferred:
        result = super().request(request)
        parser = self._parser
        # A request refused at once (the connection busy) leaves the
        # current parser, already counted, in place.
        if parser is not None and not isinstance(parser.lineReceived, _HeadCounter):
            parser.lineReceived = _HeadCounter(parser, MAX_HEADER_BYTES, MAX_HEADERS)
        return result


class _CappedClientFactory(_HTTP11ClientFactory):
    def buildProtocol(self, addr: object) -> _CappedClientProtocol:
        return _CappedClientProtocol(self._quiescentCallback)


class _CappedConnectionPool(HTTPConnectionPool):
    """
    A connection pool whose connections cap the response head.
    """

    _factory = _CappedClientFactory


def _head_size(response: IResponse) -> int:
    """
    About how many bytes C{response}'s status line and headers took (what
    twisted.web keeps of them).
    """
    size = len(b"HTTP/1.1 200 \r\n\r\n") + len(response.phrase)
    for name, values in response.headers.getAllRawHeaders():
        size += sum(len(name) + len(value) + 4 for value in values)
    return size


# -- the body ---------------------------------------------------------------------


@implementer(IBodyProducer)
class _BytesProducer:
    """
    A request body already in memory, written at once.
    """

    __slots__ = ("_body", "length")

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _BodyReader(Protocol):
    """
    Collects a response body up to C{limit} bytes less the C{head}
    already read; past it (or when the
    Content-Length already says so) it drops the connection, so a huge body
    is never read, let alone buffered.
    """

    def __init__(self, limit: int, expected: int | object, head: int = 0) -> None:
        self.head = head
        self.limit = limit - head
        self.expected = expected
        self.parts = []
        self.size = 0
        self.too_large = False
        self.finished = Deferred(self._cancel)

    def connectionMade(self) -> None:
        if self.limit < 0 or (self.expected is not UNKNOWN_LENGTH and self.expected > self.limit):
            self._overflow()

    def dataReceived(self, data: bytes) -> None:
        if self.too_large:
            return
        self.size += len(data)
        if self.size > self.limit:
            self._overflow()
            return
        self.parts.append(data)

    def _overflow(self) -> None:
        self.too_large = True
        self.parts = []
        self.transport.stopProducing()

    def _cancel(self, _deferred: Deferred) -> None:
        if self.transport is not None:
            self.transport.stopProducing()

    def connectionLost(self, reason: Failure) -> None:
        if self.finished.called:
            return
        if self.too_large:
            self.finished.errback(ResponseTooLarge(f"response over {self.limit + self.head} bytes"))
        elif reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(reason)


def read_body(response: IResponse, limit: int) -> Deferred:
    """
    A L{Deferred} firing with the whole body of C{response}, or failing
    with L{ResponseTooLarge} when its head and body are over C{limit}
    bytes; cancelling it drops the connection.
    """
    reader = _BodyReader(limit, response.length, _head_size(response))
    response.deliverBody(reader)
    return reader.finished


# -- the handler ------------------------------------------------------------------


class ProxyRequest:
    """
    One request in flight for one device.

    @ivar trusted: the target was translated through C{dns-mapping}, so it
        skips the address policy.

    @ivar finished: fires with the status the device was answered with, or
        with C{None} when the request was abandoned (its connection closed).
    """

    __slots__ = (
        "connection", "session_id", "method", "target", "headers", "body",
        "timeout_ms", "peer", "trusted", "finished", "work", "timer", "done",
    )

    def __init__(
        self,
        connection: DeviceConnection,
        session_id: int,
        method: str,
        target: Target,
        headers: tuple[tuple[bytes, bytes], ...],
        body: bytes | None,
        timeout_ms: int,
        peer: tuple[object, object],
        trusted: bool = False,
    ) -> None:
        self.connection = connection
        self.session_id = session_id
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.timeout_ms = timeout_ms
        self.peer = peer
        self.trusted = trusted
        self.finished = Deferred()
        self.work = None
        self.timer = None
        self.done = False

    def __repr__(self) -> str:
        return f"<ProxyRequest {self.session_id} {self.method} {self.target.for_log()}>"


def _peer_of(connection: DeviceConnection) -> tuple[object, object]:
    address = connection.transport.getPeer()
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is None or port is None:
        host, _, port = (connection.peer or "?:?").rpartition(":")
    return host, port


def _ignore_closed(failure: Failure) -> None:
    # The device went away before its answer: nobody left to tell.
    return None


class HttpProxyHandler(DeviceHandler):
    """
    The HTTP proxy of one node.

    @param config: the C{[proxy]} L{mpush.config.ProxyConfig}, read once,
        here.
    @param reactor: connects, resolves and times out requests (the node's
        clock: the reactor, in a real node).
    @param resolver: an L{mpush.server.proxy.ssrf.IHostResolver}; the reactor's.
    @param trust_root: an C{IOpenSSLTrustRoot} for https; the platform's CAs
        by default (tests pass their own CA).
    @param choice: picks one of a domain's mapped targets.
    """

    command = Command.HTTP_PROXY
    log = Logger()

    def __init__(
        self,
        config: ProxyConfig,
        reactor: Any,
        *,
        resolver: IHostResolver | None = None,
        trust_root: Any = None,
        choice: Callable[[Sequence[tuple[str, int]]], tuple[str, int]] = random.choice,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.config = config
        self._reactor = reactor
        self._mapping = DnsMapping(self.config.dns_mapping, choice)
        resolver = resolver if resolver is not None else ReactorHostResolver(self._reactor)
        policy = AddressPolicy(self.config.allow)
        tls = HostnameCachingHTTPSPolicy(BrowserLikePolicyForHTTPS(trust_root))
        # Two agents with their own pools: mapping targets skip the address
        # policy only for requests translated through a mapped name, and a
        # kept-alive connection to one is never reused by another request.
        self._pools = {}
        self._agents = {}
        for trusted in (False, True):
            pool = _CappedConnectionPool(self._reactor, persistent=True)
            pool.maxPersistentPerHost = self.config.max_conn_per_host
            endpoints = GuardedEndpointFactory(
                self._reactor, resolver, policy, tls, connect_timeout,
                trusted=self._mapping.trusted if trusted else frozenset(),
            )
            self._pools[trusted] = pool
            self._agents[trusted] = Agent.usingEndpointFactory(self._reactor, endpoints, pool=pool)
        self._by_connection = {}
        self._in_flight = 0

    # -- what the lead and the tests see ------------------------------------

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def active(self, connection: DeviceConnection | None = None) -> tuple[ProxyRequest, ...]:
        """
        The requests in flight, of one connection or of all.
        """
        if connection is not None:
            return tuple(self._by_connection.get(connection, ()))
        return tuple(request for requests in self._by_connection.values() for request in requests)

    def cancel_requests(self, connection: DeviceConnection) -> int:
        """
        Abandon C{connection}'s requests (it closed): their upstream
        connections are dropped and nothing is answered.

        @return: how many were abandoned.
        """
        requests = self.active(connection)
        for request in requests:
            self._abandon(request)
        return len(requests)

    def close(self) -> Deferred:
        """
        Abandon every request and close the kept-alive upstream connections.

        @return: a L{Deferred} that fires once they are closed.
        """
        for request in self.active():
            self._abandon(request)
        return gatherResults([pool.closeCachedConnections() for pool in self._pools.values()])

    # -- IDeviceHandler -------------------------------------------------------

    def handle(self, connection: DeviceConnection, packet: Packet, message: HttpRequestMessage) -> None:
        session_id = packet.session_id
        if not message.uri:
            # MPush goes on and also answers 502 (spec 21.2 item 7); one answer is enough.
            self._answer_error(connection, session_id, 400, "empty uri")
            return None
        try:
            request = self._prepare(connection, session_id, message)
        except ProxyFailure as failure:
            self._answer_error(connection, session_id, failure.status, failure.detail)
            return None
        self._start(request)
        return None

    def _prepare(self, connection: DeviceConnection, session_id: int, message: HttpRequestMessage) -> ProxyRequest:
        requests = self._by_connection.get(connection, ())
        if len(requests) >= self.config.max_in_flight_per_connection:
            raise Overloaded(f"{len(requests)} requests already in flight on this connection")
        if self._in_flight >= self.config.max_in_flight:
            raise Overloaded(f"{self._in_flight} requests already in flight on this node")
        target = Target.parse(message.uri)
        mapped = self._mapping.translate(target)
        return ProxyRequest(
            connection,
            session_id,
            message.method_name,
            mapped or target,
            forwarded_headers(message.headers),
            message.body or None,
            read_timeout_ms(message.headers, self.config.default_read_timeout),
            _peer_of(connection),
            trusted=mapped is not None,
        )

    # -- one request's life -----------------------------------------------------

    def _start(self, request: ProxyRequest) -> None:
        self._by_connection.setdefault(request.connection, set()).add(request)
        self._in_flight += 1
        request.timer = self._reactor.callLater(request.timeout_ms / 1000.0, self._timed_out, request)
        work = Deferred.fromCoroutine(self._fetch(request))
        request.work = work
        work.addCallbacks(self._fetched, self._failed, callbackArgs=(request,), errbackArgs=(request,))

    async def _fetch(self, request: ProxyRequest) -> tuple[IResponse, bytes]:
        """
        The final response and its body, redirects followed.  Each hop,
        like the first, connects through the address policy.
        """
        target, method, body, pairs = request.target, request.method, request.body, request.headers
        trusted = request.trusted
        redirects = 0
        while True:
            headers = request_headers(pairs, target, *request.peer)
            producer = _BytesProducer(body) if body else None
            agent = self._agents[trusted]
            response = await agent.request(method.encode("ascii"), target.url(), headers, producer)
            content = await read_body(response, self.config.max_content_length)
            location = _location(response.headers) if response.code in REDIRECT_CODES else None
            if not location or redirects == MAX_REDIRECTS:
                return response, content
            following = target.follow(location)
            if following.origin != target.origin:
                pairs = cross_origin_headers(pairs)
                # Only a mapped name's own redirects keep to its target.
                trusted = False
            if response.code == 303 and method != "GET":
                # See Other: fetch the result with GET (MPush repeats the POST).
                method, body = "GET", None
            target = following
            redirects += 1

    def _fetched(self, result: tuple[IResponse, bytes], request: ProxyRequest) -> None:
        if request.done:
            return None
        response, content = result
        try:
            message = HttpResponseMessage(
                response.code,
                _text(response.phrase) or None,
                response_headers(response.headers, content),
                content or None,
            )
            sent = request.connection.send(Command.HTTP_PROXY, message, request.session_id)
        except Exception as error:
            self.log.failure("HTTP proxy: the response to {request} cannot be sent", request=request)
            self._fail(request, 502, f"unusable response: {type(error).__name__}")
            return None
        sent.addErrback(_ignore_closed)
        self._finish(request, response.code)
        return None

    def _failed(self, failure: Failure, request: ProxyRequest) -> None:
        if request.done:
            return None
        status, _phrase, detail = failure_reply(failure)
        if not failure.check(*_EXPECTED) and not _tls_failed(failure.value):
            self.log.failure("HTTP proxy: unexpected error for {request}", failure, request=request)
        # The log has what the device is not told: why, and the address behind a name.
        reason = f"{detail} ({type(failure.value).__name__}: {failure.value})"
        self._fail(request, status, detail, reason, warn=failure.check(AddressRefused) is not None)
        return None

    def _timed_out(self, request: ProxyRequest) -> None:
        request.timer = None
        if request.done:
            return
        self._fail(request, 408, f"no response within {request.timeout_ms} ms")
        request.work.cancel()

    def _fail(
        self, request: ProxyRequest, status: int, detail: str, log_detail: str | None = None, warn: bool = False
    ) -> None:
        log = self.log.warn if warn else self.log.info
        log(
            "HTTP proxy {status} for {peer}: {method} {url}: {detail}",
            status=status,
            peer=request.connection.peer,
            method=request.method,
            url=request.target.for_log(),
            detail=log_detail or detail,
        )
        self._answer_error(request.connection, request.session_id, status, detail, logged=True)
        self._finish(request, status)

    def _abandon(self, request: ProxyRequest) -> None:
        if request.done:
            return
        self._finish(request, None)
        if request.work is not None:
            request.work.cancel()

    def _finish(self, request: ProxyRequest, status: int | None) -> None:
        request.done = True
        if request.timer is not None and request.timer.active():
            request.timer.cancel()
        request.timer = None
        requests = self._by_connection.get(request.connection)
        if requests is not None and request in requests:
            requests.discard(request)
            self._in_flight -= 1
            if not requests:
                del self._by_connection[request.connection]
        request.finished.callback(status)

    def _answer_error(
        self, connection: DeviceConnection, session_id: int, status: int, detail: str, logged: bool = False
    ) -> None:
        """
        A status the proxy made up: raw, with why in a header.
        """
        if not logged:
            self.log.info(
                "HTTP proxy {status} for {peer}: {detail}",
                status=status,
                peer=connection.peer,
                detail=detail,
            )
        phrase = _PHRASES[status]
        message = HttpResponseMessage(status, phrase, {ERROR_HEADER: detail.replace("\n", " ")}, None)
        connection.send_raw(Command.HTTP_PROXY, message, session_id).addErrback(_ignore_closed)
