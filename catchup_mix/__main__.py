"""Command line: `python -m catchup_mix train ...`, `evaluate ...` (clean metrics or a robustness suite),
`corrupt ...` (a CIFAR-C style corrupted test set) and `curves ...` (training curves of runs)."""

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

    evaluate_parser = commands.add_parser("evaluate", help="clean test metrics of a checkpoint, or a robustness "
                                                           "suite with --suite")
    evaluate_parser.add_argument("--checkpoint", required=True, help="a last.pt or best.pt of a run")
    evaluate_parser.add_argument("--data-root", help="where the dataset lies now, if it moved (also searched for "
                                                     "the cifar10, cifar100, tiny_imagenet OOD sets)")
    evaluate_parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    evaluate_parser.add_argument("--suite", help="comma-separated, from clean,fgsm,pgd,corruptions,deformations,ood; "
                                                 "writes <checkpoint>.robustness.json")
    evaluate_parser.add_argument("--corruptions-dir", help="the corrupted test set for the corruptions suite "
                                                           "(official CIFAR-100-C, or made by `corrupt`)")
    evaluate_parser.add_argument("--ood", nargs="+", metavar="SET", help="OOD sets: noise_gaussian, noise_uniform, "
                                 "unseen_classes, cifar10, cifar100, tiny_imagenet, or folders of images "
                                 "(default: every set available offline)")
    evaluate_parser.add_argument("--max-images", type=int, help="only the first N test images")
    evaluate_parser.add_argument("--batch-size", type=int, default=200)

    corrupt_parser = commands.add_parser("corrupt", help="write a dataset's corrupted test set (CIFAR-C layout)")
    corrupt_parser.add_argument("--dataset", required=True, help="cifar10, cifar100, tiny_imagenet, imagefolder, "
                                                                  "synthetic (32x32 or 64x64 images)")
    corrupt_parser.add_argument("--data-root", help="the folder holding the dataset (not for synthetic)")
    corrupt_parser.add_argument("--out", required=True, help="folder for <corruption>.npy and labels.npy")
    corrupt_parser.add_argument("--corruptions", nargs="+", help="default: all 19 (15 benchmark + 4 extra)")
    corrupt_parser.add_argument("--seed", type=int, default=0)
    corrupt_parser.add_argument("--num-classes", type=int, help="keep the first N classes")
    corrupt_parser.add_argument("--test-per-class", type=int, help="keep the first n test images per class")

    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    from .train import NonFiniteLossError

    try:
        if args.command == "train":
            return _train(args, argv)
        if args.command == "curves":
            from .curves import plot_curves

            print(f"wrote {plot_curves([Path(run) for run in args.runs], Path(args.out))}")
        elif args.command == "evaluate" and args.suite is None:
            from .evaluate import evaluate_checkpoint

            print(json.dumps(evaluate_checkpoint(args.checkpoint, args.data_root, args.device), indent=2))
        elif args.command == "evaluate":
            run_robustness_suite(args)
        else:
            write_corrupted_set(args)
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


def run_robustness_suite(args) -> None:
    from .robustness import SuiteSettings, evaluate_suite, summary_lines

    if (args.max_images is not None and args.max_images < 1) or args.batch_size < 1:
        raise ValueError("--max-images and --batch-size must be at least 1")
    settings = SuiteSettings(ood=tuple(args.ood) if args.ood else None, max_images=args.max_images,
                             batch_size=args.batch_size)
    result = evaluate_suite(args.checkpoint, args.suite, settings, corruptions_dir=args.corruptions_dir,
                            data_root=args.data_root, device=args.device)
    print("\n".join(summary_lines(result)))
    print(f"wrote {Path(args.checkpoint).with_suffix('.robustness.json')}")


def write_corrupted_set(args) -> None:
    from . import corruptions, data

    names = args.corruptions or list(corruptions.ALL_CORRUPTIONS)
    unknown = [name for name in names if name not in corruptions.ALL_CORRUPTIONS]
    if unknown:
        raise ValueError(f"unknown corruptions {', '.join(unknown)}; available: "
                         f"{', '.join(corruptions.ALL_CORRUPTIONS)}")
    dataset = data.load(args.dataset, args.data_root, num_classes=args.num_classes, train_per_class=1,
                        test_per_class=args.test_per_class)
    images = dataset.test.images.permute(0, 2, 3, 1).numpy()
    out = corruptions.write_set(images, dataset.test.labels.numpy(), args.out, names, seed=args.seed)
    print(f"wrote {len(names)} corruptions x 5 severities of {len(images)} {args.dataset} test images to {out}")


if __name__ == "__main__":
    sys.exit(main())
