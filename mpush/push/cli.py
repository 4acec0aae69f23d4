"""
C{mpush-push}: push to users, or broadcast, from a shell or a script.

One line per result on stdout (JSON Lines with C{--json}); the exit status
says whether everything succeeded (0), something did not (1), or the command
could not run at all (2: bad options, content too large, Redis unreachable),
so scripts can tell "the user is offline" from "fix your command line".
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import sys
from dataclasses import dataclass

from twisted.internet import defer, task
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from mpush.push.client import InvalidPush, PushBackendUnavailable, PushClient
from mpush.push.gateway_client import PushTooLarge
from mpush.push.results import AckModel, BroadcastResult, PushResult, client_type_name

__all__ = [
    "CliError",
    "PushOptions",
    "build_parser",
    "format_broadcast_result",
    "format_push_result",
    "main",
    "options_from_args",
    "parse_gateway",
    "run",
]

PROG = "mpush-push"
DEFAULT_GATEWAY = ("127.0.0.1", 3001)
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_ACK_MODELS = {"none": AckModel.NO_ACK, "auto": AckModel.AUTO_ACK, "biz": AckModel.BIZ_ACK}


class CliError(Exception):
    """A command-line problem, reported as C{mpush-push: error: <message>} with exit 2."""


@dataclass(frozen=True)
class PushOptions:
    """Everything a run needs, validated once."""

    content: bytes
    redis_url: str | None = None
    gateway: tuple[str, int] | None = None
    users: tuple[str, ...] = ()
    broadcast: bool = False
    tags: tuple[str, ...] | None = None
    condition: str | None = None
    task_id: str | None = None
    ack: AckModel = AckModel.NO_ACK
    timeout: float | None = None
    json: bool = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Push to MPush users, or broadcast, through mpush gateways.",
        epilog="Exit status: 0 every result is success, 1 otherwise, 2 usage error.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--redis", metavar="URL",
                       help="find routes and nodes in this Redis (redis://[:password@]host[:port][/db])")
    where.add_argument("--gateway", metavar="HOST:PORT",
                       help="embedded mode: send everything to this gateway "
                            f"(default {DEFAULT_GATEWAY[0]}:{DEFAULT_GATEWAY[1]})")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--user", metavar="U", nargs="+", action="extend",
                        help="user id(s) to push to (repeatable)")
    target.add_argument("--broadcast", action="store_true",
                        help="push to every user bound on every node")
    parser.add_argument("--tags", metavar="A,B", help="broadcast only to users with one of these tags")
    parser.add_argument("--condition", metavar="EXPR",
                        help="broadcast only to users for whom this expression is true")
    parser.add_argument("--task-id", metavar="ID", help="broadcast task id (Redis flow control)")
    content = parser.add_mutually_exclusive_group(required=True)
    content.add_argument("--content", metavar="TEXT", help="content as UTF-8 text")
    content.add_argument("--content-file", metavar="F", help="content read from a file (- for stdin)")
    content.add_argument("--content-b64", metavar="B", help="content as base64")
    parser.add_argument("--ack", choices=sorted(_ACK_MODELS), default="none",
                        help="ack model asked of the device (default %(default)s)")
    waiting = parser.add_mutually_exclusive_group()
    waiting.add_argument("--timeout", type=float, metavar="S",
                         help="seconds to wait for each answer, as in mpush (default 3; 30 for a broadcast)")
    waiting.add_argument("--timeout-ms", type=int, metavar="N",
                         help="the same in milliseconds, as mpush push --timeout-ms")
    parser.add_argument("--json", action="store_true", help="one JSON object per result")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log to stderr (-vv for debug)")
    return parser


def parse_gateway(text: str) -> tuple[str, int]:
    """
    C{HOST:PORT} or C{[IPv6]:PORT}.

    @raise CliError: anything else.
    """
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise CliError(f"--gateway {text!r}: write an IPv6 address as [addr]:port")
    if not colon or not host:
        raise CliError(f"--gateway must be HOST:PORT, not {text!r}")
    if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise CliError(f"--gateway port must be 1..65535, not {port!r}")
    return host, int(port)


def _read_content(args) -> bytes:
    if args.content is not None:
        return args.content.encode("utf-8", "surrogateescape")
    if args.content_b64 is not None:
        try:
            return base64.b64decode(args.content_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise CliError(f"--content-b64 is not base64: {exc}") from None
    path = args.content_file
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise CliError(f"cannot read content file {path}: {exc.strerror or exc}") from None


#: Seconds: a larger --timeout is a milliseconds value from before --timeout
#: meant seconds here, as it always did in C{mpush}.
MAX_TIMEOUT_S = 600


def _timeout_seconds(args) -> float | None:
    """--timeout (seconds) or --timeout-ms, as seconds; None for the default."""
    if args.timeout_ms is not None:
        if args.timeout_ms <= 0:
            raise CliError("--timeout-ms must be a positive number of milliseconds")
        return args.timeout_ms / 1000.0
    if args.timeout is None:
        return None
    if not 0 < args.timeout <= MAX_TIMEOUT_S:
        hint = ""
        if args.timeout > MAX_TIMEOUT_S:
            hint = f" (--timeout is in seconds, as in mpush: for {args.timeout:g} ms write --timeout-ms {args.timeout:g})"
        raise CliError(f"--timeout must be a number of seconds in (0, {MAX_TIMEOUT_S}]{hint}")
    return float(args.timeout)


def options_from_args(args) -> PushOptions:
    """
    @raise CliError: the options do not make a usable command.
    """
    if not args.broadcast:
        for name in ("tags", "condition", "task_id"):
            if getattr(args, name) is not None:
                raise CliError(f"--{name.replace('_', '-')} goes with --broadcast")
    users: tuple[str, ...] = ()
    if args.user is not None:
        users = tuple(dict.fromkeys(args.user))
        if any(not user for user in users):
            raise CliError("--user must not be empty")
    tags = None
    if args.tags is not None:
        tags = tuple(dict.fromkeys(tag.strip() for tag in args.tags.split(",") if tag.strip()))
        if not tags:
            raise CliError("--tags needs at least one tag")
    timeout = _timeout_seconds(args)
    redis_url = args.redis
    gateway = None
    if redis_url is not None:
        from mpush.store.redis_connection import InvalidRedisUrl, parse_redis_url

        try:
            parse_redis_url(redis_url)
        except InvalidRedisUrl as exc:
            raise CliError(str(exc)) from None
    else:
        gateway = parse_gateway(args.gateway) if args.gateway is not None else DEFAULT_GATEWAY
    return PushOptions(
        content=_read_content(args),
        redis_url=redis_url,
        gateway=gateway,
        users=users,
        broadcast=args.broadcast,
        tags=tags,
        condition=args.condition,
        task_id=args.task_id or None,
        ack=_ACK_MODELS[args.ack],
        timeout=timeout,
        json=args.json,
    )


def _elapsed_ms(result: PushResult) -> int | None:
    """From our first "send" to our last point (both on this machine's clock)."""
    sent = next((ms for name, ms in result.time_points if name == "send"), None)
    if sent is None:
        return None
    return max(0, result.time_points[-1][1] - sent)


def format_push_result(result: PushResult) -> str:
    """C{u1 MOBILE success node=127.0.0.1:3001 ms=3 [redirected] [code=N] [reason=...]}."""
    parts = [result.user_id, client_type_name(result.client_type), result.status.value,
             f"node={result.node or '-'}"]
    elapsed = _elapsed_ms(result)
    if elapsed is not None:
        parts.append(f"ms={elapsed}")
    if result.redirected:
        parts.append("redirected")
    if result.code is not None:
        parts.append(f"code={result.code}")
    if result.reason:
        parts.append(f"reason={result.reason}")
    return " ".join(parts)


def format_broadcast_result(result: BroadcastResult) -> str:
    """C{broadcast node=127.0.0.1:3001 success count=5 [code=N] [reason=...]}."""
    parts = ["broadcast", f"node={result.node}", result.status.value]
    if result.count is not None:
        parts.append(f"count={result.count}")
    if result.code is not None:
        parts.append(f"code={result.code}")
    if result.reason:
        parts.append(f"reason={result.reason}")
    return " ".join(parts)


def _printable(line: str) -> str:
    # A reason or user id with a newline must not forge another result line.
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in line)


@defer.inlineCallbacks
def run(reactor, options: PushOptions, out=None, err=None, client_factory=PushClient):
    """
    Push or broadcast as C{options} say, print the results, and fire the exit
    status (0, 1 or 2).  Never raises for failures: they are printed.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err

    def complain(message: str) -> None:
        print(f"{PROG}: error: {_printable(message)}", file=err, flush=True)

    def emit(result, text: str) -> None:
        if options.json:
            print(json.dumps(result.to_json_dict(), ensure_ascii=False), file=out, flush=True)
        else:
            print(_printable(text), file=out, flush=True)

    try:
        if options.redis_url is not None:
            client = client_factory(reactor, redis_url=options.redis_url)
        else:
            client = client_factory(reactor, gateway=options.gateway)
    except ValueError as exc:
        complain(str(exc))
        return EXIT_USAGE
    try:
        try:
            yield client.check()
        except PushBackendUnavailable as exc:
            complain(f"cannot reach redis: {exc}")
            return EXIT_USAGE
        try:
            if options.broadcast:
                sending = client.broadcast(options.content, options.tags, options.condition,
                                           options.task_id, options.timeout, ack=options.ack)
            else:
                sending = client.push_many(options.users, options.content, options.ack, options.timeout)
        except (InvalidPush, PushTooLarge) as exc:
            complain(str(exc))
            return EXIT_USAGE
        try:
            outcome = yield sending
        except PushBackendUnavailable as exc:
            complain(str(exc))
            return EXIT_USAGE
        if options.broadcast:
            results = list(outcome)
            if not results:
                complain("no gateway node is registered: nothing was sent")
                return EXIT_FAILED
            for result in results:
                emit(result, format_broadcast_result(result))
        else:
            results = [result for per_user in outcome.values() for result in per_user]
            for result in results:
                emit(result, format_push_result(result))
        return EXIT_OK if results and all(result.ok for result in results) else EXIT_FAILED
    finally:
        yield client.close()


def _start_logging(verbosity: int) -> None:
    level = {0: LogLevel.error, 1: LogLevel.info}.get(verbosity, LogLevel.debug)
    predicate = LogLevelFilterPredicate(defaultLogLevel=level)
    observer = FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def main(argv=None) -> None:
    """Console entry point (C{mpush-push}, C{python -m mpush.push})."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
    except CliError as exc:
        parser.error(str(exc))
    _start_logging(args.verbose)

    def react_main(reactor):
        def to_exit(code):
            if code:
                raise SystemExit(code)

        return run(reactor, options).addCallback(to_exit)

    task.react(react_main)
