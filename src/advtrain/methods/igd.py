"""`igd` (Input Gradient Distillation; docs/methods.md §3): adversarial training plus alignment of the student's
input gradients with those of a frozen, standard-trained teacher.

    L = base loss(x, x', y) + λ · (1/B) Σᵢ [1 − cos(g(S, xᵢ), sg(g(T, xᵢ)))],   g(f, x) = ∇ₓ z_y(x)

- The base loss is PGD-AT's CE(z(x'), y) with x' = PGD-10 crafted with the student in `eval` mode (the
  IGD paper's setting), or TRADES's (`base.name: trades`, the paper's IGD + TRADES ablation).
- g(S, ·) is taken with `create_graph=True`, so the optimizer step differentiates through it (second-order
  training). It is taken in the mode the trainer set (train: batch statistics), as the loss's forward passes.
- The teacher is frozen: eval mode, no parameter gradients, never optimised or checkpointed with the
  student; its path and sha256 go into the run metadata and a resume refuses a changed teacher.
- Ablation options of §3: `point` (where the student gradient is taken: clean x or x'), `target` (the
  true-class logit or the CE loss), `distance` (1 − cos, or the squared L2 distance ‖g_S − g_T‖² per
  example), `abs` (compare |g| instead of signed gradients).
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks import ScoreTarget, ThreatModel, at_least_fp32, class_score_gradient
from advtrain.bounds import Ge
from advtrain.checkpoint import sha256_file
from advtrain.errors import UserError
from advtrain.methods.base import AdversarialMethod, Batch, MethodConfig, StepContext, StepOutput
from advtrain.methods.pgd_at import PGDATConfig
from advtrain.methods.registry import build_method, register_method
from advtrain.models.loading import load_checkpoint_model
from advtrain.models.spec import ModelSpec

Distance = Literal["cos", "l2"]
BASES = ("pgd_at", "trades")  # the base losses of the paper: PGD-AT, and TRADES in the ablation
COS_EPS = 1e-8  # docs/methods.md §3: cosine per sample with eps 1e-8


@dataclass
class IGDConfig(MethodConfig):
    name: str = "igd"
    # A run directory (its best checkpoint; a `standard` run keeps its best-clean-accuracy one), or a weights
    # file: .safetensors with its sidecar, or a .pt state_dict together with `teacher_model`. From Python also an
    # nn.Module (`IGD(teacher=net)`), frozen as a copy; it is then no field value (`teacher_module` holds it).
    teacher: str | None = None
    teacher_model: str | None = None  # architecture of a sidecar-less teacher file, e.g. resnet18
    lam: Annotated[float, Ge(0)] = 1.0  # the paper sweeps λ ∈ {1, 2, 3, 4} and keeps the one matching PGD-AT
    point: Literal["clean", "adv"] = "clean"  # where the student gradient is taken
    target: ScoreTarget = "logit"  # z_y (the paper), or the CE loss (ablation)
    distance: Distance = "cos"
    abs: bool = False  # compare |g| (ablation)
    # The adversarial loss the IGD term is added to; x' crafted in eval mode as in the IGD paper.
    base: MethodConfig = field(default_factory=lambda: PGDATConfig(bn_mode="eval"))

    def __post_init__(self) -> None:
        # From Python, `teacher` may be the teacher network itself: kept aside, so the config's fields (what YAML
        # files and run metadata hold) stay plain values.
        self.teacher_module: nn.Module | None = None
        if isinstance(self.teacher, nn.Module):
            self.teacher_module, self.teacher = self.teacher, None
        super().__post_init__()
        # Checked while the config loads, so a bad teacher fails before a run writes anything.
        if self.base.name not in BASES:
            raise UserError(f"method.base: igd adds its term to {' or '.join(BASES)}, got {self.base.name!r}")
        if self.teacher_module is not None:
            return
        if self.teacher is None:
            raise UserError(
                "method.teacher: igd needs a standard-trained teacher; train one with --set method.name=standard "
                "and pass --set method.teacher=RUN_DIR (or a checkpoint file)"
            )
        teacher_file(self.teacher)  # exists?
        if Path(self.teacher).suffix not in (".safetensors", "") and self.teacher_model is None:
            raise UserError(
                f"method.teacher_model: {self.teacher} has no sidecar naming its architecture; "
                f"pass --set method.teacher_model=NAME (e.g. resnet18)"
            )


def teacher_file(teacher: str) -> Path:
    """The weights file a `teacher` option names: a run directory's best checkpoint, or the file itself."""
    path = Path(teacher).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "best.safetensors"
    if not path.is_file():
        raise UserError(f"method.teacher: {path} not found: pass a run directory or a checkpoint file")
    return path


def tensors_sha256(tensors: dict[str, Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and values: a teacher module's identity across a resume."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def gradient_distance(student: Tensor, teacher: Tensor, distance: Distance, absolute: bool) -> Tensor:
    """Per-example distance between flattened input gradients: 1 − cos (eps 1e-8) or ‖g_S − g_T‖²."""
    s, t = at_least_fp32(student.flatten(1)), at_least_fp32(teacher.flatten(1))
    if absolute:
        s, t = s.abs(), t.abs()
    if distance == "cos":
        return 1 - F.cosine_similarity(s, t, dim=1, eps=COS_EPS)
    return (s - t).pow(2).sum(1)


@register_method
class IGD(AdversarialMethod):
    name = "igd"
    config_class = IGDConfig
    double_backprop = True
    config: IGDConfig

    def __init__(self, config: IGDConfig, threat: ThreatModel) -> None:
        super().__init__(config, threat)
        base = build_method(config.base, threat)
        assert isinstance(base, AdversarialMethod)  # BASES are adversarial methods
        self.base = base
        self._teacher: nn.Module | None = None
        self.teacher_path: Path | None = None
        if config.teacher_module is not None:
            self.teacher_sha256 = tensors_sha256(config.teacher_module.state_dict())
        else:
            self.teacher_path = teacher_file(config.teacher or "").resolve()
            self.teacher_sha256 = sha256_file(self.teacher_path)

    def prepare_model(self, model: nn.Module, example: Tensor) -> nn.Module:
        # The teacher is loaded now, so a wrong teacher file or architecture fails before the run folder is
        # touched; fork_rng: its throwaway initialisation must not shift the run's random stream.
        with torch.random.fork_rng(devices=[]):
            self.teacher(model, example)
        return model

    def teacher(self, student: nn.Module, like: Tensor) -> nn.Module:
        """The frozen teacher on `like`'s device, built on first use: a copy of the teacher module, or loaded from
        its file; a sidecar-less file takes its shape from the batch and its number of classes from the student's
        last linear layer."""
        if self._teacher is None:
            if self.config.teacher_module is not None:
                teacher = copy.deepcopy(self.config.teacher_module)  # the caller's module stays as it was
            else:
                assert self.teacher_path is not None  # set in __init__ when there is no teacher module
                spec = None
                if self.config.teacher_model is not None:
                    c, size = like.shape[1], like.shape[-1]
                    spec = ModelSpec(self.config.teacher_model, _num_classes(student), c, size)
                teacher = load_checkpoint_model(self.teacher_path, spec).model
            teacher.requires_grad_(False)
            self._teacher = teacher.eval().to(device=like.device, dtype=like.dtype)
        return self._teacher

    def perturb_with_metrics(self, model: nn.Module, batch: Batch, ctx: StepContext) -> tuple[Tensor, dict]:
        return self.base.perturb_with_metrics(model, batch, ctx)

    def perturb(self, model: nn.Module, batch: Batch, ctx: StepContext) -> Tensor:
        return self.base.perturb(model, batch, ctx)

    def objective(self, model: nn.Module, batch: Batch, x_adv: Tensor) -> StepOutput:
        out = self.base.objective(model, batch, x_adv)
        c = self.config
        point = batch.x if c.point == "clean" else x_adv
        g_student = class_score_gradient(model, point, batch.y, c.target, create_graph=True)
        teacher = self.teacher(model, batch.x)
        g_teacher = class_score_gradient(teacher, batch.x, batch.y, c.target, create_graph=False)
        term = gradient_distance(g_student, g_teacher, c.distance, c.abs).mean()
        metrics = out.metrics | {"igd": term.detach()}
        return StepOutput(out.loss + c.lam * term, metrics, out.after_step)

    def state_dict(self) -> dict[str, Any]:
        return {"teacher_sha256": self.teacher_sha256, "base": self.base.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["teacher_sha256"] != self.teacher_sha256:
            raise UserError(
                f"method.teacher: {self.teacher_path or 'the teacher module'} changed since this run started (sha256 "
                "differs); restore the original teacher to resume"
            )
        self.base.load_state_dict(state["base"])

    def metadata(self) -> dict[str, Any]:
        path = None if self.teacher_path is None else str(self.teacher_path)
        return super().metadata() | {"teacher_path": path, "teacher_sha256": self.teacher_sha256}


def _num_classes(model: nn.Module) -> int:
    """The student's number of classes, from its last linear layer (no forward pass: BN stays untouched)."""
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if last:
        return last[-1].out_features
    raise UserError("method.teacher_model: cannot tell the student's number of classes; use a sidecar checkpoint")
