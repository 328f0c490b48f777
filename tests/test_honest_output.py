"""Readable, honest output: exact accuracies with their counts, each result printed once, the trade-off line only
where it is the AA sum, single seeds shown as such, and training curves labelled by what they measure."""

from __future__ import annotations

import csv
import json
import re

import torch

from advtrain.config import load_config
from advtrain.eval.protocol import recorded_protocol
from advtrain.eval.robustness import AttackResult, AttackSpec, attack_fields
from advtrain.report.figures import training_curves
from advtrain.report.grid import Cell, Stat, write_csv
from advtrain.report.run_report import render_run_report, train_acc_inputs
from advtrain.workflow import train_and_evaluate

RESULT_LINE = re.compile(r"\s+\w+\s+eps \d\.\d{4}  accuracy \d+\.\d\d%$")  # `AttackResult.summary()`


def _result(correct: int, total: int) -> AttackResult:
    return AttackResult(AttackSpec("pgd", 0.1, "linf", 10, 1, 0.025), torch.arange(total) < correct)


def test_accuracy_is_the_exact_ratio_of_the_counts_the_row_stores():
    result = _result(17, 50)
    assert result.accuracy == 0.34 and float(torch.tensor([True] * 17 + [False] * 33).float().mean()) != 0.34
    row = result.as_dict()
    assert (row["accuracy"], row["correct"], row["total"]) == (0.34, 17, 50)
    assert json.loads(json.dumps(row))["accuracy"] == 0.34  # no float32 digits in the JSON
    assert attack_fields(row) == AttackSpec("pgd", 0.1, "linf", 10, 1, 0.025).describe()
    assert recorded_protocol({"results": [row]})["attacks"] == [attack_fields(row)]
    empty = _result(0, 0)
    assert empty.total == 0 and empty.count == 0 and empty.accuracy != empty.accuracy  # NaN without examples


def test_the_run_report_states_the_trade_off_sum_only_when_autoattack_ran():
    clean = {"attack": "clean", "eps": 0, "accuracy": 0.8123}
    pgd = {"attack": "pgd", "eps": 0.1, "steps": 20, "restarts": 1, "step_size": 0.0125, "accuracy": 0.47}
    aa = {"attack": "autoattack", "version": "standard", "eps": 0.1, "accuracy": 0.4411}
    config = {"method": {"name": "trades"}}
    with_aa = render_run_report(config, [], {"results": [clean, pgd, aa]}, None, None)
    assert "Trade-off (docs/methods.md §7.6): sum = clean + AutoAttack (standard) @ 0.1 = 81.23 + 44.11 = 125.34." \
        in with_aa
    assert "rade-off" not in render_run_report(config, [], {"results": [clean, pgd]}, None, None)


def test_a_single_seed_is_shown_as_n_1_and_several_with_their_spread_and_count():
    assert str(Stat.of([0.77])) == "77.00 (n=1)"
    assert str(Stat.of([0.76, 0.78, 0.77])) == "77.00 ± 1.00 (n=3)"


def _legend(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[1].get_legend().get_texts()]


def test_the_training_accuracy_curve_says_which_inputs_it_was_measured_on():
    rows = [{"epoch": 1, "train_loss": 1.0, "train_acc": 0.3, "train_clean_acc": 0.6, "val_clean_acc": 0.5,
             "val_pgd_acc": 0.2}, {"epoch": 2, "train_loss": 0.9, "train_acc": 0.2, "val_ifgsm_acc": 0.4}]
    assert train_acc_inputs({"method": {"name": "trades"}}) == "adversarial"
    assert train_acc_inputs({"method": {"name": "sat_r1"}}) == "adversarial"
    assert train_acc_inputs({"method": {"name": "standard"}}) == "clean"
    assert train_acc_inputs({"method": {"name": "not_a_method"}}) is None and train_acc_inputs({}) is None
    assert _legend(training_curves(rows, "adversarial")) == [
        "train (adversarial)", "train (clean)", "val clean", "val PGD", "val I-FGSM-3"]
    assert _legend(training_curves(rows[1:], "clean")) == ["train (clean)", "val I-FGSM-3"]
    assert _legend(training_curves(rows[1:])) == ["train", "val I-FGSM-3"]
    header = render_run_report({"method": {"name": "pgd_at"}}, rows, None, None, None)
    assert "| train acc, adversarial (%) |" in header


def test_train_logs_each_accuracy_once_and_not_at_all_for_a_caller_that_prints_them(tmp_path):
    overrides = ["train.epochs=1", "train.batch_size=128", "train.val_steps=1", "method.steps=1",
                 "eval.attacks=[clean,pgd]", "eval.steps=1", "eval.n=32", "train.progress=quiet"]
    config = load_config("digits", overrides)
    logged: list[str] = []
    report = train_and_evaluate(config, tmp_path / "a", log=logged.append, progress=False)
    lines = [line for line in logged if RESULT_LINE.match(line)]
    assert [line.split()[0] for line in lines] == ["clean", "pgd"]
    assert lines[0].endswith(f"accuracy {100 * report['results'][0]['accuracy']:.2f}%")
    quiet: list[str] = []
    train_and_evaluate(config, tmp_path / "b", log=quiet.append, progress=False, log_results=False)
    assert len(quiet) == len(logged) - 2 and not any(RESULT_LINE.match(line) for line in quiet)


def test_the_grid_csv_leaves_the_counts_empty_for_an_evaluation_that_did_not_record_them(tmp_path):
    old = {"results": [{"attack": "clean", "eps": 0.0, "accuracy": 0.5}]}
    new = {"results": [_result(17, 50).as_dict()]}
    cells = [Cell(tmp_path / name, {"seed": 0}, [], {"last": ev}, None) for name, ev in (("old", old), ("new", new))]
    with write_csv({"a": cells}, tmp_path / "results.csv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["accuracy"], r["correct"], r["total"]) for r in rows] == [("0.5", "", ""), ("0.34", "17", "50")]
