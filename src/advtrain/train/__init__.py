"""Training: the loop, optimizers and LR schedules."""

from advtrain.train.schedule import LRSchedule, build_optimizer
from advtrain.train.trainer import TrainResult, load_run_data, train

__all__ = ["LRSchedule", "TrainResult", "build_optimizer", "load_run_data", "train"]
