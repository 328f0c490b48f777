"""`evaluate(model, x, y, attacks=..., eps=...)`: robust accuracy of any `nn.Module` on images in memory, the
Python face of `advtrain eval` (same attacks, same settings checks, same numbers, same table)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from advtrain.distributed import Processes
from advtrain.errors import InvalidValue, UserError
from advtrain.eval.batching import resolve_eval_batch
from advtrain.eval.labels import eval_rows, text_table
from advtrain.eval.parts import EvalParts
from advtrain.eval.progress import ProgressHook
from advtrain.eval.robustness import ATTACK_ALIASES, AttackResult, attack_specs, evaluate_attacks
from advtrain.eval.settings import EvalSettings, eval_settings, python_keyword, split_attack_names
from advtrain.runtime import autocast_dtype, evaluation_layout, resolve_device


def attack_model(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    settings: EvalSettings,
    *,
    on_result: Callable[[AttackResult], None] | None = None,
    procs: Processes | None = None,
    parts: EvalParts | None = None,
    progress: ProgressHook | None = None,
) -> tuple[EvalSettings, list[AttackResult]]:
    """The robustness attacks of `settings` on (x, y) (on the model's device): `settings` with the batch size
    that ran, and one result per attack. A batch size of "auto" is resolved once, before the first attack
    (`resolve_eval_batch`: under the attacks' precision, or in fp32 when analyses run too, as they take at
    least its memory), and under torchrun every process uses the smallest any of them resolved. On CUDA the
    attacks run in channels_last (`evaluation_layout`)."""
    procs = procs or Processes()
    amp = autocast_dtype(settings.precision, x.device)
    specs = attack_specs(settings.attacks, settings.eps, norm=settings.norm, steps=settings.steps,
                         restarts=settings.restarts, step_size=settings.step_size)
    batch = procs.min(resolve_eval_batch(model, x, y, len(y), settings.batch_size,
                                         None if settings.inequality else amp))
    settings = replace(settings, batch_size=batch)
    if not specs:
        return settings, []
    with evaluation_layout(model, x.device) as layout:
        x = x.contiguous(memory_format=layout) if x.dim() == 4 else x
        results = evaluate_attacks(model, x, y, specs, batch_size=batch, seed=settings.seed, autocast_dtype=amp,
                                   on_result=on_result, procs=procs, parts=parts, progress=progress)
    return settings, results


@dataclass(frozen=True)
class Evaluation:
    """What `evaluate` returns: one `AttackResult` per attack and ε (per-example correctness in `.correct`), and
    how they ran. `str()` is the table `advtrain eval` prints; `accuracy(attack, eps)` reads one number."""

    results: list[AttackResult]
    n: int
    batch_size: int
    device: str
    precision: str
    seed: int

    def rows(self) -> list[dict[str, object]]:
        """One dict per attack: its eval.json row (attack, eps, norm, steps, ..., accuracy)."""
        return [r.as_dict() for r in self.results]

    def accuracy(self, attack: str = "clean", eps: float | None = None) -> float:
        """The accuracy (a fraction) under `attack` (an eval.json name: clean, fgsm, pgd, ifgsm, cw, autoattack;
        "aa" and "apgd" are accepted as on the command line) at `eps` (needed when several ε ran)."""
        name, version = ATTACK_ALIASES.get(attack, (attack, None))
        found = [r for r in self.results if r.spec.attack == name and r.spec.version == version
                 and (eps is None or name == "clean" or r.spec.eps == eps)]
        if len(found) == 1:
            return found[0].accuracy
        ran = ", ".join(f"{r.spec.attack}@{r.spec.eps:g}" for r in self.results)
        which = "no result" if not found else "several results (pass eps=)"
        raise InvalidValue(f"{which} for attack {attack!r} at eps {eps}: this evaluation ran {ran}")

    def __str__(self) -> str:
        return text_table(["attack", "eps", "accuracy %"], eval_rows({"results": self.rows()}))


def _images(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """Float images in [0, 1] (uint8 pixels are divided by 255) and int64 labels; a ValueError naming the fix for
    anything else (float pixel ranges are checked by the attacks)."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise InvalidValue(f"x and y must be torch tensors, got {type(x).__name__} and {type(y).__name__}: "
                           "wrap arrays with torch.as_tensor")
    if y.dim() != 1 or y.is_floating_point() or y.dtype == torch.bool:
        raise InvalidValue(f"y must be a 1-D tensor of integer class labels, got {y.dtype} of shape "
                           f"{tuple(y.shape)}: pass the labels, not one-hot vectors or logits")
    if x.dim() < 2 or len(x) != len(y):
        raise InvalidValue(f"x must be a batch of images with one label in y each; got x of shape "
                           f"{tuple(x.shape)} and {len(y)} labels")
    if x.dtype == torch.uint8:
        x = x.float() / 255
    return x, y.long()


def evaluate(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    attacks: Sequence[str] = ("clean", "pgd"),
    eps: float | Sequence[float] = 8 / 255,
    norm: str = "linf",
    steps: int = 20,
    restarts: int = 1,
    step_size: float | None = None,
    n: int | None = None,
    batch_size: int | str = "auto",
    device: str = "auto",
    precision: str = "fp32",
    seed: int = 0,
    progress: ProgressHook | None = None,
) -> Evaluation:
    """Accuracy of `model` on the first `n` of (x, y) under each of `attacks` at each ε, as `advtrain eval` runs
    them: "clean", "fgsm", "pgd" (PGD-`steps`, random start, `restarts`), "ifgsm", "cw", "aa"/"autoattack" (the
    reference AutoAttack, standard version), "apgd" (its APGD-CE + APGD-T only).

    `x`: float images in [0, 1] or uint8 pixels (normalise by mean/std inside the model); `y`: class labels.
    `eps` and `step_size` are in [0, 1] pixel units (8/255, not 8); `step_size` defaults to 2.5·ε/steps. The
    model is moved to `device` ("auto": CUDA when available) and evaluated in eval mode; its train/eval mode is
    restored afterwards. Bad input is a one-line ValueError naming the fix, raised before any attack runs.
    `progress` hears each attack's images done, chunk by chunk (`advtrain.eval.progress`; e.g. an
    `advtrain.progress_display.ProgressDisplay`).
    """
    x, y = _images(x, y)
    eps_list = [eps] if isinstance(eps, int | float) else list(eps)
    try:
        robust, analyses = split_attack_names([attacks] if isinstance(attacks, str) else list(attacks))
        if analyses:
            raise UserError(f"evaluate runs robustness attacks; {', '.join(analyses)} run from `advtrain eval`")
        settings = eval_settings(python_keyword, attacks=robust, eps=eps_list, norm=norm, steps=steps,
                                 restarts=restarts, step_size=step_size, n=n, batch_size=batch_size, device=device,
                                 precision=precision, seed=seed)
        dev = resolve_device(device)
    except InvalidValue:
        raise
    except UserError as e:  # a ValueError to Python callers, with the CLI's one-line message
        raise InvalidValue(str(e)) from None
    model = model.to(dev)
    settings, results = attack_model(model, x[:n].to(dev), y[:n].to(dev), settings, progress=progress)
    amp = autocast_dtype(settings.precision, dev)
    return Evaluation(results, n=len(y[:n]), batch_size=int(settings.batch_size), device=str(dev),
                      precision="bf16" if amp is not None else "fp32", seed=seed)
