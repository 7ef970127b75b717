"""Settings shared by the property-based tests (hypothesis).

Examples are derandomised (the same ones on every run and machine) and few, so that each
property runs in seconds; ``deadline=None`` because the first example pays for imports and
JIT warm-up. Raise ``max_examples`` locally to search harder.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

PROPERTY = settings(
    max_examples=12,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
"""The settings of every property test of the suite."""
