"""Time budgets: every request must answer before API Gateway's 29 s integration limit cuts it off."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class LambdaContextLike(Protocol):
    def get_remaining_time_in_millis(self) -> int: ...


@dataclass(frozen=True)
class Deadline:
    """A point on the monotonic clock after which no more work may start."""

    expires_at: float
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(clock() + seconds, clock)

    @classmethod
    def from_context(
        cls,
        context: LambdaContextLike,
        *,
        cap_s: float,
        reserve_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> Deadline:
        """The budget of an invocation: the Lambda's remaining time, capped (API Gateway's limit), minus a reserve
        kept to build and return the answer."""
        remaining_s = context.get_remaining_time_in_millis() / 1000.0
        return cls.after(max(0.0, min(remaining_s, cap_s) - reserve_s), clock)

    def remaining(self) -> float:
        return max(0.0, self.expires_at - self.clock())

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def shortened_by(self, seconds: float) -> Deadline:
        """A sub-budget that leaves ``seconds`` for the work that follows."""
        return Deadline(self.expires_at - seconds, self.clock)
