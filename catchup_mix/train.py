"""One trainer for every registered method and model, on a CPU, one GPU, or many under torchrun.

Reads top to bottom: set up the run, restore it if asked, then per epoch train, evaluate,
checkpoint and log. Everything random comes from three seeded sources saved in each checkpoint
(the data-order and augmentation generator, the mixing generator, torch's global generator for the
initial weights), so `resume=True` continues an interrupted run exactly.
"""

import math
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from . import analysis, data, methods, models, provenance
from .checkpoint import (
    CheckpointError,
    check_writable,
    load_checkpoint,
    save_checkpoint,
    weights_fingerprint,
    write_json,
    write_jsonl,
)
from .config import Config, ConfigError, make_config, resolve_runtime, to_dict
from .evaluate import evaluate
from .ops import soft_target_loss
from .precision import autocast_for, grad_scaler

# Keys that may differ between an interrupted run and its resumption: where and how it runs,
# never what it computes. The device type and precision are not among them (see resolve_runtime).
RESUMABLE_DIFFERENCES = {"data_root", "download", "compile", "output_dir", "log_every"}


class NonFiniteLossError(RuntimeError):
    pass


def derive_seed(seed: int, stream: str, rank: int = 0) -> int:
    """Independent seeds for independent random streams, all fixed by the one config seed."""
    return int(np.random.SeedSequence([seed, rank, *stream.encode()]).generate_state(1)[0])


def lr_factor(config: Config, epoch_progress: float) -> float:
    """Learning-rate multiplier after `epoch_progress` epochs (fractional: it changes every step)."""
    warmup = config.warmup_epochs
    if epoch_progress < warmup:
        return max(epoch_progress / warmup, 1e-3)
    if config.schedule == "step":
        return config.gamma ** sum(epoch_progress >= milestone for milestone in config.milestones)
    fraction = min((epoch_progress - warmup) / max(config.epochs - warmup, 1e-9), 1.0)
    if config.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * fraction))
    # onecycle: linear from 0.1 up to 1 over the first 25%, then linearly down to 0 (as airbench)
    return 0.1 + 0.9 * fraction / 0.25 if fraction < 0.25 else (1 - fraction) / 0.75


def train_step(model, method, images, labels, optimizer, generator, autocast, loss="ce", label_smoothing=0.0,
               scaler=None):
    """One SGD step of any method; returns the (detached) loss and the mixing layer drawn.

    scaler: the GradScaler of fp16 training (precision.grad_scaler), or None.
    """
    batch = method(images, labels, generator=generator, model=model)
    with autocast():
        logits = model(batch.inputs, feature_hook=batch.feature_hook)
    # read after the forward: Catch-up Mix's label="channels" sets batch.lam in the hook
    targets = batch.target_distribution(logits.shape[1])
    value = soft_target_loss(logits.float(), targets, loss, label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        value.backward()
        optimizer.step()
    else:
        scaler.scale(value).backward()
        scaler.step(optimizer)
        scaler.update()
    return value.detach(), batch.layer


def pick_device(config: Config, local_rank: int) -> torch.device:
    """The torch device of a config whose device is resolved (see resolve_runtime)."""
    return torch.device("cpu") if config.device == "cpu" else torch.device("cuda", local_rank)


def setup_distributed(config: Config) -> tuple[int, int, torch.device]:
    """(rank, world_size, device); under torchrun, joins the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(config, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, device


def set_determinism(config: Config, device: torch.device) -> None:
    torch.backends.cudnn.benchmark = device.type == "cuda" and not config.deterministic
    if config.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=False)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def check_resumable(saved: dict, config: Config, path: Path, world_size: int, extend: bool = False) -> None:
    current = to_dict(config)
    # a key the checkpoint lacks was added to Config after it was written: the run had its default
    before = {**to_dict(Config()), **saved["config"]}
    may_differ = RESUMABLE_DIFFERENCES | ({"epochs"} if extend else set())
    different = sorted(
        key for key in set(before) | set(current)
        if key not in may_differ and before.get(key) != current.get(key)
    )
    if different:
        details = "; ".join(f"{k}: checkpoint {before.get(k)!r} vs now {current.get(k)!r}" for k in different)
        hint = (" (device and precision: resume where the run was trained, or pass the checkpoint's values, e.g. "
                "--set device=cpu precision=fp32)" if {"device", "precision"} & set(different) else "")
        if different == ["epochs"]:
            hint = " (to train a finished run further, raise epochs and pass --extend)"
        raise CheckpointError(
            f"{path} belongs to a different run ({details}){hint}. Nothing was overwritten: resume with the "
            "same config, or choose another output_dir."
        )
    if extend and config.epochs <= saved["epoch"]:
        raise CheckpointError(f"--extend: {path} has already trained {saved['epoch']} epochs; set epochs above that")
    if len(saved["mixing_generators"]) != world_size:
        raise CheckpointError(
            f"{path} was written by {len(saved['mixing_generators'])} process(es), now {world_size}: "
            "resume with the same number of GPUs to continue exactly."
        )


def train(config: Config, resume: bool = False, extend: bool = False) -> dict:
    """Train and evaluate as `config` says; return the summary (also written to summary.json).

    resume: continue the run in output_dir from its last checkpoint; a finished run is left untouched.
    extend: with resume, train a finished run further up to a larger `epochs` (a schedule that depends on
    `epochs`, cosine or one-cycle, continues from where it was as if the run had always had the new length).
    """
    config = resolve_runtime(config)  # device and precision as run, recorded in checkpoints and summaries
    if missing := methods.missing_extras(config.method, config.method_options):  # before any work
        raise ConfigError("; ".join(missing))
    rank, world_size, device = setup_distributed(config)
    is_main = rank == 0
    run_dir = Path(config.output_dir)
    last_path, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    if last_path.exists() and not resume:
        raise FileExistsError(
            f"{run_dir} already holds a run. Pass --resume to continue it, or set output_dir to a new folder."
        )
    if is_main:
        check_writable(run_dir)  # before the data, the model and the first epoch
    saved = None
    if resume and last_path.exists():
        saved = load_checkpoint(last_path, fix=f"move {run_dir} away to train the run from the start, or copy its "
                                              "checkpoints/best.pt over last.pt to resume from there")
    if saved is not None:
        check_resumable(saved, config, last_path, world_size, extend)
        if saved["epoch"] >= config.epochs:  # finished: a true no-op, nothing written
            if is_main:
                print(f"{run_dir} has finished its {saved['epoch']} epochs: nothing to do (to train it further, "
                      "raise epochs and pass --extend)", flush=True)
            return summarize(saved["history"], make_config(saved["config"]), saved["provenance"],
                             weights_fingerprint(saved["model"]))
    set_determinism(config, device)

    # Data: whole splits in memory (on the GPU when there is one); augmentation on batches.
    dataset = data.from_config(config)
    data_generator = torch.Generator().manual_seed(derive_seed(config.seed, "data"))
    mixing_generator = torch.Generator().manual_seed(derive_seed(config.seed, "mixing", rank))
    loader_options = dict(
        mean=dataset.mean, std=dataset.std, crop_size=dataset.crop_size, device=device, rank=rank,
        world_size=world_size, channels_last=config.channels_last and device.type == "cuda",
    )
    train_loader = data.BatchLoader(
        dataset.train, config.batch_size, train=True, generator=data_generator,
        padding=dataset.train_padding if config.crop_padding is None else config.crop_padding,
        **loader_options,
    )
    # big test batches are faster; a multiple of batch_size splits evenly over the GPUs
    test_batch = config.batch_size * math.ceil(500 / config.batch_size)
    test_loader = data.BatchLoader(dataset.test, test_batch, train=False, **loader_options)
    if len(train_loader) == 0:
        raise ConfigError(f"batch_size {config.batch_size} is larger than the {len(dataset.train.labels)} training "
                          "images: lower batch_size or use more images (train_per_class)")

    # Model, method, optimiser. The initial weights come from torch's global generator.
    torch.manual_seed(derive_seed(config.seed, "init"))
    model = models.build(config.model, dataset.num_classes, image_size=dataset.crop_size, width=config.width,
                         pretrained=config.pretrained).to(device)
    if config.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    method = methods.build(config.method, num_hook_points=model.num_hook_points, **config.method_options)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay)
    scaler = grad_scaler(config.precision)
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step / steps_per_epoch))

    start_epoch, history = 1, []
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        data_generator.set_state(saved["data_generator"])
        mixing_generator.set_state(saved["mixing_generators"][rank])
        torch.set_rng_state(saved["torch_rng"])
        if scaler is not None:
            scaler.load_state_dict(saved["scaler"])
        start_epoch, history = saved["epoch"] + 1, saved["history"]
        if is_main:
            print(f"resuming {run_dir} after epoch {saved['epoch']}", flush=True)

    trained_model = model
    if world_size > 1:
        trained_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if config.compile:
        # Dynamo breaks the graph around the mixing hook and compiles the pieces. Measured on the CPU:
        # after a warm-up of one compile per layer and shape (about 8 steps) no step recompiled,
        # whatever lambda and partners a batch drew.
        trained_model = torch.compile(trained_model)
    autocast = autocast_for(device, config.precision)

    info = provenance.collect(device, world_size)
    if is_main:
        write_json(run_dir / "config.json", to_dict(config))
        write_json(run_dir / "provenance.json", info)
        print(f"training {config.method} on {config.model} (width {config.width or 'as in the paper'}) / "
              f"{config.dataset}: {len(dataset.train.labels)} train, {len(dataset.test.labels)} test images; "
              f"epochs {start_epoch}-{config.epochs} of {steps_per_epoch} steps, batch {config.batch_size}, "
              f"lr {config.lr} ({config.schedule}), loss {config.loss}, {config.precision}, seed {config.seed}; "
              f"{provenance.describe(info)}", flush=True)
    writer = _tensorboard(run_dir, start_epoch) if is_main else None
    # The filter probe looks at fixed test images after each evaluation: it draws from no generator and
    # leaves the model as it was, so a run trains the same with it on or off.
    probe_images = None
    if config.filter_probe and is_main:
        probe_images, _ = analysis.fixed_batch(dataset, "test", config.filter_probe, device)

    best_top1 = max((row["test_top1"] for row in history if "test_top1" in row), default=-1.0)
    for epoch in range(start_epoch, config.epochs + 1):
        row = train_epoch(trained_model, method, train_loader, optimizer, scheduler, mixing_generator,
                          autocast, scaler, config, epoch, device, show=is_main, estimate_run=epoch == start_epoch)
        if evaluates(config, epoch):
            if world_size > 1:  # every rank tests with rank 0's BatchNorm statistics, those the checkpoint keeps
                for buffer in model.buffers():
                    dist.broadcast(buffer, src=0)
            evaluation_started = time.perf_counter()
            test = evaluate(model, test_loader, device, autocast)
            row.update({f"test_{key}": value for key, value in test.items() if key != "n"})
            row["eval_time_s"] = time.perf_counter() - evaluation_started
        if probe_images is not None:  # every epoch, tested or not
            row.update(analysis.probe_filters(model, probe_images, config.lagging_threshold))
        history.append(row)

        generator_states = [mixing_generator.get_state()]
        if world_size > 1:
            generator_states = [None] * world_size
            dist.all_gather_object(generator_states, mixing_generator.get_state())
        if is_main:
            state = {
                "epoch": epoch, "config": to_dict(config), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "data_generator": data_generator.get_state(), "mixing_generators": generator_states,
                "torch_rng": torch.get_rng_state(), "history": history, "provenance": info,
                "scaler": None if scaler is None else scaler.state_dict(),
            }
            save_checkpoint(last_path, state)
            if row.get("test_top1", -1.0) > best_top1:
                best_top1 = row["test_top1"]
                save_checkpoint(best_path, state)
            # metrics.jsonl is rewritten from the checkpointed history, so it always matches it
            write_jsonl(run_dir / "metrics.jsonl", history)
            _log_epoch(row, writer)
        if world_size > 1:
            dist.barrier()

    summary = summarize(history, config, info, weights_fingerprint(model.state_dict()))
    if is_main:
        write_json(run_dir / "summary.json", summary)
        print(f"done: top-1 last {summary['last_top1']:.2f}, best {summary['best_top1']:.2f} "
              f"(epoch {summary['best_epoch']}), median of last 10 {summary['median10_top1']:.2f}; "
              f"{config.method}, {config.model}, {config.dataset}, seed {config.seed}, "
              f"{provenance.describe(info)}. Run folder: {run_dir}", flush=True)
        if writer is not None:
            writer.close()
    if world_size > 1:
        dist.destroy_process_group()
    return summary


def train_epoch(model, method, loader, optimizer, scheduler, generator, autocast, scaler, config, epoch, device,
                show, estimate_run=False):
    """One epoch of training; returns its row of metrics. estimate_run: print, at the first progress update,
    how long an epoch and the rest of the run will take (the first epoch a process trains)."""
    model.train()
    loss_sum = torch.zeros((), device=device)
    # Index of the first step whose loss was not finite, checked only every log_every steps, so
    # the GPU is not made to wait for the CPU at each step.
    first_bad_step = torch.full((), -1, device=device)
    layer_counts = Counter()
    progress = _progress(len(loader), epoch, config.epochs, show)
    started = time.perf_counter()
    images_seen = 0
    for step, (images, labels) in enumerate(loader, start=1):
        loss, layer = train_step(model, method, images, labels, optimizer, generator, autocast, config.loss,
                                 config.label_smoothing, scaler)
        scheduler.step()
        loss_sum += loss
        first_bad_step = torch.where((first_bad_step < 0) & ~torch.isfinite(loss), step, first_bad_step)
        layer_counts["none" if layer is None else str(layer)] += 1
        images_seen += len(labels)
        if step % config.log_every == 0 or step == len(loader):
            _raise_if_not_finite(first_bad_step, epoch)
            progress(step, loss_sum.item() / step, images_seen / (time.perf_counter() - started))
            if estimate_run and show:
                per_epoch = (time.perf_counter() - started) / step * len(loader)
                left = config.epochs - epoch + 1
                print(f"time: about {_duration(per_epoch)} per epoch of training (tests not counted), "
                      f"{_duration(per_epoch * left)} for the {left} epoch(s) left", flush=True)
                estimate_run = False
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - started
    row = {
        "epoch": epoch,
        "train_loss": loss_sum.item() / len(loader),
        "lr": optimizer.param_groups[0]["lr"],
        "images_per_s": images_seen * _world_size() / elapsed,
        "epoch_time_s": elapsed,
    }
    if method.name != "vanilla":
        row["layer_counts"] = dict(sorted(layer_counts.items()))
    return row


def evaluates(config: Config, epoch: int) -> bool:
    """Whether `epoch` ends with a test pass: every eval_every epochs, and each of the last 10 (the tables'
    median of the last 10 and the last epoch need them)."""
    return epoch % config.eval_every == 0 or epoch > config.epochs - 10


def summarize(history: list[dict], config: Config, info: dict, weights: str) -> dict:
    """The run's numbers; `weights`: the fingerprint of its last weights (checkpoint.weights_fingerprint), so a
    measurement of a checkpoint can tell whether it measured these."""
    evaluated = [row for row in history if "test_top1" in row]
    top1 = [row["test_top1"] for row in evaluated]
    best = max(range(len(top1)), key=top1.__getitem__)
    return {
        "last_top1": top1[-1],
        "best_top1": top1[best],
        "best_epoch": evaluated[best]["epoch"],
        "median10_top1": statistics.median(top1[-10:]),
        "last_top5": evaluated[-1]["test_top5"],
        "last_nll": evaluated[-1]["test_nll"],
        "last_ece": evaluated[-1]["test_ece"],
        "epochs": len(history),
        "train_time_s": sum(row["epoch_time_s"] for row in history),
        "wall_time_s": sum(row["epoch_time_s"] + row.get("eval_time_s", 0.0) for row in history),
        "config": to_dict(config),
        "provenance": info,
        "weights": weights,
    }


def _raise_if_not_finite(first_bad_step: torch.Tensor, epoch: int) -> None:
    bad = int(first_bad_step)
    if bad >= 0:
        raise NonFiniteLossError(
            f"loss became NaN or inf at epoch {epoch}, step {bad}. Stopped without saving; the last good "
            "checkpoint is untouched. Lower lr, check the data, or train in precision=fp32."
        )


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 2 * 3600 else f"{seconds / 3600:.1f} h"


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _progress(total: int, epoch: int, epochs: int, show: bool):
    """A tqdm bar on a terminal; plain lines otherwise (logs, CI). Returns update(step, loss, ips)."""
    if not show:
        return lambda *args: None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"epoch {epoch}/{epochs}", unit="step", leave=False)

        def update(step, loss, images_per_s):
            bar.update(step - bar.n)
            bar.set_postfix(loss=f"{loss:.3f}", img_s=f"{images_per_s:.0f}")
            if step == total:
                bar.close()

        return update

    def print_line(step, loss, images_per_s):
        print(f"epoch {epoch}/{epochs} step {step}/{total} loss {loss:.4f} {images_per_s:.0f} img/s", flush=True)

    return print_line


def _printed(key: str, value) -> str:
    """One entry of the epoch's line; a statistic of many layers (the probe inside the blocks) as its largest
    value, the whole of it being in metrics.jsonl and TensorBoard."""
    if isinstance(value, dict) and len(value) > 8:
        return f"{key} max {max(value.values()):.4g}"
    return f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}"


def _tensorboard(run_dir: Path, start_epoch: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)", flush=True)
        return None
    # purge_step drops points a crashed run logged after its last checkpoint
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_epoch)


def _log_epoch(row: dict, writer) -> None:
    print(" ".join(_printed(k, v) for k, v in row.items()), flush=True)
    if writer is None:
        return
    for key, value in row.items():
        if isinstance(value, int | float) and key != "epoch":
            writer.add_scalar(key, value, row["epoch"])
    for key, values in row.items():
        if isinstance(values, dict):  # layer_counts, filter statistics: one curve per entry
            for name, value in values.items():
                writer.add_scalar(f"{key}/{name}", value, row["epoch"])
    writer.flush()
