"""
mpush-bench: a load tool for MPush-compatible servers on this machine.

It drives a server through its public ports only (connection port, gateway
port or the mpush HTTP API) with devices and pushers written on the sans-I/O
codec, from several processes so the load side is not what gets measured,
and only ever on loopback.  ``python -m mpush.bench --help`` lists the
scenarios; bench/README.md says what each one measures.
"""

from mpush.bench.scenarios import DEFAULT_COUNTS, SCENARIOS, Settings, Target, run_scenario
from mpush.bench.stats import percentile, summarize_ms
from mpush.bench.wire import BenchError, NotLoopback, loopback_address

__all__ = [
    "BenchError",
    "DEFAULT_COUNTS",
    "NotLoopback",
    "SCENARIOS",
    "Settings",
    "Target",
    "loopback_address",
    "percentile",
    "run_scenario",
    "summarize_ms",
]
