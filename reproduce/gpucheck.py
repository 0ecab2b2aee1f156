"""One call that proves the GPU path and measures it: `python -m reproduce gpucheck`.

    python -m reproduce gpucheck                          # on a GPU machine: under 8 minutes on one H100
    python -m reproduce gpucheck --data-root DIR          # DIR holds cifar10-jpeg/ or cifar10-jpeg.tar.gz
    python -m reproduce gpucheck --device cpu --tiny      # the script itself, in minutes on a CPU (CI)

It runs, in order, and writes everything to benchmarks/<device-name>.md and .json (with versions, commit,
command and the time each part took):
1. the CUDA tests (tests/test_cuda.py): every method in bf16/fp32, channels_last on/off, eager and compiled;
   no host-device synchronisation inside a step; GPU = CPU for the op, the mixed batches and the
   augmentation; exact resume; re-evaluation reproduces the logged numbers;
2. the overhead benchmark: every method, PreActResNet-18 at full width, batch 100, 32x32, each step's
   batch drawn from the augmenting on-device loader over CIFAR-shaped data, eager and compiled: images/s,
   seconds per 50,000-image epoch and the ratio to vanilla;
3. the data path: the on-device loader against a torchvision DataLoader (PIL transforms in worker processes,
   pinned memory, copied to the GPU), images/s of each on the same data;
4. three epochs of vanilla and of catchup_mix on the real CIFAR-10 copy (../shared/data), if reachable.
It exits non-zero when a test fails.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from pathlib import Path, PurePosixPath

import torch

from catchup_mix import benchmark, data, provenance
from catchup_mix.checkpoint import atomic_write, check_writable, write_json
from catchup_mix.config import make_config
from catchup_mix.data.files import natural_key

REPOSITORY = Path(__file__).resolve().parent.parent
ARCHIVE = "cifar10-jpeg.tar.gz"
# Targets of the project's GPU issue, for one H100.
TARGETS = {"vanilla_epoch_s": 4.0, "catchup_mix_ratio": 1.05, "data_path_speedup": 3.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reproduce gpucheck", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="a narrow network and few rounds: checks the script")
    parser.add_argument("--data-root", help=f"folder holding cifar10-jpeg/ or {ARCHIVE} (default: ../shared/data)")
    parser.add_argument("--out", type=Path, default=REPOSITORY / "benchmarks", help="where the report goes")
    parser.add_argument("--skip-compile", action="store_true", help="time eager steps only")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU is visible; on a CPU run `python -m reproduce gpucheck --device cpu --tiny`",
              file=sys.stderr)
        return 2
    try:
        check_writable(args.out)  # now, not after 8 minutes of GPU time
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    scale = _scale(args.tiny)
    started = time.perf_counter()
    report = {"command": "python -m reproduce gpucheck " + " ".join(argv if argv is not None else sys.argv[1:]),
              "provenance": provenance.collect(device), "scale": scale, "targets": TARGETS, "seconds": {}}

    def part(name, function, *arguments):
        print(f"[gpucheck] {name} ...", flush=True)
        begun = time.perf_counter()
        report[name] = function(*arguments)
        report["seconds"][name] = round(time.perf_counter() - begun, 1)
        print(f"[gpucheck] {name} took {report['seconds'][name]} s", flush=True)

    part("tests", run_tests)
    part("benchmark", time_methods, device, scale, args.skip_compile)
    part("data_path", compare_data_paths, device, scale)
    part("cifar10", train_on_cifar10, device, scale, args.data_root)
    report["seconds"]["total"] = round(time.perf_counter() - started, 1)
    report["verdicts"] = verdicts(report)
    paths = write_report(report, args.out, device)
    print(f"[gpucheck] wrote {', '.join(map(str, paths))} in {report['seconds']['total']:.0f} s", flush=True)
    return 0 if report["tests"]["failed"] == 0 and report["tests"]["errors"] == 0 else 1


def _scale(tiny: bool) -> dict:
    if tiny:
        return dict(width=8, batch_size=32, rounds=2, warmup=1, compile_warmup=2, loader_images=512,
                    loader_batches=8, cifar_epochs=1, cifar_per_class=20)
    return dict(width=None, batch_size=100, rounds=20, warmup=3, compile_warmup=12, loader_images=50_000,
                loader_batches=100, cifar_epochs=3, cifar_per_class=None)


# ---------------------------------------------------------------------------------------------------
# 1. The CUDA tests


def run_tests() -> dict:
    with tempfile.TemporaryDirectory() as folder:
        junit = Path(folder) / "junit.xml"
        # --disable-warnings: compiler and deprecation warnings would fill the report's output tail
        result = subprocess.run([sys.executable, "-m", "pytest", "tests/test_cuda.py", "-q", "-rs", "-p",
                                 "no:cacheprovider", "--disable-warnings", f"--junitxml={junit}"], cwd=REPOSITORY,
                                capture_output=True, text=True)
        suite = ElementTree.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    return {"passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
            "failed": counts["failures"], "errors": counts["errors"], "skipped": counts["skipped"],
            "exit_code": result.returncode, "output_tail": (result.stdout + result.stderr)[-3000:]}


# ---------------------------------------------------------------------------------------------------
# 2. Step time of every method, the data path included


def time_methods(device, scale, skip_compile) -> dict:
    setup = dict(model_name="preactresnet18", width=scale["width"], batch_size=scale["batch_size"], image_size=32,
                 num_classes=100, rounds=scale["rounds"], device=device.type, loader_images=scale["loader_images"])
    modes = {"eager": dict(warmup=scale["warmup"])}
    if not skip_compile:
        modes["compiled"] = dict(warmup=scale["compile_warmup"], compile=True)
    results = {}
    for mode, options in modes.items():
        rows = benchmark.summarize(benchmark.time_steps(**setup, **options))
        for row in rows:
            row["images_per_s"] = setup["batch_size"] / row["median_s"]
            row["epoch_s"] = 50_000 / setup["batch_size"] * row["median_s"]  # a CIFAR epoch of 50,000 images
        results[mode] = rows
    return {"setup": setup, "modes": results}


# ---------------------------------------------------------------------------------------------------
# 3. The on-device loader against torchvision's DataLoader


class _PILDataset(torch.utils.data.Dataset):
    """Images as torchvision's CIFAR datasets hand them to transforms: a PIL image per item."""

    def __init__(self, images, labels, transform):
        self.images, self.labels, self.transform = images.permute(0, 2, 3, 1).numpy(), labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def compare_data_paths(device, scale) -> dict:
    import torchvision.transforms as T

    generator = torch.Generator().manual_seed(0)
    n, batch, batches = scale["loader_images"], scale["batch_size"], scale["loader_batches"]
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 100, (n,), generator=generator)
    mean, std = (0.507, 0.487, 0.441), (0.267, 0.256, 0.276)

    def throughput(iterator) -> float:
        next(iterator)  # the first batch pays for worker start-up and allocation
        _synchronize(device)
        begun = time.perf_counter()
        for _ in range(batches):
            x, y = next(iterator)
            x.to(device, non_blocking=True)
        _synchronize(device)
        return batches * batch / (time.perf_counter() - begun)

    ours = data.BatchLoader(data.ImageSplit(images, labels), batch, mean=mean, std=std, train=True, crop_size=32,
                            padding=2, device=device, generator=generator, channels_last=device.type == "cuda")
    workers = 0 if scale["width"] is not None else min(8, os.cpu_count() or 1)
    transform = T.Compose([T.RandomCrop(32, padding=2), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    torchvision_loader = torch.utils.data.DataLoader(
        _PILDataset(images, labels, transform), batch_size=batch, shuffle=True, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0, drop_last=True)
    on_device = throughput(iter(ours))
    dataloader = throughput(iter(torchvision_loader))
    return {"on_device_images_per_s": on_device, "dataloader_images_per_s": dataloader,
            "speedup": on_device / dataloader, "dataloader_workers": workers, "batch_size": batch, "batches": batches,
            "what": "random crop (2-pixel padding), flip and normalisation of CIFAR-shaped uint8 images, "
                    "delivered on the device"}


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------------
# 4. Three epochs on real CIFAR-10


def find_cifar10(data_root: str | None, unpack_into: Path, per_class: int | None) -> tuple[Path, str] | None:
    """The cifar10-jpeg folder and where it came from: in data_root (default ../shared/data, then .carry), or
    unpacked into unpack_into from the archive found there. With per_class set, only the images the run reads
    are unpacked (the whole copy is 60,000 files)."""
    places = [Path(data_root)] if data_root else [REPOSITORY.parent / "shared" / "data", REPOSITORY / ".carry"]
    for place in places:
        if (place / "cifar10-jpeg" / "train").is_dir():
            return place / "cifar10-jpeg", str(place / "cifar10-jpeg")
        if place.name == "cifar10-jpeg" and (place / "train").is_dir():
            return place, str(place)
        archive = place / ARCHIVE if place.is_dir() else place
        if archive.is_file() and archive.name.endswith(".tar.gz"):
            with tarfile.open(archive) as tar:
                tar.extractall(unpack_into, members=first_per_folder(tar.getmembers(), per_class), filter="data")
            subset = "all images" if per_class is None else f"the first {per_class} images of each class"
            return next(unpack_into.rglob("cifar10-jpeg")), f"{archive} (unpacked: {subset})"
    return None


def first_per_folder(members: list[tarfile.TarInfo], per_class: int | None) -> list[tarfile.TarInfo]:
    """The files the image-folder loader keeps with train_per_class = test_per_class = per_class: the first
    per_class of each folder in its (natural) order. All of them when per_class is None."""
    if per_class is None:
        return members
    by_folder = defaultdict(list)
    for member in members:
        if member.isfile():
            by_folder[PurePosixPath(member.name).parent].append(member)
    return [member for files in by_folder.values()
            for member in sorted(files, key=lambda member: natural_key(member.name))[:per_class]]


def train_on_cifar10(device, scale, data_root: str | None) -> dict:
    from catchup_mix.train import train

    runs = {}
    with tempfile.TemporaryDirectory() as folder:  # an unpacked copy and the runs go when the part ends
        found = find_cifar10(data_root, Path(folder) / "data", scale["cifar_per_class"])
        if found is None:
            return {"skipped": "no CIFAR-10 copy found (pass --data-root DIR holding cifar10-jpeg/ or "
                               f"{ARCHIVE})"}
        root, source = found
        for method in ("vanilla", "catchup_mix"):
            # the Co-Mixup protocol's optimisation, at full width, on the 50,000 CIFAR-10 training images
            config = make_config(dict(
                dataset="imagefolder", data_root=str(root), model="preactresnet18",
                width=scale["width"], method=method, epochs=scale["cifar_epochs"], batch_size=scale["batch_size"],
                lr=0.2, momentum=0.9, nesterov=True, weight_decay=1e-4, schedule="step", milestones=[100, 200],
                loss="softmax_bce", crop_padding=2, device=device.type, train_per_class=scale["cifar_per_class"],
                test_per_class=scale["cifar_per_class"], output_dir=str(Path(folder) / method), log_every=10**6))
            summary = train(config)
            rows = [json.loads(line) for line in (Path(folder) / method / "metrics.jsonl").read_text().splitlines()]
            runs[method] = {"epochs": [{key: row.get(key) for key in ("epoch", "epoch_time_s", "images_per_s",
                                                                       "eval_time_s", "test_top1", "train_loss")}
                                       for row in rows],
                            "last_top1": summary["last_top1"], "precision": summary["config"]["precision"]}
    return {"data_root": source, "runs": runs}


# ---------------------------------------------------------------------------------------------------
# Report


def verdicts(report) -> list[str]:
    lines = []
    tests = report["tests"]
    lines.append(f"CUDA tests: {tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, "
                 f"{tests['skipped']} skipped")
    tiny = report["scale"]["width"] is not None

    def verdict(met: bool, mode: str = "eager") -> str:
        if tiny and mode == "compiled":
            return (f"not meaningful at --tiny: {report['scale']['compile_warmup']} warm-up rounds do not finish "
                    "compiling")
        if tiny:
            return "not comparable at --tiny: the target is for the full network on an H100"
        return "met" if met else "not met"

    for mode, rows in report["benchmark"]["modes"].items():
        by_name = {row["method"]: row for row in rows}
        vanilla, catchup = by_name["vanilla"]["epoch_s"], by_name["catchup_mix"]["ratio"]
        lines.append(f"{mode}: vanilla {vanilla:.2f} s per 50k epoch (target <= {TARGETS['vanilla_epoch_s']} s: "
                     f"{verdict(vanilla <= TARGETS['vanilla_epoch_s'], mode)}); catchup_mix {catchup:.3f}x "
                     f"vanilla (target <= {TARGETS['catchup_mix_ratio']}: "
                     f"{verdict(catchup <= TARGETS['catchup_mix_ratio'], mode)})")
    speedup = report["data_path"]["speedup"]
    lines.append(f"data path: on-device loader {speedup:.1f}x the torchvision DataLoader (target >= "
                 f"{TARGETS['data_path_speedup']}: {verdict(speedup >= TARGETS['data_path_speedup'])})")
    if tiny:
        lines.append("--tiny: a narrow network and few rounds, to check the script; the targets are for the full "
                     "network on an H100")
    return lines


def write_report(report, out: Path, device) -> list[Path]:
    name = re.sub(r"[^A-Za-z0-9]+", "-", provenance.device_name(device).split(" (")[0]).strip("-").lower()
    name += "-tiny" if report["scale"]["width"] is not None else ""
    json_path, markdown_path = out / f"{name}.json", out / f"{name}.md"
    write_json(json_path, report)
    text = to_markdown(report)
    atomic_write(markdown_path, lambda file: file.write(text.encode()))
    return [markdown_path, json_path]


def to_markdown(report) -> str:
    info = report["provenance"]
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    lines = [f"# GPU check: {info['device']}", "",
             f"Command: `{report['command']}`; commit {info['commit'][:10]}{'+dirty' if info['dirty'] else ''}; "
             f"{versions}; {info['time_utc']}; {report['seconds']['total']:.0f} s in all.", "",
             "## Verdicts", "", *[f"- {line}" for line in report["verdicts"]], "",
             "## Step time of every method", "",
             f"PreActResNet-18 (width {report['benchmark']['setup']['width'] or 64}), batch "
             f"{report['benchmark']['setup']['batch_size']}, 32x32, 100 classes; each step's batch drawn from the "
             "augmenting on-device loader; methods interleaved, median over "
             f"{report['benchmark']['setup']['rounds']} rounds; epoch = 50,000 images.", ""]
    for mode, rows in report["benchmark"]["modes"].items():
        lines += [f"### {mode}", "", "| method | step (ms) | images/s | s per epoch | ratio to vanilla |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['method']} | {1000 * r['median_s']:.1f} | {r['images_per_s']:.0f} | {r['epoch_s']:.2f} | "
                  f"{r['ratio']:.3f} |" for r in rows]
        lines.append("")
    path = report["data_path"]
    lines += ["## Data path", "", f"{path['what']}: on-device loader {path['on_device_images_per_s']:.0f} images/s, "
              f"torchvision DataLoader ({path['dataloader_workers']} workers) {path['dataloader_images_per_s']:.0f} "
              f"images/s: {path['speedup']:.1f}x.", "", "## Real CIFAR-10", ""]
    cifar = report["cifar10"]
    if "skipped" in cifar:
        lines.append(cifar["skipped"])
    else:
        lines += [f"From {cifar['data_root']}.", "", "| method | epoch | train s | test s | images/s | test top-1 |",
                  "|---|---:|---:|---:|---:|---:|"]
        for method, run in cifar["runs"].items():
            lines += [f"| {method} | {e['epoch']} | {e['epoch_time_s']:.2f} | {e['eval_time_s'] or 0:.2f} | "
                      f"{e['images_per_s']:.0f} | {e['test_top1']:.2f} |" for e in run["epochs"]]
    tests = report["tests"]
    lines += ["", "## CUDA tests", "", f"{tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, "
              f"{tests['skipped']} skipped (exit code {tests['exit_code']}).", "", "```",
              tests["output_tail"].strip()[-1500:], "```", "",
              "Seconds per part: " + ", ".join(f"{k} {v}" for k, v in report["seconds"].items()), ""]
    return "\n".join(lines)
