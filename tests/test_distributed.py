"""Data-parallel training under torchrun (issue 10), on the CPU with gloo: the gradient arithmetic against the
full-batch gradient, 2 processes against 1 through the real CLI, and a killed process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from advtrain.attacks import ThreatModel
from advtrain.config import load_config
from advtrain.data import Augment, DeviceBatcher
from advtrain.distributed import Processes
from advtrain.methods import Batch, StepContext
from advtrain.methods.standard import Standard, StandardConfig
from advtrain.train import train
from advtrain.train.sources import TensorSource
from advtrain.train.state import load_newest_state
from advtrain.train.step import data_parallel, train_step

RUN = ["--set", "train.batch_size=128", "--set", "train.val_steps=2", "--set", "train.progress=quiet",
       "--set", "data.val_size=200", "--set", "threat.eps=0.2", "--set", "eval.attacks=[clean]",
       "--set", "train.threads=1"]


def test_the_shards_of_a_batch_cover_it_once_in_order():
    for n in (1, 2, 7, 128, 61):
        for world in (1, 2, 3):
            if world > n:
                continue
            parts = [Processes(rank, world).shard(n) for rank in range(world)]
            covered = [i for p in parts for i in range(n)[p]]
            assert covered == list(range(n))
            assert max(len(range(n)[p]) for p in parts) - min(len(range(n)[p]) for p in parts) <= 1


def _toy_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 4))


def _average_in_two_processes(rank: int, store: str, result: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    procs = Processes(rank, 2)
    model = _toy_model(rank)  # other weights in rank 1: building DDP broadcasts rank 0's
    model.register_buffer("stat", torch.full((2,), float(rank)))
    model = model.to(memory_format=torch.channels_last)
    torch.manual_seed(2)  # the same batch in both processes
    x, y = torch.rand(7, 1, 8, 8), torch.randint(0, 4, (7,))
    part = procs.shard(7)  # 4 and 3 examples: uneven on purpose
    batch = Batch(x[part].contiguous(memory_format=torch.channels_last), y[part])
    method = Standard(StandardConfig(), ThreatModel())
    parallel = data_parallel(method, model, {})
    params = list(model.parameters())
    # ctx.average_gradients (AWP's and ISEAT's ascent direction): gradients taken inside the loss.
    own = torch.autograd.grad(method.loss(model, batch, StepContext(0, 0, torch.Generator())).loss, params)
    averaged = procs.average_gradients(params, own, len(batch.y), 7)
    # The DDP step with this process's loss weight; lr 0 keeps the weights, the gradients stay in .grad.
    train_step(method, model, torch.optim.SGD(params, lr=0.0), batch, StepContext(0, 0, torch.Generator()),
               parallel=(parallel, procs.loss_weight(len(batch.y), 7)))
    signalled = procs.any(rank == 0)  # a stop signal seen by rank 0 only
    if rank == 1:
        torch.save({"grads": [p.grad for p in params], "averaged": averaged, "stat": model.stat,
                    "signalled": signalled, "strides_kept": all(p.grad.stride() == p.stride() for p in params)},
                   result)
    dist.destroy_process_group()


def test_ddp_gradients_of_uneven_shards_equal_the_full_batch_gradient(tmp_path):
    mp.spawn(_average_in_two_processes, args=(str(tmp_path / "store"), str(tmp_path / "out.pt")), nprocs=2)
    got = torch.load(tmp_path / "out.pt")
    model = _toy_model(0)
    torch.manual_seed(2)
    x, y = torch.rand(7, 1, 8, 8), torch.randint(0, 4, (7,))
    F.cross_entropy(model(x), y).backward()  # the oracle: one process, the whole batch, rank 0's weights
    for ddp, explicit, p in zip(got["grads"], got["averaged"], model.parameters(), strict=True):
        torch.testing.assert_close(ddp, p.grad, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(explicit, p.grad, rtol=1e-5, atol=1e-7)
    assert got["strides_kept"]  # the fused optimizer needs .grad in its parameter's layout
    assert torch.equal(got["stat"], torch.zeros(2))  # rank 0's buffers everywhere
    assert got["signalled"] is True  # rank 1 stops too


def _torchrun(args: list[str], cwd: Path) -> subprocess.Popen:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "advtrain",
         *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _weights_gap(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "checkpoints/last.safetensors"), load_file(b / "checkpoints/last.safetensors")
    keys = [k for k in wa if k.endswith(("weight", "bias"))]
    gap = sum(((wa[k] - wb[k]) ** 2).sum() for k in keys)
    return float((gap / sum((wa[k] ** 2).sum() for k in keys)).sqrt())


@pytest.mark.parametrize("method", ["pgd_at", "trades"])  # trades: two forwards (x and x') per step
def test_two_processes_train_like_one_with_the_same_global_batch(tmp_path, method):
    overrides = [*RUN[1::2], "train.epochs=2", f"method.name={method}", "method.steps=2"]
    one = train(load_config(None, overrides), tmp_path / "one", log=lambda _: None)
    run = _torchrun(["train", "--out", str(tmp_path / "two"), *[a for o in overrides for a in ("--set", o)]],
                    tmp_path)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "two/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # written once, by rank 0 only
    # The epoch's metric sums count every process's examples: all 1,237 training images, not one half.
    state, _ = load_newest_state(tmp_path / "two/checkpoints", log=lambda _: None)
    assert state["progress"]["seen"] == 1237
    assert out.count("done:") == 1 and out.count("epoch   2/2") == 1
    # Per-process BatchNorm statistics (half batches) are the only difference from one process. Measured: weights
    # 2.9% (pgd_at) and 2.0% (trades) apart, training losses within 0.01; validation accuracy on 200 images after
    # two epochs, while the model still changes fast, within 0.5 and 4.5 points.
    assert _weights_gap(tmp_path / "one", tmp_path / "two") < 0.05
    assert abs(rows[-1]["train_loss"] - one.last["train_loss"]) <= 0.02
    assert abs(rows[-1]["val_clean_acc"] - one.last["val_clean_acc"]) <= 0.06


def test_a_killed_process_stops_the_run_cleanly_and_resume_continues_it(tmp_path):
    run_dir = tmp_path / "run"
    run = _torchrun(["train", "--out", str(run_dir), *RUN, "--set", "train.epochs=30", "--set", "method.steps=2",
                     "--set", "train.checkpoint_every=2"], tmp_path)
    deadline = time.time() + 240
    while not list((run_dir / "checkpoints").glob("state-*")) and time.time() < deadline:
        time.sleep(0.5)
    assert run.poll() is None, run.communicate()[1][-2000:]
    workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(run.pid)], capture_output=True,
                                              text=True).stdout.split()]
    ranks = {pid: (Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")) for pid in workers}
    rank1 = next(pid for pid, env in ranks.items() if b"RANK=1" in env)
    os.kill(rank1, signal.SIGKILL)
    _, err = run.communicate(timeout=120)
    assert run.returncode != 0
    # Rank 0 stops with one line naming --resume: either at its next collective with the dead process, or, if
    # torchrun's SIGTERM reaches it first, by saving at the step boundary like any signalled run.
    stopped = [line for line in err.splitlines()
               if "stopped: another process of the run failed" in line or "stopped by SIGTERM" in line]
    assert stopped and f"advtrain train --resume {run_dir}" in stopped[0], err[-3000:]

    # Resumed in one process: a different world size, the same global batch.
    resumed = subprocess.run([sys.executable, "-m", "advtrain", "train", "--resume", str(run_dir)],
                             env=os.environ | {"OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming" in resumed.stdout
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 31))


def test_commands_other_than_train_and_eval_refuse_to_run_under_torchrun(monkeypatch, capsys, tmp_path):
    from advtrain.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["diagnose", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "only train and eval run under torchrun" in err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("eval") / "run"
    train(load_config(None, [*RUN[1::2], "train.epochs=2"]), run_dir, log=lambda _: None)
    return run_dir


EVAL = ["--attacks", "clean,pgd,apgd", "--eps", "0.2", "--steps", "5", "--device", "cpu"]


def _eval_one_process(run_dir: Path, out: Path, *extra: str) -> str:
    """`advtrain eval` in this process (no torchrun); its stdout."""
    from contextlib import redirect_stdout
    from io import StringIO

    from advtrain.cli import main

    with redirect_stdout(StringIO()) as stdout:
        assert main(["eval", str(run_dir), *EVAL, "--out", str(out), *extra]) == 0
    return stdout.getvalue()


def _per_example(out: Path) -> tuple[list[str], torch.Tensor]:
    import numpy as np

    saved = np.load(out.with_name(f"{out.stem}.examples.npz"))
    return list(saved["attacks"]), torch.from_numpy(saved["correct_0"])


def test_sharded_evaluation_gives_exactly_the_per_example_results_of_one_process(trained_run, tmp_path):
    _eval_one_process(trained_run, tmp_path / "one.json", "--batch-size", "32")
    run = _torchrun(["eval", str(trained_run), *EVAL, "--batch-size", "32", "--out", str(tmp_path / "two.json")],
                    tmp_path)
    out, err = run.communicate(timeout=300)
    assert run.returncode == 0, err[-2000:]
    assert out.count("wrote") == 2  # rank 0 alone writes (the JSON and the per-example file)
    attacks, expected = _per_example(tmp_path / "one.json")
    assert _per_example(tmp_path / "two.json")[0] == attacks and len(attacks) == 3  # clean, PGD, AutoAttack
    assert torch.equal(_per_example(tmp_path / "two.json")[1], expected)
    assert expected.shape == (3, 360) and 0 < expected[2].sum() < expected[0].sum()  # AutoAttack broke some
    one_json, two_json = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert one_json["results"] == two_json["results"] and two_json["parts"] == {"reused": 0, "total": 36}
    assert not (tmp_path / "two.json.parts").exists()  # removed once the JSON is written


def test_a_killed_evaluation_resumes_without_evaluating_a_part_twice_or_skipping_one(trained_run, tmp_path):
    small = ("--batch-size", "8", "--num-images", "160")  # torchrun's parser takes --n for its own options
    _eval_one_process(trained_run, tmp_path / "reference.json", *small)
    out = tmp_path / "eval.json"
    parts = tmp_path / "eval.json.parts"
    total = 3 * 20  # three attacks × 160 images in chunks of 8
    run = _torchrun(["eval", str(trained_run), *EVAL, *small, "--out", str(out)], tmp_path)
    deadline = time.time() + 240
    # Kill one process midway through AutoAttack, the last attack (clean and PGD make 40 parts).
    while len(list(parts.glob("*.pt"))) < 44 and run.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert run.poll() is None, run.communicate()[1][-2000:]
    workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(run.pid)], capture_output=True,
                                              text=True).stdout.split()]
    rank1 = next(pid for pid in workers if b"RANK=1" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
    os.kill(rank1, signal.SIGKILL)
    _, err = run.communicate(timeout=120)
    assert run.returncode != 0 and not out.exists()
    stopped = [line for line in err.splitlines() if "stopped: another process of the run failed" in line]
    assert not stopped or f"the finished parts in {parts} are intact" in stopped[0]
    finished = len(list(parts.glob("*.pt")))
    assert 44 <= finished < total

    # Resumed in one process (another world size): every finished part read back, only the others attacked.
    resumed = _eval_one_process(trained_run, out, *small)
    assert f"resumed: {finished} finished part(s)" in resumed
    assert json.loads(out.read_text())["parts"] == {"reused": finished, "total": total}
    assert torch.equal(_per_example(out)[1], _per_example(tmp_path / "reference.json")[1])
    assert not parts.exists()


def test_a_last_batch_smaller_than_the_process_count_is_refused_before_anything_is_written(tmp_path):
    # 1,237 training images in batches of 1,236 leave a last batch of one image for two processes.
    run = _torchrun(["train", "--out", str(tmp_path / "run"), *RUN, "--set", "train.batch_size=1236"], tmp_path)
    _, err = run.communicate(timeout=300)
    assert run.returncode != 0
    refused = [line for line in err.splitlines() if "fewer than the 2 training processes" in line]
    assert refused and refused[0].startswith("advtrain: error: the last batch of each epoch has 1 image,")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("augment", [Augment(), Augment(crop_padding=4, flip=True), Augment(idbh="strong")],
                         ids=["none", "crop-flip", "idbh"])
def test_each_process_gathers_and_augments_only_its_share_of_the_global_batch(augment):
    """The shares of 2 processes, put together, are exactly the one-process batches (same augmentation draws)."""
    x, y = torch.randint(0, 256, (23, 3, 40, 40), dtype=torch.uint8), torch.arange(23)
    batcher = DeviceBatcher(x, y, batch_size=10, pixel_max=255, device="cpu", seed=3, augment=augment)
    whole = list(TensorSource(batcher).epoch(1, 0))
    shares = [list(TensorSource(batcher, Processes(rank, 2)).epoch(1, 0)) for rank in range(2)]
    assert [n for _, _, n in whole] == [10, 10, 3] == [n for _, _, n in shares[1]]
    for k, (x_all, y_all, _) in enumerate(whole):
        assert [len(shares[r][k][1]) for r in range(2)] == [len(y_all) - len(y_all) // 2, len(y_all) // 2]
        assert torch.equal(torch.cat([shares[0][k][0], shares[1][k][0]]), x_all)
        assert torch.equal(torch.cat([shares[0][k][1], shares[1][k][1]]), y_all)
