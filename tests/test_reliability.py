"""Issue 3: exact resume after SIGKILL, SIGTERM/SIGINT checkpoints, safe loading, non-finite guard,
disk-full and read-only folders, determinism. Training runs in real subprocesses killed by real signals."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from advtrain.checkpoint import load_weights
from advtrain.cli import main
from advtrain.config import load_config
from advtrain.errors import TrainingStopped
from advtrain.methods import Method, MethodConfig, StepOutput
from advtrain.methods.registry import register_method
from advtrain.train import train
from advtrain.train.state import decode_tree, encode_tree, list_states

# digits, 1237 training images in batches of 64: 20 steps per epoch, 80 in all; a mid-epoch state every
# 7 steps, so resumes start inside epochs as well as at their ends.
RUN = ["seed=3", "train.epochs=4", "train.batch_size=64", "train.checkpoint_every=7", "train.val_steps=2",
       "train.threads=1", "train.progress=quiet", "method.steps=3", "threat.eps=0.2", "data.val_size=200",
       "eval.attacks=[clean]", "eval.n=60"]
STEPS = 80
# Measurements of the machine, not results of the math: they differ between a run and its resumed copy.
TIMING = ("seconds", "images_per_s", "peak_memory_mb")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# Runs the CLI, but SIGKILLs itself inside the N-th atomic file replacement: the new file is complete
# under its temporary name and not yet renamed, i.e. in the middle of writing a checkpoint.
KILL_IN_WRITE = """
import os, signal, sys
n = int(sys.argv[1])
calls = [0]
real_replace = os.replace
def replace(src, dst, *a, **k):
    calls[0] += 1
    if calls[0] == n:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *a, **k)
os.replace = replace
from advtrain.cli import main
sys.exit(main(sys.argv[2:]))
"""


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "advtrain", *args]


def sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def weights(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return load_weights(run / "checkpoints" / f"{which}.safetensors")[0]


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"weights differ bit-wise in {different[:3]}"


def steps_saved(run: Path) -> int:
    """Optimizer steps covered by the newest complete state (-1: none yet)."""
    states = list_states(run / "checkpoints") if (run / "checkpoints").is_dir() else []
    return states[0][0].epoch * 20 + states[0][0].batch if states else -1


def assert_every_complete_file_is_intact(run: Path) -> None:
    # A kill never leaves a truncated file under a final name: each weights file matches its sha256.
    for path in (run / "checkpoints").glob("*.safetensors"):
        if path.with_suffix(".json").exists():
            load_weights(path)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run, by the same CLI in a subprocess."""
    run = tmp_path_factory.mktemp("reference") / "run"
    done = subprocess.run(cli("train", *sets(RUN), "--out", str(run)), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return run


def test_sigkill_at_three_random_points_then_resume_is_bit_identical(reference, tmp_path):
    seed = int(os.environ.get("ADVTRAIN_KILL_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    run = tmp_path / "run"
    # Two kills from outside at random moments after random states, one from inside a checkpoint write.
    plan = ["outside", "outside", "in_write"]
    rng.shuffle(plan)
    kills = []
    for kind in plan:
        # A run killed before it wrote config.yaml starts again; after that, --resume continues it.
        args = ["--resume", str(run)] if (run / "config.yaml").exists() else [*sets(RUN), "--out", str(run)]
        if kind == "in_write":
            # config.yaml is one replacement, each state two (tensors, sidecar), last and best two each.
            nth = rng.randint(1, 8)
            proc = subprocess.run([sys.executable, "-c", KILL_IN_WRITE, str(nth), "train", *args], env=ENV,
                                  capture_output=True, text=True)
            kills.append((kind, nth, proc.returncode))
        else:
            before = max(steps_saved(run), 0)
            target = min(rng.randint(before + 1, before + 15), STEPS - 8)
            proc = subprocess.Popen(cli("train", *args), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            while steps_saved(run) < target and proc.poll() is None:
                time.sleep(0.002)
            time.sleep(rng.uniform(0, 0.03))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills.append((kind, target, proc.returncode))
        assert proc.returncode == -signal.SIGKILL, f"seed {seed}: {kills}: the run ended before it was killed"
        assert_every_complete_file_is_intact(run)
    done = subprocess.run(cli("train", "--resume", str(run)), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, f"seed {seed}: {kills}: {done.stderr}"
    assert_same_weights(weights(run), weights(reference))
    assert_same_weights(weights(run, "best"), weights(reference, "best"))
    assert metrics(run) == metrics(reference), f"seed {seed}: {kills}"
    # The catastrophic-overfitting monitor's readings (and its previous-reading state) resume exactly too.
    assert (run / "monitor.jsonl").read_text() == (reference / "monitor.jsonl").read_text()
    assert json.loads((run / "eval.json").read_text())["results"] == \
        json.loads((reference / "eval.json").read_text())["results"]
    assert not list((run / "checkpoints").glob(".*.tmp")), "a killed write left its temporary file behind"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_a_checkpoint_say_how_to_resume_and_exit_nonzero(reference, tmp_path, signum):
    run = tmp_path / "run"
    proc = subprocess.Popen(cli("train", *sets(RUN), "--out", str(run)), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    while steps_saved(run) < 7 and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signum)
    _, err = proc.communicate()
    assert proc.returncode == 128 + signum, err
    name = signal.Signals(signum).name
    (line,) = err.strip().splitlines()
    assert f"stopped by {name} after step" in line and f"advtrain train --resume {run}" in line
    newest = list_states(run / "checkpoints")[0][1]
    assert f"saved {newest}" in line
    # The state is saved at the step the message names: the first step boundary after the signal.
    step = int(line.split("after step ")[1].split()[0])
    assert steps_saved(run) == step >= 7
    done = subprocess.run(cli("train", "--resume", str(run), "--quiet"), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stdout
    assert_same_weights(weights(run), weights(reference))
    assert metrics(run) == metrics(reference)


def test_resume_of_a_finished_run_only_evaluates_again(reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "eval.json").unlink()
    before = weights(run)
    done = subprocess.run(cli("train", "--resume", str(run)), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "had finished training: nothing left to train" in done.stdout and "/4  lr" not in done.stdout
    assert_same_weights(weights(run), before)
    assert json.loads((run / "eval.json").read_text())["results"] == \
        json.loads((reference / "eval.json").read_text())["results"]


class Evil:
    """Unpickling this creates a marker file: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_crafted_pickle_is_refused_as_weights_and_on_resume_and_never_runs(reference, tmp_path, capsys):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"state_dict": Evil(marker)})
    evil_pt = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil(marker)}, evil_pt)
    (tmp_path / "evil.pkl").write_bytes(payload)
    assert not marker.exists()
    for path, fragment in [(evil_pt, "contains Python objects"), (tmp_path / "evil.pkl", "unsupported suffix")]:
        code = main(["eval", "--model", "small_cnn", "--weights", str(path), "--data", "digits", "--n", "10"])
        assert code == 2 and fragment in capsys.readouterr().err
        assert not marker.exists()

    # On resume: the attacker controls the state file and its sidecar (with a matching sha256).
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    newest = list_states(run / "checkpoints")[0][1]
    for _, state in list_states(run / "checkpoints"):
        state.write_bytes(evil_pt.read_bytes())
        sidecar = json.loads(state.with_suffix(".json").read_text())
        sidecar["sha256"] = hashlib.sha256(state.read_bytes()).hexdigest()
        state.with_suffix(".json").write_text(json.dumps(sidecar))
    (run / "checkpoints" / "resume.pt").write_bytes(evil_pt.read_bytes())
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code = main(["train", "--resume", str(run)])
    err = capsys.readouterr().err
    assert code == 2 and "no intact checkpoint" in err and "not a readable safetensors file" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not marker.exists()
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert newest.exists()


def test_a_tampered_checkpoint_is_skipped_for_the_previous_intact_one(reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "eval.json").unlink()
    states = list_states(run / "checkpoints")
    assert len(states) == 2  # the newest and the one before it are kept
    data = bytearray(states[0][1].read_bytes())
    data[-1] ^= 0xFF
    states[0][1].write_bytes(bytes(data))
    assert main(["train", "--resume", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"skipping damaged checkpoint {states[0][1].name}" in out and "does not match the sha256" in out
    # Resumed from the previous state (mid epoch 4), it trains the rest again, to the same weights.
    assert_same_weights(weights(run), weights(reference))


@dataclass
class ExplodeConfig(MethodConfig):
    name: str = "test_explode"
    at_step: int = 13
    weights: bool = False  # True: keep the loss finite but put an Inf into the weights


@register_method
class Explode(Method):
    """Plain CE that turns non-finite at one global step: the guard must name it and keep what was good."""

    name = "test_explode"
    config_class = ExplodeConfig

    def loss(self, model, batch, ctx):
        loss = F.cross_entropy(model(batch.x), batch.y)
        if ctx.step != self.config.at_step:
            return StepOutput(loss)
        if not self.config.weights:
            return StepOutput(loss * float("nan"))

        def poison():
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = float("inf")

        return StepOutput(loss, after_step=poison)


@pytest.mark.parametrize(("weights_inf", "at_step", "fragment"), [
    (False, 13, "the training loss became nan in epoch 1, batch 14 of 20 (step 14)"),
    # Poisoned by the step just before the step-15 checkpoint, with every loss so far finite.
    (True, 14, "the weights became NaN/Inf in epoch 1 by batch 15 of 20"),
])
def test_a_non_finite_loss_or_weight_stops_training_and_keeps_the_last_good_checkpoint(
    tmp_path, weights_inf, at_step, fragment
):
    config = load_config(None, [o for o in RUN if not o.startswith("method.")] +
                         ["method.name=test_explode", f"method.at_step={at_step}", f"method.weights={weights_inf}",
                          "train.checkpoint_every=5"])
    with pytest.raises(TrainingStopped) as stopped:
        train(config, tmp_path / "run", log=lambda _: None)
    message = str(stopped.value)
    assert stopped.value.exit_code == 3 and fragment in message, message
    assert "state-e0000-b000010.safetensors" in message and "lower optim.lr" in message
    # The last good state (step 10) is there and finite; nothing later, and no best/last from a bad model.
    states = list_states(tmp_path / "run" / "checkpoints")
    assert [s[0].batch for s in states] == [10, 5]
    tensors, _ = load_weights(states[0][1])
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model/"))
    assert not (tmp_path / "run" / "checkpoints" / "best.safetensors").exists()


def test_deterministic_runs_repeat_bit_for_bit_and_restore_the_global_flag(tmp_path):
    config = load_config(None, [*RUN, "train.epochs=1", "train.deterministic=true", "train.checkpoint_every=null"])
    for name in ("a", "b"):
        train(config, tmp_path / name, log=lambda _: None)
        assert not torch.are_deterministic_algorithms_enabled()
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))


def test_resume_refuses_a_changed_config_and_mixing_with_new_settings(reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("epochs: 4", "epochs: 5"))
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["train", "--resume", str(run)]) == 2
    assert "no longer matches the config its checkpoints were trained with" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--set", "train.epochs=9"]) == 2
    assert "--resume continues a run with its own config.yaml: drop --set" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_overwrite_replaces_only_a_run_and_a_non_empty_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.tex").write_text("precious")
    args = ["train", *sets([*RUN, "train.epochs=1", "eval.attacks=[clean]"])]
    assert main([*args, "--out", str(folder)]) == 2
    assert "is not empty: continue that run with --resume" in capsys.readouterr().err
    assert main([*args, "--out", str(folder), "--overwrite"]) == 2
    assert "holds no advtrain run (no .advtrain-run.json), so --overwrite will not delete anything in it" in \
        capsys.readouterr().err
    assert [p.name for p in folder.iterdir()] == ["thesis.tex"]
    run = tmp_path / "run"
    assert main([*args, "--out", str(run)]) == 0
    (run / "notes.txt").write_text("mine")
    assert main([*args, "--out", str(run), "--overwrite"]) == 0
    assert (run / "notes.txt").read_text() == "mine" and len(metrics(run)) == 1


def test_the_state_tree_round_trips_every_kind_of_value():
    tree = {"model": {"w": torch.arange(6.0).view(2, 3)}, 3: [1, 2.5, None, True, "s"],
            "t": (float("inf"), float("nan"), -float("inf")), "np": np.arange(4, dtype="uint32"),
            "nested": {"__tensor__": "not a marker"}}
    tensors, skeleton = encode_tree(tree)
    json.dumps(skeleton, allow_nan=False)  # the skeleton is strict JSON
    back = decode_tree(json.loads(json.dumps(skeleton)), tensors)
    assert torch.equal(back["model"]["w"], tree["model"]["w"]) and back[3] == tree[3]
    assert back["t"][0] == float("inf") and back["t"][1] != back["t"][1] and back["t"][2] == -float("inf")
    assert back["np"].dtype == tree["np"].dtype and (back["np"] == tree["np"]).all()
    assert back["nested"] == {"__tensor__": "not a marker"}
    with pytest.raises(TypeError, match="cannot store a object"):
        encode_tree({"x": object()})


# --- disk full and read-only folders: a real tmpfs in a private mount namespace -------------------------


def _can_mount() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True)
    return probe.returncode == 0


needs_mount = pytest.mark.skipif(not _can_mount(), reason="needs root and unshare to mount a private tmpfs")


def _in_namespace(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    return subprocess.run(["unshare", "-m", "sh", "-c", script.replace("MNT", str(mnt))], env=ENV,
                           capture_output=True, text=True)


@needs_mount
def test_a_full_disk_stops_with_one_line_and_keeps_the_previous_checkpoint_then_resume_finishes(
    reference, tmp_path
):
    # Room for epoch 1's files (last, best, one state) but not for epoch 2's second state next to them.
    size = sum(p.stat().st_size for p in (reference / "checkpoints").glob("*")) * 3 // 4
    py = f"{sys.executable} -m advtrain"
    out = tmp_path / "copy"
    script = (
        f"mount -t tmpfs -o size={size} tmpfs MNT && "
        f"{py} train {' '.join(sets([*RUN, 'train.checkpoint_every=null']))} --out MNT/run; echo rc=$?; "
        f"cp -a MNT/run {out}; mount -o remount,size=64m MNT && {py} train --resume MNT/run --quiet; "
        f"echo rc=$?; cp -a MNT/run {out}-final"
    )
    done = _in_namespace(script, tmp_path)
    first, second = [line for line in done.stdout.splitlines() if line.startswith("rc=")]
    assert first == "rc=2", done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("advtrain")]
    assert "No space left on device" in line and "the previous checkpoint is intact" in line
    assert "advtrain train --resume" in line and "Traceback" not in done.stderr
    assert_every_complete_file_is_intact(out)
    assert steps_saved(out) >= 20
    assert second == "rc=0", done.stderr
    assert_same_weights(weights(Path(f"{out}-final")), weights(reference))


@needs_mount
def test_a_read_only_folder_is_a_one_line_error_and_nothing_changes(reference, tmp_path):
    py = f"{sys.executable} -m advtrain"
    script = (
        f"mount -t tmpfs tmpfs MNT && cp -a {reference} MNT/old && mount -o remount,ro MNT && "
        f"{py} train {' '.join(sets(RUN))} --out MNT/new; echo rc=$?; "
        f"{py} eval MNT/old --attacks clean --n 60 --seed 3; echo rc=$?; sha256sum MNT/old/eval.json"
    )
    done = _in_namespace(script, tmp_path)
    codes = [line for line in done.stdout.splitlines() if line.startswith("rc=")]
    assert codes == ["rc=2", "rc=2"], done.stderr
    errors = [x for x in done.stderr.splitlines() if x.startswith("advtrain")]
    assert len(errors) == 2 and all("Read-only file system" in e for e in errors), done.stderr
    assert "Traceback" not in done.stderr
    digest = hashlib.sha256((reference / "eval.json").read_bytes()).hexdigest()
    assert digest in done.stdout
