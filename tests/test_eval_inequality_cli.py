"""`advtrain eval` with the inequality evaluations (docs/methods.md §7.2–7.4): single runs, --compare, figures."""

import json
from pathlib import Path

import pytest
import torch

from advtrain.cli import main
from advtrain.config import load_config
from advtrain.data import load_dataset, to_float
from advtrain.eval.api import run_labels
from advtrain.eval.checkpoints import load_checkpoint_model
from advtrain.eval.saliency import gini_report, mean_over
from advtrain.train import train

COMMON = ["train.batch_size=64", "train.val_steps=2", "monitor.enabled=false", "train.progress=quiet",
          "threat.eps=0.2"]
ALL_EVALS = "clean,gini,inductive_noise,random_noise,inductive_occlusion,corruptions"


def _train(out: Path, *overrides: str) -> Path:
    train(load_config(None, [*COMMON, *overrides]), out, log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inequality")
    a = _train(root / "a", "method.name=standard", "train.epochs=2")
    b = _train(root / "b", "method.name=pgd_at", "method.steps=2", "train.epochs=2")
    # Another dataset: 3×8×8 synthetic images (digits are 1×8×8), so it fits neither by name nor by shape.
    s = _train(root / "s", "method.name=standard", "train.epochs=1", "data.name=synthetic",
               "data.options={shape: [3, 8, 8], n_train: 128, n_test: 32}")
    return a, b, s


def _model(run: Path):
    return load_checkpoint_model(run / "checkpoints" / "best.safetensors").model.eval()


def _digits(n: int):
    data = load_dataset("digits")
    return to_float(data.x_test[:n], data.pixel_max), data.y_test[:n]


def test_single_run_writes_robustness_and_inequality_and_figures(runs, capsys):
    a, _, _ = runs
    assert main(["eval", str(a), "--attacks", "clean,gini,inductive_noise", "--n", "100"]) == 0
    report = json.loads((a / "eval.json").read_text())
    assert [r["attack"] for r in report["results"]] == ["clean"] and report["n"] == 100
    inequality = report["inequality"]
    assert set(inequality) >= {"gini", "inductive_noise", "n_common_correct"}
    assert "random_noise" not in inequality and "corruptions" not in inequality
    for name in ("saliency.png", "noise.png"):
        assert (a / "figures" / name).stat().st_size > 1000
    assert not (a / "figures" / "occlusion.png").exists()

    # The Gini means, recomputed independently from the checkpoint on the same images.
    x, y = _digits(100)
    direct = gini_report(_model(a), x, y, blocks={"igd": 4})
    ours = inequality["gini"]["a"]
    assert ours["global_all"] == pytest.approx(mean_over(direct["global"]))
    assert ours["global_correct"] == pytest.approx(mean_over(direct["global"], direct["correct"]))
    assert ours["regional_duan_all"] == pytest.approx(mean_over(direct["regional_duan"]))
    assert ours["regional_igd_correct"] == pytest.approx(mean_over(direct["regional_igd"], direct["correct"]))
    # The clean accuracy and the commonly correct count of a group of one agree.
    assert inequality["n_common_correct"] == round(report["results"][0]["accuracy"] * 100)
    out = capsys.readouterr().out
    assert "Gini" in out and "inductive noise" in out and "figures/saliency.png" in out


def test_inequality_only_on_weights_runs_no_attack(runs, tmp_path, capsys):
    a, _, _ = runs
    out = tmp_path / "w.json"
    weights = a / "checkpoints" / "best.safetensors"
    assert main(["eval", "--weights", str(weights), "--data", "digits", "--attacks", "gini", "--n", "30",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["results"] == [] and list(report["inequality"]["gini"]) == ["best"]
    assert (tmp_path / "w-figures" / "saliency.png").is_file()
    assert "accuracy %" not in capsys.readouterr().out


def test_compare_two_runs(runs, tmp_path, capsys):
    a, b, _ = runs
    out = tmp_path / "c.json"
    assert main(["eval", "--compare", str(a), str(b), "--attacks", ALL_EVALS, "--n", "60", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert list(report["models"]) == ["a", "b"]
    assert report["n"] == 60 and report["data"] == "digits" and report["seed"] == 0
    inequality = report["inequality"]
    for name in ("gini", "inductive_noise", "random_noise", "inductive_occlusion", "corruptions"):
        assert list(inequality[name]) == ["a", "b"], name

    # The commonly correct set and the clean accuracies, by hand.
    x, y = _digits(60)
    correct = torch.ones(60, dtype=torch.bool)
    for label, run in (("a", a), ("b", b)):
        with torch.no_grad():
            right = _model(run)(x).argmax(1) == y
        correct &= right
        (clean,) = report["models"][label]["results"]
        assert clean["attack"] == "clean" and clean["accuracy"] == pytest.approx(right.float().mean().item())
        assert report["models"][label]["source"] == str(run / "checkpoints" / "best.safetensors")
        assert report["models"][label]["checkpoint"] == "best"
    assert inequality["n_common_correct"] == int(correct.sum())

    figures = tmp_path / "c-figures"
    for name in ("saliency.png", "noise.png", "occlusion.png", "corruptions.png"):
        assert (figures / name).stat().st_size > 1000, name
    text = capsys.readouterr().out
    for fragment in ("clean", "Gini", "inductive noise", "random noise", "inductive occlusion", "corruptions"):
        assert fragment in text


def test_run_labels_are_unique():
    assert run_labels([Path("x/run"), Path("y/run"), Path("y/other")]) == ["x/run", "y/run", "other"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--compare", "{a}", "{b}", "--attacks", "clean"], "pass --out FILE.json"),
        (["{a}", "--compare", "{b}", "--out", "{out}"], "drop RUN_DIR"),
        (["--compare", "{a}", "--weights", "{a}/checkpoints/best.safetensors", "--out", "{out}"], "drop --weights"),
        (["--compare", "{a}", "{b}", "--attacks", "clean,ginni", "--out", "{out}"], "did you mean 'gini'"),
        (["{a}", "--attacks", "pgd,bogus"], "inductive_occlusion"),
        (["--compare", "{a}", "{s}", "--out", "{out}"], "{s} was trained on synthetic"),
        (["--compare", "{a}", "{s}", "--data", "digits", "--out", "{out}"], "{s}/checkpoints"),
        (["--compare", "{a}", "{a}", "--out", "{out}"], "twice"),
        (["--compare", "{a}", "{b}", "--attacks", "gini", "--n", "0", "--out", "{out}"], "--n"),
        (["--compare", "{a}", "{b}", "--out", "{tmp}"], "is a folder"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(runs, tmp_path, capsys, args, fragment):
    a, b, s = runs
    names = {"a": a, "b": b, "s": s, "out": tmp_path / "c.json", "tmp": tmp_path}
    before = {run: sorted((p, p.stat().st_mtime_ns) for p in run.rglob("*")) for run in (a, b, s)}
    assert main(["eval", *(arg.format(**names) for arg in args)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment.format(**names) in err[0], err
    assert list(tmp_path.iterdir()) == []
    assert {run: sorted((p, p.stat().st_mtime_ns) for p in run.rglob("*")) for run in (a, b, s)} == before


def test_attribution_flag_changes_what_gini_measures(runs, tmp_path):
    a, _, _ = runs
    out = tmp_path / "ig.json"
    weights = a / "checkpoints" / "best.safetensors"
    assert main(["eval", "--weights", str(weights), "--data", "digits", "--attacks", "gini", "--n", "40",
                 "--attribution", "integrated_gradients", "--out", str(out)]) == 0
    inequality = json.loads(out.read_text())["inequality"]
    assert inequality["attribution"] == "integrated_gradients"
    x, y = _digits(40)
    direct = gini_report(_model(a), x, y, "integrated_gradients", blocks={"igd": 4})
    assert inequality["gini"]["best"]["global_all"] == pytest.approx(mean_over(direct["global"]))
    saliency_only = gini_report(_model(a), x, y, "saliency", blocks={"igd": 4})
    assert mean_over(saliency_only["global"]) != pytest.approx(mean_over(direct["global"]))


def _released_folder(root: Path, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A folder in the released CIFAR-10-C layout (uint8 (5·n)×H×W×3 per corruption, labels.npy), 8×8 images."""
    import numpy as np

    from advtrain.eval.corruptions import CORRUPTIONS

    g = np.random.default_rng(seed)
    labels = g.integers(0, 10, 5 * n)
    root.mkdir()
    images = {}
    for name in CORRUPTIONS:
        images[name] = g.integers(0, 256, (5 * n, 8, 8, 3), dtype=np.uint8)
        np.save(root / f"{name}.npy", images[name])
    np.save(root / "labels.npy", labels)
    return images, labels


def test_released_cifar10_c_images_are_read_instead_of_generated(runs, tmp_path):
    from advtrain.eval.inequality import InequalityOptions, evaluate_inequality

    _, _, s = runs  # the 3×8×8 synthetic run: released CIFAR-10-C images are RGB
    images, labels = _released_folder(tmp_path / "c10c", n=20)
    model = _model(s)
    x = torch.rand(12, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor(labels[:12])  # a copy: labels stays what labels.npy holds
    with torch.no_grad():
        y[:6] = model(x[:6]).argmax(1)  # at least half the clean images right, so IGD's protocol has images
    result = evaluate_inequality({"s": model}, x, y, evals=["corruptions"],
                                 options=InequalityOptions(corruptions_root=tmp_path / "c10c"))
    table = result["corruptions"]["s"]
    assert table["source"] == str(tmp_path / "c10c")
    with torch.no_grad():
        common = model(x).argmax(1) == y  # the model alone: its clean-correct test images
    assert 0 < int(common.sum()) == result["n_common_correct"]
    for name, blocks in images.items():
        for severity in range(1, 6):
            block = torch.from_numpy(blocks[(severity - 1) * 20:(severity - 1) * 20 + 12]).permute(0, 3, 1, 2)
            truth = torch.as_tensor(labels[(severity - 1) * 20:(severity - 1) * 20 + 12])
            with torch.no_grad():
                wrong = (model(block.float() / 255).argmax(1) != truth).double()
            assert table["all_images"][name][str(severity)] == pytest.approx(wrong.mean().item())
            assert table["commonly_correct"][name][str(severity)] == pytest.approx(wrong[common].mean().item())


def test_a_bad_corruptions_root_fails_before_any_work(runs, tmp_path, capsys):
    a, _, _ = runs
    out = tmp_path / "x.json"
    code = main(["eval", "--weights", str(a / "checkpoints" / "best.safetensors"), "--data", "digits",
                 "--attacks", "clean,corruptions", "--corruptions-root", str(tmp_path / "missing"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "CIFAR-10-C" in err
    assert not out.exists()
