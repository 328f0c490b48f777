"""Progress of long evaluations, reported through a hook: eval computes, the caller decides how to show it.

A hook is any callable taking a `ProgressEvent`. `evaluate_attacks` reports every attack chunk by chunk (and
AutoAttack's sub-attacks as each starts), the analyses report per stage; `advtrain.progress_display` renders the
events as a bar on a terminal or as plain lines in a log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    task: str  # what runs, e.g. "pgd eps 0.0314" or "inequality"
    done: int  # units finished so far in this task; a task starts with 0 and ends with done == total
    total: int
    unit: str = "images"  # what done/total count: images, or stages for analyses run stage by stage
    stage: str = ""  # the step inside the task running now, e.g. AutoAttack's "apgd-t"

    @property
    def finished(self) -> bool:
        return self.done >= self.total


ProgressHook = Callable[[ProgressEvent], None]


class TaskProgress:
    """Counts one task's finished units and reports each change to `hook` (does nothing without a hook)."""

    def __init__(self, hook: ProgressHook | None, task: str, total: int, unit: str = "images") -> None:
        self.hook, self.task, self.total, self.unit = hook, task, total, unit
        self.done, self.stage = 0, ""
        self._report()

    def start_stage(self, stage: str) -> None:
        """A step inside the task begins (nothing more finished yet)."""
        self.stage = stage
        self._report()

    def advance(self, units: int = 1) -> None:
        self.done += units
        self._report()

    def _report(self) -> None:
        if self.hook is not None:
            self.hook(ProgressEvent(self.task, self.done, self.total, self.unit, self.stage))


def labelled(hook: ProgressHook | None, label: str) -> ProgressHook | None:
    """`hook` with every task prefixed by `label` (one model of a group), or None without a hook."""
    if hook is None:
        return None
    return lambda event: hook(ProgressEvent(f"{label}: {event.task}", event.done, event.total, event.unit,
                                            event.stage))
