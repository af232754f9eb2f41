"""One retry policy for every HTTP connector: which statuses are retried, and how long apart."""

from __future__ import annotations

from httpx_retries import Retry

RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})
"""Statuses that may clear by themselves; every other 4xx is the request's fault."""


def retry_policy(retries: int, backoff: float, backoff_max: float) -> Retry:
    """``retries`` retries of a retryable status or a connection error, ``backoff`` s apart at
    first, doubling up to ``backoff_max``; a Retry-After header (seconds or date) wins."""
    return Retry(
        total=retries,
        allowed_methods=["GET", "POST"],
        status_forcelist=RETRYABLE,
        backoff_factor=backoff / 2,  # its first retry waits 2 * factor
        backoff_jitter=0.0,
        max_backoff_wait=max(backoff_max, 1e-3),
        respect_retry_after_header=True,
    )
