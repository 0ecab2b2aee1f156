"""Command line: `python -m catchup_mix train ...` and `python -m catchup_mix evaluate ...`."""

import argparse
import contextlib
import json
import sys
from pathlib import Path

from .checkpoint import CheckpointError
from .config import PRESETS, ConfigError, load_config, make_config, parse_overrides


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
            print(json.dumps(evaluate_checkpoint(args.checkpoint, args.data_root, args.device), indent=2))
    except (ConfigError, CheckpointError, FileExistsError, FileNotFoundError, ValueError, NonFiniteLossError) as error:
        # bad input (config, data layout, checkpoint) or a stopped run (NaN loss): the message says what
        # is wrong and what to do; a traceback would only hide it
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def evaluate_checkpoint(path: str, data_root: str | None = None, device: str = "auto") -> dict:
    """Rebuild the run's model and test split from the checkpoint, and measure it."""
    from . import data, models, provenance
    from .checkpoint import load_checkpoint, write_json
    from .evaluate import evaluate
    from .train import load_dataset, pick_device

    saved = load_checkpoint(path)
    values = dict(saved["config"], device=device)
    if data_root:
        values["data_root"] = data_root
    config = make_config(values)
    device = pick_device(config, 0)
    dataset = load_dataset(config)
    model = models.build(config.model, dataset.num_classes, image_size=dataset.crop_size, width=config.width)
    model.load_state_dict(saved["model"])
    model.to(device)
    loader = data.BatchLoader(dataset.test, 500, mean=dataset.mean, std=dataset.std, train=False,
                              crop_size=dataset.crop_size, device=device)
    metrics = evaluate(model, loader, device, contextlib.nullcontext)
    result = {
        "checkpoint": str(path), "epoch": saved["epoch"], **metrics,
        "method": config.method, "model": config.model, "dataset": config.dataset, "seed": config.seed,
        "provenance": provenance.collect(device),
    }
    write_json(Path(path).with_suffix(".eval.json"), result)
    return result


if __name__ == "__main__":
    sys.exit(main())
