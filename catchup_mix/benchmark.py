"""Time one training step (forward, backward, SGD) of every method, interleaved, on one model.

Interleaving (a round times each method once, in a fresh random order) spreads slow drifts of the
machine (other processes, thermal limits) evenly over the methods, so their ratios stay fair. Each
method's random choices (layer, lambda, partners) are drawn as in training, so its median covers
the mix of layers it really uses.

    python -m catchup_mix.benchmark --model preactresnet18 --batch-size 128 --rounds 20
"""

import argparse
import itertools
import statistics
import time

import torch

from . import data, methods, models, provenance
from .config import Config, resolve_runtime
from .precision import autocast_for
from .train import train_step


def time_steps(model_name="preactresnet18", method_names=None, batch_size=128, image_size=32, width=None,
               num_classes=100, rounds=20, warmup=2, device="cpu", seed=0, compile=False,
               loader_images=None) -> dict[str, list[float]]:
    """Seconds per training step of each method: {name: [one time per round]}.

    compile: torch.compile the model (give `warmup` enough rounds for every mixing layer's graph).
    loader_images: None times the step on one fixed batch; N draws each step's batch from an augmenting
    BatchLoader over N random uint8 images held on `device`, so the time includes the data path.
    """
    device = torch.device(device)
    method_names = method_names or methods.available()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = models.build(model_name, num_classes, image_size=image_size, width=width).to(device)
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    batches = _batches(batch_size, image_size, num_classes, device, channels_last, loader_images, generator)
    autocast = autocast_for(device, resolve_runtime(Config(device=device.type)).precision)

    built = {name: methods.build(name, num_hook_points=model.num_hook_points) for name in method_names}
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    stepped = torch.compile(model) if compile else model
    times = {name: [] for name in method_names}
    for round_index in range(warmup + rounds):
        for position in torch.randperm(len(method_names), generator=generator).tolist():
            name = method_names[position]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            train_step(stepped, built[name], *next(batches), optimizer, generator, autocast)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - started)
    return times


def _batches(batch_size, image_size, num_classes, device, channels_last, loader_images, generator):
    """An endless iterator of (images, labels): one fixed batch, or an augmenting on-device loader."""
    if loader_images is None:
        images = torch.randn(batch_size, 3, image_size, image_size, device=device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, num_classes, (batch_size,), device=device)
        return itertools.repeat((images, labels))
    split = data.ImageSplit(torch.randint(0, 256, (loader_images, 3, image_size, image_size), dtype=torch.uint8,
                                          generator=generator),
                            torch.randint(0, num_classes, (loader_images,), generator=generator))
    loader = data.BatchLoader(split, batch_size, mean=(0.5,) * 3, std=(0.25,) * 3, train=True, crop_size=image_size,
                              padding=2, device=device, generator=generator, channels_last=channels_last)
    return itertools.chain.from_iterable(itertools.repeat(loader))


def summarize(times: dict[str, list[float]], baseline="vanilla") -> list[dict]:
    """Median step time of each method and its ratio to the baseline's median."""
    medians = {name: statistics.median(values) for name, values in times.items()}
    return [{"method": name, "median_s": median, "ratio": median / medians[baseline], "steps": len(times[name])}
            for name, median in medians.items()]


def format_table(rows: list[dict]) -> str:
    lines = ["| method | median step (ms) | ratio to vanilla |", "|---|---:|---:|"]
    lines += [f"| {row['method']} | {1000 * row['median_s']:.1f} | {row['ratio']:.3f} |" for row in rows]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="preactresnet18", choices=models.available())
    parser.add_argument("--width", type=int, default=None, help="base channels (default: the paper's)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    times = time_steps(args.model, batch_size=args.batch_size, image_size=args.image_size, width=args.width,
                       rounds=args.rounds, device=args.device)
    print(f"{args.model} (width {args.width or 'paper'}), batch {args.batch_size}, {args.image_size}x{args.image_size}, "
          f"{args.rounds} interleaved rounds after 2 warm-up rounds; "
          f"{provenance.describe(provenance.collect(torch.device(args.device)))}")
    print(format_table(summarize(times)))


if __name__ == "__main__":
    main()
