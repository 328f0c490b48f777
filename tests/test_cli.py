import json
import subprocess
import sys

import pytest
import torch

from advtrain.cli import main
from advtrain.data import load_dataset, to_float
from advtrain.eval.checkpoints import load_checkpoint_model

FAST = ["--set", "train.epochs=1", "--set", "train.batch_size=128", "--set", "train.val_steps=1",
        "--set", "method.steps=2", "--set", "eval.attacks=[clean,pgd,fgsm]", "--set", "eval.steps=3",
        "--set", "eval.n=100", "--set", "threat.eps=0.2", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *FAST, "--out", str(out)]) == 0
    return out


def test_train_writes_eval_json_and_report(run_dir):
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["model"] == "small_cnn" and report["data"] == "digits" and report["n"] == 100
    attacks = [r["attack"] for r in report["results"]]
    assert attacks == ["clean", "pgd", "fgsm"]
    pgd = report["results"][1]
    assert pgd["eps"] == 0.2 and pgd["steps"] == 3 and pgd["restarts"] == 1
    assert pgd["step_size"] == pytest.approx(2.5 * 0.2 / 3)
    assert all(0 <= r["accuracy"] <= 1 for r in report["results"])
    assert report["results"][0]["accuracy"] >= pgd["accuracy"]
    text = (run_dir / "report.md").read_text()
    assert "pgd_at" in text and (run_dir / "figures" / "training_curves.png").stat().st_size > 1000


def test_eval_of_a_run_matches_eval_of_its_weights_and_the_model_itself(run_dir, tmp_path, capsys):
    out1, out2 = tmp_path / "a.json", tmp_path / "b.json"
    common = ["--attacks", "clean,pgd", "--eps", "0.1", "--steps", "5", "--n", "50"]
    assert main(["eval", str(run_dir), *common, "--out", str(out1)]) == 0
    weights = run_dir / "checkpoints" / "best.safetensors"
    assert main(["eval", "--weights", str(weights), "--data", "digits", *common, "--out", str(out2)]) == 0
    a, b = json.loads(out1.read_text()), json.loads(out2.read_text())
    assert a["results"] == b["results"]
    # Clean accuracy recomputed by hand from the checkpoint.
    model = load_checkpoint_model(weights).model
    data = load_dataset("digits")
    with torch.no_grad():
        acc = (model(to_float(data.x_test[:50], 16)).argmax(1) == data.y_test[:50]).float().mean().item()
    assert a["results"][0]["accuracy"] == pytest.approx(acc)
    assert "accuracy" in capsys.readouterr().out


def _run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "advtrain", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["train", "--out", "X", "--set", "data.name=cifar10"], "cifar10 needs --data-root"),
        (["train", "--out", "X", "--set", "train.epoch=1"], "did you mean 'train.epochs'"),
        (["train", "--out", "X", "--config", "nope.yaml"], "not found"),
        (["eval", "--weights", "w.safetensors", "--data", "digits"], "w.safetensors"),
        (["eval", "--data", "digits"], "nothing to evaluate"),
        (["eval", "R", "--eps", "8/0"], "--eps"),
        (["eval", "--checkpoint", "worst"], "invalid choice"),
        (["bogus"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, fragment):
    result = _run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "X").exists()


def test_an_existing_run_is_never_overwritten(run_dir):
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    result = _run_cli("train", *FAST, "--out", str(run_dir))
    assert result.returncode == 2 and "is not empty: continue that run with --resume" in result.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_unknown_attack_is_refused_before_any_work(run_dir):
    result = _run_cli("eval", str(run_dir), "--attacks", "clean,pgdd")
    assert result.returncode == 2 and "unknown attack 'pgdd'" in result.stderr


def test_a_damaged_run_config_is_a_one_line_error(run_dir, tmp_path):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "config.yaml").write_text("data: [unclosed\n")
    result = _run_cli("eval", str(damaged))
    assert result.returncode == 2 and "not valid YAML" in result.stderr and "Traceback" not in result.stderr
    assert (damaged / "config.yaml").read_text() == "data: [unclosed\n"
