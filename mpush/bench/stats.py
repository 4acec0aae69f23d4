"""
The numbers mpush-bench reports and how it prints them: percentiles of
latency samples, rates, the server process's RSS and CPU read from /proc,
and a plain-text table.

Everything here is pure arithmetic or a single /proc read, so it is tested
without a server and shared by the workers and the coordinating process.
"""

from __future__ import annotations

import math
import os
from typing import Iterable, Sequence

__all__ = [
    "ProcessGone",
    "Column",
    "percentile",
    "summarize_ms",
    "rate_per_s",
    "read_rss_kib",
    "read_tree",
    "process_tree",
    "read_cpu_seconds",
    "check_process",
    "format_table",
]

#: The percentiles reported for every latency distribution.
REPORTED_PERCENTILES = (50, 90, 99)


class ProcessGone(OSError):
    """The --server-pid process does not exist or its /proc entry cannot be read."""


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """
    Nearest-rank percentile of already sorted values: the smallest value
    with at least q% of the samples at or below it.  No interpolation, so the
    answer is always a latency that was really observed.  None for no samples.
    """
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 <= q <= 100:
        raise ValueError(f"percentile must be a number in [0, 100], got {q!r}")
    n = len(sorted_values)
    if n == 0:
        return None
    if q == 0:
        return sorted_values[0]
    rank = math.ceil(q / 100.0 * n)
    return sorted_values[min(max(rank, 1), n) - 1]


def summarize_ms(samples_ns: Iterable[int]) -> dict | None:
    """
    p50/p90/p99/max/mean in milliseconds (3 decimals) of nanosecond samples,
    with the sample count; None when there are none.
    """
    values = sorted(samples_ns)
    if not values:
        return None
    summary = {"n": len(values)}
    for q in REPORTED_PERCENTILES:
        summary[f"p{q}"] = round(percentile(values, q) / 1e6, 3)
    summary["max"] = round(values[-1] / 1e6, 3)
    summary["mean"] = round(sum(values) / len(values) / 1e6, 3)
    return summary


def rate_per_s(count: int, elapsed_s: float | None) -> float | None:
    """Events per second, None when nothing can be said (no time elapsed)."""
    if elapsed_s is None or elapsed_s <= 0:
        return None
    return round(count / elapsed_s, 1)


# ------------------------------------------------------------ server process


def _proc_path(pid: int, name: str) -> str:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise ValueError(f"a process id must be a positive integer, got {pid!r}")
    return f"/proc/{pid}/{name}"


def _read_proc(pid: int, name: str) -> str:
    path = _proc_path(pid, name)
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read()
    except FileNotFoundError:
        raise ProcessGone(f"process {pid} does not exist (no {path})") from None
    except OSError as exc:
        raise ProcessGone(f"cannot read {path}: {exc.strerror or exc}") from None


def check_process(pid: int) -> None:
    """Raise ProcessGone unless RSS and CPU of `pid` can be read."""
    read_rss_kib(pid)
    read_cpu_seconds(pid)


def read_rss_kib(pid: int) -> int:
    """Resident set size (VmRSS) of a process, in KiB."""
    for line in _read_proc(pid, "status").splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            try:
                value = int(parts[1])
            except (IndexError, ValueError):
                break
            unit = parts[2].lower() if len(parts) > 2 else "kb"
            return value * 1024 if unit == "mb" else value
    raise ProcessGone(f"process {pid} reports no VmRSS (a zombie or a kernel thread?)")


def process_tree(pid: int) -> list[int]:
    """
    C{pid} and its live descendants (a supervisor and its workers), from
    /proc/<pid>/task/*/children; a child that exits meanwhile is skipped.
    """
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
            except (OSError, ValueError):
                continue
    return found


def read_tree(pid: int, read) -> float:
    """C{read(p)} summed over L{process_tree}: RSS or CPU of a node and its workers."""
    total = read(pid)
    for child in process_tree(pid)[1:]:
        try:
            total += read(child)
        except ProcessGone:
            continue
    return total


def read_cpu_seconds(pid: int) -> float:
    """
    User + system CPU time of a process (utime + stime of /proc/<pid>/stat).
    The fields are counted after the last ')' because the command name in
    parentheses may itself hold spaces and parentheses.
    """
    text = _read_proc(pid, "stat")
    close = text.rfind(")")
    fields = text[close + 1:].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
    try:
        ticks = int(fields[11]) + int(fields[12])
    except (IndexError, ValueError):
        raise ProcessGone(f"/proc/{pid}/stat has an unexpected format") from None
    return ticks / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------- table


class Column:
    """One table column: the row key, its heading and how to render a value."""

    __slots__ = ("key", "heading", "digits")

    def __init__(self, key: str, heading: str | None = None, digits: int | None = None) -> None:
        self.key = key
        self.heading = heading or key
        self.digits = digits

    def render(self, row: dict) -> str:
        value = row.get(self.key)
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            digits = 1 if self.digits is None else self.digits
            return f"{value:,.{digits}f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)


def format_table(title: str, columns: Sequence[Column], rows: Sequence[dict]) -> str:
    """
    A fixed-width text table: the title, a heading line, a rule and one line
    per row.  Text is left-aligned, numbers right-aligned; a missing value
    is '-'.
    """
    cells = [[column.render(row) for column in columns] for row in rows]
    widths = [
        max([len(column.heading)] + [len(line[i]) for line in cells])
        for i, column in enumerate(columns)
    ]
    numeric = [
        all(isinstance(row.get(column.key), (int, float)) or row.get(column.key) is None for row in rows)
        for column in columns
    ]

    def line(values: Sequence[str]) -> str:
        parts = []
        for value, width, is_number in zip(values, widths, numeric):
            parts.append(value.rjust(width) if is_number else value.ljust(width))
        return "  ".join(parts).rstrip()

    out = [title, line([column.heading for column in columns]), line(["-" * w for w in widths])]
    out.extend(line(values) for values in cells)
    return "\n".join(out)
