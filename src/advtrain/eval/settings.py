"""What an evaluation runs, on which images, how (`EvalSettings`): the `eval:` section of a run config and the
settings of `advtrain eval`, `advtrain.evaluate` and compare grids, checked when built."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from advtrain.attacks import MAX_DISTANCE, Norm, check_distance, parse_norm
from advtrain.bounds import NOT_IN_FILES, CheckedConfig, FieldError, Ge, Gt, Le, Lt, Parsed
from advtrain.errors import UserError
from advtrain.eval.inequality import INEQUALITY_EVALS, InequalityOptions
from advtrain.eval.invariance import INVARIANCE_EVALS, invariance_eps
from advtrain.eval.robustness import ATTACK_ALIASES, check_attack_names
from advtrain.eval.vulnerability import VULNERABILITY_EVALS, first_eps
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


@dataclass(frozen=True)
class EvalSettings(CheckedConfig):
    """What an evaluation runs, on which images, how: a run config's `eval:` section, and what `advtrain eval`,
    `advtrain.evaluate` and --compare run. Built only valid: a bad value is a one-line `FieldError` naming the
    field (`FieldError.renamed` names it as a flag or keyword instead)."""

    # robustness attacks (ATTACK_ALIASES)
    attacks: list[str] = field(default_factory=lambda: ["clean", "pgd"])
    # None: the threat model's ε (a run's threat.eps); checked as distances under `norm`
    eps: list[Annotated[float, Ge(0), Le(MAX_DISTANCE)]] | None = None
    steps: Annotated[int, Ge(1)] = 20
    restarts: Annotated[int, Ge(1)] = 1
    step_size: Annotated[float, Gt(0), Le(MAX_DISTANCE)] | None = None  # None: 2.5·ε/steps
    n: Annotated[int, Ge(1)] | None = None  # the first n test images; None: all
    checkpoint: Literal["best", "last", "ema", "swa"] = "best"  # of a run; ema/swa need its `averaging` section
    # "auto": sized to the device's free memory once per model, before the first attack (eval.batching)
    batch_size: Annotated[int, Ge(1)] | Literal["auto"] = "auto"
    # Set for each evaluation: a run config's `eval:` section does not take these, as its evaluation takes its
    # threat model's norm (RunConfig keeps `norm` in step with `threat.norm`), the device of `train.device`, its
    # seed and fp32 (advtrain.workflow), and no analyses.
    norm: Annotated[Norm, Parsed(parse_norm)] = field(default="linf", metadata=NOT_IN_FILES)
    device: str = field(default="auto", metadata=NOT_IN_FILES)
    precision: Literal["auto", "fp32", "bf16"] = field(default="fp32", metadata=NOT_IN_FILES)
    seed: Annotated[int, Ge(0), Lt(SEED_LIMIT)] = field(default=0, metadata=NOT_IN_FILES)
    # INEQUALITY_EVALS, run on the same images in fp32, and/or "vulnerability", "invariance" (ANALYSIS_EVALS)
    inequality: list[str] = field(default_factory=list, metadata=NOT_IN_FILES)
    inequality_options: InequalityOptions | None = field(default=None, metadata=NOT_IN_FILES)
    # `vulnerability` runs on the first n images of this split
    vulnerability_split: Literal["train", "test"] = field(default="train", metadata=NOT_IN_FILES)

    def __post_init__(self) -> None:
        super().__post_init__()
        with self._naming("attacks"):
            check_attack_names(self.attacks, "attacks")
            if not self.attacks and not self.inequality:
                raise UserError("attacks is empty: name at least one attack, e.g. [clean, pgd]")
        with self._naming("inequality"):
            unknown = [e for e in self.inequality if e not in ANALYSIS_EVALS]
            if unknown:
                raise UserError(f"inequality: unknown evaluation {unknown[0]!r}: choose from "
                                f"{', '.join(ANALYSIS_EVALS)}")
        # Distances in 0..255 pixel units (8) are refused under L∞, where they are unmistakable.
        with self._naming("eps"):
            for i, eps in enumerate(self.eps or ()):
                check_distance(eps, self.norm, f"eps[{i}]")
        with self._naming("step_size"):
            if self.step_size is not None:
                check_distance(self.step_size, self.norm, "step_size")
        if self.eps is not None and self.vulnerability:
            first_eps(self.eps)
        if self.eps is not None and self.invariance:
            invariance_eps(self.eps)

    @contextmanager
    def _naming(self, field_name: str) -> Iterator[None]:
        """Raise the UserError of a check on `field_name` as that field's FieldError."""
        try:
            yield
        except UserError as e:
            raise FieldError(str(e), type(self).__name__, field_name) from None

    def check_complete(self) -> None:
        """A one-line UserError unless every ε to run is set: `eps` None stands for a run's threat ε, which the run's
        evaluation fills in (advtrain.workflow)."""
        if self.eps is None:
            raise UserError("these evaluation settings have no eps: pass the radii, e.g. eps=[8/255]")

    @property
    def vulnerability(self) -> bool:
        return any(e in VULNERABILITY_EVALS for e in self.inequality)

    @property
    def invariance(self) -> bool:
        return any(e in INVARIANCE_EVALS for e in self.inequality)


def eval_settings(name: Callable[[str], str] = cli_flag, **fields: Any) -> EvalSettings:
    """`EvalSettings(**fields)`, a bad value named as `name(field)` does: the `advtrain eval` flag by default, the
    Python keyword with `python_keyword`."""
    try:
        return EvalSettings(**fields)
    except FieldError as e:
        raise e.renamed(name) from None
