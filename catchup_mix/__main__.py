"""Command line: `python -m catchup_mix train ...`, `evaluate ...` (clean metrics or a robustness suite),
`corrupt ...` (a CIFAR-C style corrupted test set) and `curves ...` (training curves of runs)."""

import argparse
import json
import shlex
import sys
from pathlib import Path

from .checkpoint import CheckpointError, check_writable
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

    evaluate_parser = commands.add_parser(
        "evaluate", help="clean test metrics of a checkpoint, or a robustness suite with --suite",
        description="Clean test metrics of a checkpoint (top-1, top-5, NLL, ECE), or with --suite any of "
                    "clean,fgsm,pgd,corruptions,deformations,ood, kept part by part in a JSON file that a rerun "
                    "continues and that no later measurement overwrites.")
    evaluate_parser.add_argument("--checkpoint", required=True, help="a last.pt or best.pt of a run")
    evaluate_parser.add_argument("--data-root", help="where the run's dataset lies now, if it moved")
    evaluate_parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    evaluate_parser.add_argument("--out", help="the JSON file to keep the numbers in (default: beside the checkpoint, "
                                               "<checkpoint>.eval.json, or <checkpoint>.robustness.json with --suite)")
    evaluate_parser.add_argument("--suite", help="comma-separated, from clean,fgsm,pgd,corruptions,deformations,ood")
    evaluate_parser.add_argument("--max-images", type=int, help="--suite: a class-balanced subset of N test images "
                                 "(seeded, evenly spread over each class; default: all)")
    evaluate_parser.add_argument("--batch-size", type=int, help="--suite: images per batch (default 200)")
    evaluate_parser.add_argument("--eps", nargs="+", metavar="EPS", help="fgsm/pgd: attack radii in [0, 1] pixel "
                                 "units, e.g. 4/255 8/255 (default: 4/255 8/255)")
    evaluate_parser.add_argument("--steps", type=int, help="pgd: iterations (default 20, step 2/255)")
    evaluate_parser.add_argument("--severity", nargs="+", type=int, choices=[1, 2, 3, 4, 5], metavar="S",
                                 help="corruptions: the severities to measure (default: 1 2 3 4 5)")
    evaluate_parser.add_argument("--corruptions-dir", help="corruptions: the corrupted test set (official CIFAR-10-C / "
                                 "CIFAR-100-C, or made by `corrupt`); a set with only some corruptions is measured "
                                 "on those, and the missing ones are named")
    evaluate_parser.add_argument("--ood", nargs="+", metavar="SET", help="ood: noise_gaussian, noise_uniform, "
                                 "unseen_classes, cifar10, cifar100, tiny_imagenet, or folders of images "
                                 "(default: every set available offline)")
    evaluate_parser.add_argument("--ood-root", help="ood: the folder where cifar10, cifar100 and tiny_imagenet are "
                                                    "looked for (default: --data-root, else the run's data_root)")
    evaluate_parser.add_argument("--remeasure", action="store_true", help="--suite: measure again the parts already "
                                 "kept with the same settings (default: keep them and measure the rest)")

    corrupt_parser = commands.add_parser("corrupt", help="write a dataset's corrupted test set (CIFAR-C layout)")
    corrupt_parser.add_argument("--dataset", required=True, help="cifar10, cifar100, tiny_imagenet, imagefolder, "
                                                                  "synthetic (32x32 or 64x64 images)")
    corrupt_parser.add_argument("--data-root", help="the folder holding the dataset (not for synthetic)")
    corrupt_parser.add_argument("--out", required=True, help="folder for <corruption>.npy and labels.npy")
    corrupt_parser.add_argument("--corruptions", nargs="+", help="default: all 19 (15 benchmark + 4 extra)")
    corrupt_parser.add_argument("--seed", type=int, default=0)
    corrupt_parser.add_argument("--num-classes", type=int, help="keep the first N classes")
    corrupt_parser.add_argument("--test-per-class", type=int, help="keep the first n test images per class")
    from .corruptions import add_generator_options

    add_generator_options(corrupt_parser)  # --jpeg-step / --no-jpeg-step, --frost-dir

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
            refuse_ignored(args, PLAIN_EVALUATE_IGNORES, "plain evaluate (without --suite)")
            from .evaluate import evaluate_checkpoint

            print(json.dumps(evaluate_checkpoint(args.checkpoint, args.data_root, args.device, out=args.out),
                             indent=2))
        elif args.command == "evaluate":
            run_robustness_suite(args)
        else:
            write_corrupted_set(args)
    except KeyboardInterrupt:
        kept = INTERRUPTED.get(args.command, "nothing was lost")
        if args.command == "evaluate" and args.suite is not None:
            from .robustness import default_output

            kept = f"every part of the suite that finished is kept in {args.out or default_output(args.checkpoint)}"
        print(f"\ninterrupted: {kept}; run the same command again to continue", file=sys.stderr)
        return 130
    except (ConfigError, CheckpointError, FileExistsError, FileNotFoundError, ValueError, NonFiniteLossError,
            OSError) as error:
        # bad input (config, data layout, checkpoint, an output folder that cannot be written) or a stopped run
        # (NaN loss): the message says what is wrong and what to do; a traceback would only hide it
        print(f"error: {in_flags_of(args.command, error)}", file=sys.stderr)
        return 2
    return 0


# What an interrupted command has kept (train says it itself: it knows its checkpoint).
INTERRUPTED = {
    "evaluate": "plain evaluate writes its file only at the end",
    "corrupt": "every corruption that finished is kept in the output folder",
    "curves": "nothing was written",
}
# Options that a mode ignores: refused, so that nobody believes they took effect.
PLAIN_EVALUATE_IGNORES = ("max_images", "batch_size", "eps", "steps", "severity", "corruptions_dir", "ood",
                          "ood_root", "remeasure")
SUITE_PART_OPTIONS = {"eps": ("fgsm", "pgd"), "steps": ("pgd",), "severity": ("corruptions",),
                      "corruptions_dir": ("corruptions",), "ood": ("ood",), "ood_root": ("ood",)}
# The library's hints name the train command's --set keys; each command names its own flags instead.
_DATA_FLAGS = {
    "(--set download=true; download=True in Python)": "(python -m reproduce ... --download)",
    "read it with --set dataset=imagefolder data_root=DIR": "train on it as dataset=imagefolder",
    "--set data_root=DIR": "--data-root DIR",
    "--set download=true": "python -m reproduce ... --download",
}
COMMAND_FLAGS = {"evaluate": _DATA_FLAGS, "corrupt": {**_DATA_FLAGS, "train on it as dataset=imagefolder":
                                                      "read it with --dataset imagefolder --data-root DIR"}}


def in_flags_of(command: str, error: Exception) -> str:
    message = str(error)
    for hint, flag in COMMAND_FLAGS.get(command, {}).items():
        message = message.replace(hint, flag)
    return message


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def refuse_ignored(args, names, mode: str) -> None:
    given = [_flag(name) for name in names if getattr(args, name) not in (None, False)]
    if given:
        raise ValueError(f"{', '.join(given)} {'does' if len(given) == 1 else 'do'} nothing in {mode}: remove "
                         f"{'it' if len(given) == 1 else 'them'}")


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


def parse_eps(text: str) -> float:
    """'8/255' or '0.0314' -> a radius in [0, 1] pixel units."""
    try:
        numerator, _, denominator = text.partition("/")
        value = float(numerator) / (float(denominator) if denominator else 1.0)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"--eps {text!r} is not a number: write radii in [0, 1] pixel units, e.g. 8/255 or "
                         "0.0314") from None
    if value != value:  # nan: neither inside nor outside [0, 1]
        raise ValueError(f"--eps {text!r} is not a number: write radii in [0, 1] pixel units, e.g. 8/255")
    if not 0 <= value <= 1:
        raise ValueError(f"--eps {text} = {value:g} is outside [0, 1]: radii are in [0, 1] pixel units, e.g. 8/255")
    return value


def run_robustness_suite(args) -> None:
    from . import corruptions
    from .robustness import SuiteSettings, check_suite, default_output, evaluate_suite, summary_lines

    suite = check_suite(args.suite)
    for name, parts in SUITE_PART_OPTIONS.items():
        if getattr(args, name) is not None and not set(parts) & set(suite):
            raise ValueError(f"{_flag(name)} is for the {' or '.join(parts)} part of the suite, which --suite "
                             f"{args.suite} does not include")
    if (args.max_images is not None and args.max_images < 1) or (args.batch_size is not None and args.batch_size < 1):
        raise ValueError("--max-images and --batch-size must be at least 1")
    if args.steps is not None and args.steps < 1:
        raise ValueError("--steps must be at least 1")
    options = {"ood": tuple(args.ood) if args.ood else None, "max_images": args.max_images}
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    if args.eps:
        options["fgsm_eps"] = options["pgd_eps"] = tuple(parse_eps(text) for text in args.eps)
    if args.steps is not None:
        options["pgd_steps"] = args.steps
    if args.severity:
        options["severities"] = tuple(sorted(set(args.severity)))
    if "corruptions" in suite and args.corruptions_dir:
        present, missing = corruptions.available_in(args.corruptions_dir)
        if not present:
            raise corruptions.CorruptionSetError(
                f"{args.corruptions_dir} holds none of the {len(corruptions.CORRUPTIONS)} corruptions: make them "
                f"with `python -m catchup_mix corrupt --dataset DATASET --data-root DIR --out {args.corruptions_dir}`")
        if missing:
            print(f"note: {args.corruptions_dir} lacks {len(missing)} of the {len(corruptions.CORRUPTIONS)} "
                  f"benchmark corruptions ({', '.join(missing)}): measuring the {len(present)} it has, so its mean is "
                  "not the benchmark's; add the rest with `python -m catchup_mix corrupt ... --corruptions "
                  f"{' '.join(missing)}`", flush=True)
        options["corruption_names"] = present
    settings = SuiteSettings(**options)
    out = args.out or default_output(args.checkpoint)
    stored = evaluate_suite(args.checkpoint, suite, settings, corruptions_dir=args.corruptions_dir,
                            data_root=args.data_root, ood_root=args.ood_root, device=args.device, out=out,
                            remeasure=args.remeasure)
    print("\n".join(["", *summary_lines(stored, suite, settings)]))
    print(f"kept in {out}")


def write_corrupted_set(args) -> None:
    from . import corruptions, data

    names = args.corruptions or list(corruptions.ALL_CORRUPTIONS)
    unknown = [name for name in names if name not in corruptions.ALL_CORRUPTIONS]
    if unknown:
        raise ValueError(f"unknown corruptions {', '.join(unknown)}; available: "
                         f"{', '.join(corruptions.ALL_CORRUPTIONS)}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is an existing file, not a folder: corrupt writes a folder of "
                              "<corruption>.npy files and labels.npy; pass a folder")
    check_writable(out)  # before the data is read and the images corrupted
    dataset = data.load(args.dataset, args.data_root, num_classes=args.num_classes, train_per_class=1,
                        test_per_class=args.test_per_class)
    images = dataset.test.images.permute(0, 2, 3, 1).numpy()
    before, _ = corruptions.available_in(out, names)
    corruptions.write_set(images, dataset.test.labels.numpy(), out, names, seed=args.seed,
                          jpeg_step=args.jpeg_step, frost_dir=args.frost_dir)
    generator = json.loads((out / corruptions.SET_INFO).read_text())["generator"]
    made = (f"frost {generator['frost']}, JPEG step {'on' if generator['jpeg_step'] else 'off'}, "
            f"corruption code {generator['code']}")
    what = f"x 5 severities of {len(images)} {args.dataset} test images"
    if len(before) == len(names):
        print(f"already complete: {out} holds all {len(names)} corruptions {what} ({made}); nothing written")
    else:
        kept = f"; {len(before)} were already there" if before else ""
        print(f"wrote {len(names) - len(before)} corruptions {what} to {out} ({made}{kept})")


if __name__ == "__main__":
    sys.exit(main())
