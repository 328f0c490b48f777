"""`advtrain.audit(model, x, y, eps=...)`: audit a model for the four failure modes of the seed papers (gradient
masking, unequal saliency, uneven vulnerability, invariance / trade-off) and its robust accuracy, within a budget;
with `out`, write OUT/audit.json and the report card OUT/audit.html. The Python face of `advtrain audit`.

The measuring is `advtrain.eval.audit.run_audit`, the card `advtrain.report.audit_card`; this module joins them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from advtrain.eval.audit import AuditResult, Budget, run_audit
from advtrain.eval.progress import ProgressHook
from advtrain.fileio import atomic_write_text
from advtrain.report.audit_card import write_audit_card

PARTS_FOLDER = "audit-parts"  # finished parts of an unfinished audit, in OUT; removed once the card is written


def audit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "linf",
    budget: str | Budget = "quick",
    out: Path | str | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str = "auto",
    progress: ProgressHook | None = None,
    describe: dict[str, Any] | None = None,
) -> AuditResult:
    """Audit `model` on (x, y) (float images in [0, 1] or uint8, labels), `eps` in [0, 1] pixel units, under the
    "quick" or "standard" budget (`advtrain.eval.audit.BUDGETS`: images, attack steps, AutoAttack version, the
    sizes of the other evaluations). Returns the `AuditResult` (`.verdict("masking")`, `.as_dict()`).

    With `out` (a folder): OUT/audit.json and OUT/audit.html (self-contained card), and resuming: an audit killed
    before them reuses its finished parts (OUT/audit-parts) when rerun with the same model, images and settings.
    `describe` ({"model": ..., "data": ...}) heads the JSON and the card. `progress` hears every stage (e.g. an
    `advtrain.progress_display.ProgressDisplay`, which shows an ETA).
    """
    folder = Path(out) if out is not None else None
    if folder is not None and folder.exists() and not folder.is_dir():
        raise ValueError(f"out={str(folder)!r} is a file: pass a folder for audit.json and audit.html")
    result = run_audit(model, x, y, eps=eps, norm=norm, budget=budget, seed=seed, batch_size=batch_size,
                       device=device, parts=folder / PARTS_FOLDER if folder is not None else None, progress=progress)
    if folder is not None:
        write_audit(result, folder, describe)
    return result


def write_audit(result: AuditResult, folder: Path, describe: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """FOLDER/audit.json and FOLDER/audit.html of `result` (atomically), then remove the finished parts; their
    paths."""
    document = dict(describe or {}) | result.as_dict()
    json_path = folder / "audit.json"
    atomic_write_text(json_path, json.dumps(document, indent=2, allow_nan=False) + "\n")
    card = write_audit_card(document, folder / "audit.html", title=f"advtrain audit: {document.get('model', 'model')}")
    shutil.rmtree(folder / PARTS_FOLDER, ignore_errors=True)
    return json_path, card
