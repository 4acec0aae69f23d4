"""
The node's log level: C{[mpush] log-level} read from the config file, and a
gate in front of twistd's log observers that can change it at run time
(SIGHUP).
"""

from __future__ import annotations

import tomllib
from typing import Callable, Iterable

from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogPublisher,
    PredicateResult,
    globalLogPublisher,
)

from mpush import debug_log

__all__ = [
    "DEFAULT_LOG_LEVEL",
    "LogLevelError",
    "LogLevelGate",
    "parse_log_level",
    "read_log_level",
]

class LogLevelError(ValueError):
    """
    A log level that is not one of debug, info, warn, error, critical.
    """


_LEVELS = (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error, LogLevel.critical)
_LEVEL_NAMES = {
    "trace": LogLevel.debug,
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "fatal": LogLevel.critical,
    "critical": LogLevel.critical,
}


#: The level a node logs at when C{[mpush] log-level} is not set.
DEFAULT_LOG_LEVEL = LogLevel.info


def parse_log_level(name: object) -> LogLevel:
    """
    A L{LogLevel} from MPush's C{[mpush] log-level} words (log4j's, with
    "trace" as debug and "fatal" as critical), in any case.
    """
    if not isinstance(name, str):
        raise LogLevelError(f"[mpush] log-level: expected a string, got {type(name).__name__}")
    level = _LEVEL_NAMES.get(name.strip().lower())
    if level is None:
        raise LogLevelError(
            f"[mpush] log-level: expected one of debug, info, warn, error, critical; got {name!r}"
        )
    return level


def read_log_level(path: str | None) -> LogLevel:
    """
    The C{[mpush] log-level} of the TOML file at C{path} (the config schema
    accepts the key, this reads it); L{DEFAULT_LOG_LEVEL} when absent or no
    path.  Debug lines (one per handshake, fast connect and bind) cost a
    busy node a sixth of its CPU, so a node logs them only when asked.
    """
    if path is None:
        return DEFAULT_LOG_LEVEL
    with open(path, "rb") as config:
        data = tomllib.load(config)
    value = data.get("mpush", {}).get("log-level") if isinstance(data.get("mpush"), dict) else None
    return DEFAULT_LOG_LEVEL if value is None else parse_log_level(value)


class LogLevelGate:
    """
    Drops log events below a level that can change at run time.

    Installed on a publisher (twistd's global one by default), it moves the
    observers already there behind one filter, so what twistd writes to its
    log file is filtered.  Events without a level pass, unless one of the
    C{drop} predicates (chatter said better elsewhere) matches.
    """

    def __init__(self, level: LogLevel = LogLevel.debug, drop: Iterable[Callable[[dict], bool]] = ()) -> None:
        self.level = level
        self.drop = tuple(drop)
        self._publisher = None
        self._moved = ()
        self._filter = None

    @property
    def installed(self) -> bool:
        return self._publisher is not None

    def __call__(self, event: dict) -> PredicateResult:
        """
        The predicate: C{no} for an event below the level.
        """
        level = event.get("log_level")
        if level in _LEVELS and _LEVELS.index(level) < _LEVELS.index(self.level):
            return PredicateResult.no
        if any(drop(event) for drop in self.drop):
            return PredicateResult.no
        return PredicateResult.maybe

    def set_level(self, level: LogLevel) -> None:
        if level not in _LEVELS:
            raise LogLevelError(f"not a log level: {level!r}")
        self.level = level
        self._tell_hot_paths()

    def _tell_hot_paths(self) -> None:
        debug_log.set_wanted(self._publisher is None or self.level == LogLevel.debug)

    def install(self, publisher: LogPublisher | None = None) -> None:
        """
        Put the observers of C{publisher} behind this gate.

        @raise LogLevelError: C{publisher} is not a L{LogPublisher} whose
            observers can be moved.
        """
        if self._publisher is not None:
            return
        publisher = publisher if publisher is not None else globalLogPublisher
        observers = getattr(publisher, "_observers", None)
        if not isinstance(publisher, LogPublisher) or not isinstance(observers, list):
            raise LogLevelError(f"cannot filter {publisher!r}: not a LogPublisher")
        moved = tuple(observers)
        for observer in moved:
            publisher.removeObserver(observer)
        self._filter = FilteringLogObserver(LogPublisher(*moved), [self])
        publisher.addObserver(self._filter)
        self._publisher, self._moved = publisher, moved
        self._tell_hot_paths()

    def uninstall(self) -> None:
        """
        Give the publisher its observers back.
        """
        if self._publisher is None:
            return
        self._publisher.removeObserver(self._filter)
        for observer in self._moved:
            self._publisher.addObserver(observer)
        self._publisher, self._moved, self._filter = None, (), None
        self._tell_hot_paths()
