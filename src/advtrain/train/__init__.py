"""Training: the loop and its components (`Callback`), `advtrain train` (`train`); `advtrain.fit` is train/fit.py."""

from advtrain.train.callbacks import Callback
from advtrain.train.schedule import LRSchedule, build_optimizer
from advtrain.train.trainer import TrainResult, load_run_data, train

__all__ = ["Callback", "LRSchedule", "TrainResult", "build_optimizer", "load_run_data", "train"]
