"""
C{[cluster] workers = N}: the process systemd runs supervises N workers.

With N > 1, C{twistd -n mpush} serves nothing itself.  Before any worker
starts it loads (or generates) the RSA key pair, so every worker reads the
same one.  Then it starts the workers (C{python -m mpush.worker}, see
L{mpush.worker}) and:

  - writes their log events to its own log, marked "worker-I";
  - restarts a worker that exits, after a delay that doubles while
    restarts keep failing (0.5 s up to 30 s) and is reset once a worker has
    run for a minute;
  - gives up, stopping the others and exiting 1, when a worker of the first
    start exits before it listens (a port in use, a bad certificate): a
    restart would fail the same way;
  - passes SIGHUP (reload) on to every worker;
  - on SIGTERM (or SIGINT) passes SIGTERM on (each worker drains), waits for
    every worker to exit (SIGKILL after the drain timeout and a grace) and
    exits: 0 when every worker drained cleanly, else 1.

The workers share the online-user list of the public IP (C{mp:oul:<ip>}):
each takes out only its own users when it starts and stops, and a worker
that died is cleaned up after by its restart, or by any node that notices
it gone (L{mpush.router.redis.RedisUserEvents}).

A worker stops by itself when its supervisor is gone, even SIGKILLed.
"""

import atexit
import json
import os
import signal
import sys

from twisted.application import service
from twisted.internet import defer, protocol
from twisted.logger import Logger, LogLevel

from mpush.config import ConfigError
from mpush.keys import load_key_material
from mpush.server.ops.signals import ProcessSignals

__all__ = ["WorkerSupervisor", "make_supervisor"]

log = Logger()

#: First restart delay, in seconds; it doubles while restarts keep failing.
RESTART_DELAY = 0.5
#: Longest restart delay, in seconds.
MAX_RESTART_DELAY = 30.0
#: A worker that ran this long resets the restart delay, in seconds.
STABLE_AFTER = 60.0
#: Seconds past the drain timeout before a worker that has not exited is killed
#: (a drain's own bounds past its deadline add up to 19 s at worst).
STOP_GRACE = 20.0


def _level(name):
    try:
        return LogLevel.levelWithName(name)
    except Exception:
        return LogLevel.info


class WorkerProtocol(protocol.ProcessProtocol):
    """
    One worker process as its supervisor sees it: its reports on fd 3, its
    stdout and stderr (stray prints, a crash), its end.
    """

    def __init__(self, supervisor, index):
        self.supervisor = supervisor
        self.index = index
        self.system = f"worker-{index}"
        self.pid = None
        self.ready = False
        self.started = supervisor.reactor.seconds()
        self.ended = defer.Deferred()
        self._buffers = {}

    def connectionMade(self):
        self.pid = self.transport.pid

    def childDataReceived(self, fd, data):
        buffered = self._buffers.get(fd, b"") + data
        *lines, rest = buffered.split(b"\n")
        self._buffers[fd] = rest
        for line in lines:
            self._line(fd, line)

    def _line(self, fd, line):
        text = line.decode("utf-8", errors="replace")
        if fd != 3:
            if text.strip():
                log.emit(LogLevel.warn, "{text}", text=text, log_system=f"{self.system} stdio")
            return
        try:
            message = json.loads(text)
        except ValueError:
            log.emit(LogLevel.warn, "{text}", text=text, log_system=self.system)
            return
        if "ready" in message:
            self.ready = True
            self.supervisor.worker_ready(self)
            return
        level = _level(message.get("level", "info"))
        log.emit(
            level,
            "{text}",
            text=message.get("text", ""),
            log_system=f"{self.system} {message.get('namespace', '-')}#{level.name}",
        )

    def childConnectionLost(self, fd):
        rest = self._buffers.pop(fd, b"")
        if rest:
            self._line(fd, rest)

    def processEnded(self, reason):
        code = getattr(reason.value, "exitCode", None)
        signum = getattr(reason.value, "signal", None)
        self.supervisor.worker_ended(self, code, signum)
        self.ended.callback((code, signum))


class WorkerSupervisor(service.Service):
    """
    Starts C{count} workers and keeps them running until stopped.

    @param command: the arguments of a worker after its index and our pid
        (the C{twistd mpush} options given to us).
    """

    name = "mpush-supervisor"

    def __init__(self, reactor, count, command, *, config, executable=None, env=None, stop_timeout=None):
        self.reactor = reactor
        self.count = count
        self.command = list(command)
        self.config = config
        self.executable = executable or sys.executable
        self.env = dict(os.environ if env is None else env)
        # Workers import this very mpush, wherever the supervisor found it.
        import mpush

        root = os.path.dirname(os.path.dirname(os.path.abspath(mpush.__file__)))
        path = self.env.get("PYTHONPATH")
        self.env["PYTHONPATH"] = root + (os.pathsep + path if path else "")
        drain = config.cluster.drain_timeout / 1000.0
        self.stop_timeout = stop_timeout if stop_timeout is not None else drain + STOP_GRACE
        self.workers = {}
        self.delays = {}
        self.pending = {}
        self.stopping = False
        self.failed = False
        self.exit_code = 0
        self._starting = True
        #: SIGTERM stops the workers, SIGHUP reloads them; installed on start.
        self.signals = ProcessSignals(reactor, self.reload)

    # -- starting ------------------------------------------------------------

    def startService(self):
        service.Service.startService(self)
        self.signals.install()
        log.info(
            "mpush supervisor starting {n} workers: client port {port} shared, gateways {first}-{last}",
            n=self.count,
            port=self.config.net.connect_server_port,
            first=self.config.net.gateway_server_port,
            last=self.config.net.gateway_server_port + self.count - 1,
        )
        self._start_all()

    def _start_all(self):
        if self.stopping:
            return
        for index in range(self.count):
            self.spawn(index)

    def spawn(self, index):
        self.pending.pop(index, None)
        if self.stopping:
            return None
        worker = WorkerProtocol(self, index)
        args = [self.executable, "-m", "mpush.worker", str(index), str(os.getpid())] + self.command
        self.reactor.spawnProcess(
            worker,
            self.executable,
            args,
            env=self.env,
            path=os.getcwd(),
            childFDs={0: "w", 1: "r", 2: "r", 3: "r"},
        )
        self.workers[index] = worker
        log.info("worker-{index} started, pid {pid}", index=index, pid=worker.pid)
        return worker

    def worker_ready(self, worker):
        log.info("worker-{index} (pid {pid}) is listening", index=worker.index, pid=worker.pid)
        if self._starting and all(w.ready for w in self.workers.values()) and len(self.workers) == self.count:
            self._starting = False
            log.info("all {n} workers are listening", n=self.count)

    def pids(self):
        """
        The pids of the workers running now, by index.
        """
        return {index: worker.pid for index, worker in self.workers.items() if worker.pid is not None}

    # -- a worker ends -------------------------------------------------------

    def worker_ended(self, worker, code, signum):
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        how = f"signal {signum}" if signum is not None else f"status {code}"
        if self.stopping:
            level = LogLevel.info if code == 0 else LogLevel.warn
            log.emit(level, "worker-{index} (pid {pid}) exited with {how}", index=worker.index, pid=worker.pid, how=how)
            if code != 0:
                self.exit_code = 1
            return
        if not worker.ready and self._starting:
            log.error(
                "worker-{index} (pid {pid}) exited with {how} before it listened; stopping "
                "(its log lines above say why)",
                index=worker.index,
                pid=worker.pid,
                how=how,
            )
            self.failed = True
            self.exit_code = 1
            self._stop_reactor()
            return
        ran = self.reactor.seconds() - worker.started
        if worker.ready and ran >= STABLE_AFTER:
            self.delays[worker.index] = RESTART_DELAY
        delay = self.delays.get(worker.index, RESTART_DELAY)
        self.delays[worker.index] = min(delay * 2, MAX_RESTART_DELAY)
        log.warn(
            "worker-{index} (pid {pid}) exited with {how} after {ran:.1f}s; restarting it in {delay}s",
            index=worker.index,
            pid=worker.pid,
            how=how,
            ran=ran,
            delay=delay,
        )
        self.pending[worker.index] = self.reactor.callLater(delay, self.spawn, worker.index)

    # -- signals -------------------------------------------------------------

    def signal_all(self, signum):
        for worker in list(self.workers.values()):
            try:
                worker.transport.signalProcess(signum)
            except Exception as error:  # already gone
                log.debug("worker-{index}: {why}", index=worker.index, why=error)

    def reload(self):
        log.info("SIGHUP: passing it on to {n} worker(s)", n=len(self.workers))
        self.signal_all(signal.SIGHUP)

    def _stop_reactor(self):
        if self.reactor.running:
            self.reactor.stop()
        else:
            self.reactor.callWhenRunning(self.reactor.stop)

    # -- stopping ------------------------------------------------------------

    @defer.inlineCallbacks
    def stopService(self):
        try:
            yield self._stop()
        finally:
            self.signals.uninstall()

    @defer.inlineCallbacks
    def _stop(self):
        service.Service.stopService(self)
        self.stopping = True
        for call in self.pending.values():
            if call.active():
                call.cancel()
        self.pending.clear()
        running = list(self.workers.values())
        if running:
            log.info("stopping {n} worker(s): each drains, then exits", n=len(running))
            self.signal_all(signal.SIGTERM)
            ended = defer.DeferredList([w.ended for w in running], consumeErrors=True)
            killer = self.reactor.callLater(self.stop_timeout, self._kill, running)
            yield ended
            if killer.active():
                killer.cancel()
        log.info("all workers have exited")
        if self.exit_code:
            _exit_with(self.exit_code)

    def _kill(self, workers):
        for worker in workers:
            if not worker.ended.called:
                log.warn(
                    "worker-{index} (pid {pid}) did not exit within {s}s: killing it",
                    index=worker.index,
                    pid=worker.pid,
                    s=self.stop_timeout,
                )
                self.exit_code = 1
                try:
                    worker.transport.signalProcess("KILL")
                except Exception:
                    pass


def _exit_with(code):
    """
    twistd exits 0 once its reactor stops; make it exit C{code}.
    """

    def leave():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)

    atexit.register(leave)


def make_supervisor(options, reactor):
    """
    The service of C{twistd mpush} with C{[cluster] workers} > 1.
    """
    config = options.config
    try:
        # Generated once, here, so the workers all read the same pair.
        load_key_material(config.security, config.state_dir)
        if config.tls.connect_server or config.tls.ws_server or config.tls.http_server:
            from mpush.tls import server_tls_options

            server_tls_options(config.tls)  # a bad certificate stops us now
    except ConfigError as error:
        raise SystemExit(f"mpush: {error.with_source(options['config'])}")
    from mpush.reuseport import reuseport_supported

    if not reuseport_supported():
        raise SystemExit("mpush: [cluster] workers > 1 needs SO_REUSEPORT, which this system lacks")
    return WorkerSupervisor(reactor, config.cluster.workers, options.command_line(), config=config)
