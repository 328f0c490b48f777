"""The `advtrain` argument parser: its commands, flags and help, and the flag value parsers (bad values exit 2)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from advtrain.cli.audit_command import add_audit_parser
from advtrain.errors import UserError

DEVICE_HELP = "auto (CUDA when available), cpu, cuda or cuda:N (default auto)"
SEED_HELP = "seed of the random starts and generated noise, for reproducible numbers (default 0)"


class _Parser(argparse.ArgumentParser):
    # Text for the end of --help that needs the (slow-to-import) registries: built only when help is shown.
    epilog_of: Callable[[], str] | None = None

    def format_help(self) -> str:
        if self.epilog_of is not None:
            self.epilog = self.epilog_of()
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: the message names the problem, --help shows the rest.
        # Stray arguments are echoed as typed; escape line breaks so the message stays one line.
        message = message.replace("\r", "\\r").replace("\n", "\\n")
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _eps_list(text: str) -> list[float]:
    from advtrain.configfile import parse_number

    try:
        values = [parse_number(part, "value") for part in text.split(",") if part.strip()]
    except UserError as e:  # argparse turns this into its one-line usage error, exit 2
        raise argparse.ArgumentTypeError(str(e)) from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected numbers such as 8/255 or 0.03,0.06, got {text!r}")
    return values


def _number(text: str) -> float:
    values = _eps_list(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one number such as 2/255, got {text!r}")
    return values[0]


def _norm(text: str) -> str:
    from advtrain.attacks.threat import parse_norm

    try:
        return parse_norm(text)
    except ValueError as e:  # argparse turns this into its one-line usage error, exit 2
        raise argparse.ArgumentTypeError(str(e)) from None


def _batch_size(text: str) -> int | str:
    """An integer or "auto"; the integer's range is checked with the other settings, naming --batch-size."""
    if text.strip() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or auto, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="advtrain", description="Adversarial training and robustness evaluation.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of any error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    # --debug is accepted before or after the command; SUPPRESS keeps a subcommand from resetting it.
    debug = _Parser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    p = sub.add_parser("train", parents=[debug],
                       help="train a model from a YAML config, then evaluate it and write a report")
    p.epilog_of = _train_choices
    p.add_argument("--config", metavar="NAME|FILE",
                   help="a bundled config by name (`advtrain configs` lists them, e.g. digits_trades) or a YAML "
                   "file; omitted: built-in defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=10 --set threat.eps=8/255")
    p.add_argument("--out", type=Path, help="new run directory")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue a stopped run from its newest intact checkpoint (bit-identical on CPU)")
    p.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    p.add_argument("--deterministic", action="store_true", help="use deterministic kernels only")
    p.add_argument("--quiet", action="store_true", help="no progress bar, no evaluation progress: one line per epoch")

    p = sub.add_parser("eval", parents=[debug], help="evaluate a run directory or a weights file under attacks")
    p.add_argument("run_dir", nargs="?", type=Path, help="a run directory made by `advtrain train`")
    p.add_argument("--model", help="model name, for --weights files without a sidecar (e.g. resnet18)")
    p.add_argument("--weights", type=Path, help=".safetensors (with its .json sidecar) or a plain .pt state_dict")
    p.add_argument("--normalize", choices=["none", "dataset"], default="none",
                   help="with --model: normalise inputs with the dataset's mean/std inside the model")
    p.add_argument("--data", help="dataset name (digits, cifar10, cifar100, svhn, npz, synthetic)")
    p.add_argument("--data-root", help="dataset folder or file")
    p.add_argument("--attacks", help="comma-separated robustness attacks clean,fgsm,pgd,cw,aa,apgd and/or inequality "
                   "evaluations gini,inductive_noise,random_noise,inductive_occlusion,corruptions and/or "
                   "vulnerability (per-example AV = CE(x') - CE(x)) and/or invariance (cosine of the penultimate "
                   "features of x and PGD x', at the first --eps with --steps) (default: the run's, or clean,pgd)")
    p.add_argument("--split", choices=["train", "test"],
                   help="the images `vulnerability` runs on: the first --n of this split (default: train)")
    p.add_argument("--compare", nargs="+", type=Path, metavar="RUN_DIR",
                   help="evaluate several run directories side by side (noise and occlusion on the images all "
                   "of them classify correctly), with a clean-vs-robust scatter (tradeoff.png); needs --out "
                   "FILE.json; unset --eps/--steps/... follow the "
                   "first run's config")
    p.add_argument("--attribution", choices=["saliency", "integrated_gradients", "input_x_gradient", "smoothgrad"],
                   default="saliency", help="the attribution map `gini` measures (default: saliency, ∇ₓ z_y)")
    p.add_argument("--corruption-constants", choices=["cifar10", "imagenet"], default="cifar10",
                   help="severity constants of the generated noise corruptions: CIFAR-10-C or ImageNet-C")
    p.add_argument("--corruptions-root", type=Path, metavar="DIR",
                   help="a released CIFAR-10-C folder (gaussian_noise.npy, ..., labels.npy), or for image-folder "
                   "data ImageNet-C style folders (<corruption>/<severity>/<class>/<test image's file name>): "
                   "`corruptions` reads its images instead of generating them")
    p.add_argument("--eps", type=_eps_list, help="comma-separated ε list, fractions allowed: 8/255,16/255")
    p.add_argument("--norm", type=_norm, help="threat model norm: linf (also Linf, inf) or l2 (also L2) (default: "
                   "the run's, or linf)")
    p.add_argument("--steps", type=int, help="PGD/CW steps (default 20)")
    p.add_argument("--restarts", type=int, help="PGD/CW restarts (default 1)")
    p.add_argument("--step-size", type=_number, help="PGD/CW step size (default 2.5·ε/steps)")
    # --num-images: under torchrun, whose own parser takes --n for an abbreviation of its options.
    p.add_argument("--n", "--num-images", dest="n", type=int,
                   help="evaluate the first N test images (default: all; under torchrun write --num-images N)")
    p.add_argument("--checkpoint", choices=["best", "last", "ema", "swa"], default="best",
                   help="which checkpoint of a run (ema/swa: its weight averages, when the run kept them)")
    p.add_argument("--batch-size", type=_batch_size, default="auto",
                   help="images per attack batch, or auto: as many as fit the GPU's free memory, 256 on CPU "
                   "(default auto; the batch size that ran is recorded in the eval JSON)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="the attacks' precision: fp32, or bf16 autocast (CUDA or CPU), an opt-in speed-up whose "
                   "robust accuracies can come out slightly higher than fp32's (default fp32; the eval JSON "
                   "records which)")
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bar or lines while the attacks run")
    p.add_argument("--out", type=Path, help="eval JSON path (default: RUN_DIR/eval.json, refused when it holds an "
                   "evaluation under another protocol; none for --weights; required with --compare); figures go to "
                   "RUN_DIR/figures with RUN_DIR/eval.json, else to OUT_STEM-figures next to it")

    p = sub.add_parser("diagnose", parents=[debug],
                       help="check a run or a weights file for gradient masking (docs/methods.md §7.7)")
    p.add_argument("run_dir", nargs="?", type=Path, help="a run directory made by `advtrain train`")
    p.add_argument("--model", help="model name, for --weights files without a sidecar (e.g. resnet18)")
    p.add_argument("--weights", type=Path, help=".safetensors (with its .json sidecar) or a plain .pt state_dict")
    p.add_argument("--data", help="dataset name (digits, cifar10, cifar100, svhn, npz, synthetic)")
    p.add_argument("--data-root", help="dataset folder or file")
    p.add_argument("--n", type=int, default=500, help="diagnose on the first N test images (default 500)")
    p.add_argument("--eps", type=_number, help="L∞ ε (default: the run's threat ε, else 8/255)")
    p.add_argument("--surrogate", type=Path, metavar="RUN_DIR",
                   help="a run to craft transfer attacks on (ideally standard-trained); without it the transfer "
                   "check is skipped")
    p.add_argument("--checkpoint", choices=["best", "last", "ema", "swa"], default="best",
                   help="which checkpoint of the run (and of --surrogate)")
    p.add_argument("--batch-size", type=_batch_size, default=256,
                   help="images per attack batch, or auto: as many as fit the GPU's free memory, 256 on CPU "
                   "(default 256)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--seed", type=int, default=0, help=SEED_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bar or lines while the checks run")
    p.add_argument("--out", type=Path, help="diagnose JSON path (default: RUN_DIR/diagnose.json; none for --weights); "
                   "figures go to RUN_DIR/figures or to OUT_STEM-figures next to it")

    p = sub.add_parser("bench", parents=[debug],
                       help="images/s of each method's training step and of PGD evaluation, against a reference "
                       "loop written like the papers' code, measured in the same run")
    p.add_argument("--model", default="small_cnn", help="registered model name (default small_cnn)")
    p.add_argument("--methods", default="pgd_at", help="comma-separated methods (default pgd_at)")
    p.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    p.add_argument("--shape", default="3x32x32", help="input C×H×W, e.g. 1x8x8 (default 3x32x32)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast on CUDA, fp32 on CPU (the reference loop is always fp32)")
    p.add_argument("--eps", type=_number, default=8 / 255)
    p.add_argument("--attack-steps", type=int, default=10, help="PGD-k of the training attack (default 10)")
    p.add_argument("--eval-steps", type=int, default=20, help="PGD-k of the evaluation attack (default 20)")
    p.add_argument("--iterations", type=int, default=5, help="timed steps per repeat (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="alternating repeats; the median is reported (default 3)")
    p.add_argument("--compile", default="eager",
                   help="torch.compile mode: eager (none), default, reduce-overhead (CUDA graphs) or max-autotune; "
                   "checked against eager gradients as train.compile is")
    p.add_argument("--attack-graph", action="store_true",
                   help="also time each method with its PGD training attack recorded as a CUDA graph and replayed "
                   "(as train.attack_graph; CUDA only; pgd_at, trades, mart)")
    p.add_argument("--out", type=Path, help="write the results as JSON here")

    p = sub.add_parser("compare", parents=[debug],
                       help="train and evaluate methods × seeds × sweeps under one protocol; write a paper-style "
                       "table, a CSV and an HTML report (resumable: rerun to continue)")
    p.add_argument("--config", type=Path, required=True, help="the grid's YAML file (see docs/experiments/compare.md)")
    p.add_argument("--out", type=Path, required=True, help="folder for the cells (OUT/cells/...) and the report")

    p = sub.add_parser("report", parents=[debug],
                       help="the table, CSV and HTML report of `compare` from existing run directories (rows: runs "
                       "that differ only by seed)")
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    p.add_argument("--out", type=Path, required=True, help="folder for report.html, table.md and results.csv")
    p.add_argument("--title", default="advtrain report", help="the report's title")

    p = sub.add_parser("quickstart", parents=[debug],
                       help="train standard and PGD-AT CNNs on digits and compare them (about a minute on 2 CPU cores)")
    p.add_argument("--out", type=Path, default=Path("runs/quickstart"), help="folder for the two run directories")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs per run (default 15, half of configs/digits.yaml's; the LR decays at the same "
                   "fractions)")

    add_audit_parser(sub, [debug], DEVICE_HELP, SEED_HELP, _number)

    sub.add_parser("configs", parents=[debug], help="list the bundled configs that `train --config NAME` takes")
    return parser


def _train_choices() -> str:
    """The end of `advtrain train --help`: the registered methods and models."""
    from advtrain.methods import list_methods
    from advtrain.models import list_models

    return (f"methods (--set method.name=...): {', '.join(list_methods())}. "
            f"models (--set model.name=...): {', '.join(list_models())}.")

