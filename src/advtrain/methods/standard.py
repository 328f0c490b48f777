"""`standard`: clean training, CE(z(x), y) (docs/methods.md §2); also the IGD teacher."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from advtrain.attacks import at_least_fp32
from advtrain.methods.base import Batch, Method, MethodConfig, StepContext, StepOutput, accuracy
from advtrain.methods.registry import register_method


@dataclass
class StandardConfig(MethodConfig):
    name: str = "standard"


@register_method
class Standard(Method):
    name = "standard"
    config_class = StandardConfig
    # The IGD recipe keeps the teacher's best-clean-accuracy checkpoint (docs/methods.md §3).
    selection_metric = "val_clean_acc"
    train_acc_inputs = "clean"

    def loss(self, model: nn.Module, batch: Batch, ctx: StepContext) -> StepOutput:
        logits = model(batch.x)
        loss = F.cross_entropy(at_least_fp32(logits), batch.y)
        return StepOutput(loss, {"acc": accuracy(logits, batch.y)})
