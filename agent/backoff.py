"""Exponential backoff with jitter, shared by downloads, reconnects and dev-server restarts."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffPolicy:
    """Delays start at `initial`, grow by `factor` up to `maximum`, each spread by ±`jitter`."""

    initial: float = 0.5
    maximum: float = 10.0
    factor: float = 2.0
    jitter: float = 0.2


class Backoff:
    """The running state of one policy: `next()` gives the delay to wait, `reset()` starts over."""

    def __init__(self, policy: BackoffPolicy) -> None:
        self.policy = policy
        self._base = policy.initial

    def next(self) -> float:
        base = self._base
        self._base = min(self._base * self.policy.factor, self.policy.maximum)
        spread = base * self.policy.jitter
        return max(0.0, base + random.uniform(-spread, spread))

    def reset(self) -> None:
        self._base = self.policy.initial


DOWNLOAD_BACKOFF = BackoffPolicy(initial=0.5, maximum=8.0)
RECONNECT_BACKOFF = BackoffPolicy(initial=0.5, maximum=15.0)
RESTART_BACKOFF = BackoffPolicy(initial=0.5, maximum=10.0)
