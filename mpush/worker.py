"""
One worker process of C{[cluster] workers = N}: C{python -m mpush.worker}.

Started by L{mpush.supervisor} (never by hand) as::

    python -m mpush.worker INDEX PARENT_PID [twistd mpush options...]

It runs the same node as C{twistd mpush}, with worker INDEX's configuration
(gateway and console ports + INDEX; the client, WebSocket and HTTP ports
shared through C{SO_REUSEPORT}), without twistd: the supervisor owns the
log file, the pid file and the signals systemd sends.

What it tells the supervisor goes to file descriptor 3, one JSON object a
line: C{{"ready": pid}} once it listens, then its log events as
C{{"level", "namespace", "text"}} (the supervisor writes them to its own log
with "worker-INDEX").  It stops (draining, as on SIGTERM) when its
supervisor goes away, however it goes: C{PR_SET_PDEATHSIG} sends it SIGTERM
on Linux, and a closed stdin (the supervisor's end of the pipe) does the
same everywhere.
"""

import ctypes
import ctypes.util
import json
import os
import signal
import sys

from twisted.logger import Logger, formatEvent, globalLogBeginner

log = Logger()

#: The descriptor the supervisor reads the worker's messages from.
REPORT_FD = 3
_PR_SET_PDEATHSIG = 1


class Reporter:
    """
    Writes one JSON object a line to the supervisor (blocking: a log line
    is never dropped, as with a log file on a slow disk).
    """

    def __init__(self, fd=REPORT_FD):
        self.fd = fd
        self.broken = False

    def send(self, message):
        if self.broken:
            return
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode("utf-8")
        try:
            while data:
                written = os.write(self.fd, data)
                data = data[written:]
        except OSError:
            # The supervisor is gone: the parent watch stops this process.
            self.broken = True

    def __call__(self, event):
        """
        A log observer.
        """
        try:
            text = formatEvent(event)
            failure = event.get("log_failure")
            if failure is not None:
                text += "\n" + failure.getTraceback()
            level = event.get("log_level")
            self.send(
                {
                    "level": level.name if level is not None else "info",
                    "namespace": event.get("log_namespace", "-"),
                    "text": text,
                }
            )
        except Exception:
            pass


def die_with_parent(parent_pid):
    """
    Ask Linux for SIGTERM when the supervisor dies; stop now if it already
    has.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the stdin watch below still stops this worker
    if os.getppid() != parent_pid:
        raise SystemExit(0)


class ParentWatch:
    """
    Reads stdin, the supervisor's end of a pipe that it never writes: end
    of file means the supervisor is gone, and the reactor stops (so the node
    drains and exits).
    """

    def __init__(self, reactor, fd=0):
        self.reactor = reactor
        self.fd = fd
        os.set_blocking(fd, False)

    def fileno(self):
        return self.fd

    def logPrefix(self):
        return "parent-watch"

    def doRead(self):
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            self.reactor.removeReader(self)
            log.warn("supervisor gone (stdin closed): stopping")
            self.reactor.callLater(0, self._stop)
        return None

    def _stop(self):
        if self.reactor.running:
            self.reactor.stop()

    def connectionLost(self, reason):
        pass


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2:
        sys.stderr.write("usage: python -m mpush.worker INDEX PARENT_PID [mpush options]\n")
        return 2
    index, parent_pid, rest = int(argv[0]), int(argv[1]), argv[2:]
    die_with_parent(parent_pid)
    reporter = Reporter()
    globalLogBeginner.beginLoggingTo([reporter], redirectStandardIO=False, discardBuffer=True)

    from mpush import tap

    options = tap.Options()
    options.worker_index = index
    try:
        options.parseOptions(rest)
    except SystemExit as error:
        sys.stderr.write(f"{error}\n")
        return 2
    from twisted.internet import reactor

    top = tap.makeService(options)
    try:
        top.privilegedStartService()
        top.startService()
    except Exception:
        log.failure("worker {index} could not start", index=index)
        return 1
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    reactor.addReader(ParentWatch(reactor))
    reactor.callWhenRunning(reporter.send, {"ready": os.getpid()})
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
