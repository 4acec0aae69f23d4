"""
The node's signal handlers: SIGHUP reloads, SIGTERM drains and exits 0.

twistd turns SIGTERM into C{stopService}, but then kills itself with
SIGTERM again, so the process never exits 0: L{install_sigterm} stops the
reactor instead, and a drained node exits 0.
"""

from __future__ import annotations

import signal

from twisted.internet import defer
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

__all__ = ["InstalledSignal", "install_sighup", "install_sigterm"]

log = Logger()


class InstalledSignal:
    """
    A handler put in place by this module; L{uninstall} restores the one it
    replaced.
    """

    __slots__ = ("signum", "handler", "previous", "installed")

    def __init__(self, signum, handler):
        self.signum = signum
        self.handler = handler
        self.previous = None
        self.installed = False

    def install(self):
        self.previous = signal.signal(self.signum, self.handler)
        self.installed = True

    def uninstall(self):
        if self.installed:
            signal.signal(self.signum, self.previous if self.previous is not None else signal.SIG_DFL)
            self.installed = False


def _run_reload(reload_callable):
    log.info("SIGHUP: reloading the configuration")
    done = defer.maybeDeferred(reload_callable)
    done.addErrback(lambda failure: log.failure("reload failed", failure))


def install_sighup(reactor, reload_callable):
    """
    Run C{reload_callable()} in the reactor on each SIGHUP (which would
    otherwise kill the process).  Installed at once.

    @return: the L{InstalledSignal}.
    """

    def on_sighup(signum, frame):
        reactor.callFromThread(_run_reload, reload_callable)

    installed = InstalledSignal(signal.SIGHUP, on_sighup)
    installed.install()
    return installed


def _stop(reactor):
    try:
        reactor.stop()
    except ReactorNotRunning:
        log.info("SIGTERM: already stopping")
        return
    log.info("SIGTERM: draining, then exiting")


def install_sigterm(reactor):
    """
    Make SIGTERM stop the reactor (so services stop, and a node drains)
    without twistd's re-kill, so the process exits 0.  Installed once the
    reactor runs, after its own handlers.

    @return: the L{InstalledSignal}.
    """

    def on_sigterm(signum, frame):
        reactor.callFromThread(_stop, reactor)

    installed = InstalledSignal(signal.SIGTERM, on_sigterm)
    reactor.callWhenRunning(installed.install)
    return installed
