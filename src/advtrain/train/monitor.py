"""The catastrophic-overfitting (CO) monitor of docs/methods.md §7.7.

Single-step AT can collapse within an epoch: PGD accuracy falls to ~0 while FGSM accuracy stays high
(the model masks its gradient). The collapse is silent in the training loss, so the monitor measures
PGD-10 (random start, step ε/4) and FGSM accuracy on one fixed held-out batch and flags a reading when
PGD accuracy drops by more than `pgd_drop` since the previous reading or FGSM − PGD exceeds `fgsm_gap`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from advtrain.attacks.threat import training_step_size
from advtrain.config import MonitorConfig, ThreatConfig
from advtrain.eval.robustness import AttackSpec, evaluate_attacks


class CollapseMonitor:
    def __init__(self, config: MonitorConfig, threat: ThreatConfig, x: Tensor, y: Tensor, seed: int) -> None:
        self.config = config
        self.x, self.y = x[: config.size], y[: config.size]
        eps = threat.eps
        self.specs = [
            AttackSpec("pgd", eps, threat.norm, config.steps, 1, training_step_size(eps)),
            AttackSpec("fgsm", eps, threat.norm),
        ]
        self.seed = seed
        self.previous: float | None = None  # the last PGD reading (part of the resumable state)

    @property
    def active(self) -> bool:
        return self.config.enabled and len(self.y) > 0

    def read(self, model: nn.Module, amp: torch.dtype | None) -> dict[str, Any]:
        """PGD and FGSM accuracy on the fixed batch, their gap and the collapse flag; the model's mode is kept."""
        # The same seed every reading: the random starts are identical, so readings differ only by the model.
        pgd_result, fgsm_result = evaluate_attacks(model, self.x, self.y, self.specs, batch_size=len(self.y),
                                           seed=self.seed, autocast_dtype=amp)
        pgd_acc, fgsm_acc = pgd_result.accuracy, fgsm_result.accuracy
        gap = (fgsm_result.count - pgd_result.count) / len(self.y)  # from the counts: no rounding noise
        dropped = self.previous is not None and pgd_acc < self.previous - self.config.pgd_drop
        collapse = dropped or gap > self.config.fgsm_gap
        self.previous = pgd_acc
        return {"co_pgd_acc": pgd_acc, "co_fgsm_acc": fgsm_acc, "co_gap": gap, "co_collapse": collapse}

    def state_dict(self) -> dict[str, Any]:
        return {"previous": self.previous}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.previous = state["previous"]
