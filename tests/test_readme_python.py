"""README "Use from Python": its examples run as written, in order, in one session, and do what the text says."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
from torch import nn

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Use from Python\n"):]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def lines_after_imports(code: str) -> int:
    """Statement lines that are not imports (a statement continued over several lines counts each line)."""
    body = [node for node in ast.parse(code).body if not isinstance(node, ast.Import | ast.ImportFrom)]
    return sum(node.end_lineno - node.lineno + 1 for node in body)


def test_the_examples_are_as_short_as_promised():
    _setup, trades, evaluate, arat, _attacks = python_blocks()
    assert len([line for line in trades.splitlines() if line.strip()]) <= 10  # imports included
    assert lines_after_imports(evaluate) <= 3
    assert "ARAT(" in arat and "class ResNet(nn.Module)" in arat


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_examples_run_and_do_what_the_text_says(capsys):
    setup, trades, evaluate, arat, attacks = python_blocks()
    session: dict[str, object] = {}
    torch.manual_seed(0)  # the DataLoader shuffles with torch's global generator
    exec(compile(setup, "README setup", "exec"), session)
    assert session["x_train"].shape == (1300, 1, 8, 8) and float(session["x"].max()) == 1.0

    exec(compile(trades, "README TRADES", "exec"), session)
    result = session["result"]
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4, 5]
    last = result.history[-1]
    assert last["val_clean_acc"] > 0.8  # 10 classes: chance is 0.1
    assert 0 < last["val_pgd_acc"] <= last["val_clean_acc"]
    assert str(last["train_loss"])[:6] in capsys.readouterr().out  # the printed row is the last epoch's

    exec(compile(evaluate, "README evaluate", "exec"), session)
    evaluation = session["evaluation"]
    clean, pgd, aa = (evaluation.accuracy(a) for a in ("clean", "pgd", "autoattack"))
    assert aa <= pgd <= clean and clean > 0.8
    out = capsys.readouterr().out
    assert "AutoAttack (standard)" in out and f"{100 * aa:.2f}" in out and out.splitlines()[-1] == f"{aa}"

    exec(compile(arat, "README AR-AT", "exec"), session)
    model = session["arat"].model
    assert type(model).__name__ == "ResNet" and not model.training
    plain = session["ResNet"]()
    assert set(model.state_dict()) == set(plain.state_dict())  # no split BN, no predictor
    assert all(isinstance(m, nn.BatchNorm2d) for m in model.modules() if "BatchNorm" in type(m).__name__)
    assert session["arat"].history[-1]["val_clean_acc"] > 0.5
    assert "PGD-20" in capsys.readouterr().out

    exec(compile(attacks, "README attacks", "exec"), session)
    x_adv, x_test = session["x_adv"], session["x_test"]
    assert float((x_adv - x_test).abs().max()) <= 0.2 + 1e-6 and 0 <= float(x_adv.min()) <= float(x_adv.max()) <= 1
