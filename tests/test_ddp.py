"""DistributedDataParallel training (issue 22): every method trained by 2 processes (gloo, CPU) through the loop the
trainer runs, against each other and against one process; validation split across processes; a 2-node run on
localhost with a c10d rendezvous that resumes a run only one node can read; a parameter the loss does not reach;
train.sync_bn (refused on the CPU; what it does to AR-AT's split BatchNorm)."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from advtrain.attacks import ThreatModel
from advtrain.config import load_config
from advtrain.distributed import Processes, processes
from advtrain.errors import UserError
from advtrain.methods import Batch, StepContext, list_methods
from advtrain.methods.standard import Standard, StandardConfig
from advtrain.models import build_model
from advtrain.models.split_bn import bn_route, merge_split_bn, split_norms, to_split_bn
from advtrain.runtime import seed_everything
from advtrain.train import load_run_data, train
from advtrain.train.loop import Loop
from advtrain.train.step import data_parallel, train_step
from advtrain.train.trainer import _build

CONFIGS = Path(__file__).parents[1] / "src/advtrain/configs"
# Every method; one epoch of 10 global batches of 128 (the last one 45 images: shares of 23 and 22, so the loss
# weighting of uneven shares is exercised); 3 validation chunks of 256.
METHODS = list_methods()
SETTINGS = ["data.val_size=600", "train.batch_size=128", "train.epochs=1", "train.val_steps=2", "threat.eps=0.2",
            "train.threads=1", "train.progress=quiet"]
# Per-process BatchNorm statistics (each process normalises its half of the batch) are the only difference from
# one process: measured after this epoch, the weights of 2 processes are 0.1-0.9% (relative L2) from one
# process's (AR-AT 1.6%), and the BN running statistics (rank 0's) up to 10%. The exact check of the gradient
# arithmetic, without BatchNorm, is tests/test_distributed.py's uneven-shares test.
WEIGHTS_TOLERANCE = 0.03


def _config(method: str, teacher: Path):
    """The bundled digits recipe of `method` (its options for 8×8 digits), shortened by SETTINGS."""
    recipe = CONFIGS / f"digits_{method}.yaml"
    # AR-AT: γ=3, not the recipe's 30, for the comparison with one process: its predictors' BatchNorm1d
    # normalises each process's half batch, and at γ=30 that alone puts the weights 18% from one process's
    # after this epoch (under 3% at γ=3 or without predictors; 0.5% at γ=0).
    extra = {"igd": [f"method.teacher={teacher}"], "arat": ["method.gamma=3"]}.get(method, [])
    return load_config(recipe if recipe.is_file() else CONFIGS / "digits.yaml",
                       [*SETTINGS, f"method.name={method}", *extra])


def _train_one(method: str, teacher: Path, procs: Processes) -> dict:
    """The trainer's objects for `method`, trained by the loop (no run folder); rank 1 starts from other weights
    and buffers, which DDP's broadcast at the start must replace with rank 0's."""
    config = _config(method, teacher)
    seed_everything(config.seed)
    training = _build(config, load_run_data(config), torch.device("cpu"), procs, lambda _: None).training
    modules = [training.model, *training.extras.values()]
    if procs.rank == 1:
        noise = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for tensor in [*(p for m in modules for p in m.parameters()),
                           *(b for m in modules for b in m.buffers() if b.is_floating_point())]:
                tensor.add_(torch.randn(tensor.shape, generator=noise).to(tensor.dtype))
    loop = Loop(training)
    loop.run()
    return {"model": {k: v.clone() for k, v in training.model.state_dict().items()},
            "extras": {n: m.state_dict() for n, m in training.extras.items()}, "row": loop.history[-1]}


def _train_every_method(rank: int, port: int, teacher: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    with processes(torch.device("cpu"), "training", "") as procs:
        trained = {method: _train_one(method, Path(teacher), procs) for method in METHODS}
    torch.save(trained, Path(out) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], kind: tuple[str, ...]) -> float:
    keys = [k for k in a if k.endswith(kind)]
    return float(sum(((a[k] - b[k]) ** 2).sum() for k in keys).sqrt() / sum((b[k] ** 2).sum() for k in keys).sqrt())


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> tuple[Path, list[dict]]:
    """Every method trained once by 2 processes; the IGD teacher is a one-process `standard` run."""
    folder = tmp_path_factory.mktemp("ddp")
    teacher = folder / "teacher"
    train(load_config(None, [*SETTINGS, "method.name=standard", "eval.attacks=[clean]"]), teacher, log=lambda _: None)
    mp.spawn(_train_every_method, args=(_free_port(), str(teacher), str(folder)), nprocs=2)
    return teacher, [torch.load(folder / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("method", METHODS)
def test_every_process_holds_the_same_weights_and_they_follow_one_process(two_processes, method):
    teacher, trained = two_processes
    ranks = [trained[0][method], trained[1][method]]
    for part in ("model", "extras"):  # rank 1 started from other weights and BN statistics
        assert ranks[0][part].keys() == ranks[1][part].keys()
    pairs = [(ranks[0]["model"], ranks[1]["model"])] + [(ranks[0]["extras"][n], ranks[1]["extras"][n])
                                                        for n in ranks[0]["extras"]]
    for a, b in pairs:
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"{method}: rank 1 differs from rank 0 in {different}"
    # One process with the same global batch, from the same start.
    one = _train_one(method, teacher, Processes())
    weights = _gap(ranks[0]["model"], one["model"], ("weight", "bias"))
    assert 0 < weights < WEIGHTS_TOLERANCE, f"{method}: weights {weights:.2%} from one process's"
    assert abs(ranks[0]["row"]["train_loss"] - one["row"]["train_loss"]) < 0.05


# PGD, PGD on split BN, I-FGSM-3 (SAT-R3 is still at chance after this epoch: it checks the I-FGSM path only)
@pytest.mark.parametrize("method", ["pgd_at", "arat", "sat_r3"])
def test_validation_split_across_processes_equals_one_process_validation_exactly(two_processes, method):
    teacher, trained = two_processes
    ranks = [trained[0][method], trained[1][method]]
    config = _config(method, teacher)
    training = _build(config, load_run_data(config), torch.device("cpu"), Processes(), lambda _: None).training
    training.model.load_state_dict(ranks[0]["model"])
    clean, adv = training.validator(training.model)
    row = ranks[0]["row"]
    assert (row["val_clean_acc"], row[f"val_{training.validator.attack}_acc"]) == (clean, adv)
    assert adv is not None and 0 < adv <= clean and (method == "sat_r3" or adv < clean)
    assert ranks[1]["row"]["val_clean_acc"] == clean  # every process returns the merged result


class _WithUnusedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(4, 3)
        self.spare = nn.Linear(4, 3)  # like WideResNet's sub_block1: built, never called

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x.flatten(1))


def _step_with_an_unused_parameter(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    model, method = _WithUnusedLayer(), Standard(StandardConfig(), ThreatModel())
    batch = Batch(torch.rand(4, 1, 2, 2), torch.tensor([0, 1, 2, 0]))
    before = model.used.weight.detach().clone()
    try:
        train_step(method, model, torch.optim.SGD(model.parameters(), lr=0.1), batch,
                   StepContext(0, 0, torch.Generator()), parallel=(data_parallel(method, model, {}), 1.0))
    except UserError as e:
        if rank == 0:
            torch.save({"message": str(e), "unchanged": torch.equal(model.used.weight, before)}, out)
    dist.destroy_process_group()


def test_a_parameter_the_loss_does_not_reach_is_refused_in_one_line_before_the_optimizer_steps(tmp_path):
    mp.spawn(_step_with_an_unused_parameter, args=(str(tmp_path / "store"), str(tmp_path / "out.pt")), nprocs=2)
    got = torch.load(tmp_path / "out.pt")
    assert got["message"].startswith("data-parallel training needs a gradient for every trainable parameter, but the "
                                     "loss does not reach 2 (spare.weight, spare.bias): freeze them")
    assert "\n" not in got["message"] and got["unchanged"]


def test_sync_bn_is_refused_on_the_cpu_in_one_line(tmp_path):
    config = load_config(None, [*SETTINGS, "train.sync_bn=true", "train.device=cpu"])
    with pytest.raises(Exception, match=r"^train.sync_bn needs CUDA: .*set train.sync_bn=false$") as refused:
        train(config, tmp_path / "run", log=lambda _: None)
    assert "\n" not in str(refused.value) and not (tmp_path / "run").exists()


def test_sync_bn_keeps_ar_at_split_batchnorm_routing_and_its_exported_keys():
    """What `train.sync_bn` does to an AR-AT model (on CUDA, under torchrun): both branches of every split BN become
    SyncBatchNorms with the same parameters and statistics, and routing and export work as before. Without a
    process group SyncBatchNorm is plain BatchNorm, so the two can be compared here, on the CPU, in train mode."""
    reference = to_split_bn(build_model("small_cnn", in_channels=1, input_size=8))
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(copy.deepcopy(reference))
    norms = split_norms(synced)
    assert norms and all(isinstance(b, nn.SyncBatchNorm) for m in norms for b in (m.clean, m.adv))
    x = torch.rand(16, 1, 8, 8)
    for route in ("clean", "adv"):
        with bn_route(synced, route), bn_route(reference, route):
            assert torch.equal(synced(x), reference(x))
    expected = reference.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in synced.state_dict().items())  # running statistics too
    assert merge_split_bn(synced).state_dict().keys() == merge_split_bn(reference).state_dict().keys()


def test_sync_bn_counts_in_the_config_digest_only_when_on():
    config = load_config(None, SETTINGS)
    assert config.digest() == "7077a4dc76201ac4"  # the digest of these settings before train.sync_bn existed
    assert load_config(None, [*SETTINGS, "train.sync_bn=true"]).digest() != config.digest()


def _torchrun_node(node: int, port: int, args: list[str], cwd: Path) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                       os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=2", f"--node_rank={node}",
         "--rdzv_backend=c10d", f"--rdzv_endpoint=localhost:{port}", "--rdzv_id=advtrain-ddp-test",
         "-m", "advtrain", *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_nodes_resume_a_run_only_the_first_node_can_read(tmp_path):
    """2 nodes × 2 processes on localhost (c10d rendezvous), each node in its own working folder, continue a
    relative --resume run: node 0 holds it, node 1 has nothing; rank 0 sends the settings and the state."""
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    node0.mkdir(), node1.mkdir()
    config = load_config(None, [*SETTINGS, "train.epochs=2", "method.steps=2", "eval.attacks=[clean]"])
    train(config, node0 / "run", log=lambda _: None)
    states = sorted((node0 / "run/checkpoints").glob("state-e0002-*"))
    assert states  # the run finished epoch 2: remove that state so that resuming trains epoch 2 again
    for path in states:
        path.unlink()
    port = _free_port()
    runs = [_torchrun_node(n, port, ["train", "--resume", "run", "--quiet"], folder)
            for n, folder in enumerate((node0, node1))]
    outs = [run.communicate(timeout=300) for run in runs]
    for run, (_, err) in zip(runs, outs, strict=True):
        assert run.returncode == 0, err[-3000:]
    assert "resuming run at epoch 2, batch 1" in outs[0][0]
    assert list(node1.iterdir()) == []  # node 1 read and wrote nothing
    rows = [json.loads(line) for line in (node0 / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert (node0 / "run/eval.json").is_file() and sorted((node0 / "run/checkpoints").glob("state-e0002-*"))
