"""
The mpush-bench scenarios.  Each has two halves:

* the coordinator (the process that parsed the command line) runs the
  phases: it starts worker processes, hands each its share, fixes a common
  start time on CLOCK_MONOTONIC (one clock for every process on the
  machine), reads the server's /proc numbers between phases and merges the
  workers' samples into one result;
* a worker is one process with one asyncio loop driving its share of the
  devices and pushes through mpush.bench.wire.  Workers take commands from
  a queue, so their loops keep answering pongs and pushes between phases.

Every phase is bounded twice: by its count and by the scenario's deadline
(--duration).  Nothing waits without a timeout.
"""

from __future__ import annotations

import array
import asyncio
import multiprocessing
import os
import queue
import secrets
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field

from mpush.bench import redis_info, stats
from mpush.bench.wire import (
    STAMP_SIZE,
    BenchError,
    Device,
    DeviceProtocol,
    EchoClient,
    GatewayPusher,
    HttpPusher,
    ServerRejected,
    WireError,
    WireTimeout,
    open_connection,
    read_stamp,
    stamp_content,
)
from mpush.protocol.crypto import MPUSH_DEMO_PRIVATE_KEY, RsaPrivateKey, RsaPublicKey
from mpush.protocol.messages import GatewayPushMessage, HandshakeMessage, OkMessage
from mpush.protocol.packet import Command, Flags

__all__ = [
    "SCENARIOS",
    "ALL_ORDER",
    "DEFAULT_COUNTS",
    "Target",
    "Settings",
    "WorkerFailed",
    "WorkerPool",
    "share",
    "run_scenario",
    "rsa_floor",
]

SCENARIOS = ("handshake", "fast-connect", "storm", "push", "broadcast", "idle", "floors")
#: The order of 'all': idle first, because a server's RSS does not shrink
#: after load, so idle's per-connection RSS is only right on a fresh server.
ALL_ORDER = ("idle", "handshake", "fast-connect", "storm", "push", "broadcast", "floors")
#: floors: echo frames per content size, per unit of --count.
ECHO_FRAMES_PER_COUNT = 10

#: --count when none is given: small enough for a laptop, big enough to say something.
DEFAULT_COUNTS = {
    "handshake": 1000,
    "fast-connect": 1000,
    "storm": 1000,
    "push": 5000,
    "broadcast": 1000,
    "idle": 1000,
    "floors": 2000,
}

#: Workers get this long to start (a spawned interpreter importing cryptography).
STARTUP_S = 60.0
#: A common start is fixed this far ahead so every worker is waiting for it.
START_DELAY_S = 0.2
#: Extra wait, beyond a phase's own bound, before a silent worker counts as failed.
GRACE_S = 5.0
#: Distinct error messages kept per phase (with their counts).
MAX_ERROR_KINDS = 8
_MS = 1_000_000


class WorkerFailed(BenchError):
    """A worker process died, did not answer in time, or reported an internal error."""


@dataclass(frozen=True, slots=True)
class Target:
    """The server under test and how to talk to it; picklable for workers."""

    host: str
    port: int
    gateway_port: int
    public_key: str
    sources: tuple = (None,)
    heartbeat_ms: int = 240000
    timeout_s: float = 10.0
    http_port: int | None = None
    http_token: str | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """How much load, for how long, and what to read on the side."""

    workers: int = 1
    count: int | None = None
    devices: int = 100
    duration: float = 30.0
    concurrency: int = 16
    window: int = 64
    sizes: tuple = (100, 4096)
    acks: tuple = ("none", "auto")
    rate: float | None = None
    sweep: bool = False
    push_timeout_ms: int = 3000
    server_pid: int | None = None
    redis_port: int | None = None
    storm_gap: float = START_DELAY_S
    private_key: str | None = None
    demo_key: bool = False
    pusher: str = "gateway"
    progress: object = field(default=None, compare=False)

    def count_for(self, scenario: str) -> int:
        return self.count if self.count is not None else DEFAULT_COUNTS[scenario]

    def say(self, text: str) -> None:
        if self.progress is not None:
            self.progress(text)

    def view(self) -> dict:
        """The settings that shaped a result, for its JSON (keys are never secret here)."""
        view = asdict(self)
        view.pop("progress")
        view["private_key"] = "given" if self.private_key else None
        return view


def share(total: int, parts: int, index: int) -> int:
    """Worker C{index}'s share of C{total} split as evenly as possible."""
    if parts < 1 or not 0 <= index < parts or total < 0:
        raise ValueError(f"cannot split {total} over {parts} parts for part {index}")
    return total // parts + (1 if index < total % parts else 0)


def _now_ns() -> int:
    return time.monotonic_ns()


def _raise_fd_limit() -> None:
    """Every connection is a file descriptor: lift the soft limit to the hard one."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20), hard))
    except (ImportError, ValueError, OSError):
        pass


# =========================================================== worker side


class _Tally:
    """Successes with their latencies, failures with their reasons."""

    __slots__ = ("done", "failed", "errors", "latencies", "start_ns", "end_ns", "truncated", "extra")

    def __init__(self) -> None:
        self.done = 0
        self.failed = 0
        self.errors: dict[str, int] = {}
        self.latencies = array.array("q")
        self.start_ns = _now_ns()
        self.end_ns = 0
        self.truncated = False
        self.extra: dict[str, int] = {}

    def success(self, latency_ns: int) -> None:
        self.done += 1
        self.latencies.append(latency_ns)
        self.end_ns = _now_ns()

    def fail(self, error: BaseException) -> None:
        self.failed += 1
        key = str(error)[:240] or type(error).__name__
        if key in self.errors or len(self.errors) < MAX_ERROR_KINDS:
            self.errors[key] = self.errors.get(key, 0) + 1

    def bump(self, name: str, by: int = 1) -> None:
        self.extra[name] = self.extra.get(name, 0) + by

    def as_dict(self, cpu0: float, wall0: float) -> dict:
        return {
            "done": self.done,
            "failed": self.failed,
            "errors": dict(self.errors),
            "latencies": self.latencies,
            "start_ns": self.start_ns,
            "end_ns": self.end_ns or _now_ns(),
            "truncated": self.truncated,
            "extra": dict(self.extra),
            "cpu_s": time.process_time() - cpu0,
            "wall_s": time.monotonic() - wall0,
        }


class _PushSink:
    """Deliveries of one push run, by sequence number (duplicates counted apart)."""

    __slots__ = ("tag", "seen", "delivered", "dupes", "latencies", "last_ns")

    def __init__(self, tag: int, count: int) -> None:
        self.tag = tag
        self.seen = bytearray(count)
        self.delivered = 0
        self.dupes = 0
        self.latencies = array.array("q")
        self.last_ns = 0

    def receive(self, device: Device, seq: int, latency_ns: int, now_ns: int) -> bool:
        if seq >= len(self.seen):
            return False
        if self.seen[seq]:
            self.dupes += 1
            return True
        self.seen[seq] = 1
        self.delivered += 1
        self.latencies.append(latency_ns)
        self.last_ns = now_ns
        return True


class _BroadcastSink:
    """Deliveries of one broadcast, by device."""

    __slots__ = ("tag", "seen", "delivered", "dupes", "latencies", "last_ns")

    def __init__(self, tag: int) -> None:
        self.tag = tag
        self.seen: set[int] = set()
        self.delivered = 0
        self.dupes = 0
        self.latencies = array.array("q")
        self.last_ns = 0

    def receive(self, device: Device, seq: int, latency_ns: int, now_ns: int) -> bool:
        if device.index in self.seen:
            self.dupes += 1
            return True
        self.seen.add(device.index)
        self.delivered += 1
        self.latencies.append(latency_ns)
        self.last_ns = now_ns
        return True


async def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _lanes(items, job, concurrency: int, stop_at: float) -> bool:
    """
    Run C{job(item)} for every item, C{concurrency} at a time, starting no
    new one after C{stop_at}.  True if some items were left undone.
    """
    iterator = iter(items)
    truncated = False

    async def lane() -> None:
        nonlocal truncated
        for item in iterator:
            if time.monotonic() >= stop_at:
                truncated = True
                return
            await job(item)

    await asyncio.gather(*(lane() for _ in range(max(1, concurrency))))
    return truncated


class WorkerRuntime:
    """One worker process: its devices, pushers and echo clients."""

    def __init__(self, index: int, workers: int, target: Target, commands, replies) -> None:
        self.index = index
        self.workers = workers
        self.target = target
        self.commands = commands
        self.replies = replies
        # The floors need no server, so no key either.
        self.public_key = RsaPublicKey.from_x509_base64(target.public_key) if target.public_key else None
        self.run_id = secrets.token_hex(4)
        self.devices: list[Device] = []
        self.sink = None
        self.pusher = None
        self.echo_clients: list[EchoClient] = []
        self.lost = 0
        self.foreign = 0
        self.pings = 0
        self.expire_after_ns = 0
        self._source = index

    # -- plumbing ------------------------------------------------------------

    def _next_source(self):
        sources = self.target.sources
        self._source = (self._source + 1) % len(sources)
        return sources[self._source]

    def _next_command(self, parent: int):
        while True:
            try:
                return self.commands.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent:
                    return None

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        ticker = asyncio.create_task(self._tick())
        parent = os.getppid()
        try:
            while True:
                command = await loop.run_in_executor(None, self._next_command, parent)
                if command is None:
                    break
                seq, name, args = command
                try:
                    result = await getattr(self, "do_" + name.replace("-", "_"))(**args)
                    self.replies.put((self.index, seq, True, result))
                except BenchError as exc:
                    self.replies.put((self.index, seq, False, str(exc)))
                except Exception as exc:  # a bench bug: report it whole
                    detail = "".join(traceback.format_exception(exc))
                    self.replies.put((self.index, seq, False, f"internal error: {detail}"))
        finally:
            ticker.cancel()
            await self.do_shutdown()

    async def _tick(self) -> None:
        """Pings at the negotiated heartbeat (Java's rule) and the pusher's own timers."""
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for device in self.devices:
                connection = device.connection
                if connection is not None and connection.ping_due(now):
                    connection.ping()
                    self.pings += 1
            if self.pusher is not None and self.expire_after_ns:
                self.pusher.expire(_now_ns() - self.expire_after_ns)

    def _on_push(self, device: Device, content: bytes, now_ns: int) -> None:
        stamp = read_stamp(content)
        sink = self.sink
        if stamp is None or sink is None or stamp[0] != sink.tag:
            self.foreign += 1
            return
        if not sink.receive(device, stamp[1], now_ns - stamp[2], now_ns):
            self.foreign += 1

    def _on_lost(self, connection: DeviceProtocol) -> None:
        self.lost += 1

    async def _connect(self, device: Device) -> DeviceProtocol:
        target = self.target
        return await open_connection(
            lambda: DeviceProtocol(device, target.heartbeat_ms, self._on_push, self._on_lost),
            target.host, target.port, self._next_source(), target.timeout_s,
        )

    def _new_devices(self, count: int, kind: str) -> list[Device]:
        first = len(self.devices)
        made = [
            Device(first + n, f"bench-{kind}-{self.run_id}-{self.index}-{first + n}",
                   f"bench-{self.run_id}-{self.index}-{first + n}")
            for n in range(count)
        ]
        self.devices.extend(made)
        return made

    # -- commands ------------------------------------------------------------

    async def do_ready(self) -> dict:
        return {"pid": os.getpid()}

    async def do_handshakes(self, count: int, concurrency: int, start_at: float, stop_at: float) -> dict:
        """Fresh devices: connect, HANDSHAKE, HandshakeOk, close; latency up to HandshakeOk."""
        timeout = self.target.timeout_s
        await _sleep_until(start_at)
        cpu0, wall0 = time.process_time(), time.monotonic()
        tally = _Tally()

        async def one(n: int) -> None:
            device = Device(n, f"bench-hs-{self.run_id}-{self.index}-{n}", "")
            began = _now_ns()
            connection = None
            try:
                connection = await self._connect(device)
                await connection.handshake(self.public_key, timeout)
                tally.success(_now_ns() - began)
            except WireError as exc:
                tally.fail(exc)
            finally:
                if connection is not None:
                    connection.close()

        tally.truncated = await _lanes(range(count), one, concurrency, stop_at)
        return tally.as_dict(cpu0, wall0)

    async def do_open_devices(self, count: int, bind: bool, concurrency: int, stop_at: float) -> dict:
        """New devices that handshake (and bind) and stay connected."""
        timeout = self.target.timeout_s
        cpu0, wall0 = time.process_time(), time.monotonic()
        tally = _Tally()
        heartbeats: set[int] = set()

        async def one(device: Device) -> None:
            began = _now_ns()
            connection = None
            try:
                connection = await self._connect(device)
                await connection.handshake(self.public_key, timeout)
                if bind:
                    await connection.bind(timeout)
                heartbeats.add(device.heartbeat_ms)
                tally.success(_now_ns() - began)
            except WireError as exc:
                tally.fail(exc)
                if connection is not None:
                    connection.close()
                device.connection = None

        tally.truncated = await _lanes(self._new_devices(count, "dev"), one, concurrency, stop_at)
        result = tally.as_dict(cpu0, wall0)
        result["bound"] = sum(1 for d in self.devices if d.bound)
        result["heartbeats"] = sorted(heartbeats)
        return result

    async def do_close_devices(self) -> dict:
        """Close every device connection and wait until each is gone."""
        connections = [d.connection for d in self.devices if d.connection is not None]
        for connection in connections:
            connection.close()
        closed = await asyncio.gather(*(c.wait_closed(self.target.timeout_s) for c in connections))
        for device in self.devices:
            device.connection = None
            device.bound = False
        return {"closed": sum(1 for c in closed if c), "aborted": sum(1 for c in closed if not c)}

    async def do_fast_connects(self, concurrency: int, start_at: float, stop_at: float) -> dict:
        """Each device with a session: connect, FAST_CONNECT, FastConnectOk, close."""
        timeout = self.target.timeout_s
        ready = [d for d in self.devices if d.session_id is not None]
        await _sleep_until(start_at)
        cpu0, wall0 = time.process_time(), time.monotonic()
        tally = _Tally()

        async def one(device: Device) -> None:
            began = _now_ns()
            connection = None
            try:
                connection = await self._connect(device)
                await connection.fast_connect(timeout)
                tally.success(_now_ns() - began)
            except WireError as exc:
                tally.fail(exc)
            finally:
                if connection is not None:
                    connection.close()
                device.connection = None

        tally.truncated = await _lanes(ready, one, concurrency, stop_at)
        return tally.as_dict(cpu0, wall0)

    async def do_reconnect_all(self, start_at: float, stop_at: float) -> dict:
        """
        The storm: every device reconnects at once with fast connect + bind,
        falling back to a full handshake on the same connection when the
        server refuses the session, as the Java client does (spec 9.2).
        Latency is from the common start to BIND's OK.
        """
        timeout = self.target.timeout_s
        ready = [d for d in self.devices if d.session_id is not None]
        await _sleep_until(start_at)
        cpu0, wall0 = time.process_time(), time.monotonic()
        tally = _Tally()
        began = _now_ns()
        tally.start_ns = began
        connected = array.array("q")

        async def one(device: Device) -> None:
            connection = None
            try:
                connection = await self._connect(device)
                connected.append(_now_ns() - began)
                try:
                    await connection.fast_connect(timeout)
                except ServerRejected as exc:
                    if exc.error.cmd != Command.FAST_CONNECT:
                        raise
                    tally.bump("fallback_handshakes")
                    await connection.handshake(self.public_key, timeout)
                await connection.bind(timeout)
                tally.success(_now_ns() - began)
            except WireError as exc:
                tally.fail(exc)
                if connection is not None:
                    connection.close()

        async def bounded(device: Device) -> None:
            try:
                await asyncio.wait_for(one(device), max(stop_at - time.monotonic(), 0.001))
            except asyncio.TimeoutError:
                tally.fail(WireTimeout("not bound again before the --duration cap"))
                tally.truncated = True

        await asyncio.gather(*(bounded(d) for d in ready))
        return {**tally.as_dict(cpu0, wall0), "connect_latencies": connected}

    async def do_open_pusher(self, window: int, kind: str, push_timeout_ms: int) -> dict:
        target = self.target
        self.expire_after_ns = (push_timeout_ms + 1000) * _MS
        if kind == "http":
            pusher = HttpPusher(target.host, target.http_port, target.http_token)
            self.pusher = pusher
            await pusher.open(window, self._next_source(), target.timeout_s)
        else:
            self.pusher = await open_connection(GatewayPusher, target.host, target.gateway_port,
                                                self._next_source(), target.timeout_s)
        return {"window": window}

    async def do_push_run(self, tag: int, ack: str, size: int, count: int, rate: float | None,
                          window: int, timeout_ms: int, start_at: float, send_until: float,
                          stop_at: float) -> dict:
        """
        Push C{count} messages round-robin to this worker's bound users, as
        fast as the window allows or paced at C{rate}/s, then wait for the
        last answers and deliveries.  With a rate, latency counts from the
        scheduled send time, so a pusher that falls behind shows it.
        """
        pusher = self.pusher
        users = [d.user_id for d in self.devices if d.bound]
        sink = _PushSink(tag, count)
        self.sink = sink
        pusher.reset_counters()
        flags = int(Flags.AUTO_ACK) if ack == "auto" else 0
        acks0, foreign0 = self._acks(), self.foreign
        limit = min(window, getattr(pusher, "window", window))
        await _sleep_until(start_at)
        cpu0, wall0 = time.process_time(), time.monotonic()
        t0 = _now_ns()
        sent = 0
        truncated = False
        lost = None
        interval_ns = int(1e9 / rate) if rate else 0
        send_until_ns = t0 + int((send_until - time.monotonic()) * 1e9)
        n_users = len(users)
        try:
            while sent < count and n_users:
                now = _now_ns()
                if now >= send_until_ns:
                    truncated = True
                    break
                if interval_ns:
                    due = min(count, (now - t0) // interval_ns + 1)
                    if sent >= due:
                        await asyncio.sleep(max((t0 + sent * interval_ns - now) / 1e9, 0.0002))
                        continue
                else:
                    due = count
                free = limit - pusher.in_flight
                if free <= 0:
                    await pusher.wait_slot(send_until)
                    continue
                for _ in range(min(due - sent, free)):
                    stamp = t0 + sent * interval_ns if interval_ns else _now_ns()
                    pusher.push(users[sent % n_users], stamp_content(tag, sent, stamp, size), flags, timeout_ms)
                    sent += 1
                await asyncio.sleep(0)
        except WireError as exc:
            lost = str(exc)
        send_end = _now_ns()
        while time.monotonic() < stop_at and lost is None:
            pusher.expire(_now_ns() - self.expire_after_ns)
            if pusher.in_flight == 0 and sink.delivered >= pusher.ok:
                break
            await asyncio.sleep(0.002)
        if pusher.in_flight:
            truncated = True
        errors = dict(pusher.errors)
        if lost:
            errors[lost] = errors.get(lost, 0) + 1
        return {
            "sent": sent,
            "ok": pusher.ok,
            "errors": errors,
            "timeouts": pusher.timeouts,
            "unanswered": pusher.in_flight,
            "late": pusher.late,
            "delivered": sink.delivered,
            "dupes": sink.dupes,
            "acks": self._acks() - acks0,
            "stray": self.foreign - foreign0,
            "latencies": sink.latencies,
            "start_ns": t0,
            "send_end_ns": send_end,
            "last_ns": sink.last_ns,
            "truncated": truncated,
            "users": n_users,
            "cpu_s": time.process_time() - cpu0,
            "wall_s": time.monotonic() - wall0,
        }

    def _acks(self) -> int:
        return sum(d.connection.acks for d in self.devices if d.connection is not None)

    async def do_arm_broadcast(self, tag: int) -> dict:
        self.sink = _BroadcastSink(tag)
        return {"armed": sum(1 for d in self.devices if d.bound)}

    async def do_await_broadcast(self, stop_at: float) -> dict:
        """Wait until every bound device here got the broadcast (or the deadline)."""
        sink = self.sink
        expected = sum(1 for d in self.devices if d.bound)
        cpu0, wall0 = time.process_time(), time.monotonic()
        while sink.delivered < expected and time.monotonic() < stop_at:
            await asyncio.sleep(0.002)
        return {
            "expected": expected,
            "delivered": sink.delivered,
            "dupes": sink.dupes,
            "latencies": sink.latencies,
            "last_ns": sink.last_ns,
            "cpu_s": time.process_time() - cpu0,
            "wall_s": time.monotonic() - wall0,
        }

    async def do_idle(self, until: float) -> dict:
        """Stay connected, pinging at the negotiated heartbeat, until C{until}."""
        pings0, lost0 = self.pings, self.lost
        pongs0 = sum(d.connection.pongs for d in self.devices if d.connection is not None)
        cpu0, wall0 = time.process_time(), time.monotonic()
        await _sleep_until(until)
        live = [d.connection for d in self.devices if d.connection is not None]
        return {
            "pings": self.pings - pings0,
            "pongs": sum(c.pongs for c in live) - pongs0,
            "closed_by_server": self.lost - lost0,
            "connected": len(live),
            "kicks": sum(c.kicks for c in live),
            "cpu_s": time.process_time() - cpu0,
            "wall_s": time.monotonic() - wall0,
        }

    async def do_echo_run(self, port: int, body_size: int, count: int, window: int,
                          start_at: float, stop_at: float) -> dict:
        """Frames of C{body_size} bytes to the raw echo server, C{window} in flight."""
        client = await open_connection(EchoClient, "127.0.0.1", port, self._next_source(), self.target.timeout_s)
        try:
            await _sleep_until(start_at)
            cpu0, wall0 = time.process_time(), time.monotonic()
            t0 = _now_ns()
            truncated = False
            while client.sent < count and not client.lost:
                if time.monotonic() >= stop_at:
                    truncated = True
                    break
                free = window - client.in_flight
                if free <= 0:
                    await client.wait_slot(stop_at)
                    continue
                for _ in range(min(free, count - client.sent)):
                    client.send_frame(stamp_content(0, client.sent, _now_ns(), body_size))
                await asyncio.sleep(0)
            while client.in_flight and not client.lost and time.monotonic() < stop_at:
                await client.wait_slot(stop_at)
            return {
                "sent": client.sent,
                "echoed": client.echoed,
                "latencies": array.array("q", client.latencies),
                "start_ns": t0,
                "last_ns": client.last_ns,
                "truncated": truncated or bool(client.in_flight),
                "lost": client.lost,
                "cpu_s": time.process_time() - cpu0,
                "wall_s": time.monotonic() - wall0,
            }
        finally:
            client.close()

    async def do_connect_run(self, port: int, count: int, concurrency: int, body_size: int,
                             start_at: float, stop_at: float) -> dict:
        """
        C{count} short connections to the echo server: connect, one frame of
        C{body_size} bytes there and back, close.  What accepting and closing
        a TCP connection costs a Twisted server, the floor of a fast connect.
        """
        await _sleep_until(start_at)
        tally = _Tally()
        cpu0, wall0 = time.process_time(), time.monotonic()

        async def one(_: int) -> None:
            began = _now_ns()
            try:
                client = await open_connection(EchoClient, "127.0.0.1", port, self._next_source(),
                                               self.target.timeout_s)
            except WireError as exc:
                tally.fail(exc)
                return
            try:
                client.send_frame(bytes(body_size))
                while not client.echoed and not client.lost and time.monotonic() < stop_at:
                    await client.wait_slot(stop_at)
                if client.echoed:
                    tally.success(_now_ns() - began)
                else:
                    tally.fail(WireError("no echo" if not client.lost else "connection lost"))
            finally:
                client.close()

        tally.truncated = await _lanes(range(count), one, concurrency, stop_at)
        return tally.as_dict(cpu0, wall0)

    async def do_hold(self, port: int, count: int, concurrency: int, stop_at: float) -> dict:
        """C{count} idle connections to the echo server, kept open."""
        tally = _Tally()
        cpu0, wall0 = time.process_time(), time.monotonic()

        async def one(_: int) -> None:
            began = _now_ns()
            try:
                client = await open_connection(EchoClient, "127.0.0.1", port, self._next_source(),
                                               self.target.timeout_s)
                self.echo_clients.append(client)
                tally.success(_now_ns() - began)
            except WireError as exc:
                tally.fail(exc)

        tally.truncated = await _lanes(range(count), one, concurrency, stop_at)
        return tally.as_dict(cpu0, wall0)

    async def do_shutdown(self) -> dict:
        if self.pusher is not None:
            self.pusher.close()
            self.pusher = None
        for client in self.echo_clients:
            client.close()
        self.echo_clients = []
        closed = await self.do_close_devices()
        self.devices = []
        self.sink = None
        return closed


def worker_main(index: int, workers: int, target: Target, commands, replies) -> None:
    """Entry point of a worker process."""
    _raise_fd_limit()
    try:
        asyncio.run(WorkerRuntime(index, workers, target, commands, replies).serve())
    except KeyboardInterrupt:
        pass


# ====================================================== coordinator side


class WorkerPool:
    """
    The worker processes of one scenario.  C{call} sends a command to every
    worker (each with its own arguments) and returns their answers in worker
    order, failing with L{WorkerFailed} if one reports an error, dies, or is
    silent past the deadline.
    """

    def __init__(self, size: int, target: Target) -> None:
        if size < 1:
            raise ValueError("a pool needs at least one worker")
        context = multiprocessing.get_context("spawn")
        self.size = size
        self.replies = context.Queue()
        self.commands = [context.Queue() for _ in range(size)]
        self.processes = [
            context.Process(target=worker_main, args=(i, size, target, self.commands[i], self.replies),
                            name=f"mpush-bench-worker-{i}", daemon=True)
            for i in range(size)
        ]
        self._seq = 0
        for process in self.processes:
            process.start()

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def send(self, name: str, args) -> int:
        """Send a command; C{args} is one dict for all or a list of one per worker."""
        self._seq += 1
        for i, commands in enumerate(self.commands):
            commands.put((self._seq, name, args[i] if isinstance(args, list) else args))
        return self._seq

    def gather(self, seq: int, deadline: float, name: str = "command") -> list[dict]:
        results: dict[int, dict] = {}
        while len(results) < self.size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(self.size)) - set(results))
                raise WorkerFailed(f"workers {missing} did not finish {name!r} in time")
            try:
                index, got_seq, ok, value = self.replies.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                for i, process in enumerate(self.processes):
                    if i not in results and process.exitcode is not None:
                        raise WorkerFailed(f"worker {i} exited with code {process.exitcode} during {name!r}")
                continue
            if got_seq != seq:
                continue
            if not ok:
                raise WorkerFailed(f"worker {index}, {name}: {value}")
            results[index] = value
        return [results[i] for i in range(self.size)]

    def call(self, name: str, args, deadline: float) -> list[dict]:
        return self.gather(self.send(name, args), deadline, name)

    def close(self) -> None:
        for commands in self.commands:
            try:
                commands.put(None)
            except (OSError, ValueError):
                pass
        end = time.monotonic() + 10.0
        for process in self.processes:
            process.join(max(end - time.monotonic(), 0.1))
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(2.0)
            if process.is_alive():
                process.kill()
                process.join(2.0)
        for q in self.commands + [self.replies]:
            q.close()
            q.cancel_join_thread()


def _merge_latencies(parts) -> list[int]:
    merged: list[int] = []
    for part in parts:
        merged.extend(part)
    return merged


def _merge_errors(replies) -> dict[str, int]:
    errors: dict[str, int] = {}
    for reply in replies:
        for key, n in reply.get("errors", {}).items():
            errors[key] = errors.get(key, 0) + n
    return errors


def _load_cpu(replies) -> float | None:
    """The busiest worker's CPU use during the phase, in % of one core."""
    values = [r["cpu_s"] / r["wall_s"] * 100 for r in replies if r.get("wall_s", 0) > 0.05]
    return round(max(values), 1) if values else None


def _tree_cpu_seconds(pid: int) -> float:
    return stats.read_tree(pid, stats.read_cpu_seconds)


class _ServerCpu:
    """
    CPU% of --server-pid and its workers between two points in time (None
    without a pid).
    """

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.cpu0 = _tree_cpu_seconds(pid) if pid else None
        self.wall0 = time.monotonic()

    def percent(self) -> float | None:
        if not self.pid:
            return None
        cpu = _tree_cpu_seconds(self.pid) - self.cpu0
        wall = time.monotonic() - self.wall0
        return round(cpu / wall * 100, 1) if wall > 0 else None

    def us_per(self, count: int) -> float | None:
        """Server CPU microseconds per operation since the start, for C{count} operations."""
        if not self.pid or not count:
            return None
        return round((_tree_cpu_seconds(self.pid) - self.cpu0) / count * 1e6, 1)


def _tally_result(replies, count: int) -> dict:
    done = sum(r["done"] for r in replies)
    failed = sum(r["failed"] for r in replies)
    active = [r for r in replies if r["done"] or r["failed"]]
    elapsed = None
    if active:
        elapsed = (max(r["end_ns"] for r in active) - min(r["start_ns"] for r in active)) / 1e9
    extra: dict[str, int] = {}
    for r in replies:
        for key, n in r.get("extra", {}).items():
            extra[key] = extra.get(key, 0) + n
    return {
        "count": count,
        "completed": done,
        "failed": failed,
        "truncated": any(r["truncated"] for r in replies),
        "elapsed_s": round(elapsed, 3) if elapsed is not None else None,
        "per_s": stats.rate_per_s(done, elapsed),
        "latency_ms": stats.summarize_ms(_merge_latencies(r["latencies"] for r in replies)),
        "errors": _merge_errors(replies),
        "load_cpu_max_pct": _load_cpu(replies),
        **extra,
    }


def _setup_summary(replies) -> dict:
    return {
        "handshaken": sum(r["done"] for r in replies),
        "failed": sum(r["failed"] for r in replies),
        "bound": sum(r.get("bound", 0) for r in replies),
        "truncated": any(r["truncated"] for r in replies),
        "errors": _merge_errors(replies),
        "heartbeats_ms": sorted({h for r in replies for h in r.get("heartbeats", ())}),
    }


class _Run:
    """The frame shared by every scenario: a pool, a deadline, the common start."""

    def __init__(self, target: Target, settings: Settings) -> None:
        self.target = target
        self.settings = settings
        self.workers = settings.workers
        self.pool = WorkerPool(self.workers, target)
        try:
            self.pool.call("ready", {}, time.monotonic() + STARTUP_S)
        except BaseException:
            self.pool.close()
            raise
        self.deadline = time.monotonic() + settings.duration

    def __enter__(self) -> "_Run":
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            if exc_info[0] is None:
                self.pool.call("shutdown", {}, time.monotonic() + self.target.timeout_s + GRACE_S)
        finally:
            self.pool.close()

    @property
    def slack(self) -> float:
        """How far past the deadline a phase may run: its requests' own timeouts."""
        return 3 * self.target.timeout_s + GRACE_S

    def start_at(self) -> float:
        return time.monotonic() + START_DELAY_S

    def shares(self, total: int) -> list[int]:
        return [share(total, self.workers, i) for i in range(self.workers)]

    def open_devices(self, count: int, bind: bool) -> tuple[dict, list[dict]]:
        """Devices that handshake (and bind) and stay: the summary and each worker's answer."""
        replies = self.pool.call(
            "open_devices",
            [{"count": n, "bind": bind, "concurrency": self.settings.concurrency, "stop_at": self.deadline}
             for n in self.shares(count)],
            self.deadline + self.slack,
        )
        return _setup_summary(replies), replies


def _ok(result: dict) -> bool:
    return not result.get("errors") and not result.get("failed")


def run_handshake(target: Target, settings: Settings) -> dict:
    count = settings.count_for("handshake")
    with _Run(target, settings) as run:
        cpu = _ServerCpu(settings.server_pid)
        start = run.start_at()
        replies = run.pool.call(
            "handshakes",
            [{"count": n, "concurrency": settings.concurrency, "start_at": start, "stop_at": run.deadline}
             for n in run.shares(count)],
            run.deadline + run.slack,
        )
        tally = _tally_result(replies, count)
        result = {"scenario": "handshake", **tally, "server_cpu_pct": cpu.percent(),
                  "server_cpu_us_each": cpu.us_per(tally["completed"])}
    result["ok"] = _ok(result)
    return result


def run_fast_connect(target: Target, settings: Settings) -> dict:
    count = settings.count_for("fast-connect")
    with _Run(target, settings) as run:
        setup, _ = run.open_devices(count, bind=False)
        run.pool.call("close_devices", {}, run.deadline + run.slack)
        cpu = _ServerCpu(settings.server_pid)
        start = run.start_at()
        replies = run.pool.call(
            "fast_connects",
            {"concurrency": settings.concurrency, "start_at": start, "stop_at": run.deadline},
            run.deadline + run.slack,
        )
        tally = _tally_result(replies, count)
        result = {"scenario": "fast-connect", **tally, "setup": setup, "server_cpu_pct": cpu.percent(),
                  "server_cpu_us_each": cpu.us_per(tally["completed"])}
    result["ok"] = _ok(result) and _ok(setup)
    return result


#: Seconds the storm waits after the reconnect for the server's deferred
#: work (mpush does the Redis side of closes 2 s later) before reading its
#: CPU, RSS and Redis counters, so a lazy server is not flattered.
STORM_SETTLE_S = 3.0


class _ServerReadings:
    """
    CPU seconds and RSS of --server-pid and its workers, and the command
    counters of --redis-port, read at the phases of a storm.
    """

    def __init__(self, target: Target, settings: Settings) -> None:
        self.pid = settings.server_pid
        self.redis = (target.host, settings.redis_port) if settings.redis_port else None
        self.rss_kib: dict[str, int] = {}
        self.marks: dict[str, tuple] = {}

    def mark(self, phase: str, rss: bool = True) -> None:
        cpu = _tree_cpu_seconds(self.pid) if self.pid else None
        calls = redis_info.command_calls(*self.redis) if self.redis else None
        self.marks[phase] = (cpu, calls)
        if rss and self.pid:
            self.rss_kib[phase] = int(stats.read_tree(self.pid, stats.read_rss_kib))

    def cost(self, first: str, last: str, devices: int) -> dict:
        cpu0, calls0 = self.marks[first]
        cpu1, calls1 = self.marks[last]
        out: dict = {}
        if cpu0 is not None and devices:
            out["server_cpu_s"] = round(cpu1 - cpu0, 3)
            out["server_cpu_us_per_device"] = round((cpu1 - cpu0) / devices * 1e6, 1)
        if calls0 is not None:
            out["redis_per_device"] = redis_info.per_device(calls0, calls1, devices)
        return out


def run_storm(target: Target, settings: Settings) -> dict:
    count = settings.count_for("storm")
    readings = _ServerReadings(target, settings)
    with _Run(target, settings) as run:
        readings.mark("before")
        setup, _ = run.open_devices(count, bind=True)
        readings.mark("connected")
        cpu = _ServerCpu(settings.server_pid)
        closed = run.pool.call("close_devices", {}, run.deadline + run.slack)
        time.sleep(max(settings.storm_gap - START_DELAY_S, 0.0))
        readings.mark("after_close")
        start = run.start_at()
        replies = run.pool.call("reconnect_all", {"start_at": start, "stop_at": run.deadline},
                                run.deadline + run.slack)
        server_cpu_pct = cpu.percent()
        time.sleep(STORM_SETTLE_S)
        readings.mark("after_storm")
        tally = _tally_result(replies, setup["bound"])
        all_bound = None
        if tally["completed"]:
            all_bound = round((max(r["end_ns"] for r in replies if r["done"]) - int(start * 1e9)) / 1e9, 3)
        devices = setup["bound"]
        result = {
            "scenario": "storm",
            "devices": devices,
            "disconnected": sum(r["closed"] + r["aborted"] for r in closed),
            "bound_again": tally["completed"],
            "failed": tally["failed"],
            "truncated": tally["truncated"],
            "all_bound_s": all_bound,
            "per_s": stats.rate_per_s(tally["completed"], all_bound),
            "latency_ms": tally["latency_ms"],
            # From the common start to the TCP connect: the accept loop and backlog.
            "connect_ms": stats.summarize_ms(_merge_latencies(r["connect_latencies"] for r in replies)),
            "fallback_handshakes": tally.get("fallback_handshakes", 0),
            "errors": tally["errors"],
            "load_cpu_max_pct": tally["load_cpu_max_pct"],
            "server_cpu_pct": server_cpu_pct,
            # close + fast connect + bind, deferred work included
            **readings.cost("connected", "after_storm", devices),
            "rss_kib": readings.rss_kib or None,
            "setup": setup,
        }
    result["ok"] = _ok(result) and _ok(setup)
    return result


def _push_runs(settings: Settings) -> list[tuple[str, int, str]]:
    """(ack, size, label) of each run before the sweep's paced runs."""
    label = "rate" if settings.rate else "peak"
    return [(ack, size, label) for ack in settings.acks for size in settings.sizes]


def _merge_push(replies, ack: str, size: int, label: str, target_rate) -> dict:
    active = [r for r in replies if r["sent"]]
    sent = sum(r["sent"] for r in replies)
    delivered = sum(r["delivered"] for r in replies)
    start = min((r["start_ns"] for r in active), default=0)
    last = max((r["last_ns"] for r in active if r["last_ns"]), default=0)
    send_end = max((r["send_end_ns"] for r in active), default=0)
    delivery_s = (last - start) / 1e9 if last and start else None
    send_s = (send_end - start) / 1e9 if active else None
    errors = _merge_errors(replies)
    return {
        "ack": ack,
        "content_bytes": size,
        "label": label,
        "target_rate": round(target_rate, 1) if target_rate else None,
        "sent": sent,
        "ok_replies": sum(r["ok"] for r in replies),
        "error_replies": sum(errors.values()),
        "timeouts": sum(r["timeouts"] for r in replies),
        "unanswered": sum(r["unanswered"] for r in replies),
        "delivered": delivered,
        "duplicates": sum(r["dupes"] for r in replies),
        "acks_sent": sum(r["acks"] for r in replies),
        "stray": sum(r["stray"] for r in replies),
        "late_replies": sum(r["late"] for r in replies),
        "truncated": any(r["truncated"] for r in replies),
        "send_s": round(send_s, 3) if send_s is not None else None,
        "delivery_s": round(delivery_s, 3) if delivery_s is not None else None,
        "sent_per_s": stats.rate_per_s(sent, send_s),
        "delivered_per_s": stats.rate_per_s(delivered, delivery_s),
        "latency_ms": stats.summarize_ms(_merge_latencies(r["latencies"] for r in replies)),
        "errors": errors,
        "load_cpu_max_pct": _load_cpu(replies),
    }


def run_push(target: Target, settings: Settings) -> dict:
    count = settings.count_for("push")
    planned = _push_runs(settings)
    total_runs = len(planned) * (3 if settings.sweep else 1)
    runs: list[dict] = []
    with _Run(target, settings) as run:
        setup, per_worker = run.open_devices(settings.devices, bind=True)
        run.pool.call("open_pusher", {"window": settings.window, "kind": settings.pusher,
                                      "push_timeout_ms": settings.push_timeout_ms},
                      run.deadline + run.slack)
        # A worker whose devices all failed to bind gets no messages.
        pushing = [i for i, reply in enumerate(per_worker) if reply["bound"]]
        drain_s = settings.push_timeout_ms / 1000.0 + 1.0
        schedule = [(ack, size, label, settings.rate) for ack, size, label in planned]
        peaks: dict[tuple[str, int], float] = {}
        done = 0
        while schedule:
            ack, size, label, rate = schedule.pop(0)
            now = time.monotonic()
            budget = max((run.deadline - now) / max(total_runs - done, 1), 0.05)
            stop_at = min(now + budget, run.deadline)
            send_until = stop_at - min(drain_s, budget / 3)
            start = run.start_at()
            tag = (int(time.time() * 1000) + done) & 0xFFFFFFFF
            args = [
                {"tag": tag, "ack": ack, "size": size,
                 "count": share(count, len(pushing), pushing.index(i)) if i in pushing else 0,
                 "rate": (rate / len(pushing)) if rate and i in pushing else None,
                 "window": settings.window, "timeout_ms": settings.push_timeout_ms,
                 "start_at": start, "send_until": send_until, "stop_at": stop_at}
                for i in range(run.workers)
            ]
            cpu = _ServerCpu(settings.server_pid)
            settings.say(f"push: {ack} ack, {size} B, {label}" + (f" at {rate:.0f}/s" if rate else ""))
            replies = run.pool.call("push_run", args, stop_at + run.slack)
            merged = _merge_push(replies, ack, size, label, rate)
            merged["server_cpu_pct"] = cpu.percent()
            runs.append(merged)
            done += 1
            if settings.sweep and label == "peak" and merged["delivered_per_s"]:
                peak = merged["delivered_per_s"]
                peaks[(ack, size)] = peak
                schedule.append((ack, size, "50%", peak * 0.5))
                schedule.append((ack, size, "90%", peak * 0.9))
    result = {
        "scenario": "push",
        "pusher": settings.pusher,
        "devices": setup["bound"],
        "count_per_run": count,
        "window_per_worker": settings.window,
        "runs": runs,
        "setup": setup,
    }
    result["errors"] = {k: v for r in runs for k, v in r["errors"].items()}
    result["ok"] = (
        _ok(setup)
        and all(not r["errors"] and not r["timeouts"] and r["delivered"] >= r["ok_replies"] for r in runs)
    )
    return result


async def _broadcast_once(target: Target, kind: str, content: bytes, timeout_ms: int, stop_at: float) -> dict:
    """Send one broadcast (user None) and wait for its answer."""
    began = _now_ns()
    wait_s = max(stop_at - time.monotonic(), 0.5)
    if kind == "http":
        pusher = HttpPusher(target.host, target.http_port, target.http_token)
        await pusher.open(1, target.sources[0], target.timeout_s)
        try:
            pusher.push(None, content, 0, timeout_ms)
            while pusher.in_flight and time.monotonic() < stop_at:
                await pusher.wait_slot(stop_at)
            answer = None if pusher.ok else (",".join(pusher.errors) or "no answer")
        finally:
            pusher.close()
    else:
        pusher = await open_connection(GatewayPusher, target.host, target.gateway_port,
                                       target.sources[0], target.timeout_s)
        try:
            reply = await pusher.push_and_wait(None, content, 0, timeout_ms, wait_s)
            answer = None if isinstance(reply, OkMessage) else f"ERROR code {reply.code} {reply.reason!r}"
        except WireError as exc:
            answer = str(exc)
        finally:
            pusher.close()
    return {"answer": answer or "ok", "answer_s": round((_now_ns() - began) / 1e9, 3)}


def run_broadcast(target: Target, settings: Settings) -> dict:
    count = settings.count_for("broadcast")
    size = settings.sizes[0]
    with _Run(target, settings) as run:
        setup, _ = run.open_devices(count, bind=True)
        tag = int(time.time() * 1000) & 0xFFFFFFFF
        run.pool.call("arm_broadcast", {"tag": tag}, run.deadline + run.slack)
        seq = run.pool.send("await_broadcast", {"stop_at": run.deadline})
        cpu = _ServerCpu(settings.server_pid)
        sent_ns = _now_ns()
        content = stamp_content(tag, 0, sent_ns, size)
        timeout_ms = max(int((run.deadline - time.monotonic()) * 1000), 1000)
        answer = asyncio.run(_broadcast_once(target, settings.pusher, content, timeout_ms, run.deadline))
        replies = run.pool.gather(seq, run.deadline + run.slack, "await_broadcast")
        delivered = sum(r["delivered"] for r in replies)
        last = max((r["last_ns"] for r in replies if r["last_ns"]), default=0)
        all_received = round((last - sent_ns) / 1e9, 3) if delivered else None
        result = {
            "scenario": "broadcast",
            "content_bytes": size,
            "devices": setup["bound"],
            "expected": sum(r["expected"] for r in replies),
            "received": delivered,
            "duplicates": sum(r["dupes"] for r in replies),
            "answer": answer["answer"],
            "answer_s": answer["answer_s"],
            "all_received_s": all_received,
            "per_s": stats.rate_per_s(delivered, all_received),
            "latency_ms": stats.summarize_ms(_merge_latencies(r["latencies"] for r in replies)),
            "load_cpu_max_pct": _load_cpu(replies),
            "server_cpu_pct": cpu.percent(),
            "setup": setup,
        }
    result["errors"] = {} if answer["answer"] == "ok" else {f"broadcast answer: {answer['answer']}": 1}
    result["ok"] = (_ok(setup) and answer["answer"] == "ok" and result["received"] == result["expected"]
                    and not result["duplicates"])
    return result


def run_idle(target: Target, settings: Settings) -> dict:
    count = settings.count_for("idle")
    pid = settings.server_pid
    with _Run(target, settings) as run:
        rss_before = stats.read_rss_kib(pid) if pid else None
        setup, _ = run.open_devices(count, bind=True)
        # Give the server a moment to finish the last binds' bookkeeping.
        time.sleep(min(0.5, max(run.deadline - time.monotonic(), 0)))
        rss_after = stats.read_rss_kib(pid) if pid else None
        reserve = min(2.0, settings.duration * 0.1)
        until = max(run.deadline - reserve, time.monotonic() + 0.1)
        cpu = _ServerCpu(pid)
        window0 = time.monotonic()
        replies = run.pool.call("idle", {"until": until}, until + run.slack)
        window = time.monotonic() - window0
        cpu_pct = cpu.percent()
        cpu_s = round(_tree_cpu_seconds(pid) - cpu.cpu0, 3) if pid else None
        rss_end = stats.read_rss_kib(pid) if pid else None
    connections = setup["bound"]
    per_connection = None
    if pid and connections:
        per_connection = round((rss_after - rss_before) / connections, 2)
    result = {
        "scenario": "idle",
        "devices": connections,
        "server_pid": pid,
        "rss_before_kib": rss_before,
        "rss_after_kib": rss_after,
        "rss_end_kib": rss_end,
        "rss_per_connection_kib": per_connection,
        "window_s": round(window, 3),
        "server_cpu_s": cpu_s,
        "server_cpu_pct": cpu_pct,
        "heartbeats_ms": setup["heartbeats_ms"],
        "pings": sum(r["pings"] for r in replies),
        "pongs": sum(r["pongs"] for r in replies),
        "connected_at_end": sum(r["connected"] for r in replies),
        "closed_by_server": sum(r["closed_by_server"] for r in replies),
        "kicks": sum(r["kicks"] for r in replies),
        "setup": setup,
        "note": ("RSS never shrinks: per-connection RSS is only meaningful on a server that has not "
                 "held more connections before" if pid else "no --server-pid: RSS and CPU not measured"),
    }
    result["errors"] = dict(setup["errors"])
    if result["closed_by_server"]:
        result["errors"]["connections closed by the server while idle"] = result["closed_by_server"]
    result["ok"] = _ok(setup) and not result["closed_by_server"]
    return result


# --------------------------------------------------------------------- floors


def rsa_floor(private_key: str | None, demo_key: bool, count: int, budget_s: float) -> dict:
    """
    The cost of one RSA decrypt of a handshake, the work a server cannot
    avoid per full handshake: with the given key, MPush's demo key, or a
    fresh 1024-bit one.  Single core, in this process.
    """
    if private_key:
        key, source = RsaPrivateKey.from_pkcs8_base64(private_key), "given"
    elif demo_key:
        key, source = RsaPrivateKey.from_pkcs8_base64(MPUSH_DEMO_PRIVATE_KEY), "demo"
    else:
        key, source = RsaPrivateKey.generate(1024), "generated"
    body = HandshakeMessage("bench-device-0000000000", "android", "bench", "mpush-bench",
                            os.urandom(16), os.urandom(16), 240000, 240000, 0).encode()
    ciphertext = key.public_key().encrypt(body)
    key.decrypt(ciphertext)
    done = 0
    began = time.perf_counter()
    stop = began + budget_s
    while done < count:
        key.decrypt(ciphertext)
        done += 1
        if not done % 16 and time.perf_counter() >= stop:
            break
    elapsed = time.perf_counter() - began
    return {
        "key": source,
        "key_bits": key.key_size_bytes * 8,
        "handshake_ciphertext_bytes": len(ciphertext),
        "ops": done,
        "us_per_op": round(elapsed / done * 1e6, 1),
        "per_s_one_core": stats.rate_per_s(done, elapsed),
        "truncated": done < count,
    }


def _echo_server_main(pipe) -> None:
    """A raw Twisted echo server on loopback: the transport's floor."""
    _raise_fd_limit()
    from twisted.internet import protocol, reactor

    class Echo(protocol.Protocol):
        def dataReceived(self, data):
            self.transport.write(data)

    factory = protocol.Factory.forProtocol(Echo)
    factory.noisy = False
    port = reactor.listenTCP(0, factory, backlog=1024, interface="127.0.0.1")

    def wait_for_stop() -> None:
        try:
            pipe.recv()
        except (EOFError, OSError):
            pass
        reactor.callFromThread(reactor.stop)

    pipe.send((port.getHost().port, os.getpid()))
    threading.Thread(target=wait_for_stop, daemon=True).start()
    reactor.run(installSignalHandlers=False)


class EchoServer:
    """The echo server subprocess: started, its port and pid known, stopped."""

    def __init__(self, timeout: float = STARTUP_S) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self.process = context.Process(target=_echo_server_main, args=(child,),
                                       name="mpush-bench-echo", daemon=True)
        self.process.start()
        child.close()
        if not self._pipe.poll(timeout):
            self.stop()
            raise WorkerFailed("the Twisted echo server did not start")
        self.port, self.pid = self._pipe.recv()

    def stop(self) -> None:
        try:
            self._pipe.send("stop")
        except (OSError, ValueError):
            pass
        self.process.join(5.0)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(2.0)
        self._pipe.close()


def _gateway_body_size(content_size: int, timeout_ms: int) -> int:
    """Body bytes of a GATEWAY_PUSH carrying that much content: the echo frames' size."""
    user = "bench-00000000-0-0"
    return len(GatewayPushMessage(user, 1, timeout_ms, stamp_content(0, 0, 0, content_size)).encode())


#: Body bytes of a typical FAST_CONNECT (a 32-character session id, a device
#: id, two heartbeats): the frame size of the connection floor.
FAST_CONNECT_FLOOR_BODY = 80


def run_floors(target: Target, settings: Settings) -> dict:
    count = settings.count_for("floors")
    rsa = rsa_floor(settings.private_key, settings.demo_key, count, settings.duration * 0.2)
    echo_rows = []
    idle = {}
    server = EchoServer()
    try:
        with _Run(target, settings) as run:
            for size in settings.sizes:
                body_size = max(_gateway_body_size(size, settings.push_timeout_ms), STAMP_SIZE)
                remaining = run.deadline - time.monotonic()
                stop_at = time.monotonic() + remaining / (len(settings.sizes) + 1)
                start = run.start_at()
                replies = run.pool.call(
                    "echo_run",
                    [{"port": server.port, "body_size": body_size, "count": n, "window": settings.window,
                      "start_at": start, "stop_at": stop_at}
                     for n in run.shares(count * ECHO_FRAMES_PER_COUNT)],
                    stop_at + run.slack,
                )
                echoed = sum(r["echoed"] for r in replies)
                active = [r for r in replies if r["sent"]]
                first = min((r["start_ns"] for r in active), default=0)
                last = max((r["last_ns"] for r in active), default=0)
                elapsed = (last - first) / 1e9 if last else None
                echo_rows.append({
                    "content_bytes": size,
                    "frame_bytes": body_size + 13,
                    "sent": sum(r["sent"] for r in replies),
                    "echoed": echoed,
                    "elapsed_s": round(elapsed, 3) if elapsed else None,
                    "per_s": stats.rate_per_s(echoed, elapsed),
                    "latency_ms": stats.summarize_ms(_merge_latencies(r["latencies"] for r in replies)),
                    "truncated": any(r["truncated"] for r in replies),
                    "lost": any(r["lost"] for r in replies),
                    "load_cpu_max_pct": _load_cpu(replies),
                })
            # A fast connect's frames: FAST_CONNECT in, FastConnectOk out.
            stop_at = time.monotonic() + (run.deadline - time.monotonic()) / 3
            cpu = _ServerCpu(server.pid)
            replies = run.pool.call(
                "connect_run",
                [{"port": server.port, "count": n, "concurrency": settings.concurrency,
                  "body_size": FAST_CONNECT_FLOOR_BODY, "start_at": run.start_at(), "stop_at": stop_at}
                 for n in run.shares(count)],
                stop_at + run.slack,
            )
            connects = {**_tally_result(replies, count), "frame_bytes": FAST_CONNECT_FLOOR_BODY + 13,
                        "server_cpu_pct": cpu.percent()}
            rss_before = stats.read_rss_kib(server.pid)
            held = run.pool.call(
                "hold",
                [{"port": server.port, "count": n, "concurrency": settings.concurrency, "stop_at": run.deadline}
                 for n in run.shares(count)],
                run.deadline + run.slack,
            )
            time.sleep(0.2)
            rss_after = stats.read_rss_kib(server.pid)
            opened = sum(r["done"] for r in held)
            idle = {
                "connections": opened,
                "failed": sum(r["failed"] for r in held),
                "rss_before_kib": rss_before,
                "rss_after_kib": rss_after,
                "rss_per_connection_kib": round((rss_after - rss_before) / opened, 2) if opened else None,
                "errors": _merge_errors(held),
            }
    finally:
        server.stop()
    result = {"scenario": "floors", "rsa_decrypt": rsa, "echo": echo_rows, "connect_twisted": connects,
              "idle_twisted": idle}
    result["errors"] = {**connects.get("errors", {}), **idle.get("errors", {})}
    result["ok"] = (not idle.get("failed") and not connects.get("failed")
                    and all(not row["lost"] and row["echoed"] == row["sent"] for row in echo_rows))
    return result


_RUNNERS = {
    "handshake": run_handshake,
    "fast-connect": run_fast_connect,
    "storm": run_storm,
    "push": run_push,
    "broadcast": run_broadcast,
    "idle": run_idle,
    "floors": run_floors,
}


def run_scenario(name: str, target: Target, settings: Settings) -> dict:
    """Run one scenario to completion and return its JSON-ready result."""
    try:
        runner = _RUNNERS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}") from None
    return runner(target, settings)
