"""Hypothesis settings for the model tests: modest and reproducible by default, longer with
VELOCITY_LONG_TESTS=1 (e.g. `VELOCITY_LONG_TESTS=1 pytest tests/model`)."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

LONG = os.environ.get("VELOCITY_LONG_TESTS") == "1"


def model_settings(examples: int, long_examples: int, **overrides: object) -> settings:
    """Derandomized (the same examples on every run, so CI is reproducible) with no example
    database, unless VELOCITY_LONG_TESTS=1 asks for a longer, randomized search. The normal
    run reports a failure as found (every step is printed); only the long run shrinks it,
    which against a database can take minutes."""
    phases = list(Phase) if LONG else [Phase.explicit, Phase.generate]
    return settings(
        max_examples=long_examples if LONG else examples,
        derandomize=not LONG,
        phases=phases,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much],
        **overrides,  # type: ignore[arg-type]
    )
