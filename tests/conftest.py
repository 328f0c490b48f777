import os
from pathlib import Path

import pytest
import torch

# Two cores are shared with other processes: torch's default thread pool makes small models up to
# 25x slower there, so every test runs with one thread.
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CIFAR_SUBSET = Path(os.environ.get("ADVTRAIN_CIFAR_SUBSET", SHARED_DATA / "cifar10_subset.npz"))


@pytest.fixture
def cifar_subset() -> Path:
    if not CIFAR_SUBSET.exists():
        pytest.skip(f"real CIFAR-10 subset not found at {CIFAR_SUBSET}")
    return CIFAR_SUBSET
