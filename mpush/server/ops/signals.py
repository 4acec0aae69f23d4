"""
The node's signal handlers: SIGHUP reloads, SIGTERM drains and exits 0.

twistd turns SIGTERM into C{stopService}, but then kills itself with
SIGTERM again, so the process never exits 0: L{install_sigterm} stops the
reactor instead, and a drained node exits 0.

A service installs them when it starts and removes them at the very end of
its stop (L{ProcessSignals}), never when it is built: building a node (a
test, a worker that fails to start) leaves the process's handlers alone.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

__all__ = ["InstalledSignal", "ProcessSignals", "install_sighup", "install_sigterm"]

log = Logger()

#: A Python signal handler.
Handler = Callable[[int, "FrameType | None"], Any]


class InstalledSignal:
    """
    A handler put in place by this module; L{uninstall} restores the one it
    replaced.  Uninstalled before its (delayed) install, it stays out.
    """

    __slots__ = ("signum", "handler", "previous", "installed", "withdrawn")

    def __init__(self, signum: int, handler: Handler) -> None:
        self.signum = signum
        self.handler = handler
        self.previous: Any = None
        self.installed = False
        self.withdrawn = False

    def install(self) -> None:
        if self.withdrawn:
            return
        self.previous = signal.signal(self.signum, self.handler)
        self.installed = True

    def uninstall(self) -> None:
        if self.installed:
            signal.signal(self.signum, self.previous if self.previous is not None else signal.SIG_DFL)
            self.installed = False
        else:
            self.withdrawn = True


def _run_reload(reload_callable: Callable[[], object]) -> None:
    log.info("SIGHUP: reloading the configuration")
    done = defer.maybeDeferred(reload_callable)
    done.addErrback(lambda failure: log.failure("reload failed", failure))


def install_sighup(reactor: Any, reload_callable: Callable[[], object]) -> InstalledSignal:
    """
    Run C{reload_callable()} in the reactor on each SIGHUP (which would
    otherwise kill the process).  Installed at once.

    @param reactor: an C{IReactorThreads} (C{callFromThread}).
    @return: the L{InstalledSignal}.
    """

    def on_sighup(signum: int, frame: FrameType | None) -> None:
        reactor.callFromThread(_run_reload, reload_callable)

    installed = InstalledSignal(signal.SIGHUP, on_sighup)
    installed.install()
    return installed


def _stop(reactor: Any) -> None:
    try:
        reactor.stop()
    except ReactorNotRunning:
        log.info("SIGTERM: already stopping")
        return
    log.info("SIGTERM: draining, then exiting")


def install_sigterm(reactor: Any) -> InstalledSignal:
    """
    Make SIGTERM stop the reactor (so services stop, and a node drains)
    without twistd's re-kill, so the process exits 0.  Installed once the
    reactor runs, after its own handlers.

    @param reactor: an C{IReactorCore} and C{IReactorThreads}.
    @return: the L{InstalledSignal}.
    """

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        reactor.callFromThread(_stop, reactor)

    installed = InstalledSignal(signal.SIGTERM, on_sigterm)
    reactor.callWhenRunning(installed.install)
    return installed


class ProcessSignals:
    """
    SIGTERM and SIGHUP of one process, for the service that owns the
    process (a node, or the supervisor of workers): L{install} from its
    C{startService}, L{uninstall} once its C{stopService} is done, so a
    second SIGTERM during a drain still finds its handler.

    @ivar reload: what SIGHUP runs.
    """

    def __init__(self, reactor: Any, reload: Callable[[], object]) -> None:
        self.reactor = reactor
        self.reload = reload
        self._installed: list[InstalledSignal] = []

    @property
    def installed(self) -> bool:
        return bool(self._installed)

    def install(self) -> None:
        if not self._installed:
            self._installed = [install_sigterm(self.reactor), install_sighup(self.reactor, self.reload)]

    def uninstall(self) -> None:
        installed, self._installed = self._installed, []
        for handler in reversed(installed):
            handler.uninstall()
