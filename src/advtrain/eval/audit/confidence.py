"""How sure an audit is: Wilson intervals for accuracies, percentile-bootstrap intervals for per-example statistics.

Both are 95% intervals. The bootstrap draws from a generator seeded with a fixed seed, so an audit's intervals are
the same on every rerun of the same images.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
BOOTSTRAP_SEED = 0


def wilson_interval(correct: int, total: int) -> tuple[float, float]:
    """The 95% Wilson score interval of an accuracy `correct / total` (good at 0 and 1, unlike the normal
    approximation, which collapses to a point there). (NaN, NaN) for no examples."""
    if total == 0:
        return math.nan, math.nan
    if not 0 <= correct <= total:
        raise ValueError(f"wilson_interval needs 0 <= correct <= total, got {correct} of {total}")
    p = correct / total
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * total)) / (1 + z2 / total)
    half = Z95 * math.sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / (1 + z2 / total)
    # At 0 and at `total` the bounds are exactly 0 and 1; rounding would leave 1 - 1e-16.
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == total else min(1.0, centre + half)
    return low, high


def bootstrap_interval(
    values: Tensor, statistic: Callable[[Tensor], Tensor], *, resamples: int, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """The 95% percentile-bootstrap interval of `statistic` over per-example `values` (1-D). `statistic` maps a
    (resamples, n) batch of resampled rows to (resamples,) values (e.g. `lambda v: v.mean(-1)`). (NaN, NaN) for no
    values."""
    v = values.detach().to("cpu", torch.float64).flatten()
    if len(v) == 0:
        return math.nan, math.nan
    if resamples < 1:
        raise ValueError(f"bootstrap needs at least one resample, got {resamples}")
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randint(len(v), (resamples, len(v)), generator=generator)
    stats = statistic(v[rows]).to(torch.float64)
    low, high = torch.quantile(stats, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return float(low), float(high)
