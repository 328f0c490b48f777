"""Reading a run directory's config: one reader for every command (eval, report, compare)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from advtrain.errors import UserError
from advtrain.yamltags import refused_tag


def run_dir_path(run_dir: Path | str) -> Path:
    path = Path(run_dir)
    if not path.is_dir():
        raise UserError(f"run directory not found: {path} (pass the folder the trainer wrote)")
    return path


def read_config(run_dir: Path | str) -> dict[str, Any]:
    """The resolved config of a run (RUN_DIR/config.yaml) as a dict."""
    path = run_dir_path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{path} not found: is this a run directory written by `advtrain train`?")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        tag = refused_tag(e)
        if tag is not None:  # advtrain train writes plain values only, so the file was edited or replaced
            raise UserError(f"{path} {tag}: restore the config.yaml advtrain train wrote") from None
        reason = " ".join(str(e).split())
        raise UserError(f"{path}: not valid YAML ({reason})") from None
    except UnicodeDecodeError:  # a damaged or foreign file where the run's YAML should be
        raise UserError(f"{path}: not UTF-8 text, so not the config.yaml advtrain train writes") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a YAML mapping at the top level")
    return data
