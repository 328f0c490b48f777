"""Show the progress of long jobs (`advtrain.eval.progress` events) on stderr, so that none runs silent.

On a terminal each task gets a tqdm bar; otherwise (a log file, a pipe) plain lines, each flushed, at most one
per half interval plus one as each stage starts, e.g.

    progress  pgd eps 0.2000: 128/360 images (36%), 41.2 images/s, ETA 6 s

A heartbeat repeats the running task's line whenever nothing was written for the interval (10 s, or
ADVTRAIN_PROGRESS_SECONDS), so a chunk or stage that takes minutes still shows that it runs.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TextIO

from tqdm import tqdm

from advtrain.errors import UserError
from advtrain.eval.progress import ProgressEvent, ProgressHook

INTERVAL_ENV = "ADVTRAIN_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 10.0
_HEARTBEAT_FLOOR = 1.0  # the heartbeat never repeats a line more often, even with an interval of 0


def progress_interval() -> float:
    """Seconds between plain progress lines: ADVTRAIN_PROGRESS_SECONDS (0: a line per event), default 10."""
    text = os.environ.get(INTERVAL_ENV)
    if text is None:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise UserError(f"{INTERVAL_ENV}={text!r} is not a number of seconds: set it to e.g. 10 (0: every chunk)")
    return value


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds} s" if seconds < 120 else f"{seconds // 60} min {seconds % 60:02d} s"


def progress_line(event: ProgressEvent, elapsed: float) -> str:
    """The plain line for `event` after `elapsed` seconds of its task: counts, and rate and ETA for images."""
    stage = f" [{event.stage}]" if event.stage else ""
    share = f" ({100 * event.done / event.total:.0f}%)" if event.total else ""
    line = f"progress  {event.task}{stage}: {event.done}/{event.total} {event.unit}{share}"
    if event.unit == "images" and event.done and not event.finished and elapsed > 0:  # stages vary too much
        rate = event.done / elapsed
        line += f", {rate:.1f} {event.unit}/s, ETA {_duration((event.total - event.done) / rate)}"
    return f"{line}, elapsed {_duration(elapsed)}"


class ProgressDisplay:
    """A progress hook: call it with events. Use it as a context manager, which runs the heartbeat.

    `bar`: tqdm bars (default: when `stream` is a terminal); `interval`: see `progress_interval`.
    """

    def __init__(self, stream: TextIO | None = None, *, interval: float | None = None,
                 bar: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interval = progress_interval() if interval is None else interval
        isatty = getattr(self.stream, "isatty", None)
        self.bar = bool(isatty and isatty()) if bar is None else bar
        self._lock = threading.Lock()
        self._event: ProgressEvent | None = None  # the running task's latest event; None between tasks
        self._started = self._last_line = time.monotonic()
        self._tqdm: tqdm | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def __enter__(self) -> ProgressDisplay:
        self._heartbeat = threading.Thread(target=self._beat, name="advtrain-progress", daemon=True)
        self._heartbeat.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
        with self._lock:
            self._close_bar()
            self._event = None

    def __call__(self, event: ProgressEvent) -> None:
        with self._lock:
            now = time.monotonic()
            previous = self._event
            new_task = previous is None or event.task != previous.task or event.done < previous.done
            if new_task:
                self._close_bar()
                self._started = now
            self._event = None if event.finished else event
            if self.bar:
                self._show_bar(event)
            elif (event.stage and (new_task or event.stage != previous.stage)) or (
                    now - self._last_line >= self.interval / 2 and (event.done or event.stage)):
                self._write_line(event, now)

    def _beat(self) -> None:
        while not self._stop.wait(min(_HEARTBEAT_FLOOR, max(self.interval, 0.1))):
            with self._lock:
                now = time.monotonic()
                if self._event is None:
                    continue
                if self._tqdm is not None:
                    self._tqdm.refresh()  # its elapsed time and rate move on
                elif not self.bar and now - self._last_line >= max(self.interval, _HEARTBEAT_FLOOR):
                    self._write_line(self._event, now)

    def _write_line(self, event: ProgressEvent, now: float) -> None:
        self.stream.write(progress_line(event, now - self._started) + "\n")
        self.stream.flush()
        self._last_line = now

    def _show_bar(self, event: ProgressEvent) -> None:
        if self._tqdm is None and not event.finished:
            self._tqdm = tqdm(total=event.total, desc=event.task, unit=event.unit, file=self.stream, leave=False,
                              dynamic_ncols=True)
        if self._tqdm is not None:
            self._tqdm.n = event.done
            self._tqdm.set_postfix_str(event.stage, refresh=False)
            self._tqdm.refresh()
        if event.finished:
            self._close_bar()

    def _close_bar(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None


@contextmanager
def shown_progress(enabled: bool = True) -> Iterator[ProgressHook | None]:
    """A running `ProgressDisplay` on stderr, or None (no progress) when not `enabled` (--quiet). A bad
    ADVTRAIN_PROGRESS_SECONDS is refused either way, so that every torchrun process refuses it alike."""
    interval = progress_interval()
    if not enabled:
        yield None
        return
    with ProgressDisplay(interval=interval) as display:
        yield display
