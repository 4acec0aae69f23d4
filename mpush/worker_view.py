"""
With C{[cluster] workers = N}, the shared HTTP port answers for the node.

The kernel hands each connection to the shared port to one worker, so
C{/metrics}, C{/healthz} and C{/v1/stats} would each describe a random 1/N
of the node.  Instead every worker publishes a report once a second — its
metrics exposition, its stats and its health — as a file in
C{<state-dir>/workers/}, and the worker that takes a request merges its own
live figures with its siblings' reports: node totals as the plain series,
and each worker's figures again under a C{worker} label (so a query for
the node selects C{worker=""}).  A sibling whose report is missing or
older than L{STALE_AFTER} makes C{/healthz} answer 503.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

__all__ = [
    "REPORT_INTERVAL",
    "STALE_AFTER",
    "NodeMetricsView",
    "NodeStatsView",
    "ReportPublisher",
    "WorkerReports",
    "merge_expositions",
    "merge_stats",
    "node_health",
]

#: Seconds between two reports of one worker.
REPORT_INTERVAL = 1.0
#: A report older than this many seconds is a worker that is not there.
STALE_AFTER = 5.0

#: Samples that do not add up across processes: the earliest or the largest.
_EARLIEST = ("process_start_time_seconds",)
_LARGEST = ("process_max_fds", "python_info")


class WorkerReports:
    """
    The reports of one box's workers, one JSON file each in C{directory}.

    @param index: this worker's number (0-based); C{count}: how many there are.
    @param clock: times the reports (wall-clock seconds: files are shared
        between processes).
    """

    def __init__(self, directory: str, index: int, count: int, clock) -> None:
        self.directory = directory
        self.index = index
        self.count = count
        self.clock = clock

    def _path(self, index: int) -> str:
        return os.path.join(self.directory, f"worker-{index}.json")

    def write(self, report: Mapping[str, Any]) -> None:
        """Replace this worker's report, atomically (a reader never sees half)."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        path = self._path(self.index)
        temporary = f"{path}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as out:
            json.dump({**report, "worker": self.index, "time": self.clock.seconds()}, out)
        os.replace(temporary, path)

    def siblings(self) -> dict[int, dict | str]:
        """
        Every other worker's report, or why there is none usable (missing,
        unreadable, stale).
        """
        now = self.clock.seconds()
        found: dict[int, dict | str] = {}
        for index in range(self.count):
            if index == self.index:
                continue
            try:
                with open(self._path(index), encoding="utf-8") as source:
                    report = json.load(source)
            except FileNotFoundError:
                found[index] = "no report"
                continue
            except (OSError, ValueError) as error:
                found[index] = f"unreadable report: {error}"
                continue
            age = now - report.get("time", 0)
            found[index] = report if age <= STALE_AFTER else f"no report for {age:.0f} s"
        return found


def _combine(name: str, values: list[float]) -> float:
    if name.endswith("_created") or name in _EARLIEST:
        return min(values)
    if name in _LARGEST:
        return max(values)
    return sum(values)


def merge_expositions(texts: Mapping[int, str]) -> bytes:
    """
    One exposition from each worker's (C{{worker: text}}): every sample
    combined across workers without a C{worker} label (summed; start times
    the earliest), then each worker's own with C{worker="<i>"}.
    """
    families: dict[str, Metric] = {}
    totals: dict[str, dict[tuple, tuple[str, dict, list[float]]]] = {}
    per_worker: dict[str, list[tuple[str, dict, float]]] = {}
    for worker in sorted(texts):
        for family in text_string_to_metric_families(texts[worker]):
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                totals[family.name] = {}
                per_worker[family.name] = []
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                entry = totals[family.name].setdefault(key, (sample.name, dict(sample.labels), []))
                entry[2].append(sample.value)
                per_worker[family.name].append(
                    (sample.name, {**sample.labels, "worker": str(worker)}, sample.value)
                )
    registry = CollectorRegistry(auto_describe=False)

    class _Merged:
        def collect(self):
            for name, metric in families.items():
                for sample_name, labels, values in totals[name].values():
                    metric.add_sample(sample_name, labels, _combine(sample_name, values))
                for sample_name, labels, value in per_worker[name]:
                    metric.add_sample(sample_name, labels, value)
                yield metric

    registry.register(_Merged())
    return generate_latest(registry)


class NodeMetricsView:
    """What the shared port's C{/metrics} renders: this worker's live
    registry merged with its siblings' reports."""

    def __init__(self, metrics, reports: WorkerReports) -> None:
        self.metrics = metrics
        self.reports = reports

    def render(self) -> tuple[bytes, str]:
        own, _ = self.metrics.render()
        texts = {self.reports.index: own.decode("utf-8")}
        for index, report in self.reports.siblings().items():
            if isinstance(report, dict) and isinstance(report.get("metrics"), str):
                texts[index] = report["metrics"]
        return merge_expositions(texts), CONTENT_TYPE_LATEST


def _add(total: object, value: object) -> object:
    if isinstance(total, dict) and isinstance(value, dict):
        return {key: _add(total.get(key, 0), value[key]) for key in {**total, **value}}
    if isinstance(total, (int, float)) and isinstance(value, (int, float)):
        return total + value
    return total


def merge_stats(own: dict, index: int, siblings: Mapping[int, dict | str]) -> dict:
    """C{/v1/stats} for the node: counts summed, and each worker's as it reported."""
    merged = dict(own)
    workers = [{"worker": index, **own}]
    for other, report in sorted(siblings.items()):
        stats = report.get("stats") if isinstance(report, dict) else None
        if not isinstance(stats, dict):
            workers.append({"worker": other, "unavailable": report if isinstance(report, str) else "no stats"})
            continue
        for key, value in stats.items():
            if key == "uptime_s":
                merged[key] = max(merged.get(key, 0), value)
            elif key != "node":
                merged[key] = _add(merged.get(key, 0), value)
        workers.append({"worker": other, **stats})
    merged["workers"] = workers
    return merged


class NodeStatsView:
    """The NodeAPI as the shared port's API sees it: C{stats()} for the node."""

    def __init__(self, api, reports: WorkerReports) -> None:
        self._api = api
        self._reports = reports

    def stats(self) -> dict:
        return merge_stats(self._api.stats(), self._reports.index, self._reports.siblings())

    def __getattr__(self, name):
        return getattr(self._api, name)


@defer.inlineCallbacks
def node_health(check: Callable[[], Any], reports: WorkerReports):
    """
    C{/healthz} for the node: this worker's C{check()} (raises when
    unhealthy), and every sibling reporting, fresh and healthy.
    """
    own = yield defer.maybeDeferred(check)
    workers = {str(reports.index): "ok"}
    connections = (own or {}).get("connections", 0)
    problems = []
    for index, report in sorted(reports.siblings().items()):
        if isinstance(report, str):
            workers[str(index)] = report
            problems.append(f"worker {index}: {report}")
            continue
        health = report.get("health") or {}
        if health.get("ok"):
            workers[str(index)] = "ok"
            connections += (health.get("detail") or {}).get("connections", 0)
        else:
            why = health.get("reason", "unhealthy")
            workers[str(index)] = why
            problems.append(f"worker {index}: {why}")
    if problems:
        raise RuntimeError("; ".join(problems))
    return {**(own or {}), "connections": connections, "workers": workers}


class ReportPublisher(service.Service):
    """
    Writes this worker's report every L{REPORT_INTERVAL}: its metrics, its
    stats and the result of its own health check.
    """

    log = Logger()

    def __init__(self, reports: WorkerReports, metrics, api, check: Callable[[], Any], clock) -> None:
        self.reports = reports
        self.metrics = metrics
        self.api = api
        self.check = check
        self._loop = task.LoopingCall(self.publish)
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._loop.start(REPORT_INTERVAL, now=True)

    def stopService(self):
        if self._loop.running:
            self._loop.stop()
        return super().stopService()

    @defer.inlineCallbacks
    def publish(self):
        try:
            detail = yield defer.maybeDeferred(self.check)
            health = {"ok": True, "detail": detail}
        except Exception as error:
            health = {"ok": False, "reason": f"{type(error).__name__}: {error}"}
        try:
            text, _ = self.metrics.render()
            self.reports.write({"metrics": text.decode("utf-8"), "stats": self.api.stats(), "health": health})
        except Exception as error:
            self.log.warn("worker report not written: {why}", why=error)
