"""The per-epoch validation of the trained model (and of its weight averages) on a held-out split."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from advtrain.attacks.threat import Norm, training_step_size
from advtrain.distributed import Processes
from advtrain.eval.robustness import AttackSpec, evaluate_attacks


@dataclass
class Validator:
    """Clean and adversarial accuracy on (x, y): PGD-`steps` (step ε/4, random start; no attack when 0), or for
    `attack="ifgsm"` I-FGSM-3 (step ε/3, from x; SAT-R's model selection). Every call attacks with the same seed.
    Data-parallel (`procs`), each process attacks whole chunks of the split and the results are merged: the
    accuracies are exactly those of one process (`evaluate_attacks`)."""

    x: Tensor
    y: Tensor
    eps: float
    norm: Norm
    steps: int
    batch_size: int
    seed: int
    amp: torch.dtype | None = None
    attack: str = "pgd"
    procs: Processes = field(default_factory=Processes)

    def __call__(self, model: nn.Module) -> tuple[float | None, float | None]:
        if len(self.x) == 0:
            return None, None
        eps = self.eps
        specs = [AttackSpec("clean")]
        if self.attack == "ifgsm":
            specs.append(AttackSpec("ifgsm", eps, self.norm, 3, 1, eps / 3))
        elif self.steps > 0:
            specs.append(AttackSpec("pgd", eps, self.norm, self.steps, 1, training_step_size(eps)))
        results = evaluate_attacks(model, self.x, self.y, specs, batch_size=max(self.batch_size, 256), seed=self.seed,
                                   autocast_dtype=self.amp, procs=self.procs)
        return results[0].accuracy, (results[1].accuracy if len(results) > 1 else None)

    @property
    def label(self) -> str:
        """The adversarial column's name in the log line."""
        return "I-FGSM-3" if self.attack == "ifgsm" else f"PGD-{self.steps}"
