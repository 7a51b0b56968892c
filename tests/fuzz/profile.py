"""Hypothesis settings shared by the fuzz tests: a quick default run and a long one.

The default run tries ``FUZZ_EXAMPLES`` (200) inputs per target and keeps the whole directory
under half a minute. ``HYPOTHESIS_PROFILE=fuzz`` tries 20 000 per target (or
``EDGEFABRIC_FUZZ_EXAMPLES`` when set); add ``--hypothesis-show-statistics`` to see how many
inputs each target tried. Every example has a deadline, so a parser that hangs fails the test.
"""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, settings

__all__ = ["FUZZ", "LONG_RUN"]

LONG_RUN = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"
_EXAMPLES = int(os.environ.get("EDGEFABRIC_FUZZ_EXAMPLES", "20000" if LONG_RUN else "200"))

FUZZ = settings(
    max_examples=_EXAMPLES,
    deadline=timedelta(seconds=2),
    database=None,
    derandomize=not LONG_RUN,  # the default run is repeatable; the long run explores
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
