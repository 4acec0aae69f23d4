"""
mpush's test suite (run with trial).

Hypothesis runs without per-example deadlines: these machines are shared and
noisy, and timing is measured by benchmarks, never asserted by tests.
"""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "mpush", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("mpush")
