"""Finished parts of an evaluation kept on disk, so a killed evaluation resumes where it stopped.

A part is one attack on one chunk of `batch_size` test images (`advtrain.eval.robustness.evaluate_attacks`). Its result,
the per-example correctness, goes into its own small file as soon as it is known, named by a digest of
everything that decides it: the model's weights and buffers, the attack and its settings, the chunk's seed
(seed + chunk index), the chunk's images and labels, the precision and the device type. A rerun of the same
evaluation (one process or several under torchrun, any number of them) reads a part instead of attacking
again; anything that changes the result changes the name, so a part is never reused for another evaluation.
The folder is removed once the evaluation's JSON is written.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.fileio import atomic_write_bytes


def tensor_digest(tensors: list[tuple[str, Tensor]]) -> str:
    """sha256 over names, dtypes, shapes and bytes (in NCHW order whatever the memory layout)."""
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_digest(model: nn.Module) -> str:
    return tensor_digest(sorted(model.state_dict().items()))


class EvalParts:
    """The folder of an evaluation's finished parts. `reused` / `computed` count this process's parts."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.reused = 0
        self.computed = 0

    def key(self, model: str, chunk: str, spec: dict[str, Any], seed: int, setting: dict[str, Any]) -> str:
        """The part's name: digests of the model and the chunk (images, labels), the attack, the chunk's seed
        and the settings that change results (batch size, precision, device type)."""
        text = json.dumps({"model": model, "chunk": chunk, "spec": spec, "seed": seed, **setting}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:40]

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.pt"

    def load(self, key: str, size: int) -> Tensor | None:
        """The stored correctness of a part (bool, `size` examples), or None if it was not finished. A file that
        does not hold that (cut short outside `atomic_write_bytes`, or not ours) counts as not finished."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            correct = torch.load(path, weights_only=True)["correct"]
        except Exception:
            return None
        if not isinstance(correct, Tensor) or correct.dtype != torch.bool or correct.shape != (size,):
            return None
        self.reused += 1
        return correct

    def save(self, key: str, correct: Tensor) -> None:
        buffer = io.BytesIO()
        torch.save({"correct": correct.cpu(), "pid": os.getpid()}, buffer)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self._path(key), buffer.getvalue())
        self.computed += 1

    def remove(self) -> None:
        """Delete the folder (after the evaluation's JSON is written)."""
        shutil.rmtree(self.folder, ignore_errors=True)
