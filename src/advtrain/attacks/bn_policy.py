"""How BatchNorm behaves while an attack crafts examples (docs/methods.md §0, "BN policy").

Papers differ: Madry/Rice/ISEAT/AR-AT attack in `train` mode (batch statistics, running statistics
updated), TRADES/IGD/SAT-R in `eval` mode (running statistics), and some code uses batch statistics
without touching the running ones (`train_frozen`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, get_args

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

BNMode = Literal["train", "eval", "train_frozen"]
BN_MODES: tuple[str, ...] = get_args(BNMode)


@contextmanager
def bn_policy(model: nn.Module, mode: BNMode) -> Iterator[nn.Module]:
    """Run the body with the model in `mode`; restore every submodule's flags afterwards."""
    if mode not in BN_MODES:
        raise ValueError(f"BN mode must be one of {BN_MODES}, got {mode!r}")
    saved = [(m, m.training) for m in model.modules()]
    frozen: list[_BatchNorm] = []
    model.train(mode != "eval")
    if mode == "train_frozen":
        # With track_running_stats off, a training-mode BN normalises with batch statistics and
        # neither reads nor writes its running buffers (nor num_batches_tracked).
        for m in model.modules():
            if isinstance(m, _BatchNorm) and m.track_running_stats:
                m.track_running_stats = False
                frozen.append(m)
    try:
        yield model
    finally:
        for m in frozen:
            m.track_running_stats = True
        for m, training in saved:
            m.training = training
