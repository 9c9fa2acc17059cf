"""Progress of a run: a rich progress bar on a terminal, plain log lines otherwise.

A reporter sees every finished work unit (:class:`~cnnpipe.pipeline.worker.UnitResult`)
on the client; it never talks to workers.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Protocol

from cnnpipe.pipeline.worker import UnitResult

__all__ = ["LogReporter", "NullReporter", "Reporter", "RichReporter", "make_reporter"]

log = logging.getLogger("cnnpipe.run")


class Reporter(Protocol):
    """What the executor tells about progress."""

    def start(self, *, total: int, skipped: int) -> None:
        """The run starts: ``total`` units, ``skipped`` of them already done."""

    def advance(self, result: UnitResult) -> None:
        """One unit finished."""

    def close(self) -> None:
        """The run ended (successfully or not)."""


class NullReporter:
    """Reports nothing."""

    def start(self, *, total: int, skipped: int) -> None:
        """Ignore."""

    def advance(self, result: UnitResult) -> None:
        """Ignore."""

    def close(self) -> None:
        """Ignore."""


class _Rate:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.units = 0
        self.total = 0
        self.pixels = 0

    def add(self, result: UnitResult) -> None:
        self.units += 1
        self.pixels += result.pixels

    @property
    def mpix_s(self) -> float:
        return self.pixels / 1e6 / max(time.monotonic() - self.t0, 1e-9)

    @property
    def eta_s(self) -> float | None:
        if not self.units:
            return None
        el = time.monotonic() - self.t0
        return el / self.units * (self.total - self.units)


class LogReporter:
    """A log line every ``every_units`` units or ``every_s`` seconds, and at the end."""

    def __init__(self, *, every_s: float = 10.0, every_units: int = 100,
                 label: str = "") -> None:
        self.every_s = every_s
        self.every_units = every_units
        self.prefix = f"{label}: " if label else ""
        self.rate = _Rate()
        self._last = time.monotonic()
        self._since = 0

    def start(self, *, total: int, skipped: int) -> None:
        """Log the size of the run."""
        self.rate = _Rate()
        self.rate.total = total - skipped
        log.info("%swork units: %d to run, %d already done", self.prefix, total - skipped,
                 skipped)

    def advance(self, result: UnitResult) -> None:
        """Count a unit; log when a line is due."""
        self.rate.add(result)
        self._since += 1
        now = time.monotonic()
        if self._since >= self.every_units or now - self._last >= self.every_s:
            self._line()
            self._last, self._since = now, 0

    def _line(self) -> None:
        eta = self.rate.eta_s
        log.info(
            "%sunits %d/%d, %.2f Mpix/s, ETA %s", self.prefix, self.rate.units, self.rate.total,
            self.rate.mpix_s, "?" if eta is None else f"{eta:.0f} s",
        )

    def close(self) -> None:
        """Log the final count."""
        if self._since:
            self._line()


class RichReporter:
    """A rich progress bar: work units, Mpix/s and ETA."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("[bold]units"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:.2f} Mpix/s"), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(),
            console=console or Console(stderr=True), transient=False,
        )
        self.rate = _Rate()
        self.task: Any = None

    def start(self, *, total: int, skipped: int) -> None:
        """Show the bar."""
        self.rate = _Rate()
        self.progress.start()
        self.task = self.progress.add_task("run", total=total - skipped, rate=0.0)

    def advance(self, result: UnitResult) -> None:
        """Advance the bar by one unit."""
        self.rate.add(result)
        self.progress.update(self.task, advance=1, rate=self.rate.mpix_s)

    def close(self) -> None:
        """Stop the bar."""
        self.progress.stop()


def make_reporter(*, tty: bool | None = None, every_s: float = 10.0,
                  label: str = "") -> Reporter:
    """A :class:`RichReporter` on a terminal (stderr), a :class:`LogReporter` otherwise.

    ``label`` starts every log line (runs side by side: which one it is).
    """
    if tty is None:
        tty = sys.stderr.isatty()
    return RichReporter() if tty else LogReporter(every_s=every_s, label=label)
