"""
The admin console: MPush's telnet line protocol (spec 16) over L{NodeAPI}.

An operator types one command per line and reads a text reply that ends
with a blank line (C{"\\r\\n\\r\\n"}).  The greeting, the option parsing and
the replies of the commands MPush has are MPush's; a few commands are ours
(C{count users}, C{push}, C{kick}, C{stats}) because the console is the
quickest way to poke a node by hand.

Where we differ from MPush, on purpose:

  - The argument is the whole rest of the line after the first space.
    MPush takes it only when the line has exactly two space-separated
    tokens (spec 21.2 item 17), which would make C{push <user> <text with
    spaces>} impossible.  For commands taking one word (C{count}, C{route},
    C{conf}) the argument is trimmed, so C{route  u1 } still means C{u1}.
  - C{help} lists exactly the commands that work, with their real syntax.
  - There is no C{shutdown} (a remote kill switch on a console without
    authentication) and no C{profile}: both answer C{unsupported option}.
  - A failing command answers with its error message; the traceback goes to
    the log, not to the client.

Commands answer in the order they were typed, even when one of them waits
on Redis or the network: while a command runs, the protocol stops reading
(L{LineReceiver.pauseProducing}), so the lines behind it wait in the
transport, bounded by TCP flow control rather than by an unbounded queue.
A command that outlives C{command_timeout} is answered with a timeout and
the console moves on; its late result is discarded.
"""

from __future__ import annotations

import json
from datetime import datetime, tzinfo

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from mpush.node_api import NodeAPI, PushOutcome, PushRejected, PushRequest
from mpush.protocol.routing import ClientLocation

__all__ = [
    "COMMAND_TIMEOUT",
    "HELP",
    "MAX_LINE_LENGTH",
    "AdminFactory",
    "AdminProtocol",
    "CommandError",
    "InvalidInput",
    "format_java_date",
    "format_local_date_time",
]

#: Longest line accepted, not counting its line ending (MPush: 8192).
MAX_LINE_LENGTH = 8192
#: Seconds a command may take before the console answers for it.
COMMAND_TIMEOUT = 30.0
#: Every reply (and the greeting's last two lines) ends with this.
REPLY_END = "\r\n\r\n"

_HOUR_MS = 3_600_000
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

HELP = "\r\n".join(
    [
        "Option                          Description",
        "------                          -----------",
        "help                            show this help (so does an empty line)",
        "quit                            close the console",
        "count conn                      connections on this node",
        "count online                    users online behind this node's public IP",
        "count users                     users bound on this node",
        "route <userId>                  the user's routes, online or not, as JSON",
        "push <userId> <text>            push <text> (UTF-8, no ack) to the user",
        "kick <userId> [clientType]      log the user out: KICK, close, route offline",
        "kick <userId> [clientType] open KICK only; the connection stays open (MPush)",
        "conf                            the whole configuration as JSON (secrets masked)",
        "conf <key>                      one configuration value, e.g. conf core.max-packet-size",
        "stats                           this node's counters as JSON",
    ]
)


class CommandError(ValueError):
    """
    A command that cannot run as typed (missing or malformed argument); its
    message is the whole reply, and nothing is logged.
    """


class InvalidInput(CommandError):
    """A line that is not UTF-8 text."""


class _CommandTimeout(Exception):
    """A command that did not finish within the console's bound."""


def _zoned(seconds: float, tz: tzinfo | None) -> datetime:
    if tz is None:
        return datetime.fromtimestamp(seconds).astimezone()
    return datetime.fromtimestamp(seconds, tz)


def format_java_date(seconds: float, tz: tzinfo | None = None) -> str:
    """
    C{seconds} as Java's C{Date.toString()} prints it
    (C{EEE MMM dd HH:mm:ss zzz yyyy}, English names whatever the locale),
    in C{tz} or the local time zone.
    """
    moment = _zoned(seconds, tz)
    return (
        f"{_DAYS[moment.weekday()]} {_MONTHS[moment.month - 1]} {moment.day:02d} "
        f"{moment:%H:%M:%S} {moment.tzname()} {moment.year}"
    )


def format_local_date_time(ms: int, tz: tzinfo | None = None) -> str:
    """
    C{ms} as Java's C{LocalDateTime.toString()} prints it: seconds only when
    not zero, milliseconds only when not zero.
    """
    millis = ms % 1000
    moment = _zoned(ms // 1000, tz)
    text = f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:{moment.minute:02d}"
    if moment.second or millis:
        text += f":{moment.second:02d}"
    if millis:
        text += f".{millis:03d}"
    return text


def _json(value: object, *, pretty: bool = False) -> str:
    if pretty:
        return json.dumps(value, ensure_ascii=False, indent=2, default=str)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _route_view(client_type: int, location: ClientLocation) -> dict:
    return {
        "host": location.host,
        "port": location.port,
        "deviceId": location.device_id,
        "osName": location.os_name,
        "clientVersion": location.client_version,
        "connId": location.conn_id,
        "clientType": int(client_type),
        "online": location.online,
    }


def _result_line(result: dict) -> str:
    parts = [str(result.get("user")), f"clientType={result.get('client_type')}", str(result.get("status"))]
    if result.get("node"):
        parts.append(f"node={result['node']}")
    if result.get("reason"):
        parts.append(f"reason={result['reason']}")
    return " ".join(parts)


def _error_text(error: BaseException) -> str:
    if isinstance(error, CommandError):
        return str(error)
    if isinstance(error, PushRejected):
        return f"push rejected: {error}"
    if isinstance(error, _CommandTimeout):
        return str(error)
    message = str(error)
    name = type(error).__name__
    return f"{name}: {message}" if message else name


class AdminProtocol(LineReceiver):
    """
    One operator's console session.

    Lines end with C{"\\n"}; a C{"\\r"} before it is dropped, so telnet's
    C{"\\r\\n"} and a bare C{"\\n"} both work.  A line longer than
    L{MAX_LINE_LENGTH} gets an error reply and the connection is closed.
    """

    delimiter = b"\n"
    # One more than the longest line, for the "\r" of a "\r\n" ending;
    # lineReceived enforces MAX_LINE_LENGTH on the line without it.
    MAX_LENGTH = MAX_LINE_LENGTH + 1

    log = Logger()

    def __init__(self, api: NodeAPI, clock: IReactorTime, *, local_ip: str,
                 command_timeout: float = COMMAND_TIMEOUT, tz: tzinfo | None = None) -> None:
        self.api = api
        self.clock = clock
        self.local_ip = local_ip
        self.command_timeout = command_timeout
        self.tz = tz
        self.peer = "?"
        self.is_open = False
        # The command being waited for: (its Deferred, its timeout call).
        self._running = None
        self._commands = {
            "help": self._help,
            "quit": self._quit,
            "count": self._count,
            "route": self._route,
            "push": self._push,
            "kick": self._kick,
            "conf": self._conf,
            "stats": self._stats,
        }

    # -- connection ----------------------------------------------------------

    def connectionMade(self) -> None:
        address = self.transport.getPeer()
        self.peer = f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"
        self.is_open = True
        self.log.info("admin console opened by {peer}", peer=self.peer)
        self.transport.write(self.greeting().encode("utf-8"))

    def connectionLost(self, reason: Failure) -> None:
        self.is_open = False
        running, self._running = self._running, None
        if running is not None:
            # The command itself carries on (a push in flight is not
            # withdrawn); only its answer has nowhere to go.
            running[1].cancel()

    def greeting(self) -> str:
        """
        MPush's three greeting lines: who, since when, and the time now.
        """
        now = self.clock.seconds()
        started_ms = int(self.api.started_ms)
        hours = max(0, (int(now * 1000) - started_ms) // _HOUR_MS)
        return (
            f"Welcome to MPush Console [{self.local_ip}]!\r\n"
            f"since {format_local_date_time(started_ms, self.tz)} has running {hours}(h){REPLY_END}"
            f"It is {format_java_date(now, self.tz)} now.{REPLY_END}"
        )

    # -- lines ---------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if len(line) > MAX_LINE_LENGTH:
            self.lineLengthExceeded(line)
            return
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._reply(_error_text(InvalidInput("input is not UTF-8 text")))
            return
        self._run(text)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.log.info("admin console {peer}: line longer than {limit} bytes, closing",
                      peer=self.peer, limit=MAX_LINE_LENGTH)
        self._reply(f"line too long: more than {MAX_LINE_LENGTH} bytes, closing")
        self.is_open = False
        self.transport.loseConnection()

    @staticmethod
    def parse(text: str) -> tuple[str, str | None]:
        """
        (option, argument) of a line: the option is the first space-separated
        token, trimmed and lower-cased; the argument is the rest of the line
        (not MPush's "exactly two tokens", see the module docstring), or
        C{None} when there is none.
        """
        option, _, argument = text.partition(" ")
        return option.strip().lower(), (argument if argument != "" else None)

    def _run(self, text: str) -> None:
        option, argument = self.parse(text)
        handler = self._commands.get(option or "help")
        if handler is None:
            self._reply("unsupported option")
            return
        try:
            result = handler(argument)
        except Exception as error:
            self._failed(Failure(error), option)
            return
        if not isinstance(result, defer.Deferred):
            if result is not None:
                self._reply(result)
            return
        if result.called:
            result.addCallbacks(self._reply, self._failed, errbackArgs=(option,))
            return
        # Wait for it before reading the next line.
        self.pauseProducing()
        timer = self.clock.callLater(self.command_timeout, self._timed_out, result, option)
        self._running = (result, timer)
        result.addBoth(self._finished, result, option)

    def _finished(self, outcome: object, deferred: defer.Deferred, option: str) -> None:
        if self._running is None or self._running[0] is not deferred:
            # Timed out or disconnected: nobody is waiting for this answer.
            if isinstance(outcome, Failure):
                self.log.failure("admin command {option!r} failed after its answer was given up",
                                 outcome, option=option)
            return None
        self._running[1].cancel()
        self._running = None
        if isinstance(outcome, Failure):
            self._failed(outcome, option)
        else:
            self._reply(outcome)
        self._next()
        return None

    def _timed_out(self, deferred: defer.Deferred, option: str) -> None:
        if self._running is None or self._running[0] is not deferred:
            return
        self._running = None
        self.log.warn("admin command {option!r} from {peer} took more than {timeout}s",
                      option=option, peer=self.peer, timeout=self.command_timeout)
        self._reply(_error_text(_CommandTimeout(
            f"{option}: no answer within {self.command_timeout:g}s")))
        self._next()

    def _next(self) -> None:
        if self.is_open and not self.transport.disconnecting:
            self.resumeProducing()

    def _failed(self, failure: Failure, option: str) -> None:
        error = failure.value
        if isinstance(error, (CommandError, PushRejected)):
            # The operator's mistake, answered in full: nothing to debug.
            self.log.info("admin command {option!r} from {peer} refused: {why}",
                          option=option, peer=self.peer, why=error)
        else:
            self.log.failure("admin command {option!r} from {peer} failed", failure,
                             option=option, peer=self.peer)
        self._reply(_error_text(error))

    def _reply(self, text: object) -> None:
        if not self.is_open:
            return
        # Telnet wants CRLF; only real line breaks are translated (not
        # str.splitlines' U+2028 and friends, which may sit inside JSON).
        body = str(text).replace("\r\n", "\n").replace("\n", "\r\n")
        self.transport.write((body + REPLY_END).encode("utf-8"))

    # -- commands ------------------------------------------------------------

    def _help(self, argument: str | None) -> str:
        return HELP

    def _quit(self, argument: str | None) -> None:
        self._reply("have a good day!")
        self.is_open = False
        self.transport.loseConnection()

    def _count(self, argument: str | None) -> str | defer.Deferred:
        what = (argument or "").strip()
        if what == "conn":
            return str(self.api.connection_count())
        if what == "users":
            return str(self.api.local_users())
        if what == "online":
            return self.api.online_count().addCallback(str)
        if not what:
            raise CommandError("please input what to count: conn, online or users")
        return f"[{what}] unsupported, try help."

    def _route(self, argument: str | None) -> defer.Deferred:
        user_id = (argument or "").strip()
        if not user_id:
            raise CommandError("please input userId")

        def show(routes: dict[int, ClientLocation]) -> str:
            if not routes:
                return f"user [{user_id}] offline now."
            return _json([_route_view(client_type, routes[client_type]) for client_type in sorted(routes)])

        return self.api.routes(user_id).addCallback(show)

    def _push(self, argument: str | None) -> defer.Deferred:
        user_id, _, text = (argument or "").lstrip(" ").partition(" ")
        if not user_id or not text:
            raise CommandError("please input userId and text: push <userId> <text>")
        self.log.info("admin console {peer}: push to {user} ({size} bytes)",
                      peer=self.peer, user=user_id, size=len(text.encode("utf-8")))
        request = PushRequest(users=(user_id,), content=text.encode("utf-8"), ack="none")

        def show(outcome: PushOutcome) -> str:
            lines = [f"push [{outcome.message_id}]:"]
            lines.extend(_result_line(result) for result in outcome.results)
            if not outcome.results:
                lines.append("no result")
            return "\r\n".join(lines)

        return self.api.push(request).addCallback(show)

    def _kick(self, argument: str | None) -> defer.Deferred:
        words = (argument or "").split()
        close = True
        if len(words) > 1 and words[-1] == "open":
            close = False
            words.pop()
        if not words:
            raise CommandError("please input userId: kick <userId> [clientType] [open]")
        if len(words) > 2:
            raise CommandError("too many arguments: kick <userId> [clientType] [open]")
        user_id = words[0]
        client_type = None
        if len(words) == 2:
            try:
                client_type = int(words[1])
            except ValueError:
                raise CommandError(f"clientType must be an integer, not [{words[1]}]") from None
        self.log.info("admin console {peer}: kick {user} ({client_type}, close {close})",
                      peer=self.peer, user=user_id, client_type=client_type, close=close)
        return self.api.kick(user_id, client_type, close=close).addCallback(
            lambda kicked: f"kicked {kicked} route(s) of user [{user_id}]."
        )

    def _conf(self, argument: str | None) -> str:
        key = (argument or "").strip()
        if not key:
            return _json(self.api.config_view(), pretty=True)
        try:
            value = self.api.config_value(key)
        except KeyError:
            return f"key [{key}] not find in config"
        if isinstance(value, KeyError):
            return f"key [{key}] not find in config"
        return _json(value, pretty=True)

    def _stats(self, argument: str | None) -> str:
        return _json(self.api.stats(), pretty=True)


class AdminFactory(ServerFactory):
    """
    Builds console sessions over one node's L{NodeAPI}.

    @param api: the node's L{mpush.node_api.NodeAPI}.
    @param clock: an L{IReactorTime} (greeting times and command timeouts).
    @param local_ip: shown in the greeting: this node's local IP as routes
        carry it (C{[net] local-ip} or the detected address).
    @param command_timeout: seconds before a command is answered as timed out.
    @param tz: time zone of the greeting's times; C{None} is the local zone.
    """

    protocol = AdminProtocol

    def __init__(self, api: NodeAPI, clock: IReactorTime, *, local_ip: str,
                 command_timeout: float = COMMAND_TIMEOUT, tz: tzinfo | None = None) -> None:
        if not command_timeout > 0:
            raise ValueError(f"command_timeout must be positive, not {command_timeout!r}")
        self.api = api
        self.clock = clock
        self.local_ip = local_ip
        self.command_timeout = command_timeout
        self.tz = tz

    def buildProtocol(self, addr: object) -> AdminProtocol:
        protocol = self.protocol(
            self.api,
            self.clock,
            local_ip=self.local_ip,
            command_timeout=self.command_timeout,
            tz=self.tz,
        )
        protocol.factory = self
        return protocol
