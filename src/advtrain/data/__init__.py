"""Datasets as uint8 tensors (or image folders read on demand), validation splits carved from the training set,
and an on-device batcher."""

from advtrain.data.batcher import Augment, DeviceBatcher, augment_batch, to_float
from advtrain.data.dataset import Dataset
from advtrain.data.folders import FolderDataset
from advtrain.data.sources import list_datasets, load_dataset
from advtrain.data.split import split_validation

__all__ = [
    "Augment",
    "Dataset",
    "DeviceBatcher",
    "FolderDataset",
    "augment_batch",
    "list_datasets",
    "load_dataset",
    "split_validation",
    "to_float",
]
