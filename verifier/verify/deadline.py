"""Wall-clock budgets: one ``Deadline`` is created when a run starts and handed down to every stage.

Stages poll it between iterations (``check`` raises ``DeadlineReached``), so a run stops cleanly soon
after its budget; one long torch call still overruns it. The command line therefore also enforces the
deadline from outside: the work runs in a forked child that the parent kills (``worker``).
"""

from __future__ import annotations

import os
import time


class DeadlineReached(Exception):
    """The time budget of the current run is spent."""


class Deadline:
    """A point in ``time.monotonic()`` time; ``seconds=None`` or ``inf`` means no limit."""

    def __init__(self, seconds: float | None, start: float | None = None):
        self.start = time.monotonic() if start is None else start
        self.seconds = float("inf") if seconds is None else float(seconds)
        self.at = self.start + self.seconds

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def check(self) -> None:
        """Raise ``DeadlineReached`` once the budget is spent."""
        if self.expired():
            raise DeadlineReached(f"time budget of {self.seconds:g} s spent")

    def early(self, seconds: float) -> Deadline:
        """This deadline moved ``seconds`` earlier, with the same start (so ``elapsed`` agrees): for work
        that must report before a supervisor's deadline."""
        return Deadline(self.seconds - seconds, start=self.start)

    def sub(self, seconds: float) -> Deadline:
        """A deadline ``seconds`` from now, but never later than this one."""
        return Deadline(min(seconds, max(self.remaining(), 0.0)))


def process_age() -> float:
    """Seconds since this process started (Linux ``/proc``; 0.0 where unavailable).

    Lets a command-line run count interpreter start-up and imports (several seconds for torch) against
    its budget, as the competition harness does when it times the whole process.
    """
    try:
        with open("/proc/self/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return max(time.clock_gettime(time.CLOCK_BOOTTIME) - started, 0.0)
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0
