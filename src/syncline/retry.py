"""Exponential backoff with full jitter, for transient failures."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass


@dataclass(slots=True)
class Backoff:
    """Delays of ``base * 2**n`` capped at ``cap`` seconds, each drawn uniformly below that."""

    base: float = 0.1
    cap: float = 30.0
    attempt: int = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0

    def sleep(self, stop: threading.Event) -> bool:
        """Wait the next delay; returns False if ``stop`` was set meanwhile."""
        return not stop.wait(self.next_delay())
