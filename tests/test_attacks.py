import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from advtrain.attacks import attack_loss, bn_policy, cw_margin, fgsm, pgd
from tests.helpers import digits_tensors, trained_digits_cnn


def tiny_model(channels: int, classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, classes),
    ).eval()


@settings(max_examples=40, deadline=None)
@given(
    channels=st.sampled_from([1, 3]),
    size=st.integers(2, 9),
    batch=st.integers(1, 5),
    norm=st.sampled_from(["linf", "l2"]),
    eps=st.floats(0.0, 2.0),
    steps=st.integers(0, 4),
    start=st.booleans(),
    restarts=st.integers(1, 2),
    keep=st.sampled_from(["last", "first_fooling"]),
    loss=st.sampled_from(["ce", "cw"]),
    seed=st.integers(0, 2**16),
)
def test_adversarial_examples_lie_in_the_ball_and_the_box(
    channels, size, batch, norm, eps, steps, start, restarts, keep, loss, seed
):
    eps = min(eps, 1.0) if norm == "linf" else eps  # an L∞ ε above 1 is refused (0..255 pixel units)
    model = tiny_model(channels, 3)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, channels, size, size, generator=g)
    y = torch.randint(0, 3, (batch,), generator=g)
    x_adv = pgd(model, x, y, eps=eps, steps=steps, norm=norm, loss=loss, random_start=start,
                restarts=restarts, keep=keep, generator=g)
    x_fgsm = fgsm(model, x, y, eps=eps, norm=norm)
    for adv in (x_adv, x_fgsm):
        assert adv.shape == x.shape
        assert adv.min() >= 0 and adv.max() <= 1
        delta = (adv - x).flatten(1)
        if norm == "linf":
            assert delta.abs().max() <= eps + 1e-6
        else:
            assert delta.norm(dim=1).max() <= eps * (1 + 1e-5) + 1e-6


def test_attacks_leave_parameter_gradients_and_mode_alone():
    model = tiny_model(3, 3)
    x, y = torch.rand(4, 3, 6, 6), torch.tensor([0, 1, 2, 0])
    pgd(model, x, y, eps=0.1, steps=2)
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_fgsm_is_the_closed_form_signed_step():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.rand(5, 3, 2, 2) * 0.5 + 0.25, torch.tensor([0, 1, 2, 1, 0])
    x_req = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_req), y, reduction="sum"), x_req)
    expected = (x + 0.1 * grad.sign()).clamp(0, 1)
    assert torch.equal(fgsm(model, x, y, eps=0.1, keep="last"), expected)


def test_losses_match_their_formulas():
    logits = torch.tensor([[2.0, 1.0, -1.0], [0.0, 3.0, 0.5]])
    y = torch.tensor([0, 2])
    assert torch.allclose(cw_margin(logits, y), torch.tensor([1.0 - 2.0, 3.0 - 0.5]))
    assert torch.allclose(cw_margin(logits, y, kappa=1.0), torch.tensor([-1.0, 1.0]))
    clean = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    p, q = clean.softmax(1), logits.softmax(1)
    kl = (p * (p.log() - q.log())).sum(1)
    assert torch.allclose(attack_loss(logits, y, "kl", clean_logits=clean), kl, atol=1e-6)
    with pytest.raises(ValueError):
        attack_loss(logits, y, "kl")


def _accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def test_pgd_accuracy_never_rises_with_more_steps_from_the_same_start():
    model = trained_digits_cnn()
    _, _, x, y = digits_tensors()
    accs = []
    for steps in (1, 2, 5, 10, 20):
        g = torch.Generator().manual_seed(123)
        accs.append(_accuracy(model, pgd(model, x, y, eps=0.1, steps=steps, step_size=0.02,
                                         keep="first_fooling", generator=g), y))
    assert all(later <= earlier for earlier, later in itertools.pairwise(accs)), accs
    assert accs[0] > accs[-1]  # the attack actually works


def hand_written_pgd(model, x, y, eps, alpha, steps, delta0):
    """An independent L∞ PGD loop (Madry et al.), written out in full."""
    x_adv = (x + delta0).clamp(0, 1)
    for _ in range(steps):
        x_adv = x_adv.clone().detach().requires_grad_(True)
        loss = F.cross_entropy(model(x_adv), y)
        loss.backward()
        with torch.no_grad():
            x_adv = x_adv + alpha * x_adv.grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def test_pgd_matches_a_hand_written_loop_on_a_trained_digits_model():
    model = trained_digits_cnn()
    _, _, x, y = digits_tensors()
    eps, alpha, steps = 0.1, 0.025, 10
    ours = _accuracy(model, pgd(model, x, y, eps=eps, steps=steps, step_size=alpha, keep="last",
                                generator=torch.Generator().manual_seed(7)), y)
    delta0 = torch.empty_like(x).uniform_(-eps, eps, generator=torch.Generator().manual_seed(7))
    theirs = _accuracy(model, hand_written_pgd(model, x, y, eps, alpha, steps, delta0), y)
    clean = _accuracy(model, x, y)
    assert clean > 0.9 and 0.05 < theirs < clean - 0.2  # a regime where the comparison means something
    assert abs(ours - theirs) <= 0.01


def test_pgd_matches_torchattacks_on_a_trained_digits_model():
    torchattacks = pytest.importorskip("torchattacks")
    model = trained_digits_cnn()
    _, _, x, y = digits_tensors()
    eps, alpha, steps = 0.1, 0.025, 10
    reference = torchattacks.PGD(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
    theirs = _accuracy(model, reference(x, y), y)
    ours = _accuracy(model, pgd(model, x, y, eps=eps, steps=steps, step_size=alpha, random_start=False,
                                keep="last"), y)
    assert 0.05 < theirs < 0.8
    assert abs(ours - theirs) <= 0.01


def test_restarts_keep_every_success():
    model = trained_digits_cnn()
    _, _, x, y = digits_tensors()
    # Restarts draw their random starts one after another from the same generator.
    g = torch.Generator().manual_seed(0)
    single = [pgd(model, x, y, eps=0.08, steps=3, keep="first_fooling", generator=g) for _ in range(2)]
    fooled_any = torch.zeros(len(y), dtype=torch.bool)
    for adv in single:
        with torch.no_grad():
            fooled_any |= model(adv).argmax(1) != y
    both = pgd(model, x, y, eps=0.08, steps=3, restarts=2, keep="first_fooling",
               generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fooled_both = model(both).argmax(1) != y
    assert torch.equal(fooled_both, fooled_any)
    with torch.no_grad():
        assert not torch.equal(model(single[0]).argmax(1) != y, fooled_any)  # the second restart added successes


def test_l2_pgd_takes_normalised_steps():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.full((2, 3, 2, 2), 0.5), torch.tensor([0, 1])
    x_adv = pgd(model, x, y, eps=10.0, steps=1, step_size=0.1, norm="l2", random_start=False, keep="last")
    assert torch.allclose((x_adv - x).flatten(1).norm(dim=1), torch.full((2,), 0.1), atol=1e-6)


class _Recorder(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        return self.bn(x).mean(dim=(2, 3))


@pytest.mark.parametrize("mode", ["train", "eval", "train_frozen"])
def test_bn_policy_modes(mode):
    model = _Recorder().eval()
    model.bn.running_mean.fill_(5.0)
    x = torch.randn(8, 2, 3, 3)
    before = model.bn.running_mean.clone(), int(model.bn.num_batches_tracked)
    with bn_policy(model, mode):
        out = model(x)
        assert model.training == (mode != "eval")
    assert not model.training and not model.bn.training and model.bn.track_running_stats
    updated = not torch.equal(model.bn.running_mean, before[0])
    assert updated == (mode == "train")
    assert (int(model.bn.num_batches_tracked) == before[1]) == (mode != "train")
    # Batch statistics give ≈ zero-mean outputs; running statistics (mean 5) do not.
    uses_batch_stats = bool(out.mean(0).abs().max() < 1e-4)
    assert uses_batch_stats == (mode != "eval")
    assert math.isfinite(out.sum().item())
