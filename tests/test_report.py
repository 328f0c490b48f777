import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import yaml

from advtrain.errors import UserError
from advtrain.report import (
    attack_label,
    comparison_table,
    comparison_text,
    eval_rows,
    fmt_acc,
    fmt_eps,
    markdown_table,
    read_eval,
    read_metrics,
    save_figure,
    training_curves,
    write_run_report,
)

EPS = 8 / 255

CONFIG = {
    "seed": 0,
    "data": {"name": "cifar10"},
    "model": {"name": "preact_resnet18"},
    "method": {"name": "trades"},
    "threat": {"eps": EPS, "norm": "linf"},
    "train": {"epochs": 3, "batch_size": 128, "lr": 0.1},
}

METRICS = [
    {"epoch": 1, "lr": 0.1, "train_loss": 2.1, "train_acc": 0.31, "val_clean_acc": 0.45,
     "val_pgd_acc": None, "seconds": 12.5, "images_per_s": 4000.0, "extra": "ignored"},
    {"epoch": 2, "lr": 0.05, "train_loss": 1.7, "train_acc": 0.52, "val_clean_acc": 0.61,
     "val_pgd_acc": 0.3125, "seconds": 12.0, "images_per_s": 4100.0},
    {"epoch": 3, "lr": 0.01, "train_loss": 1.4, "train_acc": 0.64, "val_clean_acc": 0.98333,
     "val_pgd_acc": 0.4321, "seconds": 11.5, "images_per_s": 4200.0},
]  # fmt: skip

EVAL = {
    "model": "preact_resnet18",
    "data": "cifar10",
    "n": 1000,
    "checkpoint": "best",
    "results": [
        {"attack": "clean", "eps": 0, "accuracy": 0.8123},
        {"attack": "pgd", "eps": EPS, "steps": 20, "restarts": 1, "step_size": 2 / 255, "accuracy": 0.47},
        {"attack": "autoattack", "version": "standard", "eps": EPS, "accuracy": 0.4411},
    ],
}


def make_run(tmp_path: Path, *, with_eval: bool = True) -> Path:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in METRICS))
    (run / "checkpoints" / "best.json").write_text(json.dumps({"epoch": 3, "metric": "val_pgd_acc", "value": 0.4321}))
    (run / "checkpoints" / "last.json").write_text(json.dumps({"epoch": 3, "metric": "val_pgd_acc", "value": 0.4321}))
    if with_eval:
        (run / "eval.json").write_text(json.dumps(EVAL))
    return run


def assert_png_not_blank(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    rgb = img[..., :3]
    assert float(np.std(rgb)) > 0
    assert not np.all(rgb >= 0.999)


def table_rows(text: str) -> list[list[str]]:
    """Cells of every markdown table line in text (header, separator and body)."""
    return [
        [c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("|")
    ]


def test_write_run_report(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    report = write_run_report(run)
    assert report == run / "report.md"
    text = report.read_text(encoding="utf-8")

    # title and settings from config.yaml
    first = text.splitlines()[0]
    assert first.startswith("# ")
    for word in ("trades", "preact_resnet18", "cifar10", "8/255"):
        assert word in first
    assert "- seed: 0" in text
    assert "3 completed of 3 planned" in text

    # per-epoch table: all three epochs, accuracies as percentages, the null value as a dash
    rows = table_rows(text)
    epoch_rows = [r for r in rows if len(r) == 8 and r[0][:1].isdigit()]
    assert len(epoch_rows) == 3
    assert epoch_rows[0][5] == "–"
    assert epoch_rows[1][5] == "31.25"
    assert epoch_rows[2][4] == "98.33"
    assert epoch_rows[2][0].startswith("3") and "best" in epoch_rows[2][0]

    # checkpoint selection on the validation split
    assert "epoch 3" in text and "val_pgd_acc" in text and "43.21" in text
    assert "validation split" in text and "test set was never used" in text

    # evaluation table and which checkpoint was evaluated
    assert "## Evaluation" in text and "`best` checkpoint (epoch 3)" in text
    eval_table = [r for r in rows if len(r) == 3]
    assert ["clean", "0", "81.23"] in eval_table
    assert ["PGD-20 ×1 (step 0.0078)", "8/255", "47.00"] in eval_table
    assert ["AutoAttack (standard)", "8/255", "44.11"] in eval_table

    # figure written and linked relatively
    fig_path = run / "figures" / "training_curves.png"
    assert fig_path.is_file()
    assert "](figures/training_curves.png)" in text
    assert_png_not_blank(fig_path)
    assert not list(run.glob(".*.tmp")) and not list((run / "figures").glob(".*.tmp"))


def test_report_without_eval(tmp_path: Path) -> None:
    run = make_run(tmp_path, with_eval=False)
    assert read_eval(run) is None
    text = write_run_report(run).read_text(encoding="utf-8")
    assert "No evaluation results" in text
    assert "AutoAttack" not in text and "| attack |" not in text
    assert all(len(r) != 3 for r in table_rows(text))
    assert (run / "figures" / "training_curves.png").is_file()


def test_report_overwrites_previous(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    write_run_report(run)
    (run / "eval.json").unlink()
    text = write_run_report(run).read_text(encoding="utf-8")
    assert "AutoAttack" not in text


def test_malformed_metrics_line_names_line_number(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    lines = [json.dumps(m) for m in METRICS]
    lines.insert(2, '{"epoch": 3, "lr": ')
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError) as info:
        read_metrics(run)
    message = str(info.value)
    assert "line 3" in message and "metrics.jsonl" in message
    assert "\n" not in message
    with pytest.raises(UserError, match="line 3"):
        write_run_report(run)


def test_metrics_line_that_is_not_an_object(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (run / "metrics.jsonl").write_text(json.dumps(METRICS[0]) + "\n\n[1, 2]\n")
    with pytest.raises(UserError, match="line 3"):
        read_metrics(run)


def test_read_metrics_skips_blank_lines(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in METRICS) + "\n\n")
    assert [m["epoch"] for m in read_metrics(run)] == [1, 2, 3]


def test_missing_run_dir_is_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        write_run_report(tmp_path / "nope")


def test_fmt_acc_and_eps() -> None:
    assert fmt_acc(0.98333) == "98.33"
    assert fmt_acc(1) == "100.00"
    assert fmt_acc(None) == "–"
    assert fmt_eps(8 / 255) == "8/255"
    assert fmt_eps(2 / 255) == "2/255"
    assert fmt_eps(8.0000000001 / 255) == "8/255"
    assert fmt_eps(0) == "0"
    assert fmt_eps(0.3) == "0.3"
    assert fmt_eps(0.2) == "0.2"
    assert fmt_eps(0.0314) == "0.0314"


def test_markdown_table_shape() -> None:
    text = markdown_table(["a", "b", "c"], [[1, 0.123456, None], ["x|y", "z", 2.5]])
    lines = text.strip().splitlines()
    assert len(lines) == 4
    # every line has the same number of unescaped separators
    counts = {line.replace("\\|", "").count("|") for line in lines}
    assert counts == {4}
    assert "–" in lines[2] and "0.1235" in lines[2]
    with pytest.raises(ValueError):
        markdown_table(["a", "b"], [[1]])


def test_eval_rows_labels() -> None:
    ev = {
        "results": [
            {"attack": "clean", "eps": 0, "accuracy": 0.98},
            {"attack": "pgd", "eps": 0.2, "steps": 20, "restarts": 1, "step_size": 0.025, "accuracy": 0.6},
            {"attack": "autoattack", "version": "standard", "eps": 0.2, "accuracy": 0.55},
            {"attack": "autoattack", "version": "apgd", "eps": 0.2, "accuracy": 0.56},
            {"attack": "fgsm", "eps": 0.2, "accuracy": 0.7},
            {"attack": "cw", "eps": 0.2, "steps": 20, "accuracy": 0.58},
            {"attack": "square", "eps": 0.2, "accuracy": None},
        ]
    }
    assert eval_rows(ev) == [
        ("clean", "0", "98.00"),
        ("PGD-20 ×1 (step 0.0250)", "0.2", "60.00"),
        ("AutoAttack (standard)", "0.2", "55.00"),
        ("AutoAttack (apgd: APGD-CE + APGD-T only)", "0.2", "56.00"),
        ("FGSM", "0.2", "70.00"),
        ("CW-PGD-20", "0.2", "58.00"),
        ("square", "0.2", "–"),
    ]


def test_comparison_table() -> None:
    other = {
        "results": [
            {"attack": "clean", "eps": 0, "accuracy": 0.9},
            {"attack": "fgsm", "eps": EPS, "accuracy": 0.5},
        ]
    }
    evals = {"trades": EVAL, "fgsm-at": other}
    rows = table_rows(comparison_table(evals))
    header, body = rows[0], rows[2:]
    assert header == [
        "model",
        "clean",
        "PGD-20 ×1 (step 0.0078) @ 8/255",
        "AutoAttack (standard) @ 8/255",
        "FGSM @ 8/255",
    ]
    assert len(body) == 2
    assert all(len(r) == len(header) for r in rows)
    assert body[0] == ["trades", "81.23", "47.00", "44.11", "–"]
    assert body[1] == ["fgsm-at", "90.00", "–", "–", "50.00"]

    text = comparison_text(evals).splitlines()
    assert len(text) == 4
    assert text[0].startswith("model") and "FGSM @ 8/255" in text[0]
    assert text[2].startswith("trades") and text[3].startswith("fgsm-at")
    assert len(text[2]) == len(text[3]) == len(text[1])  # fixed width: right-aligned columns line up


@pytest.mark.parametrize("n", [0, 1])
def test_training_curves_edge_cases(tmp_path: Path, n: int) -> None:
    metrics = [{"epoch": 1, "lr": 0.1, "train_loss": 2.0, "train_acc": 0.3, "val_clean_acc": None}][:n]
    path = save_figure(training_curves(metrics), tmp_path / "deep" / "dir" / "curves.png")
    assert path.is_file()
    assert_png_not_blank(path)


def test_every_attack_the_eval_package_writes_gets_its_label() -> None:
    from advtrain.eval import ATTACK_ALIASES, attack_specs

    labels = [attack_label(s.describe() | {"accuracy": 0.5}) for s in attack_specs(list(ATTACK_ALIASES), [0.1])]
    assert labels == ["clean", "FGSM", "PGD-20 ×1 (step 0.0125)", "I-FGSM-20 ×1 (step 0.0125)", "CW-PGD-20",
                      "AutoAttack (standard)",
                      "AutoAttack (standard)", "AutoAttack (apgd: APGD-CE + APGD-T only)"]
