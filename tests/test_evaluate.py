"""Clean-test metrics against a direct computation, and a checkpoint re-evaluated as it was trained."""

import numpy as np
import torch
import torch.nn.functional as F

from catchup_mix.evaluate import ECE_BINS, MetricSums


def direct_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1, top-5, NLL and 15-bin ECE written out plainly with numpy, one sample at a time."""
    probs = F.softmax(logits.double(), dim=1).numpy()
    labels = labels.numpy()
    n = len(labels)
    top5 = np.argsort(-probs, axis=1)[:, :5]
    confidence, predicted = probs.max(1), probs.argmax(1)
    ece = 0.0
    for b in range(ECE_BINS):
        low, high = b / ECE_BINS, (b + 1) / ECE_BINS
        members = [i for i in range(n) if low < confidence[i] <= high or (b == 0 and confidence[i] == 0)]
        if members:
            accuracy = np.mean([predicted[i] == labels[i] for i in members])
            ece += len(members) / n * abs(np.mean(confidence[members]) - accuracy)
    return {"top1": 100 * np.mean(predicted == labels), "top5": 100 * np.mean([labels[i] in top5[i] for i in range(n)]),
            "nll": -np.mean(np.log(probs[np.arange(n), labels])), "ece": 100 * ece}


def test_metric_sums_equal_a_direct_computation_whatever_the_batching():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 12, generator=generator) * 3
    labels = torch.randint(0, 12, (300,), generator=generator)
    expected = direct_metrics(logits, labels)
    for batch in (300, 64, 7):
        sums = MetricSums("cpu")
        for start in range(0, 300, batch):
            sums.add(logits[start:start + batch], labels[start:start + batch])
        result = sums.result()
        assert result["n"] == 300
        for key in ("top1", "top5", "nll", "ece"):
            assert abs(result[key] - expected[key]) < 1e-6, (key, batch, result[key], expected[key])


def test_ece_of_a_perfectly_calibrated_and_of_an_overconfident_model():
    # every sample predicted with confidence 0.75 and 3 of 4 right: calibrated, ECE 0
    logits = torch.log(torch.tensor([[0.75, 0.25]])).repeat(8, 1)
    labels = torch.tensor([0, 0, 0, 1, 0, 0, 0, 1])
    sums = MetricSums("cpu")
    sums.add(logits, labels)
    assert abs(sums.result()["ece"]) < 1e-4  # float32 softmax: 0.75 to about 1e-7
    # the same confidence, half right: ECE = |0.75 - 0.5| = 25%
    sums = MetricSums("cpu")
    sums.add(logits, torch.tensor([0, 1] * 4))
    assert abs(sums.result()["ece"] - 25.0) < 1e-4
