"""
C{python -m mpush.fuzz}: storm a running mpush node on loopback and report.

Exit status: 0 when the node came through, 1 when the report lists
problems (or the node log shows unexpected exceptions), 2 on bad arguments
or when the honest clients cannot connect at all.
"""

from __future__ import annotations

import argparse
import json
import sys

from mpush.fuzz.server import (
    DEFAULT_ATTACKS,
    Attack,
    FuzzConfig,
    FuzzConfigError,
    plan_digest,
    run_fuzz,
    scan_node_log,
)


def _public_key(text):
    """The key itself, or @path of a file holding it."""
    if text.startswith("@"):
        with open(text[1:]) as key_file:
            return key_file.read().strip()
    return text


def _attacks(text):
    names = [name.strip() for name in text.split(",") if name.strip()]
    try:
        return tuple(Attack(name) for name in names)
    except ValueError as error:
        choices = ", ".join(attack.value for attack in Attack)
        raise argparse.ArgumentTypeError(f"{error}; choose from {choices}") from None


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m mpush.fuzz",
        description="Storm a running mpush node (loopback only) with hostile connections "
                    "while honest clients push and ping, then check the node.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address of the node")
    parser.add_argument("--port", type=int, required=True, help="the node's client port")
    parser.add_argument("--gateway-port", type=int, required=True, help="the node's gateway port")
    parser.add_argument("--admin-port", type=int, help="the node's admin console (checks its connection count)")
    parser.add_argument("--pid", type=int, help="the node's process id (checks it stays alive and its RSS)")
    parser.add_argument("--node-log", help="the node's log file, scanned for unexpected exceptions")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of storm (default 10)")
    parser.add_argument("--connections", type=int, default=200, help="hostile connections in all (default 200)")
    parser.add_argument("--concurrency", type=int, default=32, help="hostile connections at once (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every hostile byte (default 0)")
    parser.add_argument("--honest", type=int, default=4, help="honest clients (default 4)")
    parser.add_argument("--push-rate", type=float, default=20.0, help="honest pushes per second (default 20)")
    parser.add_argument("--attacks", type=_attacks, default=DEFAULT_ATTACKS,
                        help="comma-separated attacks (default: all but rsa-burn and silent-flood): "
                             + ", ".join(attack.value for attack in Attack))
    parser.add_argument("--flood-bytes", type=int, default=32768, help="bytes per heartbeat flooder")
    parser.add_argument("--hold", type=float, default=3.0, help="longest life of a hostile connection (s)")
    parser.add_argument("--half-open-hold", type=float, default=15.0,
                        help="how long a half-open connection waits to be reaped (s)")
    parser.add_argument("--max-packet-size", type=int, default=10240, help="the node's [core] max-packet-size")
    parser.add_argument("--settle", type=float, default=30.0, help="longest wait for the node to settle (s)")
    parser.add_argument("--rss-margin-mb", type=float, default=20.0, help="allowed RSS growth (MB)")
    parser.add_argument("--public-key", type=_public_key, help="the node's RSA public key, or @file (default: demo key)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def config_from(args):
    options = dict(
        host=args.host, port=args.port, gateway_port=args.gateway_port, admin_port=args.admin_port,
        pid=args.pid, duration=args.duration, connections=args.connections, concurrency=args.concurrency,
        seed=args.seed, honest=args.honest, push_rate=args.push_rate, attacks=args.attacks,
        flood_bytes=args.flood_bytes, hold=args.hold, half_open_hold=args.half_open_hold,
        max_packet_size=args.max_packet_size, settle=args.settle,
        rss_margin_kb=int(args.rss_margin_mb * 1024),
    )
    if args.public_key:
        options["public_key"] = args.public_key
    return FuzzConfig(**options)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from(args)
    except (FuzzConfigError, OSError) as error:
        parser.error(str(error))
    print(f"mpush fuzz: seed={config.seed} plan={plan_digest(config)} against "
          f"{config.host}:{config.port} (gateway {config.gateway_port})", flush=True)

    from twisted.internet import task

    outcome = {}

    def run(reactor):
        done = run_fuzz(reactor, config)
        done.addCallback(lambda report: outcome.__setitem__("report", report))
        return done

    try:
        task.react(run)
    except SystemExit as exit_:
        if "report" not in outcome:
            print("mpush fuzz: the run failed before a report (see the error above)", file=sys.stderr)
            return 2
        if exit_.code not in (0, None):
            return 2
    report = outcome["report"]
    log_problems = []
    if args.node_log:
        with open(args.node_log, errors="replace") as node_log:
            log_problems = scan_node_log(node_log.read())
    if args.json:
        print(json.dumps({
            "seed": report.seed, "ok": report.ok and not log_problems, "attacks": report.attacks,
            "skipped": report.skipped, "honest": {
                name: getattr(report.honest, name) for name in report.honest.__dataclass_fields__},
            "connections_before": report.connections_before, "connections_after": report.connections_after,
            "rss_baseline_kb": report.rss_baseline_kb, "rss_peak_kb": report.rss_peak_kb,
            "rss_after_kb": report.rss_after_kb, "node_alive": report.node_alive,
            "problems": list(report.problems), "node_log_exceptions": log_problems,
        }, indent=2))
    else:
        print(report.summary())
        for line in log_problems:
            print(f"  NODE LOG: {line}")
    return 0 if report.ok and not log_problems else 1


if __name__ == "__main__":
    sys.exit(main())
