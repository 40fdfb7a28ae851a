"""When to try a request again, and how long to wait first: one rule for every sender that retries (the job callbacks,
``korasr/serve/jobs/callbacks.py``, and the retraining's webhook, ``korasr/retrain.py``).

- Retried: a network error, a missed deadline, 408, 429 and 5xx. Any other answer (2xx taken, 3xx not followed, 4xx
  refused) ends the sending: the same request would get the same answer.
- The wait before retry ``n`` (1, 2, …) is drawn uniformly from 0 to ``base_s · 2^(n-1)``, capped at ``cap_s``
  ("full jitter"): callbacks that failed together (a receiver's outage) come back spread over the whole interval, not
  in lockstep, and never later than the plain exponential back-off would.
- A 429 or 503 with ``Retry-After`` (seconds, or an HTTP date) is honoured: the wait is that, plus the jittered
  back-off, so the retries it asked to postpone do not all land on the same second either. The sender decides what
  to do with a wait longer than its own deadline (give up, saying so): this module never sleeps.
- Nothing waits after the last try: the senders ask for a wait only before a retry."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

RETRY_AFTER_STATUS = frozenset({429, 503})  # the answers whose Retry-After asks to come back later
MAX_RETRY_AFTER_S = 86400.0  # a Retry-After beyond a day is read as a day (the senders give up long before)


def retried(status: int) -> bool:
    """Whether an answer with this status is worth another try: 408, 429 and 5xx."""
    return status in (408, 429) or 500 <= status < 600


def retry_after_s(status: int, value: str | None, now: float | None = None) -> float | None:
    """The wait a 429 or 503 asks for in its ``Retry-After`` header (delta-seconds or an HTTP date; a date in the past
    is 0), at most MAX_RETRY_AFTER_S; None for another status, no header, or one that is neither form."""
    if status not in RETRY_AFTER_STATUS or not value or len(value) > 100:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return min(max(when - (time.time() if now is None else now), 0.0), MAX_RETRY_AFTER_S)


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off with full jitter: before retry ``n``, a wait drawn from 0 to :meth:`ceiling_s`."""

    base_s: float = 1.0
    cap_s: float = 60.0

    def ceiling_s(self, retry: int) -> float:
        """The longest wait before retry ``retry`` (1 for the second try) when no Retry-After asks for more."""
        return min(self.base_s * 2 ** (retry - 1), self.cap_s)

    def wait_s(self, retry: int, asked_s: float | None = None, rng: random.Random | None = None) -> float:
        """The wait before retry ``retry``: jittered back-off, after the ``asked_s`` a Retry-After asked for."""
        jitter = (rng or random).uniform(0.0, self.ceiling_s(retry))
        return jitter if asked_s is None else asked_s + jitter

    def longest_waits_s(self, attempts: int) -> float:
        """The most ``attempts`` tries wait in all when no Retry-After asks for more."""
        return sum(self.ceiling_s(retry) for retry in range(1, attempts))
