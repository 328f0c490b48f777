"""Readable, honest output: exact accuracies with their counts, each result printed once, the trade-off line only
where it is the AA sum, single seeds shown as such, and training curves labelled by what they measure."""

from __future__ import annotations

import json

import torch

from advtrain.eval.protocol import recorded_protocol
from advtrain.eval.robustness import AttackResult, AttackSpec, attack_fields


def _result(correct: int, total: int) -> AttackResult:
    return AttackResult(AttackSpec("pgd", 0.1, "linf", 10, 1, 0.025), torch.arange(total) < correct)


def test_accuracy_is_the_exact_ratio_of_the_counts_the_row_stores():
    result = _result(17, 50)
    assert result.accuracy == 0.34 and float(torch.tensor([True] * 17 + [False] * 33).float().mean()) != 0.34
    row = result.as_dict()
    assert (row["accuracy"], row["correct"], row["total"]) == (0.34, 17, 50)
    assert json.loads(json.dumps(row))["accuracy"] == 0.34  # no float32 digits in the JSON
    assert attack_fields(row) == AttackSpec("pgd", 0.1, "linf", 10, 1, 0.025).describe()
    assert recorded_protocol({"results": [row]})["attacks"] == [attack_fields(row)]
    empty = _result(0, 0)
    assert empty.total == 0 and empty.count == 0 and empty.accuracy != empty.accuracy  # NaN without examples
