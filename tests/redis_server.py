"""
A real, throw-away redis-server for tests.

Every Redis test in the project runs against its own server on a free port of
127.0.0.1, without persistence, so tests never touch (or depend on) a Redis
that happens to run on the machine, and fault tests can stop, kill, pause
and restart it at will.  Every wait here has a deadline.

In CI (C{CI} set) a missing redis-server is an error: C{.ci/run} installs
it.  Elsewhere the tests are skipped with the install command.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

__all__ = [
    "RedisServer",
    "RedisServerError",
    "RedisServerMixin",
    "find_redis_server",
    "shared_redis_set",
    "sentinel_watch",
    "start_redis_server",
]

_INSTALL = "apt-get install -y redis-server"
_START_DEADLINE = 10.0
_STOP_DEADLINE = 10.0
_START_ATTEMPTS = 3


class RedisServerError(RuntimeError):
    """The test redis-server is missing, would not start, or would not stop."""


def find_redis_server() -> str:
    """
    The redis-server binary.  Missing: an error in CI, a skip elsewhere.
    """
    found = shutil.which("redis-server")
    if found is None and os.access("/usr/bin/redis-server", os.X_OK):
        found = "/usr/bin/redis-server"
    if found is not None:
        return found
    if os.environ.get("CI"):
        raise RedisServerError(
            f"redis-server not found on PATH or in /usr/bin; .ci/run installs it ({_INSTALL})"
        )
    raise unittest.SkipTest(f"redis-server not installed; install it with: {_INSTALL}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers_ping(port: int, timeout: float) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = b""
            while not reply.endswith(b"\r\n"):
                chunk = s.recv(64)
                if not chunk:
                    return False
                reply += chunk
            # A server started with --requirepass is up once it refuses us.
            return reply == b"+PONG\r\n" or reply.startswith(b"-NOAUTH")
    except OSError:
        return False


class RedisServer:
    """
    One redis-server subprocess.  C{port} is chosen at the first start and
    kept by L{restart}, so clients can reconnect to the same address.
    """

    def __init__(self, port: int | None = None, extra_args: tuple[str, ...] = (), config_text: str = "") -> None:
        self.binary = find_redis_server()
        self.port = port
        #: More redis-server options, e.g. C{("--requirepass", "secret")}.
        self.extra_args = tuple(extra_args)
        #: A config file's text, for what only a file may hold (a sentinel's
        #: C{sentinel monitor}, which it also rewrites).
        self.config_text = config_text
        self._process: subprocess.Popen | None = None
        self._dir: str | None = None
        self._paused = False

    @property
    def url(self) -> str:
        if self.port is None:
            raise RedisServerError("redis-server has not been started")
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> "RedisServer":
        """Start and wait until it answers PING."""
        if self.running:
            raise RedisServerError("redis-server is already running")
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="mpush-redis-")
        fixed_port = self.port is not None
        last_error = ""
        for _ in range(1 if fixed_port else _START_ATTEMPTS):
            port = self.port if fixed_port else _free_port()
            try:
                self._spawn(port)
            except RedisServerError as e:
                # Another process may have taken the free port in between.
                last_error = str(e)
                continue
            self.port = port
            return self
        raise RedisServerError(last_error)

    def _spawn(self, port: int) -> None:
        log_path = os.path.join(self._dir, "redis.log")
        config = []
        if self.config_text:
            config.append(os.path.join(self._dir, "redis.conf"))
            if not os.path.exists(config[0]):
                with open(config[0], "w") as written:
                    written.write(self.config_text)
        args = [
            self.binary,
            *config,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir,
            "--daemonize", "no",
            "--protected-mode", "no",
            "--logfile", log_path,
            *self.extra_args,
        ]
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + _START_DEADLINE
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RedisServerError(
                    f"redis-server exited with {process.returncode} on port {port}: "
                    f"{self._log_tail(log_path)}"
                )
            if _answers_ping(port, timeout=0.5):
                self._process = process
                self._paused = False
                return
            time.sleep(0.02)
        self._reap(process, signal.SIGKILL)
        raise RedisServerError(
            f"redis-server on port {port} did not answer PING within {_START_DEADLINE:g} s: "
            f"{self._log_tail(log_path)}"
        )

    @staticmethod
    def _log_tail(path: str) -> str:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return " | ".join(f.read().strip().splitlines()[-5:])
        except OSError:
            return "(no log)"

    def _reap(self, process: subprocess.Popen, sig: int) -> None:
        if process.poll() is None:
            if self._paused:
                process.send_signal(signal.SIGCONT)
            process.send_signal(sig)
            try:
                process.wait(timeout=_STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                process.kill()
                try:
                    process.wait(timeout=_STOP_DEADLINE)
                except subprocess.TimeoutExpired:
                    raise RedisServerError(
                        f"redis-server pid {process.pid} would not die"
                    ) from None
        self._paused = False

    def _end(self, sig: int) -> None:
        process, self._process = self._process, None
        if process is not None:
            self._reap(process, sig)

    def kill(self) -> None:
        """SIGKILL: the abrupt death fault tests want.  Keeps the port."""
        self._end(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is answered (a hung Redis)."""
        if not self.running:
            raise RedisServerError("redis-server is not running")
        self._process.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after L{pause}."""
        if self.running and self._paused:
            self._process.send_signal(signal.SIGCONT)
        self._paused = False

    def restart(self) -> "RedisServer":
        """Stop if running, then start again on the same port."""
        self._end(signal.SIGTERM)
        return self.start()

    def stop(self) -> None:
        """Stop (SIGTERM, then SIGKILL past the deadline) and remove the data dir."""
        try:
            self._end(signal.SIGTERM)
        finally:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def sentinel_watch(master_name: str, master_port: int, down_after_ms: int = 1000) -> str:
    """
    A sentinel's config: watch C{master_name} at C{master_port} with a
    quorum of 2, seen down after C{down_after_ms} of silence.
    """
    return (
        f"sentinel monitor {master_name} 127.0.0.1 {master_port} 2\n"
        f"sentinel down-after-milliseconds {master_name} {down_after_ms}\n"
        f"sentinel failover-timeout {master_name} 5000\n"
    )


def start_sentinel_set(test_case: unittest.TestCase, master_name: str = "mymaster", sentinels: int = 3):
    """
    A master, a replica and C{sentinels} sentinels (quorum 2, a master
    seen down after 1 s), each stopped in C{test_case}'s cleanup:
    C{(master, replica, [sentinel, ...])}.
    """
    master = start_redis_server(test_case)
    replica = start_redis_server(test_case, ("--replicaof", "127.0.0.1", str(master.port)))
    watch = sentinel_watch(master_name, master.port)
    started = []
    for _ in range(sentinels):
        sentinel = RedisServer(extra_args=("--sentinel",), config_text=watch)
        test_case.addCleanup(sentinel.stop)
        started.append(sentinel.start())
    return master, replica, started


_shared: dict[type, object] = {}


def shared_redis_set(kind: type):
    """
    One started C{kind()} (a Redis Cluster, a sentinel set: anything with
    C{start}, C{stop}, C{flush} and C{healthy}) for every test of this
    process that only reads and writes keys, since starting one takes
    seconds: emptied for each caller, made again if a test broke it,
    stopped when the process exits.
    """
    found = _shared.get(kind)
    if found is not None and not found.healthy:
        _shared.pop(kind).stop()
    if kind not in _shared:
        _shared[kind] = kind()
        try:
            _shared[kind].start()
        except BaseException:
            _shared.pop(kind).stop()
            raise
    _shared[kind].flush()
    return _shared[kind]


@atexit.register
def _stop_shared() -> None:
    while _shared:
        _shared.popitem()[1].stop()


def start_redis_server(test_case: unittest.TestCase, extra_args: tuple[str, ...] = ()) -> RedisServer:
    """
    Start a server for C{test_case} and stop it in its cleanup (registered
    first, so it runs after the cleanups that close clients).
    """
    server = RedisServer(extra_args=extra_args)
    test_case.addCleanup(server.stop)
    server.start()
    return server


class RedisServerMixin:
    """
    For trial TestCases: C{self.redis_server} is a running server during
    each test.  List it before the TestCase base class.
    """

    redis_server: RedisServer

    def setUp(self):
        result = super().setUp()
        self.redis_server = start_redis_server(self)
        return result
