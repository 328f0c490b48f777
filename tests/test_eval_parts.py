"""Evaluation in chunks with finished parts kept on disk (advtrain.eval.parts): read back only when everything
that decides a part's result is the same, and AutoAttack run chunk by chunk against the reference package."""

from __future__ import annotations

import torch
from torch import nn

from advtrain.attacks.reference_autoattack import autoattack
from advtrain.eval.parts import EvalParts
from advtrain.eval.robustness import AttackSpec, attack_specs, evaluate_attacks


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()


def _data(n: int = 37) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def _correct(results) -> list[torch.Tensor]:
    return [r.correct for r in results]


def test_finished_parts_are_read_back_only_for_the_same_model_attack_seed_and_images(tmp_path):
    model, (x, y) = _model(), _data()
    specs = attack_specs(["clean", "pgd", "fgsm"], [0.1], steps=5)
    reference = _correct(evaluate_attacks(model, x, y, specs, batch_size=8, seed=2))
    parts = EvalParts(tmp_path / "parts")
    first = _correct(evaluate_attacks(model, x, y, specs, batch_size=8, seed=2, parts=parts))
    units = 3 * 5  # 3 attacks × ceil(37 / 8) chunks
    assert (parts.computed, parts.reused) == (units, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, reference, strict=True))
    ours = sorted(parts.folder.glob("*.pt"))
    assert len(ours) == units

    again = EvalParts(parts.folder)
    assert all(torch.equal(a, b) for a, b in zip(
        _correct(evaluate_attacks(model, x, y, specs, batch_size=8, seed=2, parts=again)), reference, strict=True))
    assert (again.computed, again.reused) == (0, units)

    # Anything that changes a part's result changes its name: other weights, seed, images, batch size.
    other = _model(seed=1)
    for case in [
        dict(model=other, x=x, y=y, batch_size=8, seed=2),
        dict(model=model, x=x, y=y, batch_size=8, seed=3),
        dict(model=model, x=x.flip(0), y=y.flip(0), batch_size=8, seed=2),
        dict(model=model, x=x, y=y, batch_size=9, seed=2),
    ]:
        fresh = EvalParts(parts.folder)
        evaluate_attacks(case.pop("model"), case.pop("x"), case.pop("y"), specs, parts=fresh, **case)
        # Only clean parts of unchanged chunks can match (clean has no seed, flipping moves every chunk).
        assert fresh.reused <= 5 and fresh.computed >= units - 5, case

    # A part whose file was cut short is attacked again, not trusted.
    victim = ours[0]
    victim.write_bytes(victim.read_bytes()[:20])
    torn = EvalParts(parts.folder)
    assert all(torch.equal(a, b) for a, b in zip(
        _correct(evaluate_attacks(model, x, y, specs, batch_size=8, seed=2, parts=torn)), reference, strict=True))
    assert torn.computed == 1

    parts.remove()
    assert not parts.folder.exists()


def test_autoattack_runs_chunk_by_chunk_each_chunk_seeded_with_seed_plus_its_index():
    model, (x, y) = _model(), _data(20)
    spec = AttackSpec("autoattack", 0.2, "linf", version="apgd")
    (got,) = evaluate_attacks(model, x, y, [spec], batch_size=8, seed=5)
    # The oracle: the reference package on each chunk by itself, with the chunk's seed.
    expected = []
    for i, (xb, yb) in enumerate(zip(x.split(8), y.split(8), strict=True)):
        x_adv = autoattack(model, xb, yb, eps=0.2, norm="linf", version="apgd", seed=5 + i, batch_size=8)
        expected.append(model(x_adv).argmax(1) == yb)
    assert torch.equal(got.correct, torch.cat(expected))
