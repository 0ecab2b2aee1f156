"""The GPU path: every method trains on the device in each precision and memory format, eager and compiled,
with no host-device synchronisation inside a step; the GPU agrees with the CPU on the op, the mixed batches
and the augmentation; an interrupted GPU run resumes exactly. Skipped without CUDA.

`python -m reproduce gpucheck` runs this file first.
"""

import json
from pathlib import Path

import pytest
import torch

from catchup_mix import data, methods, models
from catchup_mix.checkpoint import load_checkpoint
from catchup_mix.config import make_config
from catchup_mix.ops import catchup_mix_features
from catchup_mix.precision import autocast_for
from catchup_mix.train import train, train_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY = dict(dataset="synthetic", num_classes=4, train_per_class=32, test_per_class=16, model="preactresnet18",
            width=8, epochs=1, batch_size=16, lr=0.05, schedule="cosine", device="cuda", log_every=10**6)


def model_and_batches(steps=3, width=8, precision="bf16", channels_last=True):
    torch.manual_seed(0)
    model = models.build("preactresnet18", 10, width=width).cuda()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    dataset = data.load("synthetic", num_classes=10, train_per_class=16, test_per_class=2)
    loader = data.BatchLoader(dataset.train, 32, mean=dataset.mean, std=dataset.std, train=True, crop_size=32,
                              padding=4, device="cuda", generator=torch.Generator().manual_seed(0),
                              channels_last=channels_last)
    batches = [batch for _, batch in zip(range(steps), loader, strict=False)]
    return model, batches, autocast_for(torch.device("cuda"), precision)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_every_method_trains_an_epoch_on_the_gpu(tmp_path, precision, channels_last):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no native bf16 on this GPU")
    for name in methods.available():
        summary = train(make_config({**TINY, "method": name, "precision": precision, "channels_last": channels_last,
                                     "output_dir": str(tmp_path / f"{name}-{precision}-{channels_last}")}))
        assert summary["epochs"] == 1 and 0 <= summary["last_top1"] <= 100, name
        assert summary["config"]["precision"] == precision and summary["config"]["device"] == "cuda"


def test_every_method_trains_compiled_on_the_gpu(tmp_path):
    for name in methods.available():
        summary = train(make_config({**TINY, "method": name, "compile": True, "output_dir": str(tmp_path / name)}))
        assert summary["epochs"] == 1 and summary["last_nll"] == summary["last_nll"], name  # not NaN


def test_no_step_makes_the_cpu_wait_for_the_gpu():
    model, batches, autocast = model_and_batches()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    for name in methods.available():
        method = methods.build(name, num_hook_points=model.num_hook_points)
        if method.host_sync:  # a documented wait the algorithm itself needs (e.g. a graph cut on the CPU)
            continue
        for loss in ("ce", "softmax_bce"):
            generator = torch.Generator().manual_seed(0)
            train_step(model, method, *batches[0], optimizer, generator, autocast, loss)  # warm-up (allocations)
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                for images, labels in batches:  # no logging step among them
                    train_step(model, method, images, labels, optimizer, generator, autocast, loss)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            torch.cuda.synchronize()


def test_the_op_agrees_on_gpu_and_cpu():
    generator = torch.Generator().manual_seed(0)
    features = torch.rand(8, 32, 6, 6, generator=generator) + torch.arange(32.0)[None, :, None, None] / 7
    perm = torch.randperm(8, generator=generator)
    for selection in ("low", "high", "random"):
        for rfi in ("relative", "absolute"):
            cpu = catchup_mix_features(features, 0.4, perm, selection, rfi, torch.Generator().manual_seed(1))
            gpu = catchup_mix_features(features.cuda(), 0.4, perm.cuda(), selection, rfi,
                                       torch.Generator().manual_seed(1))
            assert torch.equal(cpu, gpu.cpu()), (selection, rfi)


def test_each_method_mixes_the_same_batch_on_gpu_and_cpu():
    images, labels = torch.rand(8, 3, 32, 32), torch.arange(8)
    features = torch.rand(8, 16, 8, 8) + torch.arange(16.0)[None, :, None, None] / 5
    model = models.build("preactresnet18", 10, width=8)
    for name in methods.available():
        method = methods.build(name, num_hook_points=model.num_hook_points)
        if method.needs_model:
            # saliency from the network's gradient differs in its last bits between devices, and the discrete
            # choices made from it (graph cut, transport) may flip on near-ties: trained above, not compared
            continue
        for seed in range(6):  # several draws: several layers and lambdas
            cpu = method(images, labels, generator=torch.Generator().manual_seed(seed), model=model)
            gpu = method(images.cuda(), labels.cuda(), generator=torch.Generator().manual_seed(seed),
                         model=model.cuda())
            model.cpu()
            # float tolerance: spectral saliency (FFT) and Sinkhorn round differently on the two devices
            assert torch.allclose(cpu.inputs, gpu.inputs.cpu(), rtol=1e-4, atol=1e-4), name
            assert torch.equal(cpu.targets_b, gpu.targets_b.cpu()) and cpu.layer == gpu.layer, name
            if cpu.feature_hook is not None:
                mixed_cpu = cpu.feature_hook(features, cpu.layer)
                mixed_gpu = gpu.feature_hook(features.cuda(), gpu.layer)
                assert torch.allclose(mixed_cpu, mixed_gpu.cpu(), rtol=1e-4, atol=1e-4), name
            assert torch.allclose(cpu.target_distribution(10), gpu.target_distribution(10).cpu(), atol=1e-5), name


@pytest.mark.parametrize("train_mode", [True, False])
def test_augmentation_on_the_gpu_equals_the_cpu(train_mode):
    dataset = data.load("synthetic", num_classes=4, train_per_class=64, test_per_class=8)
    split = dataset.train if train_mode else dataset.test
    batches = {}
    for device in ("cpu", "cuda"):
        loader = data.BatchLoader(split, 50, mean=dataset.mean, std=dataset.std, train=train_mode, crop_size=32,
                                  padding=4, device=device, generator=torch.Generator().manual_seed(3))
        batches[device] = [(x.cpu(), y.cpu()) for x, y in loader]
    for (x_cpu, y_cpu), (x_gpu, y_gpu) in zip(batches["cpu"], batches["cuda"], strict=True):
        assert torch.equal(y_cpu, y_gpu) and torch.allclose(x_cpu, x_gpu, atol=1e-6)
    if train_mode:  # the statistics of the augmentation: shifted crops and about half flipped
        images = torch.cat([x for x, _ in batches["cuda"]])
        assert images.shape[1:] == (3, 32, 32) and abs(images.mean().item()) < 0.3


def test_an_interrupted_gpu_run_resumes_exactly(tmp_path, monkeypatch):
    import catchup_mix.train as train_module

    config = {**TINY, "epochs": 3, "method": "catchup_mix", "deterministic": True}
    train(make_config({**config, "output_dir": str(tmp_path / "whole")}))
    real_save = train_module.save_checkpoint

    def save_then_die(path, state):
        real_save(path, state)
        if state["epoch"] == 1 and Path(path).name == "last.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(make_config({**config, "output_dir": str(tmp_path / "resumed")}))
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    train(make_config({**config, "output_dir": str(tmp_path / "resumed")}), resume=True)
    whole = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert all(torch.equal(whole["model"][k], resumed["model"][k]) for k in whole["model"])
    rows = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2, 3]


def test_re_evaluation_reproduces_the_logged_numbers_on_the_gpu(tmp_path):
    from catchup_mix.evaluate import evaluate_checkpoint

    out = tmp_path / "run"
    summary = train(make_config({**TINY, "epochs": 2, "method": "cutmix", "output_dir": str(out)}))
    result = evaluate_checkpoint(str(out / "checkpoints" / "last.pt"), device="cuda")
    assert result["same_numerics_as_training"] and result["precision"] == summary["config"]["precision"]
    assert result["top1"] == pytest.approx(summary["last_top1"], abs=1e-9)
    assert result["nll"] == pytest.approx(summary["last_nll"], rel=1e-6)
