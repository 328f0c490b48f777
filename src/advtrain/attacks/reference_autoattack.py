"""AutoAttack through the reference implementation (``pyautoattack``), never re-implemented here.

Two presets:

* ``"standard"`` — the standard AutoAttack version (APGD-CE, APGD-T, FAB-T, Square) exactly as
  ``pyautoattack`` configures it. Only this one gives numbers comparable to published AutoAttack results.
* ``"apgd"`` — NOT the standard version: only its first two stages, APGD-CE then APGD-T, with the same
  settings the standard version uses for them. Cheaper, and an upper bound on standard robust accuracy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from pyautoattack import AutoAttack
from torch import Tensor, nn

from advtrain.attacks.bn_policy import bn_policy
from advtrain.attacks.frozen import frozen_parameters
from advtrain.attacks.threat import check_images, check_radius, parse_norm
from advtrain.errors import UserError

__all__ = ["AUTOATTACK_PRESETS", "autoattack"]

AUTOATTACK_PRESETS: dict[str, tuple[str, ...]] = {
    # The attack sequence pyautoattack runs for version="standard" (it owns the settings).
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    # Cheaper, NOT standard AutoAttack: the first two stages of the standard version, same settings.
    "apgd": ("apgd-ce", "apgd-t"),
}

_PYAUTOATTACK_NORMS = {"linf": "Linf", "l2": "L2"}  # pyautoattack's spelling of each of advtrain's norms
_LOGGER_NAME = "auto-attack"


def autoattack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    norm: str = "Linf",
    version: str = "standard",
    seed: int = 0,
    batch_size: int = 500,
    verbose: bool = False,
    on_stage: Callable[[str], None] | None = None,
) -> Tensor:
    """Run AutoAttack (preset ``version``) on ``model`` and return the adversarial inputs.

    ``x_adv`` has the shape of ``x`` and is exactly what ``AutoAttack.run_standard_evaluation`` returns
    (inside the eps ball and [0, 1] by construction; points the attack could not flip stay clean).
    ``x`` holds float images in [0, 1] and ``eps`` is in [0, 1] pixel units; ``norm`` is "Linf" (also "linf",
    "inf") or "L2" ("l2"). Other input is refused with the fix named.
    The model runs in eval mode with its parameters frozen (`frozen_parameters`: FAB's ``.backward()`` then
    computes input gradients only and leaves the parameters' ``.grad`` untouched); every module's training flag
    and every parameter's ``requires_grad`` are restored afterwards. pyautoattack's ``auto-attack`` logger is
    silenced unless ``verbose``. ``on_stage(name)`` is called as each sub-attack starts ("apgd-ce", "apgd-t", ...),
    read from the "running NAME" record that pyautoattack logs whatever its verbosity.
    """
    if version not in AUTOATTACK_PRESETS:
        raise UserError(
            f"unknown AutoAttack version {version!r}; use one of {', '.join(map(repr, AUTOATTACK_PRESETS))}"
        )
    parsed = parse_norm(norm)
    check_radius(eps, parsed)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"AutoAttack batch_size must be a positive integer, got {batch_size!r}")
    if x.ndim < 2 or x.shape[0] == 0 or y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise UserError(
            f"AutoAttack needs a non-empty batch x of shape (N, ...) and labels y of shape (N,), got "
            f"x {tuple(x.shape)} and y {tuple(y.shape)}; pass matching inputs and integer labels"
        )
    check_images(x)

    device = _model_device(model, fallback=x.device)
    with _quiet_logger(verbose), _stages_reported(on_stage), bn_policy(model, "eval"), frozen_parameters(model):
        adversary = _build(model, eps=float(eps), norm=_PYAUTOATTACK_NORMS[parsed], version=version, seed=seed,
                           device=device)
        adversary.verbose = verbose
        x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    return x_adv


def _build(
    model: nn.Module, *, eps: float, norm: str, version: str, seed: int, device: torch.device
) -> AutoAttack:
    common = {"eps": eps, "norm": norm, "seed": seed, "device": device}
    standard = AutoAttack(model, version="standard", **common)
    if version == "standard":
        return standard
    # The preset must equal the first stages of the standard version, so it takes the standard version's
    # own APGD-CE and APGD-T objects (restarts, target classes, iterations as pyautoattack set them)
    # rather than copying those numbers here, where they could drift from the library.
    custom = AutoAttack(model, version="custom", attacks=list(AUTOATTACK_PRESETS[version]), **common)
    custom.apgd = standard.apgd
    custom.apgd_targeted = standard.apgd_targeted
    return custom


def _model_device(model: nn.Module, fallback: torch.device) -> torch.device:
    # pyautoattack moves each batch to this device; it must be where the weights live.
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return fallback


@contextmanager
def _quiet_logger(verbose: bool) -> Iterator[None]:
    logger = logging.getLogger(_LOGGER_NAME)
    previous_level = logger.level
    handler: logging.Handler | None = None
    if verbose:
        # pyautoattack reports progress at DEBUG level; show it, on stderr if the app set up no logging.
        logger.setLevel(logging.DEBUG)
        if not logger.hasHandlers():
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            logger.addHandler(handler)
    else:
        # Its sanity-check warnings would otherwise reach stderr through logging's last-resort handler.
        logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(previous_level)
        if handler is not None:
            logger.removeHandler(handler)


class _StageHandler(logging.Handler):
    """Passes the sub-attack name of pyautoattack's "running NAME" records to a callback, ignoring the rest."""

    def __init__(self, on_stage: Callable[[str], None]) -> None:
        super().__init__(logging.DEBUG)
        self.on_stage = on_stage

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("running "):
            self.on_stage(message.removeprefix("running "))


@contextmanager
def _stages_reported(on_stage: Callable[[str], None] | None) -> Iterator[None]:
    # Inside _quiet_logger: the "running" records are DEBUG, so the logger must pass DEBUG; when it is silenced,
    # propagation stays off so that nothing else (its sanity-check warnings) reaches the app's handlers.
    if on_stage is None:
        yield
        return
    logger = logging.getLogger(_LOGGER_NAME)
    previous_level, previous_propagate = logger.level, logger.propagate
    silenced = previous_level > logging.CRITICAL
    handler = _StageHandler(on_stage)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = previous_propagate and not silenced
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous_level)
        logger.propagate = previous_propagate
