"""What an evaluation runs, on which images, how (`EvalSettings`), and the checks of those settings."""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from advtrain.attacks import MAX_DISTANCE, Norm, check_distance, parse_norm
from advtrain.bounds import Bound, Ge, Gt, Le, Lt
from advtrain.errors import UserError
from advtrain.eval.batching import check_batch_setting
from advtrain.eval.inequality import INEQUALITY_EVALS, InequalityOptions
from advtrain.eval.invariance import INVARIANCE_EVALS, invariance_eps
from advtrain.eval.robustness import ATTACK_ALIASES, check_attack_names
from advtrain.eval.vulnerability import VULNERABILITY_EVALS, VULNERABILITY_SPLITS, first_eps
from advtrain.runtime import SEED_LIMIT

# The evaluations `--attacks` takes besides the robustness attacks ("analyses"; EvalSettings.inequality).
ANALYSIS_EVALS = (*INEQUALITY_EVALS, *VULNERABILITY_EVALS, *INVARIANCE_EVALS)


def split_attack_names(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(robustness attacks, other evaluations) from one `--attacks` list, blanks dropped.

    The other evaluations are the inequality ones (INEQUALITY_EVALS), `vulnerability` (VULNERABILITY_EVALS) and
    `invariance` (INVARIANCE_EVALS); they go to `EvalSettings.inequality`. One-line UserError, suggesting the
    closest valid name, for an unknown name or an empty list. An evaluation named twice runs once (its results
    are keyed by name).
    """
    names = [str(name).strip() for name in names if str(name).strip()]
    others = ANALYSIS_EVALS
    valid = [*ATTACK_ALIASES, *others]
    for name in names:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UserError(f"unknown attack {name!r}: {hint}choose from {', '.join(valid)}")
    if not names:
        raise UserError("no attack to run: pass e.g. --attacks clean,pgd (or gini,inductive_noise)")
    return [n for n in names if n in ATTACK_ALIASES], list(dict.fromkeys(n for n in names if n in others))


def cli_flag(keyword: str) -> str:
    """The `advtrain eval` flag that sets the EvalSettings field `keyword`: step_size → --step-size."""
    return "--" + keyword.replace("_", "-")


def python_keyword(keyword: str) -> str:
    """The field itself, as a Python caller of `advtrain.evaluate` wrote it."""
    return keyword


def check_eval_args(
    *,
    eps: Sequence[float],
    norm: str = "linf",
    n: int | None,
    steps: int,
    restarts: int,
    step_size: float | None,
    batch_size: int | str,
    seed: int,
    option: Callable[[str], str] = cli_flag,
) -> None:
    """One-line UserError for the first out-of-range setting, naming it as `option(keyword)` does: the
    `advtrain eval` flag by default, the Python keyword with `python_keyword`."""
    if not all(math.isfinite(e) for e in eps) or (step_size is not None and not math.isfinite(step_size)):
        raise UserError(f"{option('eps')} and {option('step_size')} must be finite numbers, got eps {list(eps)}, "
                        f"step size {step_size}")
    checks: list[tuple[Any, tuple[Bound, ...], str]] = [
        (n, (Ge(1), Lt(2**63)), "n"),
        (steps, (Ge(1),), "steps"),
        (restarts, (Ge(1),), "restarts"),
        (step_size, (Gt(0), Le(MAX_DISTANCE)), "step_size"),
        (seed, (Ge(0), Lt(SEED_LIMIT)), "seed"),
        *((e, (Ge(0), Le(MAX_DISTANCE)), "eps") for e in eps),
    ]
    for value, bounds, keyword in checks:
        for bound in bounds:
            bound.check(value, option(keyword))
    parsed = parse_norm(norm, option("norm"))
    for e in eps:
        check_distance(e, parsed, option("eps"))
    if step_size is not None:
        check_distance(step_size, parsed, option("step_size"))
    check_batch_setting(batch_size, option("batch_size"))


@dataclass(frozen=True)
class EvalSettings:
    """What `advtrain eval` runs, on which images, how: one value shared by single runs and --compare."""

    attacks: Sequence[str] = ("clean", "pgd")  # robustness attacks (ATTACK_ALIASES)
    eps: Sequence[float] = (8 / 255,)
    norm: Norm = "linf"
    steps: int = 20
    restarts: int = 1
    step_size: float | None = None
    n: int | None = None  # the first n test images; None: all
    # "auto": sized to the device's free memory once per model, before the first attack (eval.batching)
    batch_size: int | str = "auto"
    device: str = "auto"
    precision: str = "fp32"
    seed: int = 0
    # INEQUALITY_EVALS, run on the same images in fp32, and/or "vulnerability", "invariance" (ANALYSIS_EVALS)
    inequality: Sequence[str] = ()
    inequality_options: InequalityOptions | None = None
    vulnerability_split: str = "train"  # `vulnerability` runs on the first n images of this split

    @property
    def vulnerability(self) -> bool:
        return any(e in VULNERABILITY_EVALS for e in self.inequality)

    @property
    def invariance(self) -> bool:
        return any(e in INVARIANCE_EVALS for e in self.inequality)

    def check(self, option: Callable[[str], str] = cli_flag) -> None:
        """One-line UserError for an unknown name, nothing to run, or an out-of-range setting; `option` names the
        setting in the message (see `check_eval_args`)."""
        check_attack_names(self.attacks)
        others = ANALYSIS_EVALS
        unknown = [e for e in self.inequality if e not in others]
        if unknown:
            raise UserError(f"unknown inequality evaluation {unknown[0]!r}: choose from {', '.join(others)}")
        if self.vulnerability_split not in VULNERABILITY_SPLITS:
            raise UserError(f"--split {self.vulnerability_split!r}: choose from {', '.join(VULNERABILITY_SPLITS)}")
        if self.vulnerability:
            first_eps(self.eps)
        if self.invariance:
            invariance_eps(self.eps)
        if not self.attacks and not self.inequality:
            raise UserError("no attack to run: pass e.g. --attacks clean,pgd")
        check_eval_args(eps=self.eps, norm=self.norm, n=self.n, steps=self.steps, restarts=self.restarts,
                        step_size=self.step_size, batch_size=self.batch_size, seed=self.seed, option=option)

