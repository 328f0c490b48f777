"""What an audit spends: the number of images and the attack strengths of each evaluation, fixed per budget."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from advtrain.errors import UserError


@dataclass(frozen=True)
class Budget:
    """The sizes of one audit. Every number is stated on the card, so two cards compare only at equal budgets."""

    name: str
    n: int  # images for clean / PGD / AutoAttack accuracy
    pgd_steps: int
    pgd_restarts: int
    autoattack: str  # "apgd" (APGD-CE + APGD-T) or "standard" (the full reference AutoAttack)
    diagnose_n: int  # images for the gradient-masking checks
    diagnose_steps: tuple[int, ...]  # the PGD-steps curve of the pgd_steps check
    diagnose_restarts: int  # PGD-k with this many restarts against one start (restarts check)
    diagnose_restart_steps: int
    saliency_n: int  # images for saliency Gini, inductive noise / occlusion and the noise corruptions
    vulnerability_n: int  # images for the per-example vulnerability distribution
    vulnerability_steps: int  # PGD steps of the vulnerability and invariance attacks
    invariance_n: int
    bootstrap: int  # resamples of the bootstrap intervals

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"diagnose_steps": list(self.diagnose_steps)}


# quick: minutes on a CPU for a CIFAR-10 ResNet-18 (100 images: enough for a Wilson upper bound below 5% when
# none survives); standard: the sizes the papers report (up to 1000 images,
# the full AutoAttack, the diagnose suite's own defaults).
BUDGETS: dict[str, Budget] = {
    "quick": Budget("quick", n=100, pgd_steps=10, pgd_restarts=1, autoattack="apgd", diagnose_n=50,
                    diagnose_steps=(1, 3, 10, 20), diagnose_restarts=3, diagnose_restart_steps=20, saliency_n=50,
                    vulnerability_n=100, vulnerability_steps=10, invariance_n=50, bootstrap=1000),
    "standard": Budget("standard", n=1000, pgd_steps=50, pgd_restarts=1, autoattack="standard", diagnose_n=500,
                       diagnose_steps=(1, 3, 10, 20, 50, 100), diagnose_restarts=10, diagnose_restart_steps=50,
                       saliency_n=500, vulnerability_n=1000, vulnerability_steps=20, invariance_n=500,
                       bootstrap=2000),
}


def get_budget(name: str | Budget) -> Budget:
    """The named budget (a `Budget` passes through); a one-line UserError naming the choices otherwise."""
    if isinstance(name, Budget):
        return name
    if name not in BUDGETS:
        raise UserError(f"unknown audit budget {name!r}: choose from {', '.join(BUDGETS)}")
    return BUDGETS[name]
