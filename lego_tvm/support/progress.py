"""Where long work (tuning, benchmarks, compiles) reports how far it is.

A ``Progress`` is called with a line of text. On a terminal, inside ``bar(...)``, it shows
a tqdm bar (done out of total, rate, time left) with the latest line as its description;
elsewhere (a log file, CI) it prints the lines, and a bar prints a line at every tenth of
its total; ``quiet`` prints nothing.
"""
from __future__ import annotations

import sys
import time
from contextlib import contextmanager


class Progress:
    def __init__(self, quiet: bool = False, stream=None, lines=None):
        """``lines``: a callable that takes each line instead of ``stream`` (no bar then)."""
        self.stream = stream if stream is not None else sys.stderr
        self.quiet, self.lines = quiet, lines
        self.interactive = (not quiet and lines is None and hasattr(self.stream, "isatty")
                            and self.stream.isatty())
        self._bar = None

    def __call__(self, message: str) -> None:
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.set_description_str(message, refresh=True)
        elif self.lines is not None:
            self.lines(message)
        else:
            print(message, file=self.stream, flush=True)

    @contextmanager
    def bar(self, total: int | None, unit: str, what: str):
        """A bar of ``total`` ``unit``s (``None``: count up, with the time spent), yielding
        an object with ``update(n)`` and ``set_postfix_str(text)``."""
        if self.quiet:
            yield _NoBar()
            return
        if not self.interactive:
            yield _LineBar(total, unit, what, self)
            return
        from tqdm import tqdm

        with tqdm(total=total, unit=f" {unit}", desc=what, file=self.stream, leave=True,
                  dynamic_ncols=True, bar_format=None if total else
                  "{desc} [{elapsed}]{postfix}") as bar:
            self._bar = bar
            try:
                yield bar
            finally:
                self._bar = None


def as_progress(progress) -> Progress:
    """``progress`` if it is a ``Progress``; a plain callable (``print``, a logger method)
    receives the lines; ``None`` is quiet."""
    if isinstance(progress, Progress):
        return progress
    return Progress(quiet=progress is None, lines=progress)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        pass


class _LineBar(_NoBar):
    """A bar for a log: one line at each tenth of the total (or every 10 steps without one)."""

    def __init__(self, total, unit: str, what: str, progress: Progress):
        self.total, self.unit, self.what, self.progress = total, unit, what, progress
        self.n, self.postfix, self._printed = 0, "", 0
        self.start = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        step = max(1, self.total // 10) if self.total else 10
        if self.n // step > self._printed // step or (self.total and self.n >= self.total
                                                        and self._printed < self.total):
            self._printed = self.n
            of = f"/{self.total}" if self.total else ""
            spent = time.monotonic() - self.start
            left = (f", about {_duration(spent / self.n * (self.total - self.n))} left"
                    if self.total and self.n < self.total else "")
            self.progress(f"{self.what}: {self.n}{of} {self.unit}"
                          + (f", {self.postfix}" if self.postfix else "") + left)

    def set_postfix_str(self, text: str = "", refresh: bool = True) -> None:
        self.postfix = text


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"
