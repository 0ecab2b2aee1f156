"""Command line: `python -m catchup_mix train ...` and `python -m catchup_mix evaluate ...`."""

import argparse
import json
import sys

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

    evaluate_parser = commands.add_parser("evaluate", help="clean test metrics of a checkpoint")
    evaluate_parser.add_argument("--checkpoint", required=True, help="a last.pt or best.pt of a run")
    evaluate_parser.add_argument("--data-root", help="where the dataset lies now, if it moved")
    evaluate_parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])

    args = parser.parse_args(argv)
    from .train import NonFiniteLossError

    try:
        if args.command == "train":
            from .train import train

            train(load_config(args.config, parse_overrides(args.set)), resume=args.resume)
        else:
            from .evaluate import evaluate_checkpoint

            print(json.dumps(evaluate_checkpoint(args.checkpoint, args.data_root, args.device), indent=2))
    except (ConfigError, CheckpointError, FileExistsError, FileNotFoundError, ValueError, NonFiniteLossError) as error:
        # bad input (config, data layout, checkpoint) or a stopped run (NaN loss): the message says what
        # is wrong and what to do; a traceback would only hide it
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
