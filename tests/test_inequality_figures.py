import math
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from advtrain.eval.inequality import SALIENCY_FIGURE_IMAGES, saliency_examples
from advtrain.report.figures import save_figure
from advtrain.report.inequality_figures import (
    corruption_error_curves,
    noise_error_curves,
    occlusion_error_bars,
    saliency_grid,
    write_inequality_figures,
)

RHOS_INDUCTIVE = [0.002 * k for k in range(1, 11)]
RHOS_RANDOM = [0.02 * k for k in range(1, 11)]


def assert_png_not_blank(path: Path) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rgb = mpimg.imread(path)[..., :3]
    assert float(np.std(rgb)) > 0.01


def texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def saliency_inputs(n: int, c: int) -> tuple[np.ndarray, dict, dict]:
    rng = np.random.default_rng(c)
    images = rng.uniform(0, 1, (n, c, 8, 8))
    maps = {"PGD-AT": rng.normal(size=(n, c, 8, 8)), "IGD": torch.randn(n, c, 8, 8)}
    ginis = {"PGD-AT": [0.61, 0.42][:n], "IGD": [0.75, math.nan][:n]}
    return images, maps, ginis


@pytest.mark.parametrize("channels", [1, 3])
def test_saliency_grid(tmp_path: Path, channels: int) -> None:
    images, maps, ginis = saliency_inputs(2, channels)
    fig = saliency_grid(torch.from_numpy(images) if channels == 3 else images, maps, ginis, labels=["cat", "dog"])
    assert len(fig.axes) == 2 * (1 + 2)
    titles = [ax.get_title() for ax in fig.axes]
    assert "PGD-AT G=0.61" in titles and "IGD G=0.75" in titles and "IGD G=n/a" in titles
    assert "cat" in titles and "dog" in titles
    headers = [sub._suptitle.get_text() for sub in fig.subfigs]
    assert headers == ["image", "PGD-AT", "IGD"]
    assert all(not ax.axison for ax in fig.axes)
    assert_png_not_blank(save_figure(fig, tmp_path / "saliency.png"))


def test_saliency_grid_single_image_and_nan_map(tmp_path: Path) -> None:
    images, maps, ginis = saliency_inputs(1, 3)
    maps["PGD-AT"][0, :, :2] = np.nan
    maps["all-nan"] = np.full((1, 3, 8, 8), np.nan)
    fig = saliency_grid(images, maps, ginis)
    assert len(fig.axes) == 1 + 3
    assert any("G=0.61" in ax.get_title() for ax in fig.axes)
    assert_png_not_blank(save_figure(fig, tmp_path / "one.png"))


def test_saliency_grid_empty_and_bad_shapes(tmp_path: Path) -> None:
    fig = saliency_grid(np.zeros((0, 3, 8, 8)), {}, {})
    assert "no data" in texts(fig)
    save_figure(fig, tmp_path / "empty.png")
    images, _, _ = saliency_inputs(2, 1)
    only_images = saliency_grid(images, {}, {})
    assert len(only_images.axes) == 2
    with pytest.raises(ValueError, match="maps"):
        saliency_grid(images, {"m": np.zeros((3, 1, 8, 8))}, {})
    with pytest.raises(ValueError, match="C = 1 or 3"):
        saliency_grid(np.zeros((2, 2, 8, 8)), {}, {})


def test_noise_error_curves(tmp_path: Path) -> None:
    inductive = {
        "PGD-AT": {r: min(1.0, 30 * r) for r in RHOS_INDUCTIVE},
        "IGD": {r: 10 * r for r in RHOS_INDUCTIVE} | {0.01: math.nan},
    }
    random = {"PGD-AT": {r: r for r in RHOS_RANDOM}, "IGD": {r: r / 2 for r in RHOS_RANDOM}}
    fig = noise_error_curves(inductive, random)
    assert [ax.get_title() for ax in fig.axes] == ["Inductive noise", "Random noise"]
    for ax in fig.axes:
        assert len(ax.get_lines()) == 2
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["PGD-AT", "IGD"]
    x, y = fig.axes[0].get_lines()[0].get_data()
    assert x[0] == pytest.approx(0.2) and y[0] == pytest.approx(6.0)  # both in percent
    # a model has the same colour in both panels
    assert fig.axes[0].get_lines()[1].get_color() == fig.axes[1].get_lines()[1].get_color()
    assert_png_not_blank(save_figure(fig, tmp_path / "noise.png"))


def test_noise_error_curves_empty(tmp_path: Path) -> None:
    fig = noise_error_curves({"IGD": {0.002: 0.1, 0.004: 0.2}}, {})
    assert len(fig.axes) == 2 and "no data" in [t.get_text() for t in fig.axes[1].texts]
    assert_png_not_blank(save_figure(fig, tmp_path / "half.png"))
    fig = noise_error_curves({}, {"IGD": {0.02: math.nan}})
    assert texts(fig) == ["no data", "no data"]
    save_figure(fig, tmp_path / "none.png")


def test_occlusion_error_bars(tmp_path: Path) -> None:
    results = {
        "PGD-AT": {"grey (0.5)": 0.62, "white (1.0)": 0.71},
        "IGD": {"grey (0.5)": 0.35, "white (1.0)": math.nan},
    }
    fig = occlusion_error_bars(results)
    (ax,) = fig.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["grey (0.5)", "white (1.0)"]
    assert len(ax.patches) == 3  # NaN leaves no bar
    assert {"62.0", "71.0", "35.0"} <= set(texts(fig))
    assert_png_not_blank(save_figure(fig, tmp_path / "occlusion.png"))


def test_occlusion_error_bars_empty(tmp_path: Path) -> None:
    fig = occlusion_error_bars({})
    assert texts(fig) == ["no data"]
    save_figure(fig, tmp_path / "empty.png")


def test_corruption_error_curves(tmp_path: Path) -> None:
    names = ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"]
    results = {
        "PGD-AT": {n: {s: 0.1 * s for s in range(1, 6)} for n in names},
        "IGD": {n: {s: 0.05 * s for s in range(1, 6)} for n in names[:3]},
    }
    results["IGD"]["shot_noise"][3] = math.nan
    fig = corruption_error_curves(results)
    assert [ax.get_title() for ax in fig.axes] == names
    assert [len(ax.get_lines()) for ax in fig.axes] == [2, 2, 2, 1]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["PGD-AT", "IGD"]
    assert_png_not_blank(save_figure(fig, tmp_path / "corruptions.png"))

    one = corruption_error_curves({"IGD": {"gaussian_noise": {1: 0.1, 5: 0.4}}})
    assert len(one.axes) == 1
    five = corruption_error_curves({"m": {f"c{i}": {1: 0.1} for i in range(5)}})
    assert len(five.axes) == 5  # two rows of up to four; the spare axes are removed
    save_figure(five, tmp_path / "five.png")


def test_corruption_error_curves_empty(tmp_path: Path) -> None:
    fig = corruption_error_curves({})
    assert texts(fig) == ["no data"]
    save_figure(fig, tmp_path / "empty.png")
    nan_only = corruption_error_curves({"m": {"gaussian_noise": {1: math.nan}}})
    assert texts(nan_only) == ["no data"] and not nan_only.legends


def test_write_inequality_figures_draws_the_saliency_examples_of_the_models(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4)).double()
    x = torch.rand(10, 3, 8, 8, dtype=torch.float64)
    y = model(x).argmax(1)  # every image correct: the examples are the first SALIENCY_FIGURE_IMAGES
    examples = saliency_examples({"m": model}, x, y, class_names=["a", "b", "c", "d"])
    assert torch.equal(examples.images, x[:SALIENCY_FIGURE_IMAGES])
    assert examples.titles == ["abcd"[int(c)] for c in y[:SALIENCY_FIGURE_IMAGES]]
    assert len(examples.ginis["m"]) == SALIENCY_FIGURE_IMAGES
    result = {"n": 10, "n_common_correct": 10, "gini": {"m": {"global": 0.5}},
              "inductive_occlusion": {"m": {"grey": 0.25, "white": 0.5}}}
    written = write_inequality_figures(result, tmp_path, examples)
    assert written == [tmp_path / "saliency.png", tmp_path / "occlusion.png"]
    for path in written:
        assert_png_not_blank(path)


def test_write_inequality_figures_refuses_gini_without_its_saliency_maps(tmp_path: Path) -> None:
    result = {"n": 10, "n_common_correct": 10, "gini": {"m": {"global": 0.5}}}
    with pytest.raises(ValueError, match="saliency_examples"):
        write_inequality_figures(result, tmp_path / "figures")
    assert not (tmp_path / "figures").exists()
