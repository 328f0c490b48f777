"""`advtrain train | eval | diagnose | audit | bench | compare | report | quickstart | configs`: parse arguments, call
one function, turn bad input into exit 2."""

from __future__ import annotations

import io
import os
import sys

from advtrain.cli.commands import COMMANDS
from advtrain.cli.parser import build_parser
from advtrain.errors import TrainingStopped, UserError


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 1 internal error (a bug: rerun with --debug), 2 bad input, 3 training diverged,
    128+N stopped by signal N (a checkpoint was saved)."""
    args = build_parser().parse_args(argv)
    # Each line reaches a log or pipe as it is printed, not when a block buffer fills minutes later.
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    try:
        if args.command not in ("train", "eval") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError(f"{args.command} runs in one process; only train and eval run under torchrun: run "
                            f"advtrain {args.command} without torchrun")
        COMMANDS[args.command](args)
    except (UserError, TrainingStopped) as e:
        if args.debug:
            raise
        prefix = "error: " if isinstance(e, UserError) else ""
        print(f"advtrain: {prefix}{e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("advtrain: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        # Disk full, read-only folder, permission denied: the user's environment, not a bug.
        if args.debug:
            raise
        where = f" {e.filename}" if e.filename else ""
        print(f"advtrain: error: cannot access{where}: {e.strerror or e}; free space or fix the path", file=sys.stderr)
        return 2
    except Exception as e:
        if args.debug:
            raise
        print(f"advtrain: internal error: {type(e).__name__}: {' '.join(str(e).split())[:300]} "
              "(rerun with --debug for the traceback and please report it)", file=sys.stderr)
        return 1
    return 0


__all__ = ["build_parser", "main"]
