"""
C{mpush}: operate a node through its HTTP API from a shell or a script.

Exit status: 0 the command did what was asked; 1 the API answered with a
failure (an error, a user with no route, a push not delivered everywhere);
2 the command could not run (bad options, node unreachable, no answer in
time).  So a script can tell "fix your command line or network" from "the
node said no".
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import os
import sys
from urllib.parse import quote, urlsplit

from twisted.internet import defer, task
from twisted.internet.protocol import Protocol
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, FileBodyProducer, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers

from mpush.http import schema
from mpush.protocol.client_type import ClientType
from mpush.protocol.crypto import RsaPrivateKey
from mpush.protocol.fields import INT32_MAX, INT32_MIN
from mpush.tls import TrustFileError, load_trust_root, tls_failure

__all__ = [
    "ApiFailure",
    "ApiResult",
    "CliError",
    "build_parser",
    "call_api",
    "format_keys",
    "https_policy",
    "main",
    "run",
]

PROG = "mpush"
DEFAULT_URL = "http://127.0.0.1:8080"
TOKEN_ENV = "MPUSH_API_TOKEN"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: Bound of a call other than a push, connect included (seconds).
DEFAULT_TIMEOUT_S = 15.0
#: Added to a push's timeout_ms: the node answers after it, not at it.
PUSH_TIMEOUT_MARGIN_S = 10.0
_CONNECT_TIMEOUT_S = 10.0
#: Largest answer read (a user's routes, a push's results: far less).
MAX_ANSWER_BYTES = 16 * 1024 * 1024
_MAX_TIMEOUT_S = 86400.0
#: Push results that mean "delivered, or kept as asked".
_OK_STATUSES = frozenset({"success", "stored_offline"})


class CliError(Exception):
    """The command cannot run: bad options or no usable answer (exit 2)."""


class ApiFailure(Exception):
    """The API answered with an error (exit 1; 2 for a refused token)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status = status
        self.code = code


class ApiResult:
    """A decoded answer: HTTP status and JSON value."""

    __slots__ = ("status", "value")

    def __init__(self, status: int, value: object) -> None:
        self.status = status
        self.value = value


# ---------------------------------------------------------------------------
# Options


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    # The same options on the main parser and on every subcommand, so
    # "mpush --url X push ..." and "mpush push ... --url X" both work; on
    # subcommands they are SUPPRESSed so they do not reset the main value.
    def default(value):
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--url", default=default(DEFAULT_URL),
                        help=f"base URL of the node's HTTP API (default {DEFAULT_URL})")
    parser.add_argument("--ca-file", metavar="PATH", default=default(None),
                        help="for an https:// URL: PEM CA certificate(s) to trust "
                             "(default: the system's trust store)")
    parser.add_argument("--token", default=default(None),
                        help=f"API bearer token (default: ${TOKEN_ENV})")
    parser.add_argument("--timeout", type=float, metavar="S", default=default(None),
                        help=f"give up after S seconds (default {DEFAULT_TIMEOUT_S:g}; "
                             f"a push: its timeout plus {PUSH_TIMEOUT_MARGIN_S:g})")
    parser.add_argument("-o", "--output", choices=("json", "table"), default=default(None),
                        help="pretty JSON (default; keygen: TOML lines) or a short table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Operate an mpush node through its HTTP API.",
        epilog="Exit status: 0 ok, 1 the node answered with a failure, "
               "2 usage error, token refused (HTTP 401) or node unreachable.",
    )
    _global_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    push = commands.add_parser(
        "push", help="push to users, or broadcast",
        description="Push to users (--user, repeatable) or to everyone (--broadcast).",
        epilog="Exit status 0 only when every result is success (or stored_offline).")
    _global_options(push, suppress=True)
    target = push.add_mutually_exclusive_group(required=True)
    target.add_argument("--user", metavar="U", nargs="+", action="extend",
                        help="user id(s) (repeatable), as in mpush-push")
    target.add_argument("--broadcast", action="store_true", help="push to every bound user")
    push.add_argument("--tags", metavar="A,B", help="broadcast only to users with one of these tags")
    push.add_argument("--condition", metavar="EXPR", help="broadcast only where this expression holds")
    push.add_argument("--task-id", metavar="ID", help="broadcast task id")
    content = push.add_mutually_exclusive_group(required=True)
    content.add_argument("--content", metavar="TEXT", help="content as text (sent as UTF-8)")
    content.add_argument("--content-b64", metavar="B", help="content as base64")
    push.add_argument("--ack", choices=schema.ACK_MODELS, default="none",
                      help="ack model asked of the device (default %(default)s)")
    push.add_argument("--timeout-ms", type=int, metavar="N",
                      help=f"per-push timeout (default {schema.DEFAULT_TIMEOUT_MS})")
    push.add_argument("--offline-ttl", type=int, metavar="S",
                      help="keep the push this many seconds for users with no online device")
    push.set_defaults(action=_push)

    users = commands.add_parser("users", help="show or kick a user",
                                description="Show a user's routes or kick them.")
    _global_options(users, suppress=True)
    user_commands = users.add_subparsers(dest="users_command", metavar="COMMAND", required=True)
    show = user_commands.add_parser("show", help="a user's routes",
                                    description="Show a user's routes (exit 1 when there is none).")
    _global_options(show, suppress=True)
    show.add_argument("user", metavar="U")
    show.set_defaults(action=_users_show)
    kick = user_commands.add_parser("kick", help="log a user out",
                                    description="Kick a user's online routes (one client type, or all): "
                                                "KICK, then close the connections and mark the routes "
                                                "offline.")
    _global_options(kick, suppress=True)
    kick.add_argument("user", metavar="U")
    kick.add_argument("--client-type", type=int, metavar="N",
                      help="only this client type (1 MOBILE, 2 PC, 3 WEB, -1 UNKNOWN)")
    kick.add_argument("--keep-open", action="store_true",
                      help="send the KICK only and leave the connection open, as MPush does")
    kick.set_defaults(action=_users_kick)

    keygen = commands.add_parser(
        "keygen", help="generate an RSA-1024 key pair",
        description="Generate an RSA-1024 key pair: TOML lines for [security] in mpush.toml, "
                    "and the public key alone for MPush clients (publicKey).")
    _global_options(keygen, suppress=True)
    keygen.set_defaults(action=_keygen)
    return parser


def _base_url(text: str) -> str:
    if not text.isascii() or not text.isprintable():
        raise CliError(f"--url must be printable ASCII (percent-encode the rest): {text!r}")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"--url must be http://host[:port] or https://..., not {text!r}")
    try:
        parts.port
    except ValueError:
        raise CliError(f"--url has a bad port: {text!r}") from None
    if parts.query or parts.fragment:
        raise CliError(f"--url must not have a query or fragment: {text!r}")
    return text.rstrip("/")


def _token(args) -> bytes | None:
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    if not token:
        return None
    if not token.isascii() or not token.isprintable() or " " in token:
        raise CliError("the token must be printable ASCII without spaces")
    return token.encode("ascii")


def _push_body(args) -> dict:
    if not args.broadcast:
        for name in ("tags", "condition", "task_id"):
            if getattr(args, name) is not None:
                raise CliError(f"--{name.replace('_', '-')} goes with --broadcast")
    body: dict = {}
    if args.broadcast:
        body["broadcast"] = True
        if args.tags is not None:
            tags = list(dict.fromkeys(tag.strip() for tag in args.tags.split(",") if tag.strip()))
            if not tags:
                raise CliError("--tags needs at least one tag")
            body["tags"] = tags
        if args.condition is not None:
            body["condition"] = args.condition
        if args.task_id is not None:
            body["task_id"] = args.task_id
    else:
        if any(not user for user in args.user):
            raise CliError("--user must not be empty")
        users = list(dict.fromkeys(args.user))
        if len(users) > schema.MAX_USERS:
            raise CliError(f"at most {schema.MAX_USERS} --user per push")
        body["users"] = users
    if args.content is not None:
        try:
            args.content.encode("utf-8")
        except UnicodeEncodeError:
            raise CliError("--content is not valid text; use --content-b64 for bytes") from None
        body["content"] = args.content
    else:
        try:
            base64.b64decode(args.content_b64, validate=True)
        except (binascii.Error, ValueError):
            raise CliError("--content-b64 is not base64") from None
        body["content_b64"] = args.content_b64
    body["ack"] = args.ack
    for name, flag, (low, high) in (("timeout_ms", "--timeout-ms", schema.TIMEOUT_MS_RANGE),
                                    ("offline_ttl", "--offline-ttl", schema.OFFLINE_TTL_RANGE)):
        value = getattr(args, name)
        if value is not None:
            if not low <= value <= high:
                raise CliError(f"{flag} must be in {low}..{high}")
            body[name] = value
    return body


# ---------------------------------------------------------------------------
# HTTP


def https_policy(ca_file: str | None):
    """
    How https:// answers are verified: against C{ca_file}'s CAs, or (None)
    the system's trust store; the certificate must name the URL's host.

    @raise CliError: C{ca_file} is unusable.
    """
    if ca_file is None:
        return BrowserLikePolicyForHTTPS()
    try:
        return BrowserLikePolicyForHTTPS(trustRoot=load_trust_root(ca_file))
    except TrustFileError as exc:
        raise CliError(f"--ca-file: {exc}") from None


@defer.inlineCallbacks
def call_api(reactor, method: str, url: str, token: bytes | None, body: dict | None,
             timeout_s: float, *, tls_policy=None):
    """
    One API call; fires an L{ApiResult} for a 2xx JSON answer.  C{tls_policy}
    verifies https:// URLs (default: the system's trust store).

    @raise ApiFailure: the API answered with an error.
    @raise CliError: no answer (connection, timeout) or not an API answer.
    """
    headers = Headers({b"Accept": [b"application/json"], b"User-Agent": [b"mpush-cli"]})
    if token is not None:
        headers.addRawHeader(b"Authorization", b"Bearer " + token)
    producer = None
    if body is not None:
        headers.addRawHeader(b"Content-Type", b"application/json")
        producer = FileBodyProducer(io.BytesIO(json.dumps(body).encode("utf-8")))
    agent = Agent(reactor, contextFactory=tls_policy or BrowserLikePolicyForHTTPS(),
                  connectTimeout=min(timeout_s, _CONNECT_TIMEOUT_S))

    @defer.inlineCallbacks
    def exchange():
        response = yield agent.request(method.encode("ascii"), url.encode("ascii"), headers, producer)
        data = yield _read_body(response)
        content_type = (response.headers.getRawHeaders(b"content-type") or [b""])[0]
        return response.code, content_type, data

    def timed_out(result, timeout):
        raise _NoAnswer()

    try:
        status, content_type, data = yield exchange().addTimeout(timeout_s, reactor, timed_out)
    except _NoAnswer:
        raise CliError(f"no answer from {url} within {timeout_s:g}s") from None
    except CliError:
        raise
    except Exception as exc:
        raise CliError(f"cannot reach {url}: {_reason(exc)}") from None
    if not content_type.lower().startswith(b"application/json"):
        if 200 <= status < 300:
            kind = _one_line(content_type.decode("latin-1")) or "no Content-Type"
            raise CliError(f"{url} answered HTTP {status} with {kind}, not JSON: is it the mpush API?")
        raise ApiFailure(status, "http_error", _one_line(data.decode("utf-8", "replace"))[:200] or "no message")
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CliError(f"{url} answered HTTP {status} with a body that is not JSON") from None
    if 200 <= status < 300:
        return ApiResult(status, value)
    error = value.get("error") if isinstance(value, dict) else None
    if isinstance(error, dict):
        raise ApiFailure(status, str(error.get("code")), str(error.get("message")))
    raise ApiFailure(status, "http_error", _one_line(json.dumps(value))[:200])


class _NoAnswer(Exception):
    """The whole exchange took longer than its bound."""


class _BodyReader(Protocol):
    """Collects a response body up to L{MAX_ANSWER_BYTES}."""

    def __init__(self, finished: defer.Deferred) -> None:
        self.finished = finished
        self.parts: list[bytes] = []
        self.size = 0

    def dataReceived(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_ANSWER_BYTES:
            self.transport.stopProducing()
            if not self.finished.called:
                self.finished.errback(CliError(f"the answer is larger than {MAX_ANSWER_BYTES} bytes"))
            return
        self.parts.append(data)

    def connectionLost(self, reason) -> None:
        if self.finished.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(reason)


def _read_body(response) -> defer.Deferred:
    reader = None

    def cancel(deferred):
        if reader is not None and reader.transport is not None:
            reader.transport.stopProducing()

    finished = defer.Deferred(cancel)
    reader = _BodyReader(finished)
    response.deliverBody(reader)
    return finished


def _reason(exc: Exception) -> str:
    # ResponseFailed and friends wrap the real cause in a list of Failures.
    reasons = getattr(exc, "reasons", None)
    if reasons:
        return "; ".join(_reason(failure.value) for failure in reasons)
    failure = tls_failure(exc)
    if failure is not None:
        hint = " (--ca-file trusts a private CA)" if failure.verification else ""
        return f"TLS: {failure.reason}{hint}"
    return _one_line(str(exc)) or type(exc).__name__


def _one_line(text: str) -> str:
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in text.strip())


# ---------------------------------------------------------------------------
# Commands: each fires an exit status and prints to out.


def _print_json(out, value) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False), file=out)


def _table(out, rows: list[list[str]]) -> None:
    rows = [[_one_line(str(cell)) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip(), file=out)


def _dash(value) -> str:
    return "-" if value is None else str(value)


@defer.inlineCallbacks
def _push(reactor, args, base: str, token, out):
    body = _push_body(args)
    timeout_s = args.timeout
    if timeout_s is None:
        timeout_s = body.get("timeout_ms", schema.DEFAULT_TIMEOUT_MS) / 1000.0 + PUSH_TIMEOUT_MARGIN_S
    result = yield call_api(reactor, "POST", f"{base}/v1/push", token, body, timeout_s,
                            tls_policy=getattr(args, "tls_policy", None))
    value = result.value
    results = value.get("results") if isinstance(value, dict) else None
    if not isinstance(results, list):
        raise CliError("the push answer has no results list")
    if args.output == "json":
        _print_json(out, value)
    else:
        print(f"message_id {_one_line(str(value.get('message_id')))}", file=out)
        rows = [["USER", "TYPE", "STATUS", "NODE", "COUNT", "REASON"]]
        for item in results:
            item = item if isinstance(item, dict) else {}
            rows.append([
                _dash(item.get("user", "*" if args.broadcast else None)),
                _dash(item.get("client_type")),
                _dash(item.get("status")),
                _dash(item.get("node")),
                _dash(item.get("count")),
                _dash(item.get("reason")),
            ])
        _table(out, rows)
    ok = bool(results) and all(isinstance(item, dict) and item.get("status") in _OK_STATUSES
                               for item in results)
    return EXIT_OK if ok else EXIT_FAILED


@defer.inlineCallbacks
def _users_show(reactor, args, base: str, token, out):
    url = f"{base}/v1/users/{quote(_path_text(args.user, 'U'), safe='')}"
    result = yield call_api(reactor, "GET", url, token, None, args.timeout or DEFAULT_TIMEOUT_S,
                            tls_policy=getattr(args, "tls_policy", None))
    value = result.value
    if args.output == "json":
        _print_json(out, value)
        return EXIT_OK
    if not isinstance(value, dict) or not isinstance(value.get("routes"), list):
        raise CliError("the user answer has no routes list")
    state = "online" if value.get("online") else "offline"
    print(f"user {_one_line(str(value.get('user')))} {state}", file=out)
    rows = [["TYPE", "ONLINE", "NODE", "DEVICE", "OS", "VERSION", "CONN"]]
    for route in value["routes"]:
        route = route if isinstance(route, dict) else {}
        rows.append([
            _dash(route.get("client_type_name")),
            "yes" if route.get("online") else "no",
            _dash(route.get("node")),
            _dash(route.get("device_id")),
            _dash(route.get("os_name")),
            _dash(route.get("client_version")),
            _dash(route.get("conn_id")),
        ])
    _table(out, rows)
    return EXIT_OK


@defer.inlineCallbacks
def _users_kick(reactor, args, base: str, token, out):
    url = f"{base}/v1/users/{quote(_path_text(args.user, 'U'), safe='')}/kick"
    body = {}
    if args.client_type is not None:
        if not INT32_MIN <= args.client_type <= INT32_MAX:
            raise CliError("--client-type must be a 32-bit integer")
        body["client_type"] = args.client_type
    if args.keep_open:
        body["close"] = False
    body = body or None
    result = yield call_api(reactor, "POST", url, token, body, args.timeout or DEFAULT_TIMEOUT_S,
                            tls_policy=getattr(args, "tls_policy", None))
    if args.output == "json":
        _print_json(out, result.value)
    else:
        kicked = result.value.get("kicked") if isinstance(result.value, dict) else None
        print(f"kicked {_dash(kicked)}", file=out)
    return EXIT_OK


def _path_text(text: str, name: str) -> str:
    if not text:
        raise CliError(f"{name} must not be empty")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CliError(f"{name} is not valid text") from None
    return text


def format_keys(private_key: RsaPrivateKey, output: str = "table") -> str:
    """
    The pair as mpush.toml's C{[security]} lines, then the public key alone
    (what MPush clients take as publicKey); or one JSON object.
    """
    private_text = private_key.to_pkcs8_base64()
    public_text = private_key.public_key().to_x509_base64()
    if output == "json":
        return json.dumps({"private_key": private_text, "public_key": public_text}, indent=2)
    return "\n".join([
        "# mpush.toml, [security] section:",
        f'private-key = "{private_text}"',
        f'public-key = "{public_text}"',
        "# MPush clients (publicKey):",
        public_text,
    ])


def _keygen(reactor, args, base, token, out):
    print(format_keys(RsaPrivateKey.generate(1024), args.output or "table"), file=out)
    return defer.succeed(EXIT_OK)


# ---------------------------------------------------------------------------
# Entry points


@defer.inlineCallbacks
def run(reactor, args, out=None, err=None):
    """
    Run a parsed command line; fires the exit status and never fails: every
    problem is one line on C{err}.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        if args.timeout is not None and not 0 < args.timeout < _MAX_TIMEOUT_S:
            raise CliError(f"--timeout must be a number of seconds in (0, {_MAX_TIMEOUT_S:g})")
        if args.output is None and args.action is not _keygen:
            args.output = "json"
        base = _base_url(args.url)
        token = _token(args)
        ca_file = getattr(args, "ca_file", None)
        if ca_file is not None:
            if urlsplit(base).scheme != "https" and args.action is not _keygen:
                raise CliError("--ca-file goes with an https:// --url")
            args.tls_policy = https_policy(ca_file)
        client_type = getattr(args, "client_type", None)
        if client_type is not None and INT32_MIN <= client_type <= INT32_MAX and client_type not in set(ClientType):
            # Accepted (a node may know more types), but almost always a typo.
            known = ", ".join(f"{int(t)} {t.name}" for t in ClientType)
            print(f"{PROG}: warning: --client-type {client_type} is no client type mpush knows "
                  f"({known}): nothing may match", file=err)
        code = yield args.action(reactor, args, base, token, out)
    except CliError as exc:
        print(f"{PROG}: error: {_one_line(str(exc))}", file=err)
        return EXIT_USAGE
    except ApiFailure as exc:
        print(f"{PROG}: error: {_one_line(str(exc))}", file=err)
        # A refused token is the caller's mistake, like a usage error.
        return EXIT_USAGE if exc.status == 401 else EXIT_FAILED
    finally:
        out.flush()
    return code


def main(argv=None) -> None:
    """Console entry point (C{mpush = mpush.cli.main:main})."""
    args = build_parser().parse_args(argv)

    def react_main(reactor):
        def to_exit(code):
            if code:
                raise SystemExit(code)

        return run(reactor, args).addCallback(to_exit)

    task.react(react_main)


if __name__ == "__main__":
    main()
