"""The training loop, top to bottom. It knows the `Method` contract and nothing about any method."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

import advtrain
from advtrain.checkpoint import save_weights
from advtrain.config import RunConfig, dump_yaml
from advtrain.data import Augment, Dataset, DeviceBatcher, augment_batch, load_dataset, split_validation, to_float
from advtrain.errors import UserError
from advtrain.eval.robustness import AttackSpec, evaluate
from advtrain.fileio import atomic_write_text
from advtrain.methods import Batch, EpochContext, StepContext, build_method
from advtrain.models.spec import ModelSpec
from advtrain.runtime import autocast_dtype, make_generator, resolve_device, seed_everything
from advtrain.train.schedule import LRSchedule, build_optimizer


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_value: float | None
    select_metric: str
    last: dict[str, Any]


def load_run_data(config: RunConfig) -> Dataset:
    return load_dataset(config.data.name, config.data.root, **config.data.options)


def prepare_run_dir(run_dir: Path) -> Path:
    """A new or empty folder; an existing run is never overwritten."""
    if (run_dir / "config.yaml").exists() or (run_dir / "metrics.jsonl").exists():
        raise UserError(f"{run_dir} already holds a run: choose a new --out folder (nothing was changed)")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir} exists and is not a folder: choose a new --out folder")
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    return run_dir


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def validate(
    model: nn.Module, x: Tensor, y: Tensor, config: RunConfig, amp: torch.dtype | None, seed: int
) -> tuple[float | None, float | None]:
    """Clean and PGD accuracy on the validation split (PGD-k, step ε/4, random start)."""
    if len(x) == 0:
        return None, None
    eps, steps = config.threat.eps, config.train.val_steps
    specs = [AttackSpec("clean")]
    if steps > 0:
        specs.append(AttackSpec("pgd", eps, config.threat.norm, steps, 1, eps / 4))
    results = evaluate(model, x, y, specs, batch_size=max(config.train.batch_size, 256), seed=seed, autocast_dtype=amp)
    return results[0].accuracy, (results[1].accuracy if steps > 0 else None)


def train(
    config: RunConfig, run_dir: Path, *, data: Dataset | None = None, log: Callable[[str], None] = print
) -> TrainResult:
    """Train `config` into `run_dir` (which must not hold a run yet); `data` skips a second load."""
    run_dir = prepare_run_dir(Path(run_dir))
    t = config.train
    if t.threads is not None:
        torch.set_num_threads(t.threads)
    seed_everything(config.seed)
    device = resolve_device(t.device)
    amp = autocast_dtype(t.precision, device)
    channels_last = device.type == "cuda" if t.channels_last is None else t.channels_last

    # Data: the validation split is carved from the training set, never from the test set.
    data = load_run_data(config) if data is None else data
    val_size = config.data.val_size
    train_idx, val_idx = split_validation(
        len(data.y_train), int(val_size) if val_size >= 1 else val_size, config.seed, labels=data.y_train
    )
    augment = Augment(crop_padding=config.data.crop_padding, flip=config.data.flip)
    batcher = DeviceBatcher(
        data.x_train[train_idx], data.y_train[train_idx], batch_size=t.batch_size, pixel_max=data.pixel_max,
        device=device, seed=config.seed, augment=augment,
    )
    x_val = to_float(data.x_train[val_idx], data.pixel_max)
    y_val = data.y_train[val_idx]
    if t.val_max is not None:
        x_val, y_val = x_val[: t.val_max], y_val[: t.val_max]
    x_val, y_val = x_val.to(device), y_val.to(device)

    # Model, method and optimizer. Extra method modules (AR-AT predictors) train with the model.
    spec = ModelSpec.for_dataset(config.model.name, data, config.model.normalize, config.model.options)
    model = spec.build().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    method = build_method(config.method, config.threat_model())
    extras = {name: module.to(device) for name, module in method.extra_modules().items()}
    params = list(model.parameters()) + [p for m in extras.values() for p in m.parameters()]
    optimizer = build_optimizer(params, config.optim)
    schedule = LRSchedule(config.schedule, config.optim.lr, t.epochs)
    select_metric = method.selection_metric if t.select_metric == "auto" else t.select_metric

    atomic_write_text(run_dir / "config.yaml", dump_yaml(config))
    sidecar = {
        "config_hash": config.digest(), "model": spec.to_dict(), "method": method.metadata(),
        "data": config.data.name, "threat": {"norm": config.threat.norm, "eps": config.threat.eps},
        "advtrain_version": advtrain.__version__, "torch_version": torch.__version__,
    }
    log(
        f"training {config.method.name} on {data.name} ({len(train_idx)} train / {len(y_val)} val images) "
        f"with {spec.name} on {device} ({'bf16' if amp else 'fp32'}) for {t.epochs} epochs → {run_dir}"
    )

    def sample_train(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = torch.randperm(len(batcher.y), generator=generator, device=device)[:n]
        x = batcher.x[idx]
        if augment.active:
            x = augment_batch(x, augment, generator)
        return to_float(x, data.pixel_max), batcher.y[idx]

    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp is not None else nullcontext
    steps_per_epoch = len(batcher)
    best_value, best_epoch, row = -math.inf, 0, {}
    for epoch in range(t.epochs):
        start = time.perf_counter()
        epoch_lr = schedule.lr_at(epoch)
        epoch_gen = make_generator(device, config.seed, "epoch", epoch)
        method.on_epoch_start(
            model,
            EpochContext(epoch, t.epochs, epoch_lr, config.optim.lr,
                         lambda n, g=epoch_gen: sample_train(n, g), epoch_gen),
        )
        model.train()
        sums: dict[str, Tensor] = {}
        seen = 0
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{t.epochs}", leave=False,
                   disable=True if t.progress != "bar" else None, dynamic_ncols=True)  # None: off when not a TTY
        for i, (x, y) in enumerate(batcher.epoch(epoch)):
            lr = schedule.lr_at(epoch + i / steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            ctx = StepContext(epoch, epoch * steps_per_epoch + i, make_generator(device, config.seed, "step", epoch, i))
            with autocast():
                out = method.loss(model, Batch(x, y), ctx)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            if out.after_step is not None:
                out.after_step()
            # Metrics stay on the device; they are read once per progress refresh and per epoch.
            for key, value in {"loss": out.loss.detach(), **out.metrics}.items():
                sums[key] = sums.get(key, 0) + value.float() * len(y)
            seen += len(y)
            bar.update(1)
            if t.progress == "bar" and (i % 10 == 0 or i == steps_per_epoch - 1):
                elapsed = time.perf_counter() - start
                bar.set_postfix(loss=f"{float(sums['loss']) / seen:.3f}",
                                acc=f"{float(sums.get('acc', 0)) / seen:.3f}", img_s=f"{seen / elapsed:.0f}")
        bar.close()
        train_seconds = time.perf_counter() - start
        averages = {key: float(value) / seen for key, value in sums.items()}
        val_clean, val_pgd = validate(model, x_val, y_val, config, amp, config.seed)
        schedule.end_epoch(averages["loss"])
        row = {
            "epoch": epoch + 1, "lr": epoch_lr,
            "train_loss": averages.pop("loss"), "train_acc": averages.pop("acc", None),
            "val_clean_acc": val_clean, "val_pgd_acc": val_pgd,
            "seconds": time.perf_counter() - start, "images_per_s": seen / train_seconds,
        } | {f"train_{key}": value for key, value in averages.items()}
        if not math.isfinite(row["train_loss"]):
            raise UserError(f"training loss became {row['train_loss']} in epoch {epoch + 1}: lower optim.lr")
        append_jsonl(run_dir / "metrics.jsonl", row)

        value = row.get(select_metric)
        checkpoint_meta = sidecar | {"epoch": epoch + 1, "metric": select_metric, "value": value}
        save_weights(run_dir / "checkpoints" / "last.safetensors", model.state_dict(), checkpoint_meta)
        # Without a validation split there is nothing to select on: best is then the last epoch.
        if value is None or value > best_value:
            best_value, best_epoch = (value if value is not None else -math.inf), epoch + 1
            save_weights(run_dir / "checkpoints" / "best.safetensors", model.state_dict(), checkpoint_meta)
        log(
            f"epoch {epoch + 1:>3}/{t.epochs}  lr {row['lr']:.4g}  loss {row['train_loss']:.4f}  "
            f"acc {_pct(row['train_acc'])}  val clean {_pct(val_clean)}  val PGD-{t.val_steps} {_pct(val_pgd)}  "
            f"{row['images_per_s']:.0f} img/s  {row['seconds']:.1f}s"
        )
    return TrainResult(run_dir, best_epoch, None if best_value == -math.inf else best_value, select_metric, row)


def _pct(x: float | None) -> str:
    return "  –  " if x is None else f"{100 * x:5.1f}%"
