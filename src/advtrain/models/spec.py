"""Everything needed to rebuild a model from a checkpoint: written into each checkpoint sidecar."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from advtrain.errors import UserError
from advtrain.models.registry import build_model

if TYPE_CHECKING:
    from advtrain.data import Dataset


@dataclass(frozen=True)
class ModelSpec:
    name: str
    num_classes: int
    in_channels: int
    input_size: int
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_dataset(
        cls,
        name: str,
        data: Dataset,
        normalize: str | list[list[float]] = "none",
        options: dict[str, Any] | None = None,
    ) -> ModelSpec:
        """The spec of model `name` for `data`'s image shape and classes.

        `normalize`: "none", "dataset" (the training images' per-channel mean/std) or [[means], [stds]].
        """
        c, h, w = data.shape
        if h != w:
            raise UserError(f"{data.name} images are {h}×{w}: advtrain models expect square inputs; crop or resize")
        if normalize == "dataset":
            norm: tuple[tuple[float, ...], tuple[float, ...]] | None = (tuple(data.mean), tuple(data.std))
        elif normalize == "none":
            norm = None
        else:
            norm = (tuple(normalize[0]), tuple(normalize[1]))
        return cls(name, data.num_classes, c, h, norm, dict(options or {}))

    def build(self) -> nn.Module:
        return build_model(
            self.name, num_classes=self.num_classes, in_channels=self.in_channels,
            input_size=self.input_size, normalize=self.normalize, **self.options,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any, source: str) -> ModelSpec:
        try:
            normalize = raw.get("normalize")
            return cls(
                name=str(raw["name"]), num_classes=int(raw["num_classes"]),
                in_channels=int(raw["in_channels"]), input_size=int(raw["input_size"]),
                normalize=None if normalize is None else (tuple(normalize[0]), tuple(normalize[1])),
                options=dict(raw.get("options") or {}),
            )
        except (AttributeError, KeyError, TypeError, ValueError, IndexError):
            raise UserError(
                f"{source} has no valid model description (name, num_classes, in_channels, input_size): "
                "pass --model NAME with --weights"
            ) from None
