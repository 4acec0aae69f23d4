"""
What SIGHUP applies without a restart: C{[push]}, C{[limits]}, C{[bind]} and
the log level.  What cannot change at run time is named in the log and left
as it runs.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from twisted.logger import LogLevel, Logger

from mpush.config import Config, ConfigError
from mpush.server.device.bind_validator import load_bind_validator
from mpush.server.ops.log_gate import LogLevelError, LogLevelGate

if TYPE_CHECKING:
    from mpush.server.node import ServerNode

__all__ = ["RELOADABLE", "ReloadReport", "Reloader", "reload"]

log = Logger()


@dataclass(frozen=True, slots=True)
class ReloadReport:
    """
    What one reload did: settings applied, settings that changed in the
    file but need a restart, and what could not be applied (kept as it was).
    """

    applied: tuple[str, ...]
    needs_restart: tuple[str, ...]
    errors: tuple[str, ...]


#: Config tables a reload applies; every other change needs a restart.
RELOADABLE = ("push", "limits", "bind")


def _label(name: str) -> str:
    return "[mpush] state-dir" if name == "state_dir" else f"[{name}]"


def _changed_keys(old: object, new: object) -> list[str]:
    return [
        field.name.replace("_", "-")
        for field in dataclasses.fields(old)
        if getattr(old, field.name) != getattr(new, field.name)
    ]


def reload(
    node: ServerNode,
    new_config: Config,
    *,
    log_gate: LogLevelGate | None = None,
    log_level: LogLevel | None = None,
) -> ReloadReport:
    """
    Apply to C{node} what can change at run time, from C{new_config}:
    [push] flow-control limits, tag-match and default-timeout, [limits],
    the [bind] validator, and C{log_level} (a L{LogLevel}, through
    C{log_gate}).  Everything else that differs is logged as needing a
    restart and left as it runs.

    @return: a L{ReloadReport}.
    """
    if not isinstance(new_config, Config):
        raise TypeError(f"reload needs a Config, not {type(new_config).__name__}")
    old = node.config
    applied, restart, errors = [], [], []
    keep = {}
    for field in dataclasses.fields(old):
        name = field.name
        if name == "source" or name in RELOADABLE:
            continue
        if getattr(old, name) != getattr(new_config, name):
            restart.append(_label(name))
    if new_config.bind != old.bind:
        try:
            validator = load_bind_validator(new_config)
        except ConfigError as error:
            errors.append(str(error))
            keep["bind"] = old.bind
        else:
            if node.router_center is not None:
                node.router_center.validator = validator
            applied.append("[bind] " + ", ".join(_changed_keys(old.bind, new_config.bind)))
    limits = new_config.limits
    if limits != old.limits:
        node.limits.reconfigure(limits)
        applied.append("[limits] " + ", ".join(_changed_keys(old.limits, limits)))
        keep["limits"] = limits
    if new_config.push != old.push:
        push = new_config.push
        center = node.push_center
        if center is not None:
            flow = center.flow
            flow.limit, flow.duration, flow.total = push.global_limit, push.global_duration / 1000.0, push.global_max
        applied.append("[push] " + ", ".join(_changed_keys(old.push, push)))
    node.config = old.replace(
        push=new_config.push, bind=keep.get("bind", new_config.bind), limits=keep.get("limits", old.limits)
    )
    if log_level is not None:
        if log_gate is None:
            errors.append("[mpush] log-level: this node has no log level gate")
        elif log_level != log_gate.level:
            log_gate.set_level(log_level)
            if not log_gate.installed:
                try:
                    log_gate.install()
                except LogLevelError as error:
                    errors.append(str(error))
            applied.append(f"[mpush] log-level = {log_level.name}")
    report = ReloadReport(tuple(applied), tuple(restart), tuple(errors))
    _log_report(report)
    return report


def _log_report(report: ReloadReport) -> None:
    if report.applied:
        log.info("reload: applied {what}", what="; ".join(report.applied))
    else:
        log.info("reload: nothing to apply")
    for label in report.needs_restart:
        log.warn("reload: {what} changed; it takes effect after a restart", what=label)
    for error in report.errors:
        log.warn("reload: not applied, kept as it was: {error}", error=error)


class Reloader:
    """
    What SIGHUP runs: read the configuration again and L{reload} it.

    @param load: returns the new L{mpush.config.Config} (the file with the
        command line's overrides); may raise L{ConfigError}.
    @param log_level: returns the new L{LogLevel} or C{None}
        (e.g. C{lambda: read_log_level(path)}).
    """

    log = Logger()

    def __init__(
        self,
        node: ServerNode,
        load: Callable[[], Config],
        *,
        log_gate: LogLevelGate | None = None,
        log_level: Callable[[], LogLevel | None] | None = None,
    ) -> None:
        self.node = node
        self.load = load
        self.log_gate = log_gate
        self.log_level = log_level

    def __call__(self) -> ReloadReport | None:
        """
        @return: the L{ReloadReport}, or C{None} when the file was refused
            (the node keeps running on what it has).
        """
        try:
            config = self.load()
            level = self.log_level() if self.log_level is not None else None
        except (ConfigError, LogLevelError, OSError, tomllib.TOMLDecodeError) as error:
            self.log.warn("reload refused, running on the previous config: {error}", error=error)
            return None
        return reload(self.node, config, log_gate=self.log_gate, log_level=level)
