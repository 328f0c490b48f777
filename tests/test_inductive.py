"""Inductive noise, random noise and inductive occlusion (docs/methods.md §7.3) on real digits and a real CNN."""

from __future__ import annotations

import pytest
import torch

from advtrain.eval.inductive import (
    INDUCTIVE_RHOS,
    RANDOM_RHOS,
    commonly_correct,
    error_rate,
    inductive_noise,
    inductive_noise_sweep,
    inductive_occlusion,
    num_elements,
    occlusion_centres,
    occlusion_mask,
    random_noise,
    random_noise_sweep,
    top_k_mask,
)
from advtrain.eval.saliency import saliency
from tests.helpers import digits_tensors, trained_digits_cnn


def correct_digits(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first n test digits the trained CNN classifies correctly (1×8×8 images in [0, 1])."""
    model = trained_digits_cnn()
    _, _, x, y = digits_tensors()
    with torch.no_grad():
        keep = model(x).argmax(1) == y
    return x[keep][:n], y[keep][:n]


def interior(x: torch.Tensor) -> torch.Tensor:
    """Pixels moved into [0.25, 0.75], so any non-zero noise changes them even after clamping."""
    return 0.25 + 0.5 * x


def topk_oracle(scores: torch.Tensor, k: int) -> torch.Tensor:
    flat = torch.zeros(scores.flatten(1).shape, dtype=torch.bool)
    for b, idx in enumerate(torch.topk(scores.flatten(1), k, dim=1).indices):
        flat[b, idx] = True
    return flat.view(scores.shape)


# --------------------------------------------------------------------------------- element selection


def test_num_elements_truncates_rho_times_size_as_the_igd_code_does() -> None:
    # IGD's evaluation code takes k = int(C·H·W·ρ). Rounding half up instead gives one element more at
    # these ρ of the default grids: 3 of 10 inductive and 5 of 10 random ρ on CIFAR (3·32·32), 4 of 10
    # inductive ρ on 1×8×8 digits.
    cifar, digits = 3 * 32 * 32, 1 * 8 * 8
    assert {rho: num_elements(rho, cifar) for rho in (0.008, 0.01, 0.012)} == {0.008: 24, 0.01: 30, 0.012: 36}
    assert [num_elements(rho, cifar) for rho in (0.04, 0.08, 0.12, 0.16, 0.18)] == [122, 245, 368, 491, 552]
    assert [num_elements(rho, digits) for rho in (0.008, 0.01, 0.012, 0.014)] == [0, 0, 0, 0]
    for numel in (cifar, digits, 3 * 64 * 64, 3 * 224 * 224):
        for rho in (*INDUCTIVE_RHOS, *RANDOM_RHOS):
            assert num_elements(rho, numel) == int(numel * rho), (numel, rho)
    assert num_elements(0.002, cifar) == 6 and num_elements(0.02, cifar) == 61  # 6.144, 61.44
    assert num_elements(0.25, 10) == 2  # 2.5, truncated
    assert num_elements(0.0, 64) == 0 and num_elements(1.0, 64) == 64
    with pytest.raises(ValueError, match="rho"):
        num_elements(1.5, 64)
    assert INDUCTIVE_RHOS == (0.002, 0.004, 0.006, 0.008, 0.01, 0.012, 0.014, 0.016, 0.018, 0.02)
    assert RANDOM_RHOS == (0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.14, 0.16, 0.18, 0.2)


def test_inductive_noise_perturbs_int_rho_times_size_elements() -> None:
    # ρ = 0.8% of a 3×32×32 image: exactly 24 elements change (the authors' int(24.576)), not 25.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).double()
    x = 0.25 + 0.5 * torch.rand(4, 3, 32, 32, dtype=torch.float64)
    y = torch.arange(4)
    out = inductive_noise(model, x, y, 0.008, "replace", torch.Generator().manual_seed(1))
    assert (out != x).flatten(1).sum(1).tolist() == [24] * 4


def test_top_k_mask_takes_largest_signed_values() -> None:
    scores = torch.tensor([[-10.0, 1.0, 2.0, -20.0], [5.0, -1.0, 0.0, 4.0]])
    assert top_k_mask(scores, 2).tolist() == [[False, True, True, False], [True, False, False, True]]
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 3, 5, 5, generator=g)
    for k in (0, 1, 7, 75):
        mask = top_k_mask(s, k)
        assert mask.shape == s.shape and mask.flatten(1).sum(1).tolist() == [k] * 6
        assert torch.equal(mask, topk_oracle(s, k))
    with pytest.raises(ValueError, match="k must"):
        top_k_mask(s, 76)


# ------------------------------------------------------------------------------------- inductive noise


def test_inductive_noise_add_perturbs_exactly_the_top_k_saliency_elements() -> None:
    model = trained_digits_cnn()
    x, y = correct_digits(24)
    x = interior(x)
    rho, k = 0.1, 6  # round(0.1 · 64) = 6
    out = inductive_noise(model, x, y, rho, "add", torch.Generator().manual_seed(3))
    expected_mask = topk_oracle(saliency(model, x, y), k)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    changed = out != x
    assert changed.flatten(1).sum(1).tolist() == [k] * len(x)
    assert torch.equal(changed, expected_mask)
    assert torch.equal(out, torch.where(expected_mask, (x + noise).clamp(0, 1), x))


def test_inductive_noise_replace_writes_clamped_noise() -> None:
    model = trained_digits_cnn()
    x, y = correct_digits(16)
    out = inductive_noise(model, x, y, 0.05, "replace", torch.Generator().manual_seed(5))
    mask = topk_oracle(saliency(model, x, y), 3)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out[mask], noise[mask].clamp(0, 1))
    assert torch.equal(out[~mask], x[~mask])
    assert out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError, match="noise mode"):
        inductive_noise(model, x, y, 0.05, "swap")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- random noise


def test_random_noise_perturbs_exactly_k_uniformly_chosen_elements() -> None:
    x = torch.full((2000, 1, 8, 8), 0.5)
    k = 8  # round(0.125 · 64)
    out = random_noise(x, 0.125, "add", torch.Generator().manual_seed(0))
    changed = (out != x).flatten(1)
    assert changed.sum(1).eq(k).all()
    # Positions differ between examples and each is chosen about k/64 of the time:
    # 2000 · 8/64 = 250 expected per position, binomial sd ≈ 14.8; ±5 sd.
    assert len({tuple(row.nonzero().squeeze(1).tolist()) for row in changed[:50]}) > 45
    counts = changed.sum(0)
    assert counts.min() > 250 - 75 and counts.max() < 250 + 75
    again = random_noise(x, 0.125, "add", torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    replaced = random_noise(x, 0.125, "replace", torch.Generator().manual_seed(1))
    assert (replaced != x).flatten(1).sum(1).le(k).all() and replaced.min() >= 0 and replaced.max() <= 1


# ----------------------------------------------------------------------------------------- occlusion


def square(h: int, w: int, rows: range, cols: range) -> torch.Tensor:
    m = torch.zeros(h, w, dtype=torch.bool)
    for i in rows:
        for j in cols:
            m[i, j] = True
    return m


def test_occlusion_mask_is_the_stated_squares() -> None:
    # [i − r, i + r) × [j − r, j + r): centre (2, 3), r = 1 → rows 1..2, cols 2..3.
    got = occlusion_mask(torch.tensor([[[2, 3]]]), 1, 6, 6)
    assert torch.equal(got[0], square(6, 6, range(1, 3), range(2, 4)))
    # Clipped at the border: centre (0, 0), r = 2 → rows [−2, 2) ∩ [0, 6) = 0..1, same for cols.
    got = occlusion_mask(torch.tensor([[[0, 0]]]), 2, 6, 6)
    assert torch.equal(got[0], square(6, 6, range(2), range(2)))
    # Union of 2 centres, r = 1: (0, 0) → just pixel (0, 0); (5, 5) → rows 4..5 × cols 4..5.
    got = occlusion_mask(torch.tensor([[[0, 0], [5, 5]]]), 1, 6, 6)
    expected = [
        [1, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
        [0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 1, 1],
    ]
    assert got[0].int().tolist() == expected
    # Batched, non-square image, r = 0 paints nothing; r = max(H, W) paints everything from any centre.
    batch = occlusion_mask(torch.tensor([[[1, 6]], [[3, 0]]]), 2, 4, 7)
    assert torch.equal(batch[0], square(4, 7, range(0, 3), range(4, 7)))
    assert torch.equal(batch[1], square(4, 7, range(1, 4), range(0, 2)))
    assert not occlusion_mask(torch.tensor([[[2, 2]]]), 0, 6, 6).any()
    corners = torch.tensor([[[i, j]] for i in (0, 7) for j in (0, 7)])
    assert occlusion_mask(corners, 8, 8, 8).all()


def test_occlusion_centres_use_channel_mean_signed_saliency_descending() -> None:
    s = torch.zeros(1, 2, 3, 3)
    s[0, 0, 0, 0], s[0, 1, 0, 0] = 10.0, -10.0  # channel mean 0: not a centre
    s[0, :, 2, 1] = 3.0  # mean 3: first
    s[0, 0, 1, 2] = 4.0  # mean 2: second
    s[0, :, 0, 2] = -5.0  # large magnitude but negative: last
    assert occlusion_centres(s, 2).tolist() == [[[2, 1], [1, 2]]]
    assert occlusion_centres(s, 9)[0, -1].tolist() == [0, 2]


def occlusion_oracle(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, color: float, n_max: int, r_max: int
) -> list[bool]:
    """One image at a time, pixel by pixel, in the stated (n outer, r inner) order."""
    s = saliency(model, x, y).mean(1)  # (B, H, W)
    _, _, h, w = x.shape
    out = []
    for b in range(len(x)):
        idx = torch.topk(s[b].flatten(), n_max).indices.tolist()
        centres = [(i // w, i % w) for i in idx]
        broken = False
        for n in range(1, n_max + 1):
            for r in range(1, r_max + 1):
                img = x[b].clone()
                for p in range(h):
                    for q in range(w):
                        if any(ci - r <= p < ci + r and cj - r <= q < cj + r for ci, cj in centres[:n]):
                            img[:, p, q] = color
                with torch.no_grad():
                    if model(img[None]).argmax(1).item() != y[b].item():
                        broken = True
                        break
            if broken:
                break
        out.append(broken)
    return out


def test_inductive_occlusion_matches_a_per_image_loop() -> None:
    model = trained_digits_cnn()
    x, y = correct_digits(12)
    result = inductive_occlusion(model, x, y, colors=(0.5, 1.0), n_max=3, r_max=4, batch_size=5)
    assert set(result) == {0.5, 1.0}
    for color, broken in result.items():
        assert broken.dtype == torch.bool and broken.shape == (12,)
        assert broken.tolist() == occlusion_oracle(model, x, y, color, n_max=3, r_max=4)
    # Not trivially all or nothing on this set, so the comparison means something.
    flags = torch.cat(list(result.values()))
    assert flags.any() and not flags.all()


def test_inductive_occlusion_whole_image_and_monotone_in_search_size() -> None:
    model = trained_digits_cnn()
    x, y = correct_digits(60)
    # r up to 20 ≥ 8 paints the whole 8×8 image with c at the last radius: every image whose label
    # differs from the model's class for the constant-c image must end up broken.
    wide = inductive_occlusion(model, x, y, colors=(0.0, 0.5, 1.0), n_max=1, r_max=20)
    seen_constant_break = False
    for color, broken in wide.items():
        with torch.no_grad():
            constant_class = model(torch.full((1, 1, 8, 8), color)).argmax(1).item()
        must_break = y != constant_class
        assert broken[must_break].all()
        seen_constant_break |= bool(must_break.any())
    assert seen_constant_break
    # A larger (n, r) grid tries every pair of a smaller one: broken can only grow.
    small = inductive_occlusion(model, x, y, colors=(1.0,), n_max=2, r_max=2)[1.0]
    large = inductive_occlusion(model, x, y, colors=(1.0,), n_max=3, r_max=4)[1.0]
    assert (large | ~small).all() and large.sum() >= small.sum()


# ------------------------------------------------------------------------ commonly correct and sweeps


def test_commonly_correct_matches_a_hand_loop_and_restores_mode() -> None:
    models = [trained_digits_cnn(), trained_digits_cnn(2)]
    _, _, x, y = digits_tensors()
    x, y = x[:120], y[:120]
    for m in models:
        m.train()
    try:
        mask = commonly_correct(models, x, y, batch_size=32)
        assert all(m.training for m in models)
    finally:
        for m in models:
            m.eval()
    expected = []
    for i in range(len(x)):
        with torch.no_grad():
            expected.append(all(m(x[i : i + 1]).argmax(1).item() == y[i].item() for m in models))
    assert mask.tolist() == expected
    assert 0 < mask.sum() < len(x)  # the weaker model misses some the strong one gets


def test_sweeps_are_reproducible_and_match_single_calls() -> None:
    model = trained_digits_cnn()
    x, y = correct_digits(40)
    rhos = (0.0, 0.05, 0.1, 0.2)
    a = inductive_noise_sweep(model, x, y, rhos=rhos, mode="add", seed=4)
    b = inductive_noise_sweep(model, x, y, rhos=rhos, mode="add", seed=4)
    assert a == b and list(a) == list(rhos) and a[0.0] == 0.0
    assert all(0.0 <= v <= 1.0 for v in a.values()) and a[0.2] > 0
    for rho in rhos:
        single = inductive_noise(model, x, y, rho, "add", torch.Generator().manual_seed(4))
        assert a[rho] == error_rate(model, single, y)
    r = random_noise_sweep(model, x, y, rhos=rhos, mode="replace", seed=9)
    assert r == random_noise_sweep(model, x, y, rhos=rhos, mode="replace", seed=9) and r[0.0] == 0.0
    for rho in rhos:
        single = random_noise(x, rho, "replace", torch.Generator().manual_seed(9))
        assert r[rho] == error_rate(model, single, y)


def test_everything_runs_in_eval_mode_and_restores_the_mode() -> None:
    model = trained_digits_cnn()
    x, y = correct_digits(20)
    in_eval = {
        "noise": inductive_noise(model, x, y, 0.1, "add", torch.Generator().manual_seed(0)),
        "sweep": inductive_noise_sweep(model, x, y, rhos=(0.1,), seed=0),
        "occlusion": inductive_occlusion(model, x, y, n_max=2, r_max=3),
        "error": error_rate(model, x, y),
    }
    model.train()
    try:
        in_train = {
            "noise": inductive_noise(model, x, y, 0.1, "add", torch.Generator().manual_seed(0)),
            "sweep": inductive_noise_sweep(model, x, y, rhos=(0.1,), seed=0),
            "occlusion": inductive_occlusion(model, x, y, n_max=2, r_max=3),
            "error": error_rate(model, x, y),
        }
        assert all(m.training for m in model.modules())
    finally:
        model.eval()
    assert torch.equal(in_eval["noise"], in_train["noise"])
    assert in_eval["sweep"] == in_train["sweep"] and in_eval["error"] == in_train["error"] == 0.0
    for color in in_eval["occlusion"]:
        assert torch.equal(in_eval["occlusion"][color], in_train["occlusion"][color])
    assert error_rate(model, x[:0], y[:0]) != error_rate(model, x[:0], y[:0])  # NaN for no images


def test_evaluate_inequality_uses_the_options_rho_grids_on_the_commonly_correct_images() -> None:
    from advtrain.eval.inequality import InequalityOptions, evaluate_inequality

    model = trained_digits_cnn()
    _, _, x, y = digits_tensors()
    x, y = x[:80], y[:80]
    options = InequalityOptions(inductive_rhos=(0.05, 0.2), random_rhos=(0.1,), noise_modes=("add",))
    out = evaluate_inequality({"cnn": model}, x, y, evals=["inductive_noise", "random_noise"], seed=3,
                              options=options)
    keep = commonly_correct([model], x, y)
    assert out["inductive_noise"]["cnn"]["add"] == {
        f"{rho:g}": err for rho, err in inductive_noise_sweep(model, x[keep], y[keep], (0.05, 0.2), "add", 3).items()}
    random = random_noise_sweep(model, x[keep], y[keep], (0.1,), "add", 3)
    assert out["random_noise"]["cnn"]["add"] == {"0.1": random[0.1]}
    assert out["inductive_noise"]["cnn"]["add"]["0.2"] > 0  # 12 of 64 values: the CNN makes mistakes


@pytest.mark.parametrize("rhos", [(), (0.1, 1.5), (-0.1,)])
def test_inequality_options_refuse_a_rho_grid_outside_0_1(rhos: tuple[float, ...]) -> None:
    from advtrain.eval.inequality import InequalityOptions

    with pytest.raises(ValueError, match="inductive_rhos must be a non-empty list of fractions in"):
        InequalityOptions(inductive_rhos=rhos)
