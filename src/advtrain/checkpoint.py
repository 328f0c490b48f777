"""Model weights on disk: atomic writes, safetensors with a checksummed JSON sidecar, safe .pt loading.

Weights are written with safetensors (no code can hide in them) and loaded from ``.pt``/``.pth`` only
through ``torch.load(..., weights_only=True)``, so opening a checkpoint never runs code from the file.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import pickle
import pickletools
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from advtrain.errors import UserError
from advtrain.fileio import atomic_write_bytes, atomic_write_text

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "load_state_into",
    "load_weights",
    "save_weights",
    "sha256_file",
    "sidecar_path",
]

SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".pt", ".pth")
ACCEPTED_SUFFIXES = (SAFETENSORS_SUFFIX, *TORCH_SUFFIXES)

# Entries under which common training scripts nest the state_dict inside a larger checkpoint dict.
_NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model")
_DATA_PARALLEL_PREFIX = "module."
# How many offending keys an error message names before it says "...".
_KEYS_SHOWN = 3
# torch.save's two formats: a zip archive (since PyTorch 1.6), or a pickle stream that starts with this number.
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
# The highest pickle protocol torch's weights-only unpickler reads (it lacks protocol 4's FRAME opcode).
_SAFE_PROTOCOL = 3


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of the file at ``path``, read in chunks so large checkpoints do not fill memory."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sidecar_path(weights_path: Path) -> Path:
    """The JSON sidecar that belongs to a weights file: same directory and stem, suffix ``.json``."""
    return Path(weights_path).with_suffix(".json")


def save_weights(path: Path, state_dict: Mapping[str, Tensor], metadata: Mapping[str, Any]) -> None:
    """Save ``state_dict`` to a ``.safetensors`` file plus a JSON sidecar with ``metadata``.

    Tensors are stored detached, on CPU and contiguous. The sidecar holds ``metadata`` plus ``"sha256"``
    of the weights file and ``"format": "safetensors"``. Both files are replaced atomically, weights
    first: a crash in between leaves new weights with the old sidecar, which :func:`load_weights`
    reports as a checksum mismatch instead of loading silently.
    """
    path = Path(path)
    if path.suffix.lower() != SAFETENSORS_SUFFIX:
        raise UserError(f"cannot save weights to {path}: use a file name ending in {SAFETENSORS_SUFFIX}")
    tensors = _tensors_for_safetensors(state_dict, path)
    data = safetensors_bytes(tensors, metadata={"format": "pt"})
    sidecar = {**dict(metadata), "sha256": hashlib.sha256(data).hexdigest(), "format": "safetensors"}
    try:
        # Serialise before touching the disk so bad metadata cannot leave weights without a sidecar.
        sidecar_text = json.dumps(sidecar, indent=2, sort_keys=True, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise UserError(
            f"metadata for {path} cannot be written as JSON ({e}); pass only str, int, finite float, bool, "
            "None, list and dict values"
        ) from None
    atomic_write_bytes(path, data)
    atomic_write_text(sidecar_path(path), sidecar_text)


def load_weights(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Load a state_dict from ``.safetensors`` (checked against its sidecar) or a plain ``.pt``/``.pth``.

    Returns ``(state_dict, metadata)``; metadata is the sidecar's content for safetensors files that have
    one and ``{}`` otherwise. Every problem with the file raises :class:`UserError`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ACCEPTED_SUFFIXES:
        raise UserError(
            f"cannot load weights from {path}: unsupported suffix {path.suffix or '(none)'!r}; "
            f"use one of {', '.join(ACCEPTED_SUFFIXES)}"
        )
    if not path.exists():
        raise UserError(f"weights file {path} does not exist; check the path")
    if not path.is_file():
        raise UserError(f"weights path {path} is not a file; pass the weights file itself")
    if suffix == SAFETENSORS_SUFFIX:
        return _load_safetensors(path)
    return _load_torch(path), {}


def load_state_into(model: nn.Module, state_dict: Mapping[str, Tensor], source: str) -> None:
    """Load ``state_dict`` into ``model`` strictly; any key or shape mismatch raises a one-line UserError."""
    model_name = type(model).__name__
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: file {list(v.shape)} vs model {list(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected
        and isinstance(v, Tensor)
        and isinstance(expected[k], Tensor)
        and v.shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{_count(len(missing), 'missing key')} ({_first_few(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_first_few(unexpected)})")
    if mismatched:
        problems.append(f"{_count(len(mismatched), 'shape mismatch', 'es')} ({_first_few(mismatched)})")
    if problems:
        raise UserError(
            f"{source} does not fit model {model_name}: {', '.join(problems)}; "
            "check that the weights were trained for this architecture and number of classes"
        )
    try:
        model.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as e:
        # Anything left after the checks above (e.g. a module's own load hook refusing) still gets one line.
        raise UserError(f"{source} does not fit model {model_name}: {_one_line(e)}") from None


# --- helpers -------------------------------------------------------------------------------------------


def _tensors_for_safetensors(state_dict: Mapping[str, Tensor], path: Path) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = {}
    seen_storages: set[int] = set()
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise UserError(
                f"cannot save {path}: entry {key!r} is a {type(value).__name__}, not a tensor; "
                "pass model.state_dict() (tensors only)"
            )
        # channels_last conv weights are not contiguous and safetensors refuses those.
        t = value.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr != 0 and ptr in seen_storages:
            # Tied weights share storage, which safetensors also refuses; store an independent copy.
            t = t.clone()
        seen_storages.add(t.untyped_storage().data_ptr())
        tensors[key] = t
    return tensors


def _load_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    metadata: dict[str, Any] = {}
    sidecar = sidecar_path(path)
    if sidecar.exists():
        metadata = _read_sidecar(sidecar)
        actual = sha256_file(path)
        if actual != metadata["sha256"]:
            raise UserError(
                f"weights file {path} does not match the sha256 recorded in {sidecar.name} (changed or "
                "corrupted since it was saved); restore or re-save the weights"
            )
    try:
        state_dict = load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise UserError(
            f"weights file {path} is not a readable safetensors file (truncated or corrupt: {_one_line(e)}); "
            "re-save or re-download it"
        ) from None
    return state_dict, metadata


def _read_sidecar(sidecar: Path) -> dict[str, Any]:
    try:
        content = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(
            f"weights sidecar {sidecar} is unreadable ({_one_line(e)}); re-save the weights"
        ) from None
    if not isinstance(content, dict) or not isinstance(content.get("sha256"), str):
        raise UserError(
            f"weights sidecar {sidecar} has no 'sha256' entry; re-save the weights, or move the unrelated "
            "JSON file away"
        )
    return content


def _load_torch(path: Path) -> dict[str, Tensor]:
    try:
        saved_by_torch, protocol = _torch_format(path)
    except OSError as e:
        raise _corrupt_torch_file(path, e) from None
    if not saved_by_torch:
        raise _not_torch_file(path, protocol)
    try:
        with warnings.catch_warnings():
            # torch warns (two lines, asking for a bug report) about any protocol but 2; what matters is told below.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            # weights_only=True: the restricted unpickler admits tensors and plain containers only, so a
            # malicious or custom-class checkpoint is refused before any of its code can run.
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise _corrupt_torch_file(path, e) from None
        if protocol is not None and protocol > _SAFE_PROTOCOL:
            raise UserError(
                f"{path} was saved with pickle protocol {protocol}, which torch's safe loader cannot read; re-save "
                "with torch.save(model.state_dict(), path) and its default protocol"
            ) from None
        raise UserError(
            f"{path} contains Python objects; only plain state_dicts are loaded for safety — "
            "re-save with torch.save(model.state_dict())"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise _corrupt_torch_file(path, e) from None
    state_dict = _find_state_dict(obj)
    if state_dict is None:
        found = f"keys {_first_few([str(k) for k in obj])}" if isinstance(obj, dict) else type(obj).__name__
        raise UserError(
            f"{path} holds no state_dict (found {found}); expected a dict of tensors or one under "
            f"{', '.join(repr(k) for k in _NESTED_STATE_KEYS)}"
        )
    if state_dict and all(k.startswith(_DATA_PARALLEL_PREFIX) for k in state_dict):
        # Saved from nn.DataParallel / DistributedDataParallel: every key carries the wrapper's prefix.
        state_dict = {k[len(_DATA_PARALLEL_PREFIX) :]: v for k, v in state_dict.items()}
    return state_dict


def _find_state_dict(obj: object) -> dict[str, Tensor] | None:
    if _is_tensor_dict(obj):
        return dict(cast(dict[str, Tensor], obj))
    if isinstance(obj, dict):
        for key in _NESTED_STATE_KEYS:
            if _is_tensor_dict(obj.get(key)):
                return dict(obj[key])
    return None


def _is_tensor_dict(obj: object) -> bool:
    return (
        isinstance(obj, dict)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    )


def _torch_format(path: Path) -> tuple[bool, int | None]:
    """(whether torch.save wrote ``path``, the pickle protocol of its object data, None when unknown).

    Read by header only (pickletools parses opcodes without executing any), so nothing is unpickled here.
    """
    with path.open("rb") as f:
        if f.read(len(_ZIP_MAGIC)) == _ZIP_MAGIC:
            try:
                with zipfile.ZipFile(f) as archive:
                    data = next((n for n in archive.namelist() if n.endswith("/data.pkl")), None)
                    head = archive.open(data).read(2) if data is not None else b""
            except (zipfile.BadZipFile, OSError, EOFError):  # torch.load reports the damage itself
                return True, None
            return True, head[1] if head[:1] == b"\x80" and len(head) == 2 else None
        f.seek(0)
        try:  # a legacy torch.save file pickles its magic number first; other pickles start with their data
            first = [arg for op, arg, _ in itertools.islice(pickletools.genops(f), 3)
                     if op.name not in ("PROTO", "FRAME")]  # fmt: skip
        except ValueError:  # not a pickle stream at all
            return False, None
        f.seek(0)
        head = f.read(2)
    protocol = head[1] if head[:1] == b"\x80" and len(head) == 2 else None
    return first[:1] == [_LEGACY_MAGIC_NUMBER], protocol


def _not_torch_file(path: Path, protocol: int | None) -> UserError:
    if protocol is not None:
        return UserError(
            f"{path} is a plain pickle (as pickle.dump writes), not a torch.save checkpoint, and advtrain never "
            "unpickles such files: if you trust it, load it yourself and re-save with torch.save(model.state_dict())"
        )
    return UserError(
        f"weights file {path} is not a checkpoint written by torch.save (neither its zip nor its legacy format); "
        "re-save or re-download it"
    )


def _corrupt_torch_file(path: Path, error: BaseException) -> UserError:
    return UserError(
        f"weights file {path} could not be read (truncated or corrupt: {_one_line(error)}); "
        "re-save or re-download it"
    )


def _one_line(error: BaseException, limit: int = 160) -> str:
    # Library messages can span paragraphs of advice; a UserError keeps the first sentence, on one line.
    text = " ".join(str(error).split()).split(". ")[0] or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _first_few(keys: list[str]) -> str:
    shown = ", ".join(keys[:_KEYS_SHOWN])
    return shown + (", ..." if len(keys) > _KEYS_SHOWN else "")


def _count(n: int, noun: str, plural_suffix: str = "s") -> str:
    return f"{n} {noun}{'' if n == 1 else plural_suffix}"
