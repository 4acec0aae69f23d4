"""
A real, throw-away ZooKeeper server for tests.

Each server is a standalone ZooKeeper (Debian's C{zookeeper} package: its jars
under /usr/share/java and a Java runtime) on a free port of 127.0.0.1, with a
temporary data directory, no admin HTTP server and no JMX port, so tests never
touch a ZooKeeper that happens to run on the machine and can stop, kill,
restart or wipe it at will.  It counts as up once a kazoo client gets a
session from it (``ruok`` may be disabled).  Every wait has a deadline.

In CI (C{CI} set) a missing ZooKeeper is an error: C{.ci/run} installs it.
Elsewhere the tests are skipped with the install command.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError, SequentialThreadingHandler
from kazoo.retry import KazooRetry

__all__ = [
    "ZooKeeperServer",
    "ZooKeeperServerError",
    "find_zookeeper",
    "kazoo_client",
    "start_zookeeper_server",
]

_INSTALL = "apt-get install -y zookeeper"
_JAR = "/usr/share/java/zookeeper.jar"
_LOGGER_JAR = "/usr/share/java/slf4j-simple.jar"
_START_DEADLINE = 60.0
_STOP_DEADLINE = 15.0
_START_ATTEMPTS = 3


class ZooKeeperServerError(RuntimeError):
    """The test ZooKeeper is missing, would not start, or would not stop."""


def find_zookeeper() -> tuple[str, str]:
    """
    C{(java, classpath)} to run ZooKeeper.  Missing: an error in CI, a skip elsewhere.
    """
    java = shutil.which("java") or ("/usr/bin/java" if os.access("/usr/bin/java", os.X_OK) else None)
    if java is not None and os.path.isfile(_JAR):
        # zookeeper.jar's manifest names its dependencies; slf4j-simple gives a log to read.
        classpath = _JAR + (":" + _LOGGER_JAR if os.path.isfile(_LOGGER_JAR) else "")
        return java, classpath
    missing = "java" if java is None else _JAR
    if os.environ.get("CI"):
        raise ZooKeeperServerError(f"{missing} not found; .ci/run installs ZooKeeper ({_INSTALL})")
    raise unittest.SkipTest(f"ZooKeeper not installed ({missing} missing); install it with: {_INSTALL}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _quiet_logger() -> logging.Logger:
    # Outside logging's tree, so the reconnect chatter of test clients stays out of stderr.
    logger = logging.Logger("tests.zookeeper.kazoo", logging.CRITICAL)
    logger.addHandler(logging.NullHandler())
    return logger


def kazoo_client(address: str, **kwargs) -> KazooClient:
    """A quiet kazoo client that retries its connection quickly (for tests)."""
    handler = SequentialThreadingHandler()
    retry = KazooRetry(max_tries=-1, delay=0.05, backoff=2, max_delay=0.5, sleep_func=handler.sleep_func)
    kwargs.setdefault("timeout", 10.0)
    kwargs.setdefault("logger", _quiet_logger())
    return KazooClient(hosts=address, handler=handler, connection_retry=retry, **kwargs)


def _gets_session(port: int, timeout: float) -> bool:
    # A short session timeout bounds each attempt: a starting server may
    # accept a connection and answer it only once it is ready.
    client = kazoo_client(f"127.0.0.1:{port}", timeout=2.0)
    try:
        client.start(timeout=timeout)
    except KazooTimeoutError:
        return False
    try:
        client.get_children("/")
        return True
    finally:
        client.stop()
        client.close()


class ZooKeeperServer:
    """
    One standalone ZooKeeper subprocess.  C{port} is chosen at the first
    start (or given) and kept by L{restart}, so clients reconnect to it.

    @ivar tick_time: ZooKeeper's tick in ms; sessions may last 2 to 20 ticks.
    """

    def __init__(self, port: int | None = None, tick_time: int = 500) -> None:
        self.java, self.classpath = find_zookeeper()
        self.port = port
        self.tick_time = tick_time
        self._process: subprocess.Popen | None = None
        self._dir: str | None = None

    @property
    def address(self) -> str:
        """C{127.0.0.1:port}: C{[zk] server-address} for this server."""
        if self.port is None:
            raise ZooKeeperServerError("ZooKeeper has not been started and has no port yet")
        return f"127.0.0.1:{self.port}"

    def reserve_port(self) -> int:
        """Pick the port now, without starting (for a ZooKeeper that comes up later)."""
        if self.port is None:
            self.port = _free_port()
        return self.port

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> "ZooKeeperServer":
        """Start and wait until a client gets a session."""
        if self.running:
            raise ZooKeeperServerError("ZooKeeper is already running")
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="mpush-zk-")
        fixed_port = self.port is not None
        last_error = ""
        for _ in range(1 if fixed_port else _START_ATTEMPTS):
            port = self.port if fixed_port else _free_port()
            try:
                self._spawn(port)
            except ZooKeeperServerError as e:
                # Another process may have taken the free port in between.
                last_error = str(e)
                continue
            self.port = port
            return self
        raise ZooKeeperServerError(last_error)

    def _spawn(self, port: int) -> None:
        data_dir = os.path.join(self._dir, "data")
        os.makedirs(data_dir, exist_ok=True)
        config_path = os.path.join(self._dir, "zoo.cfg")
        with open(config_path, "w", encoding="utf-8") as f:
            f.write(
                f"tickTime={self.tick_time}\n"
                f"dataDir={data_dir}\n"
                f"clientPort={port}\n"
                "clientPortAddress=127.0.0.1\n"
                "maxClientCnxns=0\n"
                "admin.enableServer=false\n"
                "4lw.commands.whitelist=ruok\n"
                "forceSync=no\n"
                "preAllocSize=1024\n"
            )
        log_path = self._log_path
        args = [
            self.java,
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Djava.net.preferIPv4Stack=true",
            "-Dzookeeper.admin.enableServer=false",
            "-Dzookeeper.jmx.log4j.disable=true",
            f"-Dorg.slf4j.simpleLogger.logFile={log_path}",
            "-Dorg.slf4j.simpleLogger.defaultLogLevel=info",
            "-cp", self.classpath,
            "org.apache.zookeeper.server.ZooKeeperServerMain",
            config_path,
        ]
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(log_path + ".stderr", "ab"),
            start_new_session=True,
            cwd=self._dir,
        )
        deadline = time.monotonic() + _START_DEADLINE
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise ZooKeeperServerError(
                    f"ZooKeeper exited with {process.returncode} on port {port}: {self._log_tail()}"
                )
            if _accepts(port) and _gets_session(port, timeout=min(5.0, deadline - time.monotonic())):
                self._process = process
                return
            time.sleep(0.05)
        self._reap(process, signal.SIGKILL)
        raise ZooKeeperServerError(
            f"ZooKeeper on port {port} gave no session within {_START_DEADLINE:g} s: {self._log_tail()}"
        )

    @property
    def _log_path(self) -> str:
        return os.path.join(self._dir, "zookeeper.log")

    def _log_tail(self) -> str:
        lines = []
        for path in (self._log_path, self._log_path + ".stderr"):
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    lines += f.read().strip().splitlines()[-5:]
            except OSError:
                pass
        return " | ".join(lines) or "(no log)"

    @staticmethod
    def _reap(process: subprocess.Popen, sig: int) -> None:
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=_STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                process.kill()
                try:
                    process.wait(timeout=_STOP_DEADLINE)
                except subprocess.TimeoutExpired:
                    raise ZooKeeperServerError(f"ZooKeeper pid {process.pid} would not die") from None
        if process.stderr is not None:
            process.stderr.close()

    def _end(self, sig: int) -> None:
        process, self._process = self._process, None
        if process is not None:
            self._reap(process, sig)

    def kill(self) -> None:
        """SIGKILL: ZooKeeper dies at once.  Keeps the port and the data."""
        self._end(signal.SIGKILL)

    def wipe(self) -> None:
        """Delete the data (every session and znode) of a stopped server."""
        if self.running:
            raise ZooKeeperServerError("stop ZooKeeper before wiping its data")
        if self._dir is not None:
            shutil.rmtree(os.path.join(self._dir, "data"), ignore_errors=True)

    def restart(self, wipe: bool = False) -> "ZooKeeperServer":
        """
        Stop, optionally wipe the data (a replaced ensemble: every session
        is unknown to it), and start again on the same port.
        """
        self._end(signal.SIGTERM)
        if wipe:
            self.wipe()
        return self.start()

    def stop(self) -> None:
        """Stop (SIGTERM, then SIGKILL past the deadline) and remove the data dir."""
        try:
            self._end(signal.SIGTERM)
        finally:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    def __enter__(self) -> "ZooKeeperServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def start_zookeeper_server(test_case: unittest.TestCase, **kwargs) -> ZooKeeperServer:
    """
    Start a server for C{test_case} and stop it in its cleanup (registered
    first, so it runs after the cleanups that close clients).
    """
    server = ZooKeeperServer(**kwargs)
    test_case.addCleanup(server.stop)
    server.start()
    return server
