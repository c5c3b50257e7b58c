"""When to try again: the one place for backoff, retriable HTTP statuses and Retry-After.

Used by the article fetcher, the search-cluster client and the alert channels, so that all
three agree on what a server's answer means.
"""

from __future__ import annotations

import email.utils
import random
import time
from datetime import timezone


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds before retry number ``attempt`` (0-based): exponential up to ``cap``, half of it
    random, so clients retrying at once spread out."""
    delay = min(cap, base * 2**attempt)
    return delay / 2 + random.uniform(0, delay / 2)


def retriable_status(status: int) -> bool:
    """An HTTP status that trying again later can fix: timeout, too many requests, server errors."""
    return status in (408, 429) or status >= 500


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP-date; None if absent or unreadable."""
    value = (value or "").strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)  # HTTP-dates are GMT
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
