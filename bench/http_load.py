"""
Load for the HTTP push API with many users per request (or one): keep-alive
connections, one request in flight on each, every request naming the same
users.  Prints one JSON line: requests, results by status, deliveries/s,
request latency and, with --pid, the server's CPU per delivery.

mpush-bench's push scenario binds its own devices and sends one user per
request; this tool pushes to users something else keeps bound, for instance
`mpush-bench idle --count 1000`, whose user ids are read from Redis:

    redis-cli -p PORT --scan --pattern 'mp:ur:*' | sed 's/^mp:ur://' > users.txt
    python bench/http_load.py --port 8080 --users-file users.txt --per-request 1000 \\
        --requests 100 --connections 4 --ack none --pid SERVER_PID

Loopback only, like mpush-bench.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mpush.bench.wire import loopback_address  # noqa: E402

_STATUS = re.compile(rb'"status": "([a-z_]+)"')


def _cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def build_request(users: list[str], ack: str, size: int, token: str | None) -> bytes:
    body = json.dumps({"users": users, "content_b64": base64.b64encode(b"x" * size).decode(),
                       "ack": ack}).encode()
    head = [b"POST /v1/push HTTP/1.1", b"Host: mpush", b"Content-Type: application/json",
            b"Content-Length: %d" % len(body)]
    if token:
        head.append(b"Authorization: Bearer " + token.encode())
    return b"\r\n".join(head) + b"\r\n\r\n" + body


async def _connection(host: str, port: int, request: bytes, count: int, latencies: list,
                      statuses: collections.Counter, failures: collections.Counter) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for _ in range(count):
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                failures[f"http_{status}"] += 1
                continue
            statuses.update(match.decode() for match in _STATUS.findall(body))
    finally:
        writer.close()


async def run(args) -> dict:
    host = loopback_address(args.host)
    users = [line.strip() for line in open(args.users_file) if line.strip()][: args.per_request]
    if not users:
        raise SystemExit("no users in --users-file")
    request = build_request(users, args.ack, args.size, args.token)
    latencies: list[float] = []
    statuses: collections.Counter = collections.Counter()
    failures: collections.Counter = collections.Counter()
    per_connection, extra = divmod(args.requests, args.connections)
    cpu0, wall0 = _cpu_seconds(args.pid), time.perf_counter()
    await asyncio.gather(*(
        _connection(host, args.port, request, per_connection + (n < extra), latencies, statuses, failures)
        for n in range(args.connections)
    ))
    cpu, wall = _cpu_seconds(args.pid) - cpu0, time.perf_counter() - wall0
    latencies.sort()
    delivered = statuses.get("success", 0)
    result = {
        "users_per_request": len(users), "ack": args.ack, "content_bytes": args.size,
        "connections": args.connections, "requests": len(latencies), "results": dict(statuses),
        "errors": dict(failures), "seconds": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 1), "deliveries_per_s": round(delivered / wall, 1),
        "request_p50_ms": round(1000 * latencies[len(latencies) // 2], 2) if latencies else None,
        "request_p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))], 2)
        if latencies else None,
    }
    if args.pid is not None:
        result["server_cpu_pct"] = round(100 * cpu / wall, 1)
        result["server_cpu_us_per_delivery"] = round(1e6 * cpu / delivered, 1) if delivered else None
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="the node's HTTP API port")
    parser.add_argument("--token", default=None, help="the API's bearer token, if it has one")
    parser.add_argument("--users-file", required=True, help="user ids, one a line")
    parser.add_argument("--per-request", type=int, default=1000, help="users named in each request")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--ack", choices=("none", "auto", "biz"), default="none")
    parser.add_argument("--size", type=int, default=100, help="content bytes")
    parser.add_argument("--pid", type=int, default=None, help="the server's pid, for its CPU")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args))))


if __name__ == "__main__":
    main()
