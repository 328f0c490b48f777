"""Noise corruptions (docs/methods.md §7.4) against their closed-form statistics, and the CIFAR-10-C reader.

Every statistical check compares a sample statistic with its exact value under the corruption's
distribution, with a tolerance of 5 standard errors for the sample size used: a correct implementation
fails such a check with probability below 1e-6 for any seed, while a wrong constant (the next severity's,
or the other table's) is off by many standard errors.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from advtrain.errors import UserError
from advtrain.eval.corruptions import (
    CIFAR10_C_NAMES,
    CORRUPTIONS,
    SEVERITIES,
    constant,
    corrupt,
    corruption_error,
    corruption_generator,
    corruption_seed,
    gaussian_noise,
    impulse_noise,
    load_cifar10_c,
    shot_noise,
    speckle_noise,
)
from tests.helpers import digits_tensors, trained_digits_cnn

TABLES = ("cifar10", "imagenet")
SHAPE = (64, 3, 32, 32)  # 196608 elements per batch
N = math.prod(SHAPE)


def grey(shape: tuple[int, ...] = SHAPE, value: float = 0.5) -> torch.Tensor:
    return torch.full(shape, value)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def censored_normal_factor(a: float) -> float:
    """Var(clip(Z, -a, a)) for a standard normal Z: 2(Φ(a) − ½) − 2aφ(a) + 2a²(1 − Φ(a)).

    At x = 0.5 the clamp to [0, 1] cuts additive noise σZ at ±0.5 (a = 0.5/σ) and multiplicative noise
    0.5·cZ at ±0.5 (a = 1/c); with the CIFAR-10 constants the factor is 1 to within 1e-6, with the
    ImageNet ones (σ up to 0.38, c up to 0.6) clamping is visible and must be accounted for.
    """
    phi, cdf = stats.norm.pdf(a), stats.norm.cdf(a)
    return 2 * (cdf - 0.5) - 2 * a * phi + 2 * a * a * (1 - cdf)


def assert_std(residual: torch.Tensor, expected_std: float) -> None:
    """Mean ≈ 0 and std ≈ expected, each within 5 standard errors.

    SE(mean) = sd/√n; SE(sample sd) ≈ sd/√(2n) for a normal, and smaller for a clamped normal, whose
    kurtosis is below 3.
    """
    n = residual.numel()
    r = residual.double()
    assert abs(float(r.mean())) < 5 * expected_std / math.sqrt(n)
    assert abs(float(r.std()) - expected_std) < 5 * expected_std / math.sqrt(2 * n)


# ------------------------------------------------------------------------------------------ constants


def test_constants_are_the_tables_of_methods_section_7_4():
    cifar = {
        "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
        "shot_noise": [500, 250, 100, 75, 50],
        "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
        "speckle_noise": [0.06, 0.10, 0.12, 0.16, 0.20],
    }
    imagenet = {
        "gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],
        "shot_noise": [60, 25, 12, 5, 3],
        "impulse_noise": [0.03, 0.06, 0.09, 0.17, 0.27],
        "speckle_noise": [0.15, 0.20, 0.35, 0.45, 0.60],
    }
    assert set(CORRUPTIONS) == set(cifar) and SEVERITIES == (1, 2, 3, 4, 5)
    for table, values in (("cifar10", cifar), ("imagenet", imagenet)):
        for name, row in values.items():
            assert [constant(name, s, table) for s in SEVERITIES] == row


# ------------------------------------------------------------------------------------ distributions


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("severity", SEVERITIES)
def test_gaussian_residual_has_std_sigma_and_mean_zero(table, severity):
    sigma = constant("gaussian_noise", severity, table)
    out = gaussian_noise(grey(), severity, gen(severity), table)
    assert_std(out - 0.5, sigma * math.sqrt(censored_normal_factor(0.5 / sigma)))
    if table == "cifar10":  # at most 5σ from 0.5: clamping is negligible and the std is σ itself
        assert censored_normal_factor(0.5 / sigma) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("severity", SEVERITIES)
def test_speckle_residual_has_std_x_times_c(table, severity):
    c = constant("speckle_noise", severity, table)
    x = 0.5
    out = speckle_noise(grey(value=x), severity, gen(10 + severity), table)
    assert_std(out - x, x * c * math.sqrt(censored_normal_factor(1 / c)))


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("severity", SEVERITIES)
def test_shot_noise_is_poisson_over_c_on_the_1_over_c_grid(table, severity):
    c = constant("shot_noise", severity, table)
    x = 0.5
    out = shot_noise(grey(value=x), severity, gen(20 + severity), table).double()

    # Exact law of clamp(N/c, 0, 1) with N ~ Poisson(x·c): mass at k/c for k < c, the rest at 1.
    k = np.arange(int(c))
    support = np.append(k / c, 1.0)
    pmf = np.append(stats.poisson.pmf(k, x * c), stats.poisson.sf(int(c) - 1, x * c))
    mean = float(pmf @ support)
    var = float(pmf @ (support - mean) ** 2)
    mu4 = float(pmf @ (support - mean) ** 4)

    assert torch.allclose(out * c, (out * c).round(), atol=1e-3)  # every value is k/c
    assert abs(float(out.mean()) - mean) < 5 * math.sqrt(var / N)
    assert abs(float(out.var()) - var) < 5 * math.sqrt((mu4 - var**2) / N)
    if table == "cifar10":  # N/c > 1 needs N > 2·E[N] ≥ 50: clamping is negligible, so mean x, variance x/c
        assert mean == pytest.approx(x, abs=1e-6) and var == pytest.approx(x / c, rel=1e-4)


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize("severity", SEVERITIES)
def test_impulse_replaces_a_fraction_amount_half_salt_half_pepper_per_channel(table, severity):
    amount = constant("impulse_noise", severity, table)
    shape = (128, 3, 32, 32)
    n = math.prod(shape)
    out = impulse_noise(grey(shape), severity, gen(30 + severity), table)

    changed = out != 0.5
    values = out[changed]
    assert bool(((values == 0) | (values == 1)).all())
    frac = float(changed.double().mean())
    assert abs(frac - amount) < 5 * math.sqrt(amount * (1 - amount) / n)
    salt = float((values == 1).double().mean())
    assert abs(salt - 0.5) < 5 * 0.5 / math.sqrt(len(values))
    # Channels are hit independently (skimage draws per element of the H×W×C array): a pixel has two
    # given channels changed with probability amount², not amount.
    both = float((changed[:, 0] & changed[:, 1]).double().mean())
    pixels = n // 3
    assert abs(both - amount**2) < 5 * math.sqrt(amount**2 * (1 - amount**2) / pixels)


# -------------------------------------------------------------------------------- shared behaviour


@pytest.mark.parametrize("name", list(CORRUPTIONS))
@pytest.mark.parametrize("table", TABLES)
def test_outputs_stay_in_unit_range_keep_shape_and_dtype(name, table):
    x = torch.rand(16, 3, 8, 8, generator=gen(1))
    x[0] = 0.0
    x[1] = 1.0
    out = CORRUPTIONS[name](x, 5, gen(2), table)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, x)
    if name in ("shot_noise", "speckle_noise"):  # Poisson(0) = 0 and 0 + 0·n = 0: black stays black
        assert bool((out[0] == 0).all())
    double = CORRUPTIONS[name](x.double(), 5, gen(2), table)
    assert double.dtype == torch.float64


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_same_seed_same_images_different_seeds_differ(name):
    x = torch.rand(8, 3, 16, 16, generator=gen(3))
    a = corrupt(x, name, 3, seed=7)
    assert torch.equal(a, corrupt(x, name, 3, seed=7))
    assert torch.equal(a, CORRUPTIONS[name](x, 3, corruption_generator(7, name, 3), "cifar10"))
    assert not torch.equal(a, corrupt(x, name, 3, seed=8))


def test_seeds_differ_across_corruptions_severities_and_user_seeds():
    seeds = {corruption_seed(s, n, v) for s in range(4) for n in CIFAR10_C_NAMES for v in SEVERITIES}
    assert len(seeds) == 4 * len(CIFAR10_C_NAMES) * len(SEVERITIES)
    assert all(0 <= s < 2**63 for s in seeds)
    assert corruption_seed(0, "gaussian_noise", 1) == corruption_seed(0, "gaussian_noise", 1)
    # Two severities of one corruption do not reuse a noise stream (severity 2 is not severity 1 rescaled).
    x = grey((4, 3, 8, 8))
    r1 = (corrupt(x, "gaussian_noise", 1, seed=0) - 0.5) / 0.04
    r2 = (corrupt(x, "gaussian_noise", 2, seed=0) - 0.5) / 0.06
    assert not torch.allclose(r1, r2, atol=1e-3)


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_quantize_truncates_onto_the_255_grid_like_np_uint8(name):
    x = torch.randint(0, 256, (8, 3, 16, 16), generator=gen(4)).float() / 255
    floats = CORRUPTIONS[name](x, 4, gen(5))
    quant = CORRUPTIONS[name](x, 4, gen(5), quantize=True)
    assert torch.equal(quant * 255, (quant * 255).round())
    # np.uint8(clip(v) * 255) truncates: the level at or below the float value.
    assert torch.equal(quant * 255, torch.floor(floats.double() * 255 + 1e-4).float())
    assert bool((quant <= floats + 1e-6).all()) and bool((floats - quant < 1 / 255 + 1e-6).all())
    if name == "impulse_noise":  # untouched pixels, already on the grid, stay exactly where they were
        kept = (floats != 0) & (floats != 1)
        assert torch.equal(quant[kept], x[kept])


@pytest.mark.parametrize("severity", [0, 6, -1, 2.0, True, "3"])
def test_severity_outside_1_to_5_is_a_clear_user_error(severity):
    for name, fn in CORRUPTIONS.items():
        with pytest.raises(UserError, match=r"severity must be an integer 1\.\.5") as info:
            fn(grey((1, 3, 4, 4)), severity, gen())
        assert "\n" not in str(info.value)
        with pytest.raises(UserError, match=r"1\.\.5"):
            corrupt(grey((1, 3, 4, 4)), name, severity, seed=0)


def test_bad_names_tables_and_images_are_user_errors():
    x = grey((1, 3, 4, 4))
    with pytest.raises(UserError, match="did you mean 'gaussian_noise'"):
        corrupt(x, "gausian_noise", 1, seed=0)
    with pytest.raises(UserError, match="choose from gaussian_noise"):
        corrupt(x, "fog", 1, seed=0)
    with pytest.raises(UserError, match="choose cifar10 or imagenet"):
        gaussian_noise(x, 1, gen(), "cifar100")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="divide uint8 images by 255"):
        gaussian_noise((x * 255).to(torch.uint8), 1, gen())
    with pytest.raises(UserError, match=r"images in \[0, 1\]"):
        shot_noise(x * 255, 1, gen())


# -------------------------------------------------------------------------------------- CIFAR-10-C files


def fake_cifar10_c(root: Path, per_block: int = 4, names: tuple[str, ...] = ("gaussian_noise", "fog")) -> np.ndarray:
    """A folder with the official layout: <name>.npy (5·N×32×32×3 uint8) and labels.npy (5·N uint8)."""
    root.mkdir(parents=True, exist_ok=True)
    images = np.random.default_rng(0).integers(0, 256, (5 * per_block, 32, 32, 3), dtype=np.uint8)
    for name in names:
        np.save(root / f"{name}.npy", images)
    np.save(root / "labels.npy", (np.arange(5 * per_block) * 3 % 10).astype(np.uint8))
    return images


@pytest.mark.parametrize("severity", SEVERITIES)
def test_load_cifar10_c_selects_the_severity_block_and_converts_to_chw(tmp_path, severity):
    images = fake_cifar10_c(tmp_path, per_block=4)
    x, y = load_cifar10_c(tmp_path, "gaussian_noise", severity)
    block = slice(4 * (severity - 1), 4 * severity)
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 32, 32) and x.is_contiguous()
    assert y.dtype == torch.int64 and y.tolist() == (np.arange(20)[block] * 3 % 10).tolist()
    assert np.array_equal(x.numpy(), images[block].transpose(0, 3, 1, 2))
    assert int(x[1, 2, 5, 7]) == int(images[4 * (severity - 1) + 1, 5, 7, 2])  # N,C,H,W ← N,H,W,C


def test_load_cifar10_c_reads_other_official_files_and_block_sized_labels(tmp_path):
    images = fake_cifar10_c(tmp_path, per_block=3)
    x, _ = load_cifar10_c(tmp_path, "fog", 5)
    assert np.array_equal(x.numpy(), images[12:].transpose(0, 3, 1, 2))
    np.save(tmp_path / "labels.npy", np.arange(3, dtype=np.int64))  # one block of labels only
    _, y = load_cifar10_c(str(tmp_path), "gaussian_noise", 2)
    assert y.tolist() == [0, 1, 2]


def test_load_cifar10_c_errors_name_the_problem_and_the_fix(tmp_path):
    def error(root: Path, name: str = "gaussian_noise", severity: int = 1) -> str:
        with pytest.raises(UserError) as info:
            load_cifar10_c(root, name, severity)
        message = str(info.value)
        assert "\n" not in message
        return message

    assert "does not exist" in error(tmp_path / "missing") and "zenodo" in error(tmp_path / "missing")
    fake_cifar10_c(tmp_path)
    assert "did you mean 'gaussian_noise'" in error(tmp_path, "gausian_noise")
    assert "did you mean 'elastic_transform'" in error(tmp_path, "elastic")
    assert "severity must be an integer 1..5" in error(tmp_path, severity=6)
    assert "no shot_noise.npy" in error(tmp_path, "shot_noise")

    np.save(tmp_path / "shot_noise.npy", np.zeros((10, 3, 32, 32), np.uint8))  # NCHW, not the release's NHWC
    assert "expected uint8 (5·N)×H×W×3" in error(tmp_path, "shot_noise")
    np.save(tmp_path / "shot_noise.npy", np.zeros((12, 32, 32, 3), np.uint8))  # not five equal blocks
    assert "(10, 32, 32, 3)" not in error(tmp_path, "shot_noise") and "12, 32, 32, 3" in error(tmp_path, "shot_noise")
    np.save(tmp_path / "shot_noise.npy", np.zeros((20, 32, 32, 3), np.float32))
    assert "float32" in error(tmp_path, "shot_noise")
    (tmp_path / "shot_noise.npy").write_bytes(b"not a numpy file")
    assert "cannot read" in error(tmp_path, "shot_noise") and "re-download" in error(tmp_path, "shot_noise")

    np.save(tmp_path / "labels.npy", np.zeros(7, np.uint8))
    assert "7 labels" in error(tmp_path)
    np.save(tmp_path / "labels.npy", np.zeros(20, np.float32))
    assert "integer label" in error(tmp_path)
    (tmp_path / "labels.npy").unlink()
    assert "no labels.npy" in error(tmp_path)


# ----------------------------------------------------------------------------------- corruption error


def test_corruption_error_matches_a_hand_written_loop_in_eval_mode():
    model = trained_digits_cnn()
    _, _, x, y = digits_tensors()
    x, y = x[:150], y[:150]
    names, severities = ["gaussian_noise", "impulse_noise"], [1, 5]
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        batched = corruption_error(model, x, y, names, severities, seed=3, batch_size=64)
        whole = corruption_error(model, x, y, names, severities, seed=3, batch_size=1000, constants="imagenet")
        assert model.training  # the mode is restored ...
        for k, v in model.state_dict().items():  # ... and BN running statistics were only read (eval mode)
            assert torch.equal(v, before[k])
    finally:
        model.eval()

    assert list(batched) == [(n, s) for n in names for s in severities]
    with torch.no_grad():
        for name in names:
            for severity in severities:
                g = corruption_generator(3, name, severity)  # one generator per (name, severity), batch after batch
                wrong = 0
                for xb, yb in zip(x.split(64), y.split(64), strict=True):
                    wrong += int((model(CORRUPTIONS[name](xb, severity, g)).argmax(1) != yb).sum())
                assert batched[(name, severity)] == wrong / 150
                # One batch holding everything is exactly corrupt(x, ...).
                xc = corrupt(x, name, severity, seed=3, constants="imagenet")
                assert whole[(name, severity)] == float((model(xc).argmax(1) != y).double().mean())
    # Sanity: the model is good on clean digits, and ImageNet-strength impulse noise (27% of pixels) hurts it.
    with torch.no_grad():
        clean = float((model(x).argmax(1) != y).double().mean())
    assert clean < 0.1 and whole[("impulse_noise", 5)] > clean


def test_corruption_error_rejects_bad_arguments_before_running():
    model = trained_digits_cnn()
    _, _, x, y = digits_tensors()
    with pytest.raises(UserError, match="did you mean 'shot_noise'"):
        corruption_error(model, x[:4], y[:4], ["shot_nosie"], [1])
    with pytest.raises(UserError, match=r"1\.\.5"):
        corruption_error(model, x[:4], y[:4], ["shot_noise"], [0])
    with pytest.raises(UserError, match="4 images but 3 labels"):
        corruption_error(model, x[:4], y[:3], ["shot_noise"], [1])
    assert math.isnan(corruption_error(model, x[:0], y[:0], ["shot_noise"], [1])[("shot_noise", 1)])


# ------------------------------------------------------------- IGD's protocol: over the commonly correct images


def fp64_models() -> dict[str, torch.nn.Module]:
    """Two real digits CNNs (6 epochs and 1 epoch of training) in fp64, so they disagree on some images."""
    import copy

    return {"long": copy.deepcopy(trained_digits_cnn()).double(),
            "short": copy.deepcopy(trained_digits_cnn(1)).double()}


def hand_errors(models, x, y, name, severity, seed):
    """Written out in fp64: the images every model gets right when clean; then, per model, the share of the
    corrupted images misclassified over those (IGD's protocol) and over all images."""
    xc = corrupt(x, name, severity, seed=seed)  # one batch holding everything
    common = [True] * len(y)
    wrong: dict[str, list[bool]] = {}
    with torch.no_grad():
        for label, model in models.items():
            clean = model(x).argmax(1).tolist()
            common = [c and p == t for c, p, t in zip(common, clean, y.tolist(), strict=True)]
            wrong[label] = [p != t for p, t in zip(model(xc).argmax(1).tolist(), y.tolist(), strict=True)]
    kept = [i for i, c in enumerate(common) if c]
    return {label: (sum(w[i] for i in kept) / len(kept), sum(w) / len(w)) for label, w in wrong.items()}, len(kept)


def test_corruption_error_among_a_mask_matches_a_hand_written_fp64_count():
    from advtrain.eval.inductive import commonly_correct

    models = fp64_models()
    _, _, x, y = digits_tensors()
    x, y = x[:200].double(), y[:200]
    common = commonly_correct(list(models.values()), x, y)
    expected, kept = hand_errors(models, x, y, "impulse_noise", 5, seed=2)
    assert 0 < kept < 200 and int(common.sum()) == kept  # the models disagree: the two protocols differ
    for label, model in models.items():
        among = corruption_error(model, x, y, ["impulse_noise"], [5], seed=2, batch_size=1000, among=common)
        over_all = corruption_error(model, x, y, ["impulse_noise"], [5], seed=2, batch_size=1000)
        assert among[("impulse_noise", 5)] == expected[label][0]
        assert over_all[("impulse_noise", 5)] == expected[label][1]
    with pytest.raises(UserError, match="one entry per image"):
        corruption_error(models["long"], x, y, ["impulse_noise"], [5], among=common[:10])


def test_evaluate_inequality_reports_both_corruption_protocols_labelled():
    from advtrain.eval.inequality import evaluate_inequality
    from advtrain.report.analysis_tables import inequality_text

    models = fp64_models()
    _, _, x, y = digits_tensors()
    x, y = x[:200].double(), y[:200]
    result = evaluate_inequality(models, x, y, evals=["corruptions"], seed=4, batch_size=1000)
    for name in CORRUPTIONS:
        for severity in SEVERITIES:
            expected, kept = hand_errors(models, x, y, name, severity, seed=4)
            for label in models:
                entry = result["corruptions"][label]
                assert entry["commonly_correct"][name][str(severity)] == expected[label][0]
                assert entry["all_images"][name][str(severity)] == expected[label][1]
    assert result["n_common_correct"] == kept and result["n"] == 200
    text = inequality_text(result)
    assert f"over the {kept} commonly correct images (IGD's protocol)" in text
    assert "over all 200 images (includes the clean error)" in text

    # Evaluated alone, a model's commonly correct images are the ones it classifies correctly when clean.
    alone = evaluate_inequality({"long": models["long"]}, x, y, evals=["corruptions"], seed=4, batch_size=1000)
    expected, kept = hand_errors({"long": models["long"]}, x, y, "gaussian_noise", 3, seed=4)
    assert alone["corruptions"]["long"]["commonly_correct"]["gaussian_noise"]["3"] == expected["long"][0]
    assert alone["n_common_correct"] == kept > result["n_common_correct"]
