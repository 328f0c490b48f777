"""Resumable training state on disk: everything a resumed run needs to continue bit-identically.

A state is a nested tree (model, optimizer, schedule, method state, loop counters, RNG states) stored as
one ``.safetensors`` file for the tensors plus its JSON sidecar for the rest (the tree's skeleton, with
each tensor replaced by its name, and the sha256 of the tensor file). Nothing is ever unpickled, so a
state file received from someone else cannot run code.

Writing is two-phase: the tensor file is replaced atomically first, the sidecar second. The sidecar is
the commit mark: a state without one (a crash in between) is ignored, and a state whose sha256 does not
match is skipped in favour of the previous one. The two newest complete states are kept, so the last
good state survives while the next one is written.
"""

from __future__ import annotations

import contextlib
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from advtrain.checkpoint import load_weights, save_weights, sidecar_path
from advtrain.errors import UserError
from advtrain.runfiles import forget_files

STATES_KEPT = 2
_STATE_NAME = re.compile(r"^state-e(\d+)-b(\d+)\.safetensors$")


@dataclass(frozen=True, order=True)
class Position:
    """Where training continues: 0-based epoch and the next batch within it."""

    epoch: int
    batch: int

    def file_name(self) -> str:
        return f"state-e{self.epoch:04d}-b{self.batch:06d}.safetensors"


# --- a nested tree <-> (tensors, JSON skeleton) --------------------------------------------------------


def encode_tree(tree: Any) -> tuple[dict[str, Tensor], Any]:
    """Split ``tree`` into named tensors and a JSON-safe skeleton that :func:`decode_tree` reverses.

    Handles dicts (any hashable JSON-scalar keys, e.g. the optimizer's integer parameter ids), lists,
    tuples, tensors, numpy arrays, non-finite floats and JSON scalars.
    """
    tensors: dict[str, Tensor] = {}

    def walk(node: Any, path: str) -> Any:
        if isinstance(node, Tensor):
            name = path or "tensor"
            while name in tensors:  # keys containing "/" could collide; keep names unique
                name += "'"
            tensors[name] = node
            return {"__tensor__": name}
        if isinstance(node, np.ndarray):
            return {"__ndarray__": node.tolist(), "dtype": str(node.dtype)}
        if isinstance(node, np.generic):
            return walk(node.item(), path)
        if isinstance(node, float) and not math.isfinite(node):
            return {"__float__": repr(node)}
        if node is None or isinstance(node, bool | int | float | str):
            return node
        if isinstance(node, tuple):
            return {"__tuple__": [walk(v, f"{path}/{i}") for i, v in enumerate(node)]}
        if isinstance(node, list):
            return [walk(v, f"{path}/{i}") for i, v in enumerate(node)]
        if isinstance(node, dict):
            # Items as pairs keep non-string keys (int parameter ids) and cannot clash with the markers.
            return {"__dict__": [[walk(k, ""), walk(v, f"{path}/{k}".lstrip("/"))] for k, v in node.items()]}
        raise TypeError(f"cannot store a {type(node).__name__} in a training state (at {path or 'top'})")

    return tensors, walk(tree, "")


def decode_tree(skeleton: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(skeleton, list):
        return [decode_tree(v, tensors) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if "__ndarray__" in skeleton:
        return np.array(skeleton["__ndarray__"], dtype=skeleton["dtype"])
    if "__float__" in skeleton:
        return float(skeleton["__float__"])
    if "__tuple__" in skeleton:
        return tuple(decode_tree(v, tensors) for v in skeleton["__tuple__"])
    if "__dict__" in skeleton:
        return {decode_tree(k, tensors): decode_tree(v, tensors) for k, v in skeleton["__dict__"]}
    raise ValueError(f"unknown entry in a training state skeleton: {sorted(skeleton)}")


# --- RNG states ----------------------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """The global RNG states of Python, NumPy, torch CPU and every initialised CUDA device."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- state files ---------------------------------------------------------------------------------------


def save_state(directory: Path, position: Position, tree: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write ``tree`` as the state at ``position``, then drop all but the newest ``STATES_KEPT`` states."""
    tensors, skeleton = encode_tree(tree)
    path = directory / position.file_name()
    save_weights(path, tensors, {**meta, "kind": "train_state", "position": [position.epoch, position.batch],
                                 "skeleton": skeleton})
    for _, old in list_states(directory)[STATES_KEPT:]:
        _remove_state(old)
    return path


def list_states(directory: Path) -> list[tuple[Position, Path]]:
    """Complete states (tensor file and sidecar both present), newest first."""
    found = []
    for path in directory.glob("state-e*-b*.safetensors"):
        match = _STATE_NAME.match(path.name)
        if match and sidecar_path(path).is_file():
            found.append((Position(int(match[1]), int(match[2])), path))
    return sorted(found, reverse=True)


def load_newest_state(directory: Path, log: Any = print) -> tuple[dict[str, Any], dict[str, Any]]:
    """The newest intact state as ``(tree, sidecar)``; damaged newer states are reported and skipped."""
    states = list_states(directory)
    if not states:
        raise UserError(
            f"no resumable checkpoint in {directory} (the run was stopped before its first checkpoint): "
            "start it again with --overwrite"
        )
    problems = []
    for _, path in states:
        try:
            tensors, meta = load_weights(path)
            if meta.get("kind") != "train_state" or "skeleton" not in meta:
                raise UserError(f"{path} is not a training state (its sidecar has no skeleton)")
            return decode_tree(meta["skeleton"], tensors), meta
        except UserError as e:
            problems.append(str(e))
            log(f"skipping damaged checkpoint {path.name}: {e}")
    raise UserError(f"no intact checkpoint in {directory}: {problems[0]}")


def remove_incomplete_writes(directory: Path, log: Callable[[str], None] = print) -> None:
    """Delete what a killed writer left: temporary files and state tensors without a sidecar. A state without
    its sidecar is announced like any other damaged state: it may be the newest, and resuming falls back."""
    for tmp in directory.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
    removed = []
    for path in sorted(directory.glob("state-e*-b*.safetensors"), reverse=True):
        if not sidecar_path(path).is_file():
            log(f"skipping damaged checkpoint {path.name}: its sidecar {sidecar_path(path).name} is missing (its "
                "write was cut short, or the file was deleted), so it cannot be read; deleting it")
            with contextlib.suppress(OSError):
                path.unlink()
            removed.append(path)
    forget_files(removed)


def _remove_state(path: Path) -> None:
    # Sidecar (the commit mark) first, so a crash in between leaves an ignored file, never a bad state.
    for p in (sidecar_path(path), path):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    forget_files([sidecar_path(path), path])
