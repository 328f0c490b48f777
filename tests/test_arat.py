"""AR-AT (docs/methods.md §6) against hand-written formulas: the loss as two plain models, where the gradients go,
auto-balance, the released-code attack start, SWA's adv-BN recalibration, and the method in the trainer."""

from __future__ import annotations

import copy
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advtrain.attacks import ThreatModel
from advtrain.checkpoint import load_weights
from advtrain.config import load_config
from advtrain.errors import UserError
from advtrain.methods import Batch, EpochContext, StepContext
from advtrain.methods.arat import ARAT, ARATConfig
from advtrain.models import build_model
from advtrain.models.split_bn import SplitBatchNorm, bn_route, merge_split_bn
from advtrain.train import train
from advtrain.train.state import list_states, load_newest_state
from tests.helpers import digits_tensors
from tests.test_split_bn import scramble_branches

EPS = 0.2
LAYERS = ["bn2", "bn3"]


def setup(**options) -> tuple[ARAT, nn.Module, Batch, torch.Tensor]:
    """A fp64 split-BN small CNN on 16 digits with different branches, and a fixed x' in the ε-ball."""
    torch.manual_seed(0)
    x, y, _, _ = digits_tensors()
    x, y = x[:16].double(), y[:16]
    options = {"auto_balance": False, "alpha": 0.7, "beta": 0.3, "gamma": 5.0, "layers": LAYERS} | options
    method = ARAT(ARATConfig(**options), ThreatModel("linf", EPS))
    model = build_model("small_cnn", in_channels=1, input_size=8).double()
    model = method.prepare_model(model, x[:2])
    if method.predictors is not None:
        method.predictors.double()
    scramble_branches(model)
    model.train()
    g = torch.Generator().manual_seed(1)
    x_adv = (x + (torch.rand(x.shape, generator=g, dtype=torch.float64) * 2 - 1) * EPS).clamp(0, 1)
    return method, model, Batch(x, y), x_adv


def pooled_features(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and ReLU + global-average-pooled outputs of LAYERS, by hooks written here."""
    out: dict[str, torch.Tensor] = {}
    handles = [getattr(model, layer).register_forward_hook(
        lambda _m, _i, o, layer=layer: out.__setitem__(layer, F.relu(o).mean((2, 3)))) for layer in LAYERS]
    logits = model(x)
    for h in handles:
        h.remove()
    return logits, out


def grads(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in module.named_parameters()}


def test_the_loss_and_its_gradients_equal_the_two_plain_model_formula_in_fp64():
    method, model, batch, x_adv = setup()
    clean_model, adv_model = merge_split_bn(model, "clean"), merge_split_bn(model, "adv")
    predictors = copy.deepcopy(method.predictors)
    out = method.objective(model, batch, x_adv)
    out.loss.backward()

    adv_logits, adv_feats = pooled_features(adv_model, x_adv)
    clean_logits, clean_feats = pooled_features(clean_model, batch.x)
    reg = sum(1 - F.cosine_similarity(predictors[layer.replace(".", "-")](adv_feats[layer]),
                                      clean_feats[layer].detach(), dim=1).mean() for layer in LAYERS)
    expected = 0.7 * F.cross_entropy(adv_logits, batch.y) + 0.3 * F.cross_entropy(clean_logits, batch.y) \
        + 5.0 / len(LAYERS) * reg
    expected.backward()
    assert abs(out.loss.item() - expected.item()) < 1e-10

    got, g_clean, g_adv = grads(model), grads(clean_model), grads(adv_model)
    for name, _ in clean_model.named_parameters():
        if name.startswith("bn"):  # split: each branch's parameters get their own model's gradient
            layer, param = name.split(".")
            assert torch.allclose(got[f"{layer}.clean.{param}"], g_clean[name], atol=1e-10), name
            assert torch.allclose(got[f"{layer}.adv.{param}"], g_adv[name], atol=1e-10), name
        else:  # shared convolutions and classifier: the sum of both passes
            assert torch.allclose(got[name], g_clean[name] + g_adv[name], atol=1e-10), name
    for (name, p), q in zip(method.predictors.named_parameters(), predictors.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-10), name
    assert out.metrics["clean_acc"] == (clean_logits.argmax(1) == batch.y).double().mean()


def clean_output_gradient(**options) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """With α = β = 0 (only the invariance term): the gradient arriving at the clean branch's last BN output,
    and the gradients of all parameters."""
    method, model, batch, x_adv = setup(alpha=0.0, beta=0.0, **options)
    arrived: list[torch.Tensor] = []
    def watch(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:  # returns None: output kept
        output.register_hook(arrived.append)

    model.bn3.clean.register_forward_hook(watch)
    method.objective(model, batch, x_adv).loss.backward()
    return torch.stack(arrived).abs().sum() if arrived else torch.tensor(0.0), grads(model)


def test_the_invariance_term_sends_no_gradient_into_the_clean_branch():
    arrived, g = clean_output_gradient()
    assert arrived == 0  # nothing reaches the clean features
    clean_bn = {n: v for n, v in g.items() if ".clean." in n}
    assert clean_bn and all(torch.count_nonzero(v) == 0 for v in clean_bn.values())
    assert any(torch.count_nonzero(v) > 0 for n, v in g.items() if ".adv." in n)  # the adv branch does learn
    # The symmetric ablation (no stop-gradient) does move the clean branch: the check above can fail.
    arrived, g = clean_output_gradient(stop_gradient=False)
    assert arrived > 0 and any(torch.count_nonzero(v) > 0 for n, v in g.items() if ".clean." in n)


def test_clean_bn_parameters_get_gradient_only_from_the_clean_ce():
    method, model, batch, x_adv = setup()
    method.objective(model, batch, x_adv).loss.backward()
    full = grads(model)
    model.zero_grad()
    only_clean = ARAT(ARATConfig(auto_balance=False, alpha=0.0, beta=0.3, gamma=0.0, layers=LAYERS),
                      ThreatModel("linf", EPS))
    only_clean.layers, only_clean.predictors = method.layers, method.predictors
    only_clean.objective(model, batch, x_adv).loss.backward()
    alone = grads(model)
    for name in full:
        if ".clean." in name:
            assert torch.allclose(full[name], alone[name], atol=1e-12), name
        if ".adv." in name:  # and the clean CE sends nothing into the adv branch
            assert torch.count_nonzero(alone[name]) == 0, name


def test_without_the_predictor_the_term_compares_the_features_directly():
    method, model, batch, x_adv = setup(predictor=False, alpha=0.0, beta=0.0)
    assert method.extra_modules() == {}
    adv_model, clean_model = merge_split_bn(model, "adv"), merge_split_bn(model, "clean")
    loss = method.objective(model, batch, x_adv).loss
    _, a = pooled_features(adv_model, x_adv)
    _, c = pooled_features(clean_model, batch.x)
    expected = 5.0 / 2 * sum(1 - F.cosine_similarity(a[k], c[k], dim=1).mean() for k in LAYERS)
    assert abs(loss.item() - expected.item()) < 1e-10


def test_shared_bn_ablation_keeps_plain_batchnorm_and_exports_the_model_itself():
    method, model, batch, x_adv = setup(split_bn=False)
    assert not any(isinstance(m, SplitBatchNorm) for m in model.modules())
    assert method.export_model(model) is model
    assert torch.isfinite(method.objective(model, batch, x_adv).loss)


def test_auto_balance_sets_alpha_to_the_clean_branch_accuracy_in_eval_mode():
    method, model, batch, _ = setup(auto_balance=True)
    x = batch.x
    with torch.no_grad(), bn_route(model, "clean"):
        clean_pred = model.eval()(x).argmax(1)
        adv_pred = merge_split_bn(model, "adv").eval()(x).argmax(1)
    model.train()
    # Labels the clean branch gets right on exactly 10 of 16 examples.
    y = torch.where(torch.arange(16) < 10, clean_pred, (clean_pred + 1) % 10)
    assert (adv_pred == y).float().mean() != 10 / 16  # the adv branch would give another α
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = EpochContext(0, 1, 0.1, 0.1, lambda n: (x[:n], y[:n]), torch.Generator())
    method.on_epoch_start(model, ctx)
    assert method.alpha == 10 / 16 and method.beta == 6 / 16
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    restored = ARAT(ARATConfig(), ThreatModel("linf", EPS))
    restored.load_state_dict(method.state_dict())
    assert (restored.alpha, restored.beta) == (10 / 16, 6 / 16)


def hand_pgd(model: nn.Module, center: torch.Tensor, y: torch.Tensor, steps: int, alpha: float) -> torch.Tensor:
    x_adv = center.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y, reduction="sum"), x_adv)
        delta = (x_adv.detach() + alpha * g.sign() - center).clamp(-EPS, EPS)
        x_adv = (center + delta).clamp(0, 1)
    return x_adv


@pytest.mark.parametrize("official_noise", [True, False])
def test_the_attack_follows_the_released_start_or_standard_pgd(official_noise):
    method, model, batch, _ = setup(official_noise=official_noise, steps=3)
    adv_model = merge_split_bn(model, "adv").train()
    g = torch.Generator().manual_seed(5)
    x_adv = method.perturb(model, batch, StepContext(0, 0, g))
    u = (torch.rand(batch.x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2 - 1) * EPS
    distance = (x_adv - batch.x).abs().amax()
    if official_noise:
        # PGD projects around the noisy input x + u, so x' may leave the ε-ball around x (up to 2ε).
        expected = hand_pgd(adv_model, batch.x + u, batch.y, 3, EPS / 4)
        assert torch.allclose(x_adv, expected, atol=1e-12)
        assert EPS + 1e-3 < distance <= 2 * EPS + 1e-12  # the effective radius the docs state: 2ε
    else:
        assert distance <= EPS + 1e-12
    assert x_adv.min() >= 0 and x_adv.max() <= 1


def released_step_loss(method: ARAT, model: nn.Module, batch: Batch, seed: int, steps: int) -> torch.Tensor:
    """The released training step in fp64, by hand on plain copies of the two branches: u is added to the batch
    in place, so the clean pass and the feature targets see x + u (unclamped) and PGD starts at and projects
    around x + u; then α·CE(adv) + β·CE(clean) + γ/|S|·Σ_l [1 − cos(h_l(z'_l), sg(z_l))]."""
    clean_model, adv_model = merge_split_bn(model, "clean").train(), merge_split_bn(model, "adv").train()
    predictors = copy.deepcopy(method.predictors)
    u = (torch.rand(batch.x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1) * EPS
    bx = batch.x + u
    x_adv = hand_pgd(adv_model, bx, batch.y, steps, EPS / 4)
    adv_logits, adv_feats = pooled_features(adv_model, x_adv)
    clean_logits, clean_feats = pooled_features(clean_model, bx)
    reg = sum(1 - F.cosine_similarity(predictors[layer](adv_feats[layer]), clean_feats[layer].detach(), dim=1).mean()
              for layer in LAYERS)
    return 0.7 * F.cross_entropy(adv_logits, batch.y) + 0.3 * F.cross_entropy(clean_logits, batch.y) \
        + 5.0 / len(LAYERS) * reg


def test_official_noise_feeds_x_plus_u_to_the_clean_branch_and_the_loss_matches_the_released_step():
    method, model, batch, _ = setup(steps=3)
    expected = released_step_loss(method, model, batch, seed=5, steps=3)
    seen: list[tuple[str, torch.Tensor]] = []  # (route of the first split BN, model input) of every forward
    model.register_forward_pre_hook(lambda m, args: seen.append((m.bn1.route, args[0].detach().clone())))
    out = method.loss(model, batch, StepContext(0, 0, torch.Generator().manual_seed(5)))
    u = (torch.rand(batch.x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 2 - 1) * EPS
    clean_inputs = [x for route, x in seen if route == "clean"]
    assert len(clean_inputs) == 1 and torch.equal(clean_inputs[0], batch.x + u)  # unclamped x + u, not x
    assert (batch.x + u).min() < 0 or (batch.x + u).max() > 1  # so the check above sees no clamping
    assert abs(out.loss.item() - expected.item()) < 1e-10
    # Standard PGD (official_noise off) keeps the clean pass on x itself.
    method, model, batch, _ = setup(steps=3, official_noise=False)
    seen.clear()
    model.register_forward_pre_hook(lambda m, args: seen.append((m.bn1.route, args[0].detach().clone())))
    method.loss(model, batch, StepContext(0, 0, torch.Generator().manual_seed(5)))
    clean_inputs = [x for route, x in seen if route == "clean"]
    assert len(clean_inputs) == 1 and torch.equal(clean_inputs[0], batch.x)


def test_the_symmetric_ablation_drops_the_predictor_as_the_released_x_y_variant():
    method, model, batch, x_adv = setup(stop_gradient=False)
    assert method.predictors is None and method.extra_modules() == {}
    assert method.metadata()["predictor_used"] is False
    clean_model, adv_model = merge_split_bn(model, "clean"), merge_split_bn(model, "adv")
    out = method.objective(model, batch, x_adv)
    out.loss.backward()
    # The released `x<->y` loss: 1 − cos(z', z) on the raw features, with gradient into both branches.
    adv_logits, a = pooled_features(adv_model, x_adv)
    clean_logits, c = pooled_features(clean_model, batch.x)
    expected = 0.7 * F.cross_entropy(adv_logits, batch.y) + 0.3 * F.cross_entropy(clean_logits, batch.y) \
        + 5.0 / len(LAYERS) * sum(1 - F.cosine_similarity(a[k], c[k], dim=1).mean() for k in LAYERS)
    expected.backward()
    assert abs(out.loss.item() - expected.item()) < 1e-10
    got, g_clean, g_adv = grads(model), grads(clean_model), grads(adv_model)
    for name, _ in clean_model.named_parameters():
        if name.startswith("bn"):
            layer, param = name.split(".")
            assert torch.allclose(got[f"{layer}.clean.{param}"], g_clean[name], atol=1e-10), name
            assert torch.allclose(got[f"{layer}.adv.{param}"], g_adv[name], atol=1e-10), name
    # Forcing the predictor keeps it (a variant the released code does not have), and `predictor` false with
    # stop-gradient drops it.
    assert setup(stop_gradient=False, predictor=True)[0].predictors is not None
    assert setup(predictor=False)[0].predictors is None
    assert setup()[0].metadata()["predictor_used"] is True


def test_swa_recalibration_resets_the_clean_statistics_and_recomputes_the_adv_ones_on_pgd_examples():
    method, model, batch, _ = setup(steps=2)
    x, y = batch.x, batch.y
    batches = [(x[:11], y[:11]), (x[11:], y[11:])]  # a full batch and a short last one, as one pass ends
    before = copy.deepcopy(model.state_dict())
    # The examples recalibration must see: PGD against the model through the adv BN, on batch statistics.
    gen = torch.Generator().manual_seed(9)
    crafted = [method.craft(model, bx, by, gen, "train_frozen")[0] for bx, by in batches]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # crafting changed nothing
    assert not torch.allclose(crafted[0], x[:11])
    method.recalibrate_bn(model, iter(batches), torch.Generator().manual_seed(9))
    with torch.no_grad():  # the first BN's input is conv1 of the (normalised) crafted examples
        maps = [model.conv1(model.normalize(xa)) for xa in crafted]
    # The released update's momentum b/(n + b): the batch means weighted by their image counts (11 and 5).
    means = torch.stack([m.mean((0, 2, 3)) for m in maps])
    variances = torch.stack([m.transpose(0, 1).flatten(1).var(1) for m in maps])
    assert torch.allclose(model.bn1.adv.running_mean, (11 * means[0] + 5 * means[1]) / 16, atol=1e-10)
    assert torch.allclose(model.bn1.adv.running_var, (11 * variances[0] + 5 * variances[1]) / 16, atol=1e-10)
    assert torch.equal(model.bn1.clean.running_mean, torch.zeros(32))  # reset, and never recomputed
    assert torch.equal(model.bn1.clean.running_var, torch.ones(32))
    assert model.bn1.route == "adv" and model.training and model.bn1.adv.momentum == 0.1
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items() if "running" not in k
               and "num_batches" not in k)  # only statistics changed


def test_bad_layer_options_are_refused_with_one_line():
    with pytest.raises(UserError, match="each once"):
        ARAT(ARATConfig(layers=["bn3", "bn3"]), ThreatModel("linf", EPS))
    method = ARAT(ARATConfig(layers=["bn7"]), ThreatModel("linf", EPS))
    with pytest.raises(UserError, match="no layer 'bn7'"):
        method.prepare_model(build_model("small_cnn", in_channels=1, input_size=8), torch.rand(2, 1, 8, 8))


RUN = ["method.name=arat", "method.steps=3", "method.auto_balance_size=100", "threat.eps=0.2", "seed=1",
       "data.val_size=200", "train.batch_size=64", "train.epochs=2", "train.checkpoint_every=7",
       "train.val_steps=2", "train.progress=quiet", "monitor.enabled=false", "averaging.swa_start=1",
       "averaging.swa_every_steps=5", "averaging.bn_batches=2", "eval.attacks=[clean]"]


def test_in_the_trainer_weights_files_hold_the_plain_adv_model_and_a_resume_is_exact(tmp_path):
    config = load_config(None, RUN)
    result = train(config, tmp_path / "full", log=lambda _: None)
    plain = set(build_model("small_cnn", in_channels=1, input_size=8).state_dict())
    for which in ("best", "last", "swa"):
        state, meta = load_weights(tmp_path / "full" / "checkpoints" / f"{which}.safetensors")
        assert set(state) == plain, which  # no clean branch, no predictor
    assert meta["method"]["layers_used"] == ["bn3"] and meta["method"]["test_bn"] == "adv"
    assert 0 < result.last["train_alpha"] < 1 and "train_feature_cos" in result.last
    assert "val_swa_clean_acc" in result.last

    # The newest state holds the split model, the predictors and α; resuming from the mid-epoch state
    # before it reproduces the uninterrupted run bit for bit.
    state, _ = load_newest_state(tmp_path / "full" / "checkpoints", log=lambda _: None)
    assert {"bn1.clean.weight", "bn1.adv.weight"} <= set(state["model"])
    assert set(state["extras"]["predictors"]) and state["method"]["alpha"] == pytest.approx(result.last["train_alpha"])
    shutil.copytree(tmp_path / "full", tmp_path / "resumed")
    newest = list_states(tmp_path / "resumed" / "checkpoints")[0][1]
    newest.unlink()
    newest.with_suffix(".json").unlink()
    train(load_config(tmp_path / "resumed" / "config.yaml"), tmp_path / "resumed", resume=True, log=lambda _: None)
    for which in ("last", "swa"):
        a = load_weights(tmp_path / "full" / "checkpoints" / f"{which}.safetensors")[0]
        b = load_weights(tmp_path / "resumed" / "checkpoints" / f"{which}.safetensors")[0]
        assert all(torch.equal(a[k], b[k]) for k in a), which


def test_awp_around_arat_keeps_its_split_bn_predictors_and_export(tmp_path):
    config = load_config(None, [*RUN, "method.name=awp", "method.base.name=arat", "method.warmup_epochs=0",
                                "train.epochs=1", "averaging.swa_start=0"])
    train(config, tmp_path / "run", log=lambda _: None)
    plain = set(build_model("small_cnn", in_channels=1, input_size=8).state_dict())
    for which in ("last", "swa"):
        assert set(load_weights(tmp_path / "run" / "checkpoints" / f"{which}.safetensors")[0]) == plain
    state, _ = load_newest_state(tmp_path / "run" / "checkpoints", log=lambda _: None)
    assert "bn1.clean.weight" in state["model"] and state["extras"]["predictors"]
