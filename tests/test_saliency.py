"""Attributions and Gini (docs/methods.md §7.2): closed forms, hand-computed values, real digits CNN."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from advtrain.eval.saliency import (
    ATTRIBUTIONS,
    REGIONAL_CONVENTIONS,
    default_block,
    gini_index,
    gini_report,
    global_gini,
    input_x_gradient,
    integrated_gradients,
    mean_over,
    regional_gini,
    saliency,
    smoothgrad,
)
from tests.helpers import digits_tensors, trained_digits_cnn


def pairwise_gini(a: torch.Tensor) -> torch.Tensor:
    """Σᵢⱼ|aᵢ − aⱼ| / (2 M Σa) over the last dim: the definition, independent of sorting."""
    m = a.shape[-1]
    diffs = (a[..., :, None] - a[..., None, :]).abs().sum((-2, -1))
    return diffs / (2 * m * a.sum(-1))


def linear_model(c: int = 2, h: int = 3, w: int = 3, classes: int = 4) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    lin = nn.Linear(c * h * w, classes).double()
    return nn.Sequential(nn.Flatten(), lin), lin.weight.detach()


def grads(model: nn.Module) -> list[torch.Tensor | None]:
    """Copies of the parameter .grad (the shared trained CNN keeps its last training step's)."""
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def same_grads(model: nn.Module, before: list[torch.Tensor | None]) -> bool:
    return all(
        (g is None and p.grad is None) or (g is not None and p.grad is not None and torch.equal(g, p.grad))
        for p, g in zip(model.parameters(), before, strict=True)
    )


def digits_batch(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    _, _, x, y = digits_tensors()
    return x[:n], y[:n]


# ---------------------------------------------------------------------------------------------- Gini


def test_gini_equal_values_is_zero() -> None:
    assert gini_index(torch.full((7,), 2.5, dtype=torch.float64)).item() == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("m", [1, 2, 5, 64])
def test_gini_single_nonzero_is_m_minus_one_over_m(m: int) -> None:
    a = torch.zeros(m, dtype=torch.float64)
    a[m // 2] = 3.0
    assert gini_index(a).item() == pytest.approx((m - 1) / m, abs=1e-15)


def test_gini_hand_computed_vector() -> None:
    # a = [3, 1, 4, 2] → sorted [1, 2, 3, 4], M = 4, Σa = 10, Σ i·a₍ᵢ₎ = 1 + 4 + 9 + 16 = 30:
    # G = 2·30/(4·10) − 5/4 = 1.5 − 1.25 = 0.25.
    # Pairwise: the 6 unordered differences are 1,2,3,1,2,1 (sum 10), ordered pairs 20; 20/(2·4·10) = 0.25.
    a = torch.tensor([3.0, 1.0, 4.0, 2.0], dtype=torch.float64)
    assert gini_index(a).item() == pytest.approx(0.25, abs=1e-15)
    assert pairwise_gini(a).item() == pytest.approx(0.25, abs=1e-15)


def test_gini_sorted_formula_matches_pairwise_definition() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.rand(20, 37, generator=g, dtype=torch.float64) ** 3  # skewed, like saliency magnitudes
    torch.testing.assert_close(gini_index(a), pairwise_gini(a), rtol=0, atol=1e-10)


def test_gini_all_zero_is_zero_with_finite_gradient() -> None:
    a = torch.zeros(3, 5, dtype=torch.float64, requires_grad=True)
    g = gini_index(a)
    assert torch.equal(g, torch.zeros(3, dtype=torch.float64))
    g.sum().backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()
    # A batch mixing an all-zero row and a normal row: the normal row's gradient is untouched by the guard.
    b = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 4.0]], dtype=torch.float64, requires_grad=True)
    gini_index(b).sum().backward()
    assert torch.isfinite(b.grad).all() and b.grad[0].abs().sum() == 0 and b.grad[1].abs().sum() > 0


def test_gini_batched_along_any_dim() -> None:
    g = torch.Generator().manual_seed(2)
    a = torch.rand(4, 6, 3, generator=g, dtype=torch.float64)
    out = gini_index(a, dim=1)
    assert out.shape == (4, 3)
    for i in range(4):
        for j in range(3):
            assert out[i, j].item() == pytest.approx(gini_index(a[i, :, j]).item(), abs=1e-14)
    torch.testing.assert_close(gini_index(a, dim=-1), pairwise_gini(a), rtol=0, atol=1e-12)


def test_gini_gradient_matches_finite_differences() -> None:
    # Distinct, well-separated positive values: away from ties (where the sort order, hence G, has a kink).
    g = torch.Generator().manual_seed(3)
    base = torch.arange(1, 9, dtype=torch.float64).repeat(3, 1)
    a = (base + 0.3 * torch.rand(3, 8, generator=g, dtype=torch.float64))[:, torch.randperm(8, generator=g)]
    a.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: gini_index(t, dim=1), (a,), eps=1e-6, atol=1e-8)


def test_gini_rejects_negative_and_empty_input() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        gini_index(torch.tensor([1.0, -0.5, 2.0]))
    with pytest.raises(ValueError, match="at least one"):
        gini_index(torch.zeros(3, 0))


def test_global_gini_uses_magnitudes_over_all_elements() -> None:
    attr = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    attr[0, 1, 2, 3] = -5.0  # one non-zero of 48, negative: |·| counts it
    attr[1] = -1.0  # all equal magnitude
    torch.testing.assert_close(global_gini(attr), torch.tensor([47 / 48, 0.0], dtype=torch.float64))


# ------------------------------------------------------------------------------------- regional Gini


def test_regional_gini_one_block_holds_all_mass() -> None:
    # 8×8 map, one channel, all mass in the top-left 4×4 block: 4 blocks, one non-zero → 3/4 both ways.
    attr = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    attr[0, 0, :4, :4] = torch.arange(16, dtype=torch.float64).view(4, 4) - 7.5  # signed, uneven inside
    for convention in REGIONAL_CONVENTIONS:
        assert regional_gini(attr, convention, block=4).item() == pytest.approx(0.75, abs=1e-15)


def test_regional_gini_channels_summed_by_duan_separate_for_igd() -> None:
    # 3 channels, mass only in channel 0's top-left 4×4 block. Duan sums channels: 4 regions, one
    # non-zero → 3/4. IGD keeps channels apart: 3·4 = 12 regions, one non-zero → 11/12.
    attr = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    attr[0, 0, :4, :4] = 1.0
    assert regional_gini(attr, "duan", block=4).item() == pytest.approx(3 / 4, abs=1e-15)
    assert regional_gini(attr, "igd", block=4).item() == pytest.approx(11 / 12, abs=1e-15)
    # The same mass spread over the 3 channels of that block changes nothing for Duan.
    spread = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    spread[0, :, :4, :4] = 1.0 / 3
    assert regional_gini(spread, "duan", block=4).item() == pytest.approx(3 / 4, abs=1e-15)


def test_regional_gini_duan_keeps_partial_edge_blocks() -> None:
    # 6×6 uniform map, n = 4: blocks cover 4×4, 4×2, 2×4, 2×2 pixels → sums [16, 8, 8, 4].
    # Sorted [4, 8, 8, 16], Σ = 36, Σ i·a = 4 + 16 + 24 + 64 = 108: G = 216/144 − 5/4 = 0.25.
    attr = torch.ones(1, 1, 6, 6, dtype=torch.float64)
    assert regional_gini(attr, "duan", block=4).item() == pytest.approx(0.25, abs=1e-15)


def test_regional_gini_igd_reflect_pads_bottom_right_to_a_multiple() -> None:
    # 6×6, n = 4: reflect-padded by two pixels at the bottom and right only, as IGD's evaluation code
    # pads, to 8×8 (padded row/column 6 holds 4, 7 holds 3). A[1,1] = 1 appears once, at (1,1); |A[3,3]| = 1
    # at (3,3), (3,7), (7,3) and (7,7). Block means ∝ [2, 1, 1, 1]: sorted [1, 1, 1, 2], Σ = 5,
    # Σ i·a = 1 + 2 + 3 + 8 = 14, G = 28/20 − 5/4 = 0.15. (Padding one pixel on each side instead would
    # give [0, 0, 1, 4] → 0.65; zero padding [0, 0, 1, 1] → 0.5.)
    attr = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    attr[0, 0, 1, 1] = 1.0
    attr[0, 0, 3, 3] = -1.0
    assert regional_gini(attr, "igd", block=4).item() == pytest.approx(0.15, abs=1e-15)
    # A uniform map stays perfectly equal after reflect padding.
    assert regional_gini(torch.ones(2, 3, 6, 6), "igd", block=4).tolist() == [0.0, 0.0]


def hand_igd_regional_gini(attr: torch.Tensor, n: int) -> list[float]:
    """IGD's regional Gini written out in fp64 Python: reflect |A| past the bottom/right edge (index
    i ≥ H reads row 2(H − 1) − i), average each channel's n×n windows, pairwise Gini over all of them."""
    b, c, h, w = attr.shape
    rows, cols = -(-h // n) * n, -(-w // n) * n
    out = []
    for k in range(b):
        means = []
        for ch in range(c):
            for top in range(0, rows, n):
                for left in range(0, cols, n):
                    total = 0.0
                    for i in range(top, top + n):
                        for j in range(left, left + n):
                            si = i if i < h else 2 * (h - 1) - i
                            sj = j if j < w else 2 * (w - 1) - j
                            total += abs(float(attr[k, ch, si, sj]))
                    means.append(total / (n * n))
        m, mass = len(means), sum(means)
        out.append(sum(abs(u - v) for u in means for v in means) / (2 * m * mass))
    return out


def test_regional_gini_igd_matches_a_hand_written_fp64_reimplementation() -> None:
    # 20×27 is a multiple of 16 on neither side: 12 reflected rows below, 5 columns to the right.
    attr = torch.randn(2, 3, 20, 27, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = hand_igd_regional_gini(attr, 16)
    assert regional_gini(attr, "igd").tolist() == pytest.approx(expected, abs=1e-12)
    # Block 8 on a 20×20 map: 4 reflected rows and columns.
    square = attr[:, :, :20, :20]
    assert regional_gini(square, "igd", block=8).tolist() == pytest.approx(hand_igd_regional_gini(square, 8),
                                                                           abs=1e-12)


def test_regional_gini_default_blocks_and_errors() -> None:
    assert default_block("duan", 32, 32) == 4
    assert default_block("duan", 64, 64) == 4
    assert default_block("duan", 224, 224) == 16
    assert default_block("igd", 32, 32) == 16
    # ImageNet-sized map, mass in one 16×16 block: Duan's default n = 16 → 196 regions, one non-zero.
    attr = torch.zeros(1, 3, 224, 224, dtype=torch.float64)
    attr[0, :, 16:32, 48:64] = 1.0
    assert regional_gini(attr, "duan").item() == pytest.approx(195 / 196, abs=1e-12)
    # IGD's default n = 16, per channel: 3·196 regions, 3 equal non-zero ones → 1 − 3/588.
    assert regional_gini(attr, "igd").item() == pytest.approx(1 - 3 / 588, abs=1e-12)
    with pytest.raises(ValueError, match="convention"):
        regional_gini(attr, "other")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too small"):
        regional_gini(torch.ones(1, 1, 3, 3), "igd", block=16)
    with pytest.raises(ValueError, match="B, C, H, W"):
        regional_gini(torch.ones(3, 3), "duan")


# ------------------------------------------------------------------------------------- attributions


def test_saliency_of_linear_model_is_the_true_class_weight_row() -> None:
    model, weight = linear_model()
    x = torch.rand(5, 2, 3, 3, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 1, 2])
    s = saliency(model, x, y)
    assert s.shape == x.shape and s.dtype == torch.float64 and not s.requires_grad
    torch.testing.assert_close(s, weight[y].view_as(x), rtol=0, atol=1e-15)
    assert all(p.grad is None for p in model.parameters())


def test_saliency_matches_finite_differences_on_digits_cnn() -> None:
    model = trained_digits_cnn()
    double = copy.deepcopy(model).double().eval()
    x, y = digits_batch(2)
    x = x.double()
    s = saliency(double, x, y)
    h = 1e-6
    for b, (c, i, j) in [(0, (0, 3, 4)), (0, (0, 5, 2)), (1, (0, 2, 2)), (1, (0, 6, 5))]:
        plus, minus = x[b : b + 1].clone(), x[b : b + 1].clone()
        plus[0, c, i, j] += h
        minus[0, c, i, j] -= h
        with torch.no_grad():
            fd = (double(plus)[0, y[b]] - double(minus)[0, y[b]]) / (2 * h)
        assert s[b, c, i, j].item() == pytest.approx(fd.item(), rel=1e-5, abs=1e-7)


def test_saliency_keeps_mode_and_parameter_grads_and_works_under_no_grad() -> None:
    model = trained_digits_cnn()
    x, y = digits_batch(8)
    before = grads(model)
    model.train()
    try:
        with torch.no_grad():
            s = saliency(model, x, y)
        assert model.training and all(m.training for m in model.modules())
    finally:
        model.eval()
    assert s.dtype == torch.float32 and torch.isfinite(s).all() and s.abs().sum() > 0
    assert same_grads(model, before)


def test_integrated_gradients_completeness_on_linear_model() -> None:
    # z_y is linear, so ∇z_y is the constant row w_y and IG = x ⊙ w_y exactly (for any steps).
    model, weight = linear_model()
    x = torch.rand(4, 2, 3, 3, dtype=torch.float64)
    y = torch.tensor([2, 0, 3, 1])
    for steps in (1, 7, 50):
        ig = integrated_gradients(model, x, y, steps=steps)
        torch.testing.assert_close(ig, x * weight[y].view_as(x), rtol=0, atol=1e-14)
    # Completeness: Σ IG = z_y(x) − z_y(0).
    with torch.no_grad():
        gap = model(x).gather(1, y[:, None]).squeeze(1) - model(torch.zeros_like(x)).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(ig.flatten(1).sum(1), gap, rtol=0, atol=1e-13)
    assert all(p.grad is None for p in model.parameters())


def test_integrated_gradients_nearly_complete_on_digits_cnn() -> None:
    model = trained_digits_cnn()
    x, y = digits_batch(8)
    ig = integrated_gradients(model, x, y, steps=64)
    with torch.no_grad():
        gap = model(x).gather(1, y[:, None]).squeeze(1) - model(torch.zeros_like(x)).gather(1, y[:, None]).squeeze(1)
    # A ReLU network is piecewise linear along the path: the midpoint sum is close, not exact.
    torch.testing.assert_close(ig.flatten(1).sum(1), gap, rtol=0.01, atol=0.01 * gap.abs().max().item())


def test_input_x_gradient_is_input_times_saliency() -> None:
    model = trained_digits_cnn()
    x, y = digits_batch(8)
    torch.testing.assert_close(input_x_gradient(model, x, y), x * saliency(model, x, y), rtol=0, atol=0)


def test_smoothgrad_defaults_and_closed_forms() -> None:
    model, weight = linear_model()
    x = torch.rand(3, 2, 3, 3, dtype=torch.float64)
    y = torch.tensor([1, 2, 0])
    # Linear model: the gradient is the same at every noisy point.
    g = torch.Generator().manual_seed(0)
    sg = smoothgrad(model, x, y, samples=5, generator=g)
    torch.testing.assert_close(sg, weight[y].view_as(x), rtol=0, atol=1e-14)
    # CNN: σ = 0 is plain saliency; a seeded generator reproduces the map; noise changes it.
    cnn = trained_digits_cnn()
    before = grads(cnn)
    xd, yd = digits_batch(4)
    torch.testing.assert_close(smoothgrad(cnn, xd, yd, samples=3, sigma=0.0), saliency(cnn, xd, yd))
    a = smoothgrad(cnn, xd, yd, samples=4, generator=torch.Generator().manual_seed(7))
    b = smoothgrad(cnn, xd, yd, samples=4, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and not torch.allclose(a, saliency(cnn, xd, yd))
    assert same_grads(cnn, before)


def test_attribution_registry() -> None:
    assert set(ATTRIBUTIONS) == {"saliency", "integrated_gradients", "input_x_gradient", "smoothgrad"}
    model, _ = linear_model()
    x = torch.rand(2, 2, 3, 3, dtype=torch.float64)
    y = torch.tensor([0, 1])
    for fn in ATTRIBUTIONS.values():
        assert fn(model, x, y).shape == x.shape


# -------------------------------------------------------------------------------------------- report


def test_gini_report_matches_eval_mode_computation_and_restores_mode() -> None:
    model = trained_digits_cnn()
    x, y = digits_batch(40)
    model.train()
    try:
        report = gini_report(model, x, y, batch_size=16, blocks={"igd": 4})
        assert model.training and all(m.training for m in model.modules())
    finally:
        model.eval()
    s = saliency(model, x, y)
    torch.testing.assert_close(report["global"], global_gini(s), rtol=0, atol=1e-6)
    torch.testing.assert_close(report["regional_duan"], regional_gini(s, "duan", 4), rtol=0, atol=1e-6)
    torch.testing.assert_close(report["regional_igd"], regional_gini(s, "igd", 4), rtol=0, atol=1e-6)
    with torch.no_grad():
        assert torch.equal(report["correct"], model(x).argmax(1) == y)
    # Digits is 1-channel: Duan (sum over 4×4 blocks) and IGD (mean over 4×4 blocks) agree there.
    torch.testing.assert_close(report["regional_duan"], report["regional_igd"], rtol=0, atol=1e-6)
    assert ((report["global"] > 0) & (report["global"] < 1)).all()
    correct = report["correct"]
    assert mean_over(report["global"], correct) == pytest.approx(report["global"][correct].double().mean().item())
    assert mean_over(report["global"][:0]) != mean_over(report["global"][:0])  # NaN on an empty set


def test_gini_report_other_attributions_and_errors() -> None:
    model = trained_digits_cnn()
    x, y = digits_batch(6)
    report = gini_report(
        model, x, y, "smoothgrad", blocks={"igd": 4},
        attribution_kwargs={"samples": 2, "generator": torch.Generator().manual_seed(0)},
    )
    assert report["global"].shape == (6,)
    ig = gini_report(model, x, y, "integrated_gradients", blocks={"igd": 4}, attribution_kwargs={"steps": 4})
    assert torch.isfinite(ig["regional_igd"]).all()
    with pytest.raises(ValueError, match="attribution"):
        gini_report(model, x, y, "gradcam")
