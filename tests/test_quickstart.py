"""`advtrain quickstart`'s recipe: configs/digits.yaml cut to fit about 2 minutes, still with the reference
AutoAttack."""

from importlib import resources

import pytest

from advtrain.config import load_config
from advtrain.errors import UserError
from advtrain.quickstart import QUICK_EPOCHS, QUICK_TEST_IMAGES, quick_overrides, quickstart


def _configs(*runs):
    with resources.as_file(resources.files("advtrain") / "configs" / "digits.yaml") as path:
        return load_config(path), [load_config(path, quick_overrides(path, *run)) for run in runs]


def test_quick_runs_halve_the_recipe_and_decay_the_lr_at_the_same_fractions():
    recipe, (robust, short) = _configs(("pgd_at",), ("standard", 6))
    assert robust.train.epochs == QUICK_EPOCHS == recipe.train.epochs // 2
    assert robust.schedule.milestones == pytest.approx([m / 2 for m in recipe.schedule.milestones])
    assert short.train.epochs == 6
    assert short.schedule.milestones == pytest.approx([m * 6 / recipe.train.epochs for m in recipe.schedule.milestones])
    assert robust.method.name == "pgd_at" and short.method.name == "standard"
    for config in (robust, short):
        assert config.eval.n == QUICK_TEST_IMAGES < 360 and "aa" in config.eval.attacks  # the reference AutoAttack
        assert config.threat == recipe.threat and config.train.progress == "quiet"


def test_quickstart_refuses_zero_epochs(tmp_path):
    with pytest.raises(UserError, match="--epochs must be >= 1"):
        quickstart(tmp_path, epochs=0)
