"""Clean-test metrics (top-1, top-5, negative log-likelihood, expected calibration error), and a trained
run's checkpoint loaded back as it was trained.

Metrics are accumulated as sums (correct counts, NLL, per-bin confidence and accuracy), so the
shards of several GPUs add up with one all-reduce, and the result does not depend on batch size.
"""

import dataclasses
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import data, models, provenance
from .checkpoint import check_writable, load_checkpoint, weights_fingerprint, write_json
from .config import Config, make_config, resolve_runtime
from .precision import autocast_for

ECE_BINS = 15


class MetricSums:
    """Running sums over batches of (logits, labels)."""

    def __init__(self, device, bins: int = ECE_BINS):
        self.bins = bins
        # [count, top1, top5, nll] then per bin: count, summed confidence, summed correctness
        self.sums = torch.zeros(4 + 3 * bins, dtype=torch.float64, device=device)

    @torch.no_grad()
    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        log_probs = F.log_softmax(logits.float(), dim=1)
        top = log_probs.topk(min(5, log_probs.shape[1]), dim=1).indices
        hits = top == labels[:, None]
        confidence, predicted = log_probs.exp().max(dim=1)
        correct = (predicted == labels).double()
        # bin b holds confidences in (b/bins, (b+1)/bins], the standard ECE binning; the per-bin
        # sums go through a one-hot matmul, which is deterministic on GPUs (index_add_ is not)
        bin_index = (confidence * self.bins).ceil().long().clamp(1, self.bins) - 1
        one_hot = F.one_hot(bin_index, self.bins).double()
        per_bin = torch.stack([torch.ones_like(correct), confidence.double(), correct]) @ one_hot
        head = torch.stack([
            torch.tensor(float(len(labels)), dtype=torch.float64, device=self.sums.device),
            hits[:, 0].sum().double(),
            hits.any(dim=1).sum().double(),
            -log_probs.gather(1, labels[:, None]).double().sum(),
        ])
        self.sums += torch.cat([head, per_bin.flatten()])

    def all_reduce(self) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.sums)

    def reliability(self) -> list[dict]:
        """The reliability diagram: per confidence bin (lower, upper], its count, mean confidence and accuracy
        (None where empty). ECE is the count-weighted mean of |confidence - accuracy| over these bins."""
        bins = self.sums[4:].cpu().reshape(3, self.bins)
        rows = []
        for b in range(self.bins):
            count = int(bins[0, b].item())
            rows.append({"lower": b / self.bins, "upper": (b + 1) / self.bins, "count": count,
                         "confidence": bins[1, b].item() / count if count else None,
                         "accuracy": bins[2, b].item() / count if count else None})
        return rows

    def result(self) -> dict:
        sums = self.sums.cpu()
        count = sums[0].item()
        bins = sums[4:].reshape(3, self.bins)
        gap = (bins[1] - bins[2]).abs().sum().item()  # sum over bins of |sum conf - sum correct|
        return {
            "n": int(count),
            "top1": 100.0 * sums[1].item() / count,
            "top5": 100.0 * sums[2].item() / count,
            "nll": sums[3].item() / count,
            "ece": 100.0 * gap / count,
        }


@torch.no_grad()
def evaluate(model, loader, device, autocast) -> dict:
    """Metrics of `model` over every batch of `loader` (summed over GPUs under torchrun)."""
    was_training = model.training
    model.eval()
    sums = MetricSums(device)
    for images, labels in loader:
        with autocast():
            logits = model(images)
        sums.add(logits, labels)
    sums.all_reduce()
    model.train(was_training)
    return sums.result()


@dataclasses.dataclass
class LoadedRun:
    """A checkpoint's model, back in eval mode on `device`, with the data and numerics it was trained with."""

    config: Config  # the run's config, resolved for this machine
    model: torch.nn.Module
    dataset: data.Dataset
    device: torch.device
    autocast: object  # a factory of autocast contexts, as in training
    epoch: int
    same_numerics: bool  # same device type and precision as the training run: logged numbers reproduce
    provenance: dict  # how the checkpoint was made (commit, time, host, device), as its run recorded it
    weights: str  # the fingerprint of the weights (checkpoint.weights_fingerprint): what a measurement measured

    def test_loader(self, batch_size: int = 500) -> data.BatchLoader:
        return data.BatchLoader(self.dataset.test, batch_size, mean=self.dataset.mean, std=self.dataset.std,
                                train=False, crop_size=self.dataset.crop_size, device=self.device,
                                channels_last=self.config.channels_last and self.device.type == "cuda")


def load_run(path, data_root: str | None = None, device: str = "auto") -> LoadedRun:
    """Rebuild a run's model and dataset from its checkpoint (last.pt or best.pt).

    On the device type the run was trained on, the model is evaluated with the run's precision (autocast
    dtype) and memory format, so re-evaluation reproduces the logged numbers. On another device type (a GPU
    run re-evaluated on a CPU) it falls back to that device's own precision and says so (same_numerics).
    """
    saved = load_checkpoint(path)
    values = dict(saved["config"])
    if data_root:
        values["data_root"] = data_root
    trained = make_config(values)
    here = resolve_runtime(dataclasses.replace(trained, device=device, precision="auto"))
    same_device = here.device == trained.device
    config = dataclasses.replace(here, precision=trained.precision) if same_device else here
    torch_device = torch.device(config.device)
    dataset = data.from_config(config)
    model = models.build(config.model, dataset.num_classes, image_size=dataset.crop_size, width=config.width)
    model.load_state_dict(saved["model"])
    model.to(torch_device).eval()
    if config.channels_last and torch_device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return LoadedRun(config, model, dataset, torch_device, autocast_for(torch_device, config.precision),
                     saved["epoch"], same_device, saved.get("provenance", {}), weights_fingerprint(saved["model"]))


def evaluate_checkpoint(path, data_root: str | None = None, device: str = "auto", out=None) -> dict:
    """Clean test metrics of a checkpoint, written to `out` (default: beside it, <checkpoint>.eval.json)."""
    out = Path(out) if out is not None else Path(path).with_suffix(".eval.json")
    check_writable(out.parent)  # before the model and data are loaded
    run = load_run(path, data_root, device)
    metrics = evaluate(run.model, run.test_loader(), run.device, run.autocast)
    config = run.config
    result = {
        "checkpoint": str(path), "epoch": run.epoch, "weights": run.weights, **metrics,
        "method": config.method, "model": config.model, "dataset": config.dataset, "seed": config.seed,
        "precision": config.precision, "same_numerics_as_training": run.same_numerics,
        "provenance": provenance.collect(run.device),
    }
    write_json(out, result)
    return result
