"""Command line: `python -m catchup_mix train ...`, `evaluate ...` and `curves ...`."""

import argparse
import json
import shlex
import sys
from pathlib import Path

from .checkpoint import CheckpointError
from .config import PRESETS, ConfigError, load_config, parse_overrides


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m catchup_mix", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    train_parser = commands.add_parser("train", help="train and evaluate one model")
    train_parser.add_argument("--config", help=f"a preset ({', '.join(PRESETS)}) or a .json/.toml file")
    train_parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                              help="override config keys, e.g. --set method=catchup_mix epochs=10 "
                                   "method_options.alpha=2 (values are JSON where they parse)")
    train_parser.add_argument("--resume", action="store_true",
                              help="continue the run in output_dir from its last checkpoint")
    train_parser.add_argument("--extend", action="store_true",
                              help="with --resume: train a finished run further, up to a larger epochs")

    curves_parser = commands.add_parser("curves", help="plot training curves from runs' metrics.jsonl")
    curves_parser.add_argument("runs", nargs="+", help="run folders (output_dir of each run)")
    curves_parser.add_argument("--out", default="curves.png", help="the figure to write (.png or .pdf)")

    evaluate_parser = commands.add_parser("evaluate", help="clean test metrics of a checkpoint")
    evaluate_parser.add_argument("--checkpoint", required=True, help="a last.pt or best.pt of a run")
    evaluate_parser.add_argument("--data-root", help="where the dataset lies now, if it moved")
    evaluate_parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    from .train import NonFiniteLossError

    try:
        if args.command == "train":
            return _train(args, argv)
        if args.command == "curves":
            from .curves import plot_curves

            print(f"wrote {plot_curves([Path(run) for run in args.runs], Path(args.out))}")
        else:
            from .evaluate import evaluate_checkpoint

            print(json.dumps(evaluate_checkpoint(args.checkpoint, args.data_root, args.device), indent=2))
    except (ConfigError, CheckpointError, FileExistsError, FileNotFoundError, ValueError, NonFiniteLossError) as error:
        # bad input (config, data layout, checkpoint) or a stopped run (NaN loss): the message says what
        # is wrong and what to do; a traceback would only hide it
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def _train(args, argv: list[str]) -> int:
    from .train import train

    config = load_config(args.config, parse_overrides(args.set))
    if args.config is None:
        print("no --config given: training with the built-in defaults (a preset is usually what you want: "
              f"--config {' | '.join(PRESETS)})", flush=True)
    try:
        train(config, resume=args.resume or args.extend, extend=args.extend)
    except KeyboardInterrupt:
        last = Path(config.output_dir) / "checkpoints" / "last.pt"
        again = shlex.join(["python", "-m", "catchup_mix", *(a for a in argv if a != "--resume"), "--resume"])
        where = (f"the last checkpoint is {last} (written at the end of each epoch); continue exactly where it "
                 f"stopped with:\n  {again}") if last.exists() else "no epoch had finished, so no checkpoint was written"
        print(f"\ninterrupted: {where}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
