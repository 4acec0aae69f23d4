"""
C{mpush-client}: try an MPush server from a shell, or drive it from a script.

It connects like a stock Java client (fast connect, handshake, bind), prints
one line per event on stdout, acks pushes, runs the heartbeat health check,
and exits non-zero with one clear line on stderr when something fails.
Options such as C{--ping N}, C{--count N} and C{--exit-after S} make it end
by itself, so scripts and end-to-end tests can use its exit status.
"""

from __future__ import annotations

import argparse
import signal
import sys
import uuid

from twisted.internet import defer, task
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from mpush.client.config import ClientConfig, ClientConfigError
from mpush.client.protocol import (
    ClientError,
    HandshakeFailed,
    MPushClientProtocol,
    connect_client,
)
from mpush.client.session_file import write_private_text
from mpush.protocol.crypto import MPUSH_DEMO_PUBLIC_KEY
from mpush.protocol.errors import ErrorCode
from mpush.protocol.packet import Flags

__all__ = ["CliError", "build_parser", "config_from_args", "main", "printable", "run"]

PROG = "mpush-client"

#: Exit status after Ctrl-C (128 + SIGINT, as a shell reports it).
INTERRUPTED = 130

#: HttpRequestMessage method byte of GET (spec 6.11).
HTTP_GET = 0


class CliError(Exception):
    """
    A command-line problem reported as C{mpush-client: error: <message>}.
    """


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Connect to an MPush server like the Java client and print what happens.",
    )
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="server host (default %(default)s)")
    server.add_argument("--port", type=int, default=3000, help="connection port (default %(default)s)")
    server.add_argument("--tls", action="store_true",
                        help="connect with TLS (a node's client port with [tls] connect-server)")
    server.add_argument("--ca-file", metavar="PATH",
                        help="with --tls: PEM CA certificate(s) to trust (default: the system's)")
    server.add_argument("--server-name", metavar="NAME",
                        help="with --tls: the name the server's certificate must carry (default: --host)")
    keys = server.add_mutually_exclusive_group()
    keys.add_argument("--public-key", metavar="BASE64",
                      help="the server's RSA public key, base64 X.509 (MPush mp.security.public-key)")
    keys.add_argument("--public-key-file", metavar="PATH",
                      help="file holding that key (one base64 line or a PEM PUBLIC KEY)")
    keys.add_argument("--demo-key", action="store_true",
                      help="use MPush's published demo key (only for servers still running it)")

    device = parser.add_argument_group("device")
    device.add_argument("--device-id",
                        help="device id (default: stable id kept next to --session-file, else random)")
    device.add_argument("--os-name", default="android", help="os name (default %(default)s)")
    device.add_argument("--os-version", default="", help="os version")
    device.add_argument("--client-version", default="", help="client version")
    device.add_argument("--user", help="bind this user id once connected")
    device.add_argument("--tags", help="tags sent with the bind")
    device.add_argument("--session-file", metavar="PATH",
                        help="token.dat-like file for fast connect (created 0600)")
    device.add_argument("--heartbeat", type=int, metavar="MS",
                        help="min and max heartbeat asked for, ms (default 240000, as Java)")
    device.add_argument("--timeout", type=float, metavar="SECONDS", default=3.0,
                        help="handshake and bind timeout (default %(default)s)")

    run_group = parser.add_argument_group("running")
    run_group.add_argument("--ping", type=int, metavar="N", default=0,
                           help="send N pings one after the other, each waiting for its pong")
    run_group.add_argument("--count", type=int, metavar="N", default=0,
                           help="exit 0 after N pushes")
    run_group.add_argument("--exit-after", type=float, metavar="SECONDS",
                           help="exit after this long (with --count: fail if the pushes did not come)")
    run_group.add_argument("--http-get", metavar="URL",
                           help="GET URL through the server's HTTP proxy ([http] proxy-enabled), print "
                                "the answer and exit (0 for a 2xx or 3xx answer)")
    run_group.add_argument("--no-ack", action="store_true",
                           help="do not ack BIZ_ACK pushes (AUTO_ACK is always acked, as Java)")
    run_group.add_argument("--health-interval", type=float, metavar="SECONDS",
                           help="health check period (default: heartbeat/3, at most 10 s)")
    run_group.add_argument("--no-health-check", action="store_true",
                           help="neither ping nor watch the server's silence")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log protocol events to stderr (-vv for debug)")
    return parser


def _read_public_key(args) -> str:
    if args.demo_key:
        return MPUSH_DEMO_PUBLIC_KEY
    if args.public_key_file:
        try:
            with open(args.public_key_file, encoding="utf-8") as handle:
                return handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"cannot read public key file {args.public_key_file}: {exc}") from None
    if args.public_key:
        return args.public_key
    raise CliError("a server public key is required: --public-key, --public-key-file or --demo-key")


def _device_id(args) -> str:
    """
    The explicit id, else one kept next to the session file (so fast connect,
    which the server checks against the device id, keeps working across
    runs), else a fresh random id.
    """
    if args.device_id is not None:
        if not args.device_id:
            raise CliError("--device-id must not be empty")
        return args.device_id
    if not args.session_file:
        return uuid.uuid4().hex
    path = args.session_file + ".device-id"
    try:
        with open(path, encoding="utf-8") as handle:
            stored = handle.read().strip()
    except FileNotFoundError:
        stored = ""
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read device id file {path}: {exc}") from None
    if stored:
        return stored
    device_id = uuid.uuid4().hex
    try:
        write_private_text(path, device_id)
    except OSError as exc:
        raise CliError(f"cannot write device id file {path}: {exc}") from None
    return device_id


def config_from_args(args) -> ClientConfig:
    """
    @raise CliError: the options do not make a usable configuration.
    """
    for name in ("ping", "count"):
        if getattr(args, name) < 0:
            raise CliError(f"--{name} must not be negative")
    if args.exit_after is not None and args.exit_after <= 0:
        raise CliError("--exit-after must be positive")
    if args.http_get is not None and not args.http_get.startswith(("http://", "https://")):
        raise CliError("--http-get needs an http:// or https:// URL")
    if args.health_interval is not None and args.health_interval <= 0:
        raise CliError("--health-interval must be positive")
    if (args.ca_file is not None or args.server_name is not None) and not args.tls:
        raise CliError("--ca-file and --server-name go with --tls")
    public_key = _read_public_key(args)
    extra = {}
    if args.heartbeat is not None:
        extra["min_heartbeat"] = extra["max_heartbeat"] = args.heartbeat
    try:
        return ClientConfig(
            host=args.host,
            port=args.port,
            public_key=public_key,
            device_id=_device_id(args),
            os_name=args.os_name,
            os_version=args.os_version,
            client_version=args.client_version,
            user_id=args.user or None,
            tags=args.tags,
            session_file=args.session_file,
            handshake_timeout=args.timeout,
            bind_timeout=args.timeout,
            tls=args.tls,
            ca_file=args.ca_file,
            server_name=args.server_name,
            **extra,
        )
    except ClientConfigError as exc:
        raise CliError(str(exc)) from None


def printable(content: bytes) -> str:
    """
    Push content on one line: UTF-8 where it is, escapes elsewhere.
    """
    text = content.decode("utf-8", "backslashreplace")
    return "".join(
        ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


def describe_error(error: BaseException) -> str:
    message = str(error) or type(error).__name__
    if isinstance(error, HandshakeFailed) and error.error_message.code == ErrorCode.DISPATCH_ERROR:
        message += " (the server could not read the handshake: is the public key the server's?)"
    return message


class _Session:
    """
    Glue between one protocol's callbacks and the command's output and exit.
    """

    def __init__(self, reactor, args, out, err) -> None:
        self.reactor = reactor
        self.args = args
        self.out = out
        self.err = err
        self.protocol: MPushClientProtocol | None = None
        self.finished = defer.Deferred()
        self.closing_on_purpose = False
        self.error_reported = False
        self.interrupted = False
        self.exit_code = 0

    def say(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def complain(self, message: str) -> None:
        self.error_reported = True
        print(f"{PROG}: error: {message}", file=self.err, flush=True)

    def prepare(self, protocol: MPushClientProtocol) -> None:
        self.protocol = protocol
        protocol.on_established = self.established
        protocol.on_push = self.pushed
        protocol.on_pong = lambda: self.say("pong")
        protocol.on_kick = self.kicked
        protocol.on_error = self.failed
        protocol.on_close = self.closed

    def established(self, protocol: MPushClientProtocol) -> None:
        what = "fast connect ok" if protocol.resumed else "handshake ok"
        self.say(f"{what} heartbeat={protocol.heartbeat} session={protocol.session_id}")

    def pushed(self, content: bytes, session_id: int, flags: int) -> None:
        self.say(f"push session={session_id} flags={flags} content={printable(content)}")
        protocol = self.protocol
        if flags & Flags.BIZ_ACK and not self.args.no_ack:
            protocol.ack(session_id)
        if self.args.count and len(protocol.pushes) >= self.args.count:
            self.finish(0)

    def kicked(self, device_id, user_id) -> None:
        self.say(f"kicked device={device_id} user={user_id}")

    def failed(self, error: Exception) -> None:
        self.complain(describe_error(error))
        self.exit_code = 1

    def interrupt(self) -> None:
        """Ctrl-C: close the connection ourselves and exit 130, as a shell would."""
        self.interrupted = True
        if self.protocol is None:
            self.reactor.stop()
            return
        if self.finished.called or self.closing_on_purpose:
            return
        self.exit_code = INTERRUPTED
        self.closing_on_purpose = True
        self.protocol.close()

    def closed(self, reason) -> None:
        self.say("closed")
        if self.finished.called:
            return
        if self.closing_on_purpose:
            self.finished.callback(self.exit_code)
            return
        if not self.error_reported:
            self.complain(f"connection closed by the server: {reason.getErrorMessage()}")
        self.finished.callback(1)

    def finish(self, code: int, message: str | None = None) -> None:
        """
        End the run: close the connection, exit with C{code} once it is closed.
        """
        if self.closing_on_purpose or self.finished.called:
            return
        if message:
            self.complain(message)
        self.exit_code = code
        self.closing_on_purpose = True
        self.protocol.close()

    def deadline(self) -> None:
        if self.args.count:
            got = len(self.protocol.pushes)
            self.finish(1, f"timed out after {self.args.exit_after:g} s with {got} of "
                           f"{self.args.count} pushes")
        else:
            self.finish(0)


@defer.inlineCallbacks
def run(reactor, config: ClientConfig, args, out=None, err=None, interruptible=False):
    """
    Connect, do what the options ask, and fire with the exit status (0 ok,
    1 failure, 130 Ctrl-C when C{interruptible}).  Never raises for client
    failures: they are printed.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    session = _Session(reactor, args, out, err)
    if interruptible:
        signal.signal(signal.SIGINT, lambda signum, frame: reactor.callFromThread(session.interrupt))
    try:
        protocol = yield connect_client(config, reactor, prepare=session.prepare)
    except ClientError as exc:
        if session.interrupted:
            return INTERRUPTED
        if not session.error_reported:
            session.complain(describe_error(exc))
        # The connection (if any) is already closing; wait for it so the
        # reactor stops clean.
        if session.protocol is not None and session.protocol.transport is not None:
            yield session.protocol.close()
        return 1
    if config.user_id:
        session.say(f"bound user={config.user_id}")
    if not args.no_health_check:
        protocol.start_health_check(args.health_interval)
    timer = None
    if args.exit_after is not None:
        timer = reactor.callLater(args.exit_after, session.deadline)
    try:
        for _ in range(args.ping):
            if session.finished.called or session.closing_on_purpose:
                break
            yield protocol.ping(config.handshake_timeout)
    except ClientError as exc:
        if not session.finished.called:
            session.finish(1, describe_error(exc))
    if args.ping and not args.count and args.exit_after is None and args.http_get is None:
        session.finish(session.exit_code)
    if args.http_get is not None and not (session.finished.called or session.closing_on_purpose):
        yield _http_get(session, protocol, args.http_get, config.handshake_timeout)
    code = yield session.finished
    if timer is not None and timer.active():
        timer.cancel()
    return code


@defer.inlineCallbacks
def _http_get(session: _Session, protocol: MPushClientProtocol, url: str, timeout: float):
    """--http-get: one GET through the server's proxy, printed; then exit."""
    try:
        response = yield protocol.http_request(HTTP_GET, url, {"User-Agent": PROG}, None, timeout)
    except ClientError as exc:
        session.finish(1, f"--http-get {url}: {describe_error(exc)}")
        return
    session.say(f"http status={response.status_code} reason={response.reason_phrase or ''} "
                f"bytes={len(response.body or b'')}")
    if response.body:
        session.say(printable(response.body))
    if not (session.args.count or session.args.exit_after is not None):
        session.finish(0 if response.status_code < 400 else 1)


def _start_logging(verbosity: int) -> None:
    level = {0: LogLevel.error, 1: LogLevel.info}.get(verbosity, LogLevel.debug)
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def main(argv=None) -> None:
    """
    Console entry point (C{mpush-client}, C{python -m mpush.client}).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except CliError as exc:
        parser.error(str(exc))
    _start_logging(args.verbose)

    def react_main(reactor):
        d = run(reactor, config, args, interruptible=True)

        def to_exit(code):
            if code:
                raise SystemExit(code)

        return d.addCallback(to_exit)

    task.react(react_main)
