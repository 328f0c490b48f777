from pathlib import Path

import pyautoattack
import pytest

from advtrain.eval import EvalSettings, attack_specs, evaluate_attacks, evaluate_loaded, load_for_eval
from advtrain.eval.robustness import AttackSpec
from tests.helpers import digits_tensors, trained_digits_cnn

MODEL_TEST = Path(pyautoattack.__file__).parent / "examples" / "model_test.pt"


def test_reference_autoattack_checkpoint_on_the_real_cifar10_subset(cifar_subset):
    if not MODEL_TEST.exists():
        pytest.skip("pyautoattack's example checkpoint is not installed")
    loaded, data = load_for_eval(run_dir=None, weights=MODEL_TEST, model_name="resnet18", data_name="cifar10",
                                 data_root=str(cifar_subset))
    report, _ = evaluate_loaded(loaded, data, EvalSettings(attacks=["clean"], eps=[8 / 255], device="cpu"))
    assert report["n"] == 846
    assert report["results"][0]["accuracy"] == pytest.approx(0.94, abs=0.01)
    # A standard-trained model has no robustness: PGD at 8/255 breaks every image it is given.
    report, _ = evaluate_loaded(loaded, data, EvalSettings(attacks=["pgd"], eps=[8 / 255], steps=5, n=24,
                                                                device="cpu"))
    assert report["results"][0]["accuracy"] <= 1 / 24


def test_attack_specs_expand_names_and_eps():
    specs = attack_specs(["clean", "pgd", "aa", "apgd"], [0.1, 0.2], steps=10)
    assert specs[0] == AttackSpec("clean")
    assert [(s.attack, s.eps, s.version) for s in specs[1:]] == [
        ("pgd", 0.1, None), ("autoattack", 0.1, "standard"), ("autoattack", 0.1, "apgd"),
        ("pgd", 0.2, None), ("autoattack", 0.2, "standard"), ("autoattack", 0.2, "apgd"),
    ]
    assert specs[1].step_size == pytest.approx(0.025) and specs[1].steps == 10


def test_evaluate_orders_attacks_by_strength_and_restores_train_mode():
    model = trained_digits_cnn().train()
    _, _, x, y = digits_tensors()
    x, y = x[:120], y[:120]
    specs = attack_specs(["clean", "fgsm", "pgd", "apgd"], [0.15], steps=10)
    results = {r.spec.attack: r for r in evaluate_attacks(model, x, y, specs, batch_size=50)}
    assert model.training
    clean, fgsm, pgd, aa = (results[k].correct for k in ("clean", "fgsm", "pgd", "autoattack"))
    assert clean.float().mean() > 0.9
    # No attack turns a clean mistake into a correct answer (first-fooling tracking counts the start point),
    # PGD does damage, and the reference AutoAttack is at least as strong as PGD on this model.
    assert not (fgsm & ~clean).any() and not (pgd & ~clean).any() and not (aa & ~clean).any()
    assert pgd.float().mean() < clean.float().mean()
    assert aa.float().mean() <= pgd.float().mean() + 0.02
