"""
Fuzzing mpush from the outside: L{mpush.fuzz.server} storms a running node
with hostile connections while honest devices keep using it, and reports
what the node lost.  C{python -m mpush.fuzz --help} runs it from a shell;
docs/FUZZING.md says how to run the long one and what it checks.

The codec's own property tests live in tests/test_fuzz_codec.py.
"""

from mpush.fuzz.server import (
    DEFAULT_ATTACKS,
    Attack,
    AttackPlan,
    FrameMaker,
    FuzzConfig,
    FuzzConfigError,
    FuzzReport,
    HonestReport,
    admin_count_connections,
    judge,
    plan_attacks,
    plan_digest,
    read_rss_kb,
    run_fuzz,
    scan_node_log,
)

__all__ = [
    "DEFAULT_ATTACKS",
    "Attack",
    "AttackPlan",
    "FrameMaker",
    "FuzzConfig",
    "FuzzConfigError",
    "FuzzReport",
    "HonestReport",
    "admin_count_connections",
    "judge",
    "plan_attacks",
    "plan_digest",
    "read_rss_kb",
    "run_fuzz",
    "scan_node_log",
]
