"""The graph-captured PGD training attack (issue 23, item 2), on the CPU: its static-buffer loop (what a CUDA graph
records) computes exactly what eager PGD computes, train-mode BatchNorm statistics included; capture itself is
refused off CUDA, where the attack falls back to eager with the reason logged; `train.attack_graph` and
`bench --attack-graph` refuse the CPU and methods without a plain PGD attack in one line."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from advtrain.attacks import StaticPGD, ThreatModel, bn_policy, pgd_unchecked
from advtrain.cli import main
from advtrain.config import load_config
from advtrain.errors import UserError
from advtrain.methods import Batch, StepContext, build_method, list_methods, method_class
from advtrain.models import build_model
from advtrain.train.step import graph_captured_attack
from advtrain.train.trainer import train
from tests.helpers import digits_tensors

SETTINGS = ["train.epochs=1", "train.batch_size=128", "train.val_steps=2", "train.progress=quiet",
            "data.val_size=200", "threat.eps=0.2", "train.device=cpu"]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("small_cnn", in_channels=1, input_size=8)


def _batches(n: int = 32, count: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    x, y, _, _ = digits_tensors()
    return [(x[i * n:(i + 1) * n], y[i * n:(i + 1) * n]) for i in range(count)]


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    for (name, t), u in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(t, u), name


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("bn_mode", ["train", "eval", "train_frozen"])
def test_the_static_loop_equals_eager_pgd_bit_for_bit_with_bn_statistics(norm, bn_mode):
    eager, static = _model(), _model()
    attack = StaticPGD(capture=False)
    eps = 0.2 if norm == "linf" else 1.0
    for i, (x, y) in enumerate(_batches()):  # the same buffers serve batch after batch
        args = dict(eps=eps, steps=3, step_size=eps / 4, norm=norm, keep="last")
        with bn_policy(eager, bn_mode):
            expected = pgd_unchecked(eager, x, y, generator=torch.Generator().manual_seed(i), **args)
        with bn_policy(static, bn_mode):
            got = attack(static, x, y, generator=torch.Generator().manual_seed(i), **args)
        assert torch.equal(got, expected)
        # Train mode: the running statistics moved k times per batch, as eager's; otherwise not at all.
        _assert_same_state(static, eager)
    assert (not torch.equal(eager.bn1.running_mean, _model().bn1.running_mean)) == (bn_mode == "train")


def test_the_static_loop_serves_an_explicit_start_and_the_kl_attack_and_other_shapes_eagerly():
    model = _model().eval()
    attack = StaticPGD(capture=False)
    (x, y), (x2, y2) = _batches(count=2)
    clean = model(x).detach()
    start = (x + 0.001 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).detach()
    args = dict(eps=0.2, steps=3, step_size=0.05, loss="kl", clean_logits=clean, x_init=start, keep="last")
    assert torch.equal(attack(model, x, y, **args), pgd_unchecked(model, x, y, **args))
    buffers = attack._buffers["x"]
    # A shorter batch (an epoch's last) runs eagerly and leaves the buffers to the batch shape they serve.
    short = dict(args, clean_logits=clean[:8], x_init=start[:8])
    assert torch.equal(attack(model, x2[:8], y2[:8], **short), pgd_unchecked(model, x2[:8], y2[:8], **short))
    assert attack._buffers["x"] is buffers and attack.refused is None


@pytest.mark.parametrize("name", [m for m in list_methods() if method_class(m).plain_pgd_attack])
def test_each_plain_pgd_method_crafts_the_same_with_the_static_loop(name):
    x, y = _batches(64, 1)[0]
    options = load_config(None, [f"method.name={name}", "method.steps=3"]).method
    eager_method, static_method = (build_method(options, ThreatModel("linf", 0.2)) for _ in range(2))
    static_method.training_pgd = StaticPGD(capture=False)
    eager, static = _model().train(), _model().train()
    for step in range(2):
        expected = eager_method.loss(eager, Batch(x, y), StepContext(0, step, torch.Generator().manual_seed(step)))
        got = static_method.loss(static, Batch(x, y), StepContext(0, step, torch.Generator().manual_seed(step)))
        assert torch.equal(got.loss, expected.loss)
        _assert_same_state(static, eager)
    assert static_method.training_pgd._buffers["x"].shape == x.shape  # it did craft through the static loop
    assert {"pgd_at", "trades", "mart"} <= {m for m in list_methods() if method_class(m).plain_pgd_attack}


def test_capture_off_cuda_logs_its_reason_once_and_crafts_eagerly():
    logged: list[str] = []
    attack = StaticPGD(capture=True, log=logged.append)
    model = _model()
    for i, (x, y) in enumerate(_batches()):
        args = dict(eps=0.2, steps=2, keep="last")
        got = attack(model, x, y, generator=torch.Generator().manual_seed(i), **args)
        assert torch.equal(got, pgd_unchecked(copy.deepcopy(model), x, y, generator=torch.Generator().manual_seed(i),
                                              **args))
    assert len(logged) == 1 and logged[0].startswith("recording the attack failed: ") and "needs CUDA" in logged[0]
    assert logged[0].endswith("; crafting eagerly") and attack.refused is not None


def test_capture_refuses_a_cumulative_batchnorm_in_train_mode():
    logged: list[str] = []
    model = _model().train()
    model.bn2.momentum = None
    x, y = _batches(count=1)[0]
    StaticPGD(capture=True, log=logged.append)(model, x, y, eps=0.2, steps=2, keep="last")
    assert len(logged) == 1 and "BatchNorm 'bn2' with momentum=None" in logged[0]


def test_the_graph_attack_is_refused_off_cuda_and_for_methods_without_a_plain_pgd_attack(tmp_path, capsys):
    pgd_at = build_method(load_config(None, ["method.name=pgd_at"]).method, ThreatModel("linf", 0.2))
    with pytest.raises(UserError, match=r"^train.attack_graph records the attack as a CUDA graph, which needs CUDA "
                                        r"\(the device is cpu\): turn train.attack_graph off$"):
        graph_captured_attack(pgd_at, torch.device("cpu"), "train.attack_graph", print)
    sat_r2 = build_method(load_config(None, ["method.name=sat_r2"]).method, ThreatModel("linf", 0.2))
    with pytest.raises(UserError, match=r"plain PGD training attack \(pgd_at, trades, mart\); sat_r2 crafts"):
        graph_captured_attack(sat_r2, torch.device("cuda"), "--attack-graph", print)
    with pytest.raises(UserError, match=r"^train.attack_graph records the attack as a CUDA graph"):
        train(load_config(None, [*SETTINGS, "train.attack_graph=true"]), tmp_path / "run")
    code = main(["bench", "--model", "small_cnn", "--shape", "1x8x8", "--batch", "4", "--device", "cpu",
                 "--attack-graph", "--iterations", "1", "--repeats", "1", "--warmup", "0"])
    assert code == 2
    assert "--attack-graph records the attack as a CUDA graph" in capsys.readouterr().err


def test_attack_graph_counts_in_the_config_digest_only_when_on():
    # tests/test_ddp.py pins the digest of its settings from before train.attack_graph existed.
    config = load_config(None, SETTINGS)
    assert load_config(None, [*SETTINGS, "train.attack_graph=false"]).digest() == config.digest()
    assert load_config(None, [*SETTINGS, "train.attack_graph=true"]).digest() != config.digest()
    with pytest.raises(UserError, match=r"^train.attack_graph: expected true or false, got .sometimes.$"):
        load_config(None, [*SETTINGS, "train.attack_graph=sometimes"])
