"""Rate limits: a token bucket per API key name or client address, in each worker's memory.

Each bucket holds `burst` tokens and refills at `rate` per second; a request takes one, and a
request that finds none is refused with the seconds until one is back. Kept as the generic cell
rate algorithm: one float per name (when that bucket is full again), so a check is a dict
lookup and some arithmetic, and a name whose bucket is full again is dropped.

Per worker process, by choice: no shared store to ask on every request (a round trip to
PostgreSQL would cost more than scoring), and a worker's memory is where the requests are.
So the limits are per worker: a fleet of N worker processes lets a key or an address make up
to N times the rate, and the settings say "per worker".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.settings import Settings

_PRUNE_FLOOR = 1024  # names held before the first sweep of full buckets


class TokenBuckets:
    """One token bucket per name, all with the same rate and burst."""

    def __init__(self, rate: float, burst: int, now: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._interval = 1.0 / rate
        self._tolerance = burst * self._interval
        # name -> when its bucket is full again; a name absent has a full bucket
        self._full_at: dict[str, float] = {}
        self._now = now
        self._prune_above = _PRUNE_FLOOR

    def take(self, name: str) -> float:
        """Take a token from `name`'s bucket: 0.0, or (none taken) the seconds until one is back."""
        now = self._now()
        full_at = self._full_at.get(name, now)
        after = (full_at if full_at > now else now) + self._interval
        wait = after - now - self._tolerance
        if wait > 0:
            return wait
        self._full_at[name] = after
        if len(self._full_at) > self._prune_above:
            self._prune(now)
        return 0.0

    def wait(self, name: str) -> float:
        """The seconds until `name`'s bucket has a token (0.0: it has one), taking none."""
        full_at = self._full_at.get(name)
        if full_at is None:
            return 0.0
        now = self._now()
        return max(
            0.0, (full_at if full_at > now else now) + self._interval - now - self._tolerance
        )

    def __len__(self) -> int:
        return len(self._full_at)

    def _prune(self, now: float) -> None:
        # names whose bucket is full again are as good as absent: memory follows the names
        # active in the last burst/rate seconds, not every address ever seen
        self._full_at = {name: at for name, at in self._full_at.items() if at > now}
        self._prune_above = max(_PRUNE_FLOOR, 2 * len(self._full_at))


def retry_after(wait: float) -> int:
    """A Retry-After value for a wait in seconds: whole seconds, at least 1."""
    return max(1, math.ceil(wait))


@dataclass(frozen=True)
class RateLimits:
    """The buckets a worker keeps, each None when its setting is 0 (no limit)."""

    per_key: TokenBuckets | None = None
    per_address: TokenBuckets | None = None
    auth_failures: TokenBuckets | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimits:
        def buckets(rate: float, burst: int) -> TokenBuckets | None:
            return TokenBuckets(rate, burst) if rate > 0 else None

        return cls(
            per_key=buckets(settings.rate_limit_per_key, settings.rate_limit_per_key_burst),
            per_address=buckets(
                settings.rate_limit_per_address, settings.rate_limit_per_address_burst
            ),
            auth_failures=buckets(settings.auth_failures_per_address, settings.auth_failures_burst),
        )
