"""Carve a validation split out of the training set (never the test set), seeded and optionally stratified."""

from __future__ import annotations

import math

import torch

from advtrain.errors import UserError


def _val_count(n: int, val_size: float | int) -> int:
    """Number of validation examples: a float is a fraction of ``n``, an int is a count."""
    if isinstance(val_size, float):
        if not 0.0 <= val_size < 1.0:
            raise UserError(
                f"val_size {val_size!r} is not a fraction in [0, 1); give e.g. 0.1 or a count like 5000"
            )
        count = math.floor(val_size * n + 0.5)  # round half up: no banker's rounding surprises
    elif isinstance(val_size, int) and not isinstance(val_size, bool):
        if val_size < 0:
            raise UserError(f"val_size {val_size} is negative; give a count >= 0 or a fraction in [0, 1)")
        count = val_size
    else:
        raise UserError(f"val_size must be a fraction in [0, 1) or an integer count >= 0, got {val_size!r}")
    if count > 0 and count >= n:
        raise UserError(
            f"val_size {val_size!r} takes {count} of {n} training examples and leaves none to train on; "
            "give a smaller val_size"
        )
    return count


def _stratified_counts(class_sizes: list[int], total: int) -> list[int]:
    """Share ``total`` among classes in proportion to their sizes, by largest remainder.

    Exact integer arithmetic; among equal remainders the lower class index gets the extra example.
    """
    n = sum(class_sizes)
    quotients = [divmod(size * total, n) for size in class_sizes]
    counts = [q for q, _ in quotients]
    order = sorted(range(len(class_sizes)), key=lambda c: -quotients[c][1])
    for c in order[: total - sum(counts)]:
        counts[c] += 1
    return counts


def split_validation(
    n: int, val_size: float | int, seed: int, labels: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted int64 ``(train_idx, val_idx)`` partitioning ``range(n)``, i.e. indices into the training set.

    ``val_size`` is a fraction in [0, 1) or a count; 0 gives an empty validation set. The split depends only
    on ``(n, val_size, seed, labels)``. With ``labels`` each class is represented in proportion to its size.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise UserError(f"split_validation needs a training-set size n >= 0, got {n!r}")
    count = _val_count(n, val_size)
    generator = torch.Generator().manual_seed(seed)
    if labels is None or count == 0:
        perm = torch.randperm(n, generator=generator)
        val = perm[:count]
    else:
        labels = torch.as_tensor(labels).cpu()
        if labels.dim() != 1 or len(labels) != n or labels.is_floating_point() or labels.dtype == torch.bool:
            raise UserError(
                f"labels for a stratified split must be n={n} integer class labels, "
                f"got {labels.dtype} {tuple(labels.shape)}"
            )
        classes, inverse = torch.unique(labels, return_inverse=True)
        sizes = torch.bincount(inverse, minlength=len(classes))
        per_class = torch.tensor(_stratified_counts(sizes.tolist(), count), dtype=torch.int64)
        # One permutation of the whole set, then a stable sort by class: each class's members come out in a
        # seeded random order, without a Python loop over examples.
        perm = torch.randperm(n, generator=generator)
        by_class = perm[torch.sort(inverse[perm], stable=True).indices]
        starts = torch.cumsum(sizes, 0) - sizes
        rank = torch.arange(n) - torch.repeat_interleave(starts, sizes)
        val = by_class[rank < torch.repeat_interleave(per_class, sizes)]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[val] = True
    return torch.nonzero(~mask).flatten(), torch.nonzero(mask).flatten()
