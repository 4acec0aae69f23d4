"""
C{mpush-bench}: load an MPush-compatible server on this machine and say how
it held up.

Each scenario prints one JSON line on stdout as it finishes; a readable
table goes to stderr (stdout stays machine-readable), unless --json-only.
Exit status: 0 every scenario ran cleanly, 1 the server was unreachable,
answered wrongly or a scenario saw errors, 2 the command line is wrong (or
names a target off loopback: this tool only drives servers on 127.0.0.0/8
or ::1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
from dataclasses import dataclass, replace

from mpush.bench import redis_info, stats
from mpush.bench.scenarios import (
    ALL_ORDER,
    DEFAULT_COUNTS,
    SCENARIOS,
    START_DELAY_S,
    Settings,
    Target,
    run_scenario,
)
from mpush.bench.stats import Column, format_table
from mpush.bench.wire import (
    STAMP_SIZE,
    BenchError,
    ConnectFailed,
    DeviceProtocol,
    Device,
    GatewayPusher,
    NotLoopback,
    ServerRejected,
    WireError,
    http_get,
    loopback_address,
    open_connection,
    source_addresses,
)
from mpush.protocol.crypto import MPUSH_DEMO_PUBLIC_KEY, RsaPrivateKey, RsaPublicKey
from mpush.protocol.errors import ErrorCode
from mpush.protocol.messages import ErrorMessage
from mpush.protocol.packet import Command

__all__ = ["UsageError", "Preflight", "build_parser", "parse_config", "preflight", "main"]

PROG = "mpush-bench"
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
#: The gateway's default max-packet-size less a GATEWAY_PUSH's other fields.
MAX_CONTENT = 10000
_SERVER_FREE = {"floors"}
_NEEDS_PUSHER = {"push", "broadcast"}
#: The ERROR codes an MPush gateway answers a push with (spec 12.6).
_PUSH_CODES = {ErrorCode.OFFLINE, ErrorCode.PUSH_CLIENT_FAILURE, ErrorCode.ROUTER_CHANGE, ErrorCode.ACK_TIMEOUT}


class UsageError(BenchError):
    """The command line cannot be run as given (exit 2)."""


class Preflight(BenchError):
    """The server is unreachable or does not answer like an MPush server (exit 1)."""


@dataclass(frozen=True, slots=True)
class Config:
    scenarios: tuple[str, ...]
    target: Target
    settings: Settings
    json_only: bool


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 1..65535, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _sizes(text: str) -> tuple[int, ...]:
    sizes = []
    for part in text.split(","):
        try:
            size = int(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"sizes are comma-separated byte counts, got {text!r}") from None
        if not STAMP_SIZE <= size <= MAX_CONTENT:
            raise argparse.ArgumentTypeError(
                f"content size {size} is outside {STAMP_SIZE}..{MAX_CONTENT} bytes "
                "(the stamp needs 20, the gateway takes about 10 KB)"
            )
        sizes.append(size)
    return tuple(sizes)


def _acks(text: str) -> tuple[str, ...]:
    acks = tuple(part.strip() for part in text.split(","))
    for ack in acks:
        if ack not in ("none", "auto"):
            raise argparse.ArgumentTypeError(f"ack modes are 'none' and 'auto', got {ack!r}")
    return acks


class _Parser(argparse.ArgumentParser):
    """Argument errors become UsageError, so callers (and tests) get a typed error."""

    def error(self, message: str):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=(
            "Load an MPush-compatible server on loopback and report rates, latencies and costs. "
            "Every scenario is bounded by --count and --duration."
        ),
        epilog=(
            "Scenarios: " + ", ".join(SCENARIOS) + " (or 'all', which runs idle first: RSS never shrinks). "
            "Default counts: "
            + ", ".join(f"{k} {v}" for k, v in DEFAULT_COUNTS.items())
            + ". Exit status: 0 clean, 1 server unreachable/wrong answers/errors, 2 usage."
        ),
    )
    parser.add_argument("scenarios", nargs="+", metavar="SCENARIO", choices=SCENARIOS + ("all",),
                        help="what to run, in order")
    where = parser.add_argument_group("target (loopback only)")
    where.add_argument("--host", default="127.0.0.1", help="server address in 127.0.0.0/8 or ::1 (default 127.0.0.1)")
    where.add_argument("--port", type=_port, default=3000, help="connection server port (default 3000)")
    where.add_argument("--gateway-port", type=_port, default=3001, help="gateway port for pushes (default 3001)")
    where.add_argument("--http-port", type=_port, default=None,
                       help="push and broadcast through the mpush HTTP API on this port instead of the gateway")
    where.add_argument("--http-token", default=None,
                       help="bearer token for the HTTP API (default: $MPUSH_API_TOKEN)")
    keys = where.add_mutually_exclusive_group()
    keys.add_argument("--public-key", help="the server's RSA public key, base64 X.509 (as MPush clients take it)")
    keys.add_argument("--public-key-file", help="file holding that base64 key (PEM armour allowed)")
    keys.add_argument("--demo-key", action="store_true", help="MPush's published demo key pair")
    private = where.add_mutually_exclusive_group()
    private.add_argument("--private-key", help="floors: the RSA private key, base64 PKCS#8 (default: demo or a new one)")
    private.add_argument("--private-key-file", help="floors: file holding that key")
    where.add_argument("--server-pid", type=_positive_int, default=None,
                       help="the server's pid: RSS and CPU from /proc, its workers included "
                            "(idle and storm; CPU%% elsewhere)")
    where.add_argument("--redis-port", type=_positive_int, default=None,
                       help="storm: the Redis the server uses, on --host: its commands per device "
                            "from INFO commandstats")
    load = parser.add_argument_group("load")
    load.add_argument("--workers", type=_positive_int, default=os.cpu_count() or 1,
                      help="load processes (default: CPU count, %(default)s here)")
    load.add_argument("--count", type=_positive_int, default=None,
                      help="handshakes / devices / messages per push run / floor operations (see epilog)")
    load.add_argument("--storm-gap", type=_positive_float, default=START_DELAY_S,
                      help="storm: seconds from the mass close to the common reconnect (default "
                           "%(default)s: a blip; longer lets a server finish its close work first)")
    load.add_argument("--devices", type=_positive_int, default=100, help="push: bound devices (default 100)")
    load.add_argument("--duration", type=_positive_float, default=30.0,
                      help="hard cap per scenario in seconds, setup included (default 30)")
    load.add_argument("--concurrency", type=_positive_int, default=16,
                      help="connections being set up at once per worker (default 16)")
    load.add_argument("--window", type=_positive_int, default=64,
                      help="unanswered pushes (or echo frames) per worker (default 64)")
    load.add_argument("--sizes", type=_sizes, default=(100, 4096),
                      help="push content sizes in bytes, comma-separated (default 100,4096)")
    load.add_argument("--acks", type=_acks, default=("none", "auto"),
                      help="push ack modes, comma-separated: none, auto (default both)")
    pace = load.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=_positive_float, default=None,
                      help="push: total messages/s for a paced run (latency at a target rate)")
    pace.add_argument("--sweep", action="store_true",
                      help="push: a peak run, then paced runs at 50%% and 90%% of that peak")
    load.add_argument("--push-timeout-ms", type=_positive_int, default=3000,
                      help="push timeout sent to the server and used by our own timer (default 3000)")
    load.add_argument("--heartbeat", type=_positive_int, default=240000,
                      help="heartbeat (ms) the devices ask for; the server clamps it (default 240000, as Java)")
    load.add_argument("--timeout", type=_positive_float, default=10.0,
                      help="connect and request timeout in seconds (default 10)")
    load.add_argument("--source-addresses", type=_positive_int, default=16,
                      help="spread connections over 127.0.0.2.. this many source addresses (default 16)")
    parser.add_argument("--json-only", action="store_true", help="only the JSON lines: no table, no progress")
    return parser


def _read_key_file(path: str, what: str) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the {what} file {path}: {getattr(exc, 'strerror', None) or exc}") from None


def parse_config(argv: list[str] | None, environ=os.environ) -> Config:
    """Parse and validate the command line; UsageError for anything wrong."""
    args = build_parser().parse_args(argv)
    scenarios = ALL_ORDER if "all" in args.scenarios else tuple(dict.fromkeys(args.scenarios))
    host = loopback_address(args.host)
    needs_server = any(s not in _SERVER_FREE for s in scenarios)

    public_key = ""
    if args.demo_key:
        public_key = MPUSH_DEMO_PUBLIC_KEY
    elif args.public_key:
        public_key = args.public_key
    elif args.public_key_file:
        public_key = _read_key_file(args.public_key_file, "public key")
    if needs_server and not public_key:
        raise UsageError("the server's RSA public key is needed: give --public-key, --public-key-file or --demo-key")
    if public_key:
        try:
            public_key = RsaPublicKey.from_x509_base64(public_key).to_x509_base64()
        except ValueError as exc:
            raise UsageError(f"bad public key: {exc}") from None

    private_key = args.private_key
    if args.private_key_file:
        private_key = _read_key_file(args.private_key_file, "private key")
    if private_key:
        try:
            RsaPrivateKey.from_pkcs8_base64(private_key)
        except ValueError as exc:
            raise UsageError(f"bad private key: {exc}") from None

    if args.server_pid is not None:
        try:
            stats.check_process(args.server_pid)
        except stats.ProcessGone as exc:
            raise UsageError(f"--server-pid: {exc}") from None
    if args.redis_port is not None:
        try:
            redis_info.command_calls(host, args.redis_port)
        except redis_info.RedisInfoError as exc:
            raise UsageError(f"--redis-port: {exc}") from None

    token = args.http_token if args.http_token is not None else environ.get("MPUSH_API_TOKEN")
    target = Target(
        host=host,
        port=args.port,
        gateway_port=args.gateway_port,
        public_key=public_key,
        sources=source_addresses(host, args.source_addresses),
        heartbeat_ms=args.heartbeat,
        timeout_s=args.timeout,
        http_port=args.http_port,
        http_token=token or None,
    )
    settings = Settings(
        workers=args.workers,
        count=args.count,
        devices=args.devices,
        duration=args.duration,
        concurrency=args.concurrency,
        window=args.window,
        sizes=args.sizes,
        acks=args.acks,
        rate=args.rate,
        sweep=args.sweep,
        push_timeout_ms=args.push_timeout_ms,
        server_pid=args.server_pid,
        redis_port=args.redis_port,
        storm_gap=args.storm_gap,
        private_key=private_key,
        demo_key=args.demo_key,
        pusher="http" if args.http_port else "gateway",
    )
    return Config(scenarios, target, settings, args.json_only)


# ------------------------------------------------------------------ preflight


async def _check_connection_server(target: Target) -> None:
    device = Device(0, f"mpush-bench-probe-{secrets.token_hex(4)}", "")
    try:
        connection = await open_connection(lambda: DeviceProtocol(device, target.heartbeat_ms),
                                           target.host, target.port, None, target.timeout_s)
    except WireError as exc:
        raise Preflight(f"server unreachable: {exc}") from None
    try:
        await connection.handshake(RsaPublicKey.from_x509_base64(target.public_key), target.timeout_s)
    except ServerRejected as exc:
        raise Preflight(
            f"the server at {target.host}:{target.port} rejected a handshake ({exc}); "
            "is it an MPush connection port, and does --public-key match its private key?"
        ) from None
    except WireError as exc:
        raise Preflight(
            f"the server at {target.host}:{target.port} did not complete a handshake: {exc}; "
            "is it an MPush connection port, and does --public-key match its private key?"
        ) from None
    finally:
        connection.close()


async def _check_gateway(target: Target) -> None:
    try:
        pusher = await open_connection(GatewayPusher, target.host, target.gateway_port, None, target.timeout_s)
    except WireError as exc:
        raise Preflight(f"gateway unreachable: {exc}") from None
    where = f"{target.host}:{target.gateway_port}"
    try:
        # A push to a user nobody has: an MPush gateway answers OFFLINE (or
        # OK / ROUTER_CHANGE / PUSH_CLIENT_FAILURE), always about cmd 16.
        answer = await pusher.push_and_wait(f"mpush-bench-probe-{secrets.token_hex(4)}", b"probe", 0, 1000,
                                            target.timeout_s, client_type=1)
    except WireError as exc:
        raise Preflight(f"the gateway at {where} did not answer a GATEWAY_PUSH: {exc}") from None
    finally:
        pusher.close()
    if answer.cmd != Command.GATEWAY_PUSH or (isinstance(answer, ErrorMessage) and answer.code not in _PUSH_CODES):
        raise Preflight(
            f"{where} is not an MPush gateway: it answered a GATEWAY_PUSH with "
            f"{type(answer).__name__} cmd {answer.cmd} code {answer.code} ({getattr(answer, 'reason', None)!r})"
        )


async def _check_http(target: Target) -> None:
    where = f"{target.host}:{target.http_port}"
    try:
        status, _ = await http_get(target.host, target.http_port, "/v1/stats", target.http_token, target.timeout_s)
    except ConnectFailed as exc:
        raise Preflight(f"HTTP API unreachable: {exc}") from None
    except WireError as exc:
        raise Preflight(f"{where} did not answer GET /v1/stats like the mpush HTTP API: {exc}") from None
    if status == 401:
        raise Preflight("the HTTP API refused the token (give --http-token or set MPUSH_API_TOKEN)")
    if status != 200:
        raise Preflight(f"the HTTP API answered GET /v1/stats with status {status}: is it the mpush HTTP API?")


def preflight(config: Config) -> None:
    """Raise Preflight unless the server is there and speaks MPush."""
    scenarios = set(config.scenarios)
    if scenarios <= _SERVER_FREE:
        return
    target = config.target

    async def check() -> None:
        await _check_connection_server(target)
        if scenarios & _NEEDS_PUSHER:
            if config.settings.pusher == "http":
                await _check_http(target)
            else:
                await _check_gateway(target)

    asyncio.run(check())


# -------------------------------------------------------------------- tables

_LATENCY = (Column("p50", "p50 ms", 2), Column("p99", "p99 ms", 2))


def _flat(row: dict) -> dict:
    flat = dict(row)
    latency = row.get("latency_ms") or {}
    flat["p50"] = latency.get("p50")
    flat["p99"] = latency.get("p99")
    connect = row.get("connect_ms") or {}
    flat["connect_p99"] = connect.get("p99")
    flat["connect_max"] = connect.get("max")
    for key, value in (row.get("redis_per_device") or {}).items():
        flat[f"redis_per_device.{key}"] = value
    return flat


def table_for(result: dict) -> str:
    """The human view of one scenario's JSON."""
    name = result.get("scenario", "?")
    if "error" in result:
        return f"{name}: FAILED: {result['error']}"
    title = f"{name}" + ("" if result.get("ok") else "  (errors: see JSON)")
    if name in ("handshake", "fast-connect"):
        columns = [Column("count"), Column("completed"), Column("failed"), Column("elapsed_s", "seconds", 2),
                   Column("per_s", "per s"), *_LATENCY, Column("load_cpu_max_pct", "load cpu%"),
                   Column("server_cpu_pct", "server cpu%"), Column("server_cpu_us_each", "server µs each")]
        return format_table(title, columns, [_flat(result)])
    if name == "storm":
        columns = [Column("devices"), Column("bound_again", "bound again"), Column("failed"),
                   Column("all_bound_s", "all bound s", 3), Column("per_s", "per s"), *_LATENCY,
                   Column("connect_p99", "connect p99 ms"), Column("connect_max", "connect max ms"),
                   Column("fallback_handshakes", "fallbacks"),
                   Column("server_cpu_us_per_device", "server µs/device"),
                   Column("redis_per_device.all", "redis cmds/device", 2),
                   Column("redis_per_device.scripts", "scripts/device", 3)]
        table = format_table(title, columns, [_flat(result)])
        rss = result.get("rss_kib")
        if rss:
            table += "\n  server RSS MiB: " + ", ".join(f"{phase} {kib / 1024:.1f}" for phase, kib in rss.items())
        return table
    if name == "push":
        columns = [Column("ack"), Column("content_bytes", "bytes"), Column("label", "run"),
                   Column("target_rate", "target/s"), Column("sent"), Column("ok_replies", "ok"),
                   Column("error_replies", "errors"), Column("timeouts"), Column("delivered"),
                   Column("delivered_per_s", "delivered/s"), *_LATENCY, Column("truncated", "cut"),
                   Column("load_cpu_max_pct", "load cpu%"), Column("server_cpu_pct", "server cpu%")]
        title += f"  ({result.get('devices')} devices, pusher {result.get('pusher')})"
        return format_table(title, columns, [_flat(run) for run in result.get("runs", [])])
    if name == "broadcast":
        columns = [Column("devices"), Column("received"), Column("answer"),
                   Column("all_received_s", "all received s", 3), Column("per_s", "per s"), *_LATENCY]
        return format_table(title, columns, [_flat(result)])
    if name == "idle":
        columns = [Column("devices"), Column("rss_before_kib", "rss before KiB"),
                   Column("rss_after_kib", "rss after KiB"), Column("rss_per_connection_kib", "KiB/conn", 2),
                   Column("window_s", "window s", 1), Column("server_cpu_pct", "server cpu%", 2),
                   Column("pings"), Column("pongs"), Column("closed_by_server", "closed")]
        return format_table(title, columns, [result])
    if name == "floors":
        rsa = result.get("rsa_decrypt", {})
        idle = result.get("idle_twisted", {})
        lines = [
            f"{title}",
            f"  RSA-{rsa.get('key_bits')} decrypt ({rsa.get('key')} key): {rsa.get('us_per_op')} us/op, "
            f"{rsa.get('per_s_one_core')} /s on one core",
            f"  bare Twisted idle connection: {idle.get('rss_per_connection_kib')} KiB each "
            f"({idle.get('connections')} connections)",
        ]
        connects = result.get("connect_twisted", {})
        if connects:
            latency = connects.get("latency_ms") or {}
            lines.append(
                f"  Twisted connect + {connects.get('frame_bytes')} B echo + close: "
                f"{connects.get('per_s')} /s (p99 {latency.get('p99')} ms, server cpu "
                f"{connects.get('server_cpu_pct')}%, {connects.get('completed')} connections)"
            )
        columns = [Column("content_bytes", "content"), Column("frame_bytes", "frame"), Column("sent"),
                   Column("echoed"), Column("per_s", "echoes/s"), *_LATENCY]
        lines.append(format_table("  Twisted echo, same frame sizes", columns,
                                  [_flat(row) for row in result.get("echo", [])]))
        return "\n".join(lines)
    return json.dumps(result)


# ---------------------------------------------------------------------- main


def _json_line(result: dict) -> str:
    return json.dumps(result, separators=(",", ":"), default=str)


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    try:
        config = parse_config(argv)
    except SystemExit as exit_:  # --help
        return exit_.code or EXIT_OK
    except (UsageError, NotLoopback) as exc:
        print(f"{PROG}: error: {exc}\n(see {PROG} --help)", file=sys.stderr)
        return EXIT_USAGE

    def progress(text: str) -> None:
        if not config.json_only:
            print(f"{PROG}: {text}", file=sys.stderr, flush=True)

    settings = replace(config.settings, progress=progress)
    try:
        preflight(config)
    except Preflight as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED

    status = EXIT_OK
    for name in config.scenarios:
        progress(f"running {name}")
        try:
            result = run_scenario(name, config.target, settings)
        except (BenchError, stats.ProcessGone) as exc:
            result = {"scenario": name, "ok": False, "error": str(exc)}
            print(f"{PROG}: {name} failed: {exc}", file=sys.stderr)
        result["params"] = {**settings.view(), "host": config.target.host, "port": config.target.port,
                            "gateway_port": config.target.gateway_port, "http_port": config.target.http_port,
                            "source_addresses": len(config.target.sources)}
        if not result.get("ok"):
            status = EXIT_FAILED
        print(_json_line(result), flush=True)
        if not config.json_only:
            print(table_for(result) + "\n", file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
