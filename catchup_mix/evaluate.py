"""Clean-test metrics: top-1, top-5, negative log-likelihood and expected calibration error.

Metrics are accumulated as sums (correct counts, NLL, per-bin confidence and accuracy), so the
shards of several GPUs add up with one all-reduce, and the result does not depend on batch size.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F

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
