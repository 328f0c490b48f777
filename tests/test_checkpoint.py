"""Weights on disk: exact round trips, tamper and truncation detection, safe .pt loading, atomic writes."""

import itertools
import json
import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from advtrain.checkpoint import (
    load_state_into,
    load_weights,
    save_weights,
    sha256_file,
)
from advtrain.errors import UserError
from advtrain.fileio import atomic_write_bytes, atomic_write_text


def conv_model(n_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 2 * 2, n_classes),
    )


@pytest.fixture
def trained_model() -> nn.Module:
    torch.manual_seed(0)
    model = conv_model().to(memory_format=torch.channels_last)
    model.train()
    with torch.no_grad():  # move the BatchNorm running statistics away from their defaults
        for _ in range(3):
            model(torch.randn(4, 3, 8, 8).to(memory_format=torch.channels_last))
    return model.eval()


def fixed_input() -> torch.Tensor:
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    return x.to(memory_format=torch.channels_last)


def saved(tmp_path: Path, model: nn.Module) -> Path:
    path = tmp_path / "model.safetensors"
    save_weights(path, model.state_dict(), {"arch": "conv", "epoch": 3})
    return path


# --- safetensors round trip -------------------------------------------------------------------------


def test_round_trip_is_bit_exact(tmp_path, trained_model):
    assert not trained_model[0].weight.is_contiguous()  # channels_last: the case safetensors refuses raw
    path = saved(tmp_path, trained_model)

    state_dict, metadata = load_weights(path)
    fresh = conv_model().to(memory_format=torch.channels_last)
    load_state_into(fresh, state_dict, source=path.name)
    fresh.eval()

    for key, value in trained_model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(fresh(fixed_input()), trained_model(fixed_input()))
    assert metadata["arch"] == "conv" and metadata["epoch"] == 3


def test_sidecar_has_metadata_and_checksum(tmp_path, trained_model):
    path = saved(tmp_path, trained_model)
    sidecar = json.loads((tmp_path / "model.json").read_text())
    assert sidecar == {"arch": "conv", "epoch": 3, "format": "safetensors", "sha256": sha256_file(path)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.safetensors"]


def test_saved_tensors_are_detached_cpu_contiguous(tmp_path):
    weight = nn.Parameter(torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last))
    path = tmp_path / "w.safetensors"
    save_weights(path, {"w": weight, "tied": weight}, {})
    state_dict, _ = load_weights(path)
    assert not state_dict["w"].requires_grad
    assert state_dict["w"].is_contiguous() and state_dict["w"].device.type == "cpu"
    assert torch.equal(state_dict["w"], weight.detach()) and torch.equal(state_dict["tied"], weight.detach())


def test_overwrite_keeps_only_the_new_weights(tmp_path, trained_model):
    path = saved(tmp_path, trained_model)
    other = conv_model()
    save_weights(path, other.state_dict(), {"arch": "conv", "epoch": 4})
    state_dict, metadata = load_weights(path)
    assert metadata["epoch"] == 4
    assert torch.equal(state_dict["0.weight"], other.state_dict()["0.weight"])


def test_tampered_weights_are_refused(tmp_path, trained_model):
    path = saved(tmp_path, trained_model)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01  # one flipped bit in the last tensor
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"model\.safetensors") as info:
        load_weights(path)
    assert "sha256" in str(info.value)


def test_truncated_weights_are_refused_without_sidecar(tmp_path, trained_model):
    path = saved(tmp_path, trained_model)
    (tmp_path / "model.json").unlink()
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated or corrupt") as info:
        load_weights(path)
    assert "model.safetensors" in str(info.value) and "\n" not in str(info.value)


def test_truncated_weights_are_refused_with_sidecar(tmp_path, trained_model):
    path = saved(tmp_path, trained_model)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(UserError, match=r"model\.safetensors"):
        load_weights(path)


def test_save_refuses_other_suffix_and_non_tensors(tmp_path):
    with pytest.raises(UserError, match=r"\.safetensors"):
        save_weights(tmp_path / "w.pt", {"w": torch.zeros(1)}, {})
    with pytest.raises(UserError, match="not a tensor"):
        save_weights(tmp_path / "w.safetensors", {"w": [1, 2]}, {})  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []


def test_unserialisable_metadata_writes_nothing(tmp_path):
    with pytest.raises(UserError, match="JSON"):
        save_weights(tmp_path / "w.safetensors", {"w": torch.zeros(1)}, {"when": object()})
    assert list(tmp_path.iterdir()) == []


# --- .pt / .pth -------------------------------------------------------------------------------------


def test_pt_plain_state_dict(tmp_path, trained_model):
    path = tmp_path / "plain.pt"
    torch.save(trained_model.state_dict(), path)
    state_dict, metadata = load_weights(path)
    assert metadata == {}
    assert state_dict.keys() == trained_model.state_dict().keys()
    load_state_into(conv_model(), state_dict, source=path.name)


@pytest.mark.parametrize("entry", ["state_dict", "model", "model_state_dict"])
def test_pth_nested_state_dict(tmp_path, trained_model, entry):
    path = tmp_path / "nested.pth"
    torch.save({entry: trained_model.state_dict(), "epoch": 7, "optimizer": {"lr": 0.1}}, path)
    state_dict, _ = load_weights(path)
    assert state_dict.keys() == trained_model.state_dict().keys()


def test_data_parallel_prefix_stripped_only_when_on_every_key(tmp_path):
    path = tmp_path / "dp.pt"
    torch.save({"module.a": torch.zeros(1), "module.b.weight": torch.ones(2)}, path)
    assert set(load_weights(path)[0]) == {"a", "b.weight"}

    torch.save({"module.a": torch.zeros(1), "b": torch.ones(2)}, path)
    assert set(load_weights(path)[0]) == {"module.a", "b"}


def test_pt_without_state_dict_refused(tmp_path):
    path = tmp_path / "junk.pt"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(UserError, match="holds no state_dict"):
        load_weights(path)


def _write_marker(marker: str) -> str:
    Path(marker).write_text("code from the checkpoint ran")
    return marker


class Payload:
    """Unpickling this object calls _write_marker: stands in for arbitrary code inside a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return _write_marker, (str(self.marker),)


def test_pt_with_python_objects_is_refused_without_running_them(tmp_path, trained_model):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": trained_model.state_dict(), "extra": Payload(marker)}, path)
    assert not marker.exists()

    with pytest.raises(UserError, match="contains Python objects") as info:
        load_weights(path)
    assert "torch.save(model.state_dict())" in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()

    # Control: an unrestricted load really would have run the payload, so the check above means something.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_a_plain_pickle_is_named_as_such_and_never_unpickled(tmp_path, trained_model):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "pickled.pt"
    for protocol in (2, 4):
        path.write_bytes(pickle.dumps({"state_dict": trained_model.state_dict(), "x": Payload(marker)}, protocol))
        with warnings.catch_warnings(record=True) as caught, pytest.raises(UserError) as info:
            warnings.simplefilter("always")
            load_weights(path)
        assert str(info.value).startswith(f"{path} is a plain pickle (as pickle.dump writes), not a torch.save")
        assert "re-save with torch.save(model.state_dict())" in str(info.value) and "\n" not in str(info.value)
        assert caught == [] and not marker.exists()


def test_pickle_protocols_torch_reads_load_quietly_and_the_others_are_named(tmp_path, trained_model):
    state = trained_model.state_dict()
    for protocol, zip_format in itertools.product((2, 3, 4, 5), (True, False)):
        path = tmp_path / f"p{protocol}{zip_format}.pt"
        torch.save(state, path, pickle_protocol=protocol, _use_new_zipfile_serialization=zip_format)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if protocol <= 3:  # torch's weights-only unpickler reads these, and warns about 3 in two lines
                loaded, _ = load_weights(path)
                assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
            else:  # protocol 4 adds opcodes that unpickler lacks: say so, not "contains Python objects"
                with pytest.raises(UserError, match=f"saved with pickle protocol {protocol}, which torch's safe"):
                    load_weights(path)
        assert caught == [], (protocol, [str(w.message) for w in caught])


def test_a_file_in_neither_torch_format_is_not_called_a_pickle(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("weights are on the shared drive\n")
    with pytest.raises(UserError) as info:
        load_weights(path)
    assert "is not a checkpoint written by torch.save" in str(info.value) and "pickle" not in str(info.value)


def test_truncated_pt_refused(tmp_path, trained_model):
    path = tmp_path / "cut.pt"
    torch.save(trained_model.state_dict(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_weights(path)


# --- paths and fitting ------------------------------------------------------------------------------


def test_unsupported_suffix_lists_accepted_ones(tmp_path):
    path = tmp_path / "weights.ckpt"
    path.write_bytes(b"x")
    with pytest.raises(UserError, match=r"\.safetensors, \.pt, \.pth"):
        load_weights(path)


def test_missing_file_refused(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_weights(tmp_path / "nope.safetensors")


def test_wrong_model_names_keys(trained_model):
    state_dict = trained_model.state_dict()
    wrong = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(10, 10))
    with pytest.raises(UserError) as info:
        load_state_into(wrong, state_dict, source="weights.pt")
    message = str(info.value)
    assert message.startswith("weights.pt does not fit model Sequential:")
    assert "2 missing keys (2.weight, 2.bias)" in message
    assert "unexpected (1.weight, 1.bias, 1.running_mean, ...)" in message
    assert "\n" not in message


def test_shape_mismatch_named(trained_model):
    expected = r"2 shape mismatches \(5\.weight: file \[10, 32\] vs model \[3, 32\]"
    with pytest.raises(UserError, match=expected):
        load_state_into(conv_model(n_classes=3), trained_model.state_dict(), source="w.safetensors")


# --- atomic writes ----------------------------------------------------------------------------------


def test_atomic_write_text_round_trip(tmp_path):
    path = tmp_path / "sub" / "note.txt"
    atomic_write_text(path, "héllo\n")
    assert path.read_text(encoding="utf-8") == "héllo\n"


def test_failed_replace_keeps_previous_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "w.bin"
    atomic_write_bytes(path, b"old content")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"new content")
    assert path.read_bytes() == b"old content"
    assert [p.name for p in tmp_path.iterdir()] == ["w.bin"]


def test_failed_write_midway_keeps_previous_weights(tmp_path, monkeypatch, trained_model):
    path = saved(tmp_path, trained_model)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    real_fsync = os.fsync

    def crash_after_partial_write(fd):
        os.write(fd, b"garbage")  # the temp file is half-written when the "crash" comes
        real_fsync(fd)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", crash_after_partial_write)
    with pytest.raises(KeyboardInterrupt):
        save_weights(path, conv_model().state_dict(), {"epoch": 99})
    monkeypatch.undo()

    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    state_dict, metadata = load_weights(path)
    assert metadata["epoch"] == 3
    assert torch.equal(state_dict["0.weight"], trained_model.state_dict()["0.weight"].contiguous())
