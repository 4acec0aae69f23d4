"""
One load process of the multi-host rehearsal (L{mpush.bench.rehearsal}),
run inside the rehearsal's load network namespace.

It holds its share of the devices, each bound on its home node, pushes to
them through another node's HTTP API (so every push crosses nodes: the API
node looks the route up in Redis and forwards to the home node's gateway),
and when a device's connection drops it finds a node the way an MPush
client does, through the allot list (GET /v1/allot), and reconnects there
with a fast connect (a full handshake if its session is gone).

The coordinator talks to it in JSON lines: commands on stdin
(C{connect}, C{push}, C{report}, C{quit}), one answer per command on
stdout.  Every wait has a deadline.  Addresses come from the coordinator
and are checked to be inside the rehearsal's private network.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import ipaddress
import json
import random
import resource
import sys
import time

from mpush.bench.wire import (
    ConnectFailed,
    connect_socket,
    Device,
    DeviceProtocol,
    HttpResponseReader,
    WireError,
)
from mpush.protocol.crypto import RsaPublicKey
from mpush.protocol.errors import ProtocolError

#: The only network the load processes talk to (the nodes use loopback too).
REHEARSAL_NETWORK = ipaddress.ip_network("10.77.0.0/24")
#: Devices handshaking at once per load process.
CONNECT_WINDOW = 200
#: Requested heartbeat (ms); the node's max-heartbeat caps it.
HEARTBEAT_MS = 240_000
#: Seconds a device waits before it reconnects, at most, by default (spread
#: like a fleet of real clients noticing a dead socket at different times).
RECONNECT_SPREAD = 2.0
RECONNECT_ATTEMPTS = 20
REQUEST_TIMEOUT = 10.0


def rehearsal_address(text: str) -> str:
    """C{text} if it is an address of the rehearsal network, else ValueError."""
    address = ipaddress.ip_address(text)
    if address not in REHEARSAL_NETWORK:
        raise ValueError(f"{text} is outside the rehearsal network {REHEARSAL_NETWORK}")
    return str(address)


def endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return rehearsal_address(host), int(port)


async def connect_from(factory, host: str, port: int, source: str, timeout: float):
    """Connect C{factory}'s protocol to C{host:port} from C{source}."""
    return await connect_socket(factory, host, port, source, timeout)


async def http_request(host: str, port: int, source: str, method: str, path: str, token: str,
                       body: bytes, timeout: float) -> tuple[int, bytes]:
    """One request on its own connection; (status, body)."""

    class Exchange(asyncio.Protocol):
        def __init__(self):
            self.reader = HttpResponseReader()
            self.answer = asyncio.get_running_loop().create_future()
            self.transport = None

        def connection_made(self, transport):
            self.transport = transport

        def data_received(self, data):
            if self.answer.done():
                return
            try:
                responses = self.reader.feed(data)
            except WireError as exc:
                self.answer.set_exception(exc)
                return
            if responses:
                self.answer.set_result(responses[0])

        def connection_lost(self, exc):
            if not self.answer.done():
                self.answer.set_exception(WireError("connection lost before the answer"))

    started = time.monotonic()
    exchange = await connect_from(Exchange, host, port, source, timeout)
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close",
            f"Content-Length: {len(body)}", f"Authorization: Bearer {token}"]
    if body:
        head.append("Content-Type: application/json")
    exchange.transport.write(("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body)
    try:
        return await asyncio.wait_for(exchange.answer, max(timeout - (time.monotonic() - started), 0.01))
    except asyncio.TimeoutError:
        raise WireError(f"no answer within {timeout:g} s") from None
    finally:
        exchange.transport.close()


def push_content(number: int) -> bytes:
    """A push's content: it carries its number, to tell which ones arrived."""
    return b"rehearsal %d" % number


def push_number(content: bytes) -> int | None:
    """The number L{push_content} put in C{content}, or None for another push."""
    prefix, _, number = content.partition(b" ")
    if prefix != b"rehearsal" or not number.isdigit():
        return None
    return int(number)


class LoadProcess:
    def __init__(self, options) -> None:
        self.options = options
        self.nodes = [endpoint(text) for text in options.nodes.split(",")]
        self.apis = [endpoint(text) for text in options.apis.split(",")]
        self.sources = [rehearsal_address(text) for text in options.sources.split(",")]
        self.public_key = RsaPublicKey.from_x509_base64(options.public_key)
        self.devices = [
            Device(index, f"rehearsal-device-{index}", f"u{index}")
            for index in range(options.index, options.devices, options.of)
        ]
        self.home = {device.index: self.nodes[device.index % len(self.nodes)] for device in self.devices}
        self.received = 0
        #: Which pushes arrived, by the number each push carries in its
        #: content: a push answered C{success} that is not here was lost.
        self.received_numbers: set[int] = set()
        self.pushes_made = 0
        self.reconnects: collections.Counter = collections.Counter()
        #: ms from a lost connection to bound again, by how it came back.
        self.reconnect_ms: dict[str, list[float]] = collections.defaultdict(list)
        self.reconnecting: set[int] = set()
        self.allot: list[tuple[str, int]] = list(self.nodes)
        self.allot_at = 0.0
        self.refreshing: asyncio.Future | None = None

    def source_of(self, device: Device) -> str:
        return self.sources[device.index % len(self.sources)]

    # -- devices -------------------------------------------------------------

    def on_push(self, device, content: bytes, now_ns) -> None:
        self.received += 1
        number = push_number(content)
        if number is not None:
            self.received_numbers.add(number)

    def on_lost(self, protocol: DeviceProtocol) -> None:
        device = protocol.device
        if device.index not in self.reconnecting:
            self.reconnecting.add(device.index)
            asyncio.get_running_loop().create_task(self.reconnect(device, time.monotonic()))

    async def open(self, device: Device, node: tuple[str, int], fast: bool) -> str:
        """Connect, (fast connect or) handshake, bind; what it took."""
        protocol = await connect_from(
            lambda: DeviceProtocol(device, HEARTBEAT_MS, self.on_push, self.on_lost),
            node[0], node[1], self.source_of(device), REQUEST_TIMEOUT,
        )
        try:
            kind = "handshake"
            if fast and device.session_id is not None:
                try:
                    await protocol.fast_connect(REQUEST_TIMEOUT)
                    kind = "fast connect"
                except WireError:
                    # The session is gone (or the node could not read it):
                    # MPush's client falls back to a handshake, on a new
                    # connection.
                    protocol.close()
                    protocol = await connect_from(
                        lambda: DeviceProtocol(device, HEARTBEAT_MS, self.on_push, self.on_lost),
                        node[0], node[1], self.source_of(device), REQUEST_TIMEOUT,
                    )
            if kind == "handshake":
                await protocol.handshake(self.public_key, REQUEST_TIMEOUT)
            await protocol.bind(REQUEST_TIMEOUT)
            return kind
        except BaseException:
            protocol.close()
            raise

    async def connect_all(self) -> dict:
        started = time.monotonic()
        window = asyncio.Semaphore(CONNECT_WINDOW)
        failed: collections.Counter = collections.Counter()

        async def one(device):
            async with window:
                try:
                    await self.open(device, self.home[device.index], fast=False)
                except (WireError, ProtocolError) as exc:
                    failed[type(exc).__name__] += 1

        await asyncio.gather(*(one(device) for device in self.devices))
        return {"ok": sum(1 for d in self.devices if d.bound), "failed": dict(failed),
                "seconds": round(time.monotonic() - started, 2)}

    async def refresh_allot(self) -> None:
        """The allot list from the first API node that answers, at most once a second."""
        if time.monotonic() - self.allot_at < 1.0:
            return
        if self.refreshing is not None:
            await asyncio.shield(self.refreshing)
            return
        self.refreshing = asyncio.get_running_loop().create_future()
        try:
            for host, port in random.sample(self.apis, len(self.apis)):
                try:
                    status, body = await http_request(host, port, self.sources[0], "GET", "/v1/allot",
                                                      self.options.token, b"", 3.0)
                except WireError:
                    continue
                if status == 200:
                    listed = [endpoint(text) for text in body.decode().split(",") if text]
                    if listed:
                        self.allot = listed
                        break
            self.allot_at = time.monotonic()
        finally:
            self.refreshing.set_result(None)
            self.refreshing = None

    async def reconnect(self, device: Device, lost_at: float) -> None:
        await asyncio.sleep(random.uniform(0, self.options.reconnect_spread))
        # Each device starts at its own place in the allot list and walks it
        # from there, so a fleet spreads over the nodes listed (starting at
        # the device's index would send all of one dead node's devices,
        # whose indices share a residue, to the same survivor).
        start = random.randrange(len(self.nodes))
        try:
            for attempt in range(RECONNECT_ATTEMPTS):
                await self.refresh_allot()
                node = self.allot[(start + attempt) % len(self.allot)]
                try:
                    kind = await self.open(device, node, fast=True)
                except Exception as exc:
                    self.reconnects[f"attempt failed: {type(exc).__name__}"] += 1
                    await asyncio.sleep(min(0.5 * (attempt + 1), 3.0))
                    continue
                self.reconnects[kind] += 1
                self.reconnect_ms[kind].append((time.monotonic() - lost_at) * 1000)
                return
            self.reconnects["gave up"] += 1
        finally:
            self.reconnecting.discard(device.index)

    async def keep_alive(self) -> None:
        while True:
            await asyncio.sleep(5)
            now = time.monotonic()
            for device in self.devices:
                connection = device.connection
                if connection is not None and connection.ping_due(now):
                    connection.ping()

    # -- pushes --------------------------------------------------------------

    async def push_for(self, seconds: float, rate: float, timeout_ms: int) -> dict:
        """Push to random devices of this process through another node's API."""
        answered: collections.Counter = collections.Counter()
        retried: collections.Counter = collections.Counter()
        unroutable: set[str] = set()
        succeeded: set[int] = set()
        pending: set[asyncio.Task] = set()
        sent = 0
        received_before = self.received
        ends = time.monotonic() + seconds
        interval = 1.0 / rate
        next_at = time.monotonic()

        async def one(device: Device):
            # The API node after the device's home, so the push crosses
            # nodes; a back-end that finds it dead moves on to the next.
            home = self.nodes.index(self.home[device.index])
            self.pushes_made += 1
            number = self.pushes_made
            body = json.dumps({"users": [device.user_id], "ack": "auto", "timeout_ms": timeout_ms,
                               "content_b64": base64.b64encode(push_content(number)).decode()}).encode()
            for step in range(1, len(self.apis) + 1):
                host, port = self.apis[(home + step) % len(self.apis)]
                try:
                    status, reply = await http_request(host, port, random.choice(self.sources), "POST",
                                                       "/v1/push", self.options.token, body,
                                                       timeout_ms / 1000 + 5.0)
                    break
                except ConnectFailed:
                    retried["api node unreachable, next one tried"] += 1
                except WireError as exc:
                    answered[f"no answer: {exc}"[:60]] += 1
                    return
                except Exception as exc:
                    answered[f"error: {type(exc).__name__}"] += 1
                    return
            else:
                answered["no api node reachable"] += 1
                return
            if status != 200:
                answered[f"http {status}"] += 1
                return
            try:
                kinds = sorted({result["status"] for result in json.loads(reply)["results"]})
            except (ValueError, KeyError, TypeError):
                kinds = ["undecodable"]
            answered[",".join(kinds)] += 1
            if kinds == ["success"]:
                succeeded.add(number)
            if kinds == ["offline"] and device.bound and device.index not in self.reconnecting:
                unroutable.add(device.user_id)

        while time.monotonic() < ends:
            task = asyncio.get_running_loop().create_task(one(random.choice(self.devices)))
            pending.add(task)
            task.add_done_callback(pending.discard)
            sent += 1
            next_at += interval
            await asyncio.sleep(max(next_at - time.monotonic(), 0))
        if pending:
            # Each push tries every API node, each try bounded: past that
            # bound, a push still unanswered hangs.
            await asyncio.wait(pending, timeout=len(self.apis) * (timeout_ms / 1000 + 5.0) + 5.0)
        return {"sent": sent, "answered": dict(answered), "unanswered": len(pending),
                "retried": dict(retried), "pushes received by devices": self.received - received_before,
                # AUTO_ACK: C{success} means the device acknowledged it.
                "success but not received": len(succeeded - self.received_numbers),
                "bound but offline": sorted(unroutable)}

    def report(self) -> dict:
        return {
            "devices": len(self.devices),
            "bound now": sum(1 for d in self.devices if d.bound),
            "reconnecting now": len(self.reconnecting),
            "reconnects": dict(self.reconnects),
            "reconnect ms": {kind: sorted(times) for kind, times in self.reconnect_ms.items()},
        }


def _raise_file_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


async def serve(options) -> None:
    load = LoadProcess(options)
    _raise_file_limit(len(load.devices) + 2048)
    loop = asyncio.get_running_loop()
    alive = loop.create_task(load.keep_alive())
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while True:
            line = await reader.readline()
            if not line:
                return
            command = json.loads(line)
            name = command["cmd"]
            if name == "connect":
                answer = await load.connect_all()
            elif name == "push":
                answer = await load.push_for(command["seconds"], command["rate"], command["timeout_ms"])
            elif name == "report":
                answer = load.report()
            elif name == "quit":
                return
            else:
                answer = {"error": f"unknown command {name!r}"}
            sys.stdout.write(json.dumps({"cmd": name, **answer}) + "\n")
            sys.stdout.flush()
    finally:
        alive.cancel()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpush.bench.rehearsal_load")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--of", type=int, required=True)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--nodes", required=True, help="connect endpoints, host:port,...")
    parser.add_argument("--apis", required=True, help="HTTP API endpoints, host:port,... (same order)")
    parser.add_argument("--sources", required=True, help="source addresses")
    parser.add_argument("--token", required=True)
    parser.add_argument("--public-key", required=True)
    parser.add_argument("--reconnect-spread", type=float, default=RECONNECT_SPREAD)
    options = parser.parse_args(argv)
    asyncio.run(serve(options))
    return 0


if __name__ == "__main__":
    sys.exit(main())
