"""Retry decisions: whether a failed attempt is retried, and after how long."""

from __future__ import annotations

import random

from ..definition import RetryPolicy


def backoff_ms(policy: RetryPolicy, retry: int) -> int:
    """Milliseconds before retry number `retry + 1`: exponential, capped, with jitter."""
    ceiling = min(policy.backoff_max_ms, policy.backoff_initial_ms * 2 ** min(retry, 30))
    return int(ceiling / 2 + random.uniform(0, ceiling / 2))


def next_delay(policy: RetryPolicy, attempts: int, *, retriable: bool,
               retry_after_ms: int | None = None, retries: int | None = None) -> int | None:
    """After `attempts` failed attempts: milliseconds until the next one, or None when the
    failure is final (not retriable, or the retries are used up)."""
    if not retriable or attempts > (policy.retries if retries is None else retries):
        return None
    return retry_after_ms if retry_after_ms is not None else backoff_ms(policy, attempts - 1)
