"""The trainer on tiny synthetic runs: repeatability, exact resume, safe checkpoints, logs, config, CLI."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from catchup_mix import train as train_module
from catchup_mix.checkpoint import CheckpointError, load_checkpoint
from catchup_mix.config import ConfigError, load_config, make_config, parse_overrides
from catchup_mix.train import NonFiniteLossError, lr_factor, train

REPOSITORY = Path(__file__).resolve().parent.parent
TINY = dict(
    dataset="synthetic", num_classes=4, train_per_class=24, test_per_class=12, model="preactresnet18",
    width=4, epochs=3, batch_size=16, lr=0.05, schedule="cosine", method="catchup_mix",
    deterministic=True, log_every=2,
)


@pytest.fixture(autouse=True)
def restore_determinism():
    yield
    torch.use_deterministic_algorithms(False)


def tiny(tmp_path, name="run", **overrides):
    return make_config({**TINY, "output_dir": str(tmp_path / name), **overrides})


def weights(run_dir):
    return load_checkpoint(Path(run_dir) / "checkpoints" / "last.pt")["model"]


def metrics(run_dir, drop_timing=True):
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    timing = {"images_per_s", "epoch_time_s", "eval_time_s"}
    return [{k: v for k, v in row.items() if not (drop_timing and k in timing)} for row in rows]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_repeats_bitwise_and_another_seed_differs(tmp_path):
    train(tiny(tmp_path, "a"))
    train(tiny(tmp_path, "b"))
    train(tiny(tmp_path, "c", seed=1))
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")
    assert same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))
    assert not same_weights(weights(tmp_path / "a"), weights(tmp_path / "c"))


def test_interrupted_run_resumes_exactly(tmp_path, monkeypatch):
    train(tiny(tmp_path, "whole"))

    real_save = train_module.save_checkpoint
    saves = []

    def save_then_die(path, state):  # dies right after the first epoch's checkpoint
        real_save(path, state)
        saves.append(state["epoch"])
        if state["epoch"] == 1 and path.name == "last.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(tiny(tmp_path, "interrupted"))
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    assert load_checkpoint(tmp_path / "interrupted" / "checkpoints" / "last.pt")["epoch"] == 1

    summary = train(tiny(tmp_path, "interrupted"), resume=True)
    assert summary["epochs"] == 3
    assert same_weights(weights(tmp_path / "whole"), weights(tmp_path / "interrupted"))
    assert metrics(tmp_path / "whole") == metrics(tmp_path / "interrupted")


def test_a_second_run_in_the_same_folder_needs_resume(tmp_path):
    train(tiny(tmp_path, epochs=1))
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny(tmp_path, epochs=1))


def test_corrupt_checkpoint_gives_clear_error_and_stays_untouched(tmp_path):
    train(tiny(tmp_path, epochs=1))
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated, as after a full disk
    before = last.read_bytes()
    with pytest.raises(CheckpointError, match="truncated one .* copy its checkpoints/best.pt over last.pt"):
        train(tiny(tmp_path, epochs=2), resume=True)
    assert last.read_bytes() == before


def test_resume_with_a_different_config_is_refused_and_overwrites_nothing(tmp_path):
    train(tiny(tmp_path, epochs=1))
    run = tmp_path / "run"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(CheckpointError, match="lr: checkpoint 0.05 vs now 0.1"):
        train(tiny(tmp_path, epochs=1, lr=0.1), resume=True)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_nan_loss_stops_with_epoch_and_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real_loss = train_module.soft_target_loss
    calls = []

    def loss_that_breaks(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if len(calls) == 6 + 3 else loss  # epoch 2 (6 steps/epoch), step 3

    monkeypatch.setattr(train_module, "soft_target_loss", loss_that_breaks)
    with pytest.raises(NonFiniteLossError, match="epoch 2, step 3"):
        train(tiny(tmp_path))
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert saved["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


def test_logs_metrics_provenance_and_tensorboard(tmp_path):
    summary = train(tiny(tmp_path))
    run = tmp_path / "run"
    rows = metrics(run, drop_timing=False)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    for row in rows:
        assert {"train_loss", "test_top1", "test_top5", "lr", "images_per_s", "epoch_time_s"} <= row.keys()
        assert 0 <= row["test_top1"] <= row["test_top5"] <= 100 and row["images_per_s"] > 0
        assert sum(row["layer_counts"].values()) == 6  # one draw per step
        assert set(row["layer_counts"]) <= {str(k) for k in range(6)}
    assert summary["last_top1"] == rows[-1]["test_top1"]
    assert summary["best_top1"] == max(row["test_top1"] for row in rows)
    assert summary["median10_top1"] == sorted(row["test_top1"] for row in rows)[1]
    provenance = json.loads((run / "provenance.json").read_text())
    assert {"commit", "dirty", "device", "versions"} <= provenance.keys()
    assert provenance["versions"]["torch"] == torch.__version__
    assert json.loads((run / "config.json").read_text())["method"] == "catchup_mix"
    assert json.loads((run / "summary.json").read_text())["last_top1"] == summary["last_top1"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    top1 = [event.value for event in events.Scalars("test_top1")]
    assert top1 == pytest.approx([row["test_top1"] for row in rows])


def test_vanilla_rows_have_no_layer_counts(tmp_path):
    train(tiny(tmp_path, method="vanilla", epochs=1))
    assert "layer_counts" not in metrics(tmp_path / "run")[0]


def test_learning_rate_schedules():
    step = make_config(dict(schedule="step", epochs=300, milestones=[100, 200], gamma=0.1))
    assert lr_factor(step, 0) == 1 and lr_factor(step, 99.99) == 1
    assert lr_factor(step, 100) == pytest.approx(0.1) and lr_factor(step, 250) == pytest.approx(0.01)
    cosine = make_config(dict(schedule="cosine", epochs=10))
    assert lr_factor(cosine, 0) == 1 and lr_factor(cosine, 5) == pytest.approx(0.5) and lr_factor(cosine, 10) == 0
    onecycle = make_config(dict(schedule="onecycle", epochs=8))
    assert lr_factor(onecycle, 0) == pytest.approx(0.1) and lr_factor(onecycle, 2) == pytest.approx(1)
    assert lr_factor(onecycle, 8) == pytest.approx(0)
    warm = make_config(dict(schedule="cosine", epochs=10, warmup_epochs=2))
    assert lr_factor(warm, 1) == pytest.approx(0.5) and lr_factor(warm, 2) == pytest.approx(1)


def test_presets_hold_the_protocols_of_method_md():
    comixup = load_config("cifar100_300ep")
    assert (comixup.lr, comixup.batch_size, comixup.epochs, comixup.milestones) == (0.2, 100, 300, [100, 200])
    puzzle = load_config("cifar100_1200ep")
    assert (puzzle.lr, puzzle.epochs, puzzle.milestones, puzzle.weight_decay) == (0.1, 1200, [400, 800], 1e-4)
    tiny_imagenet = load_config("tiny_imagenet_1200ep")
    assert (tiny_imagenet.dataset, tiny_imagenet.lr, tiny_imagenet.milestones) == ("tiny_imagenet", 0.2, [600, 900])
    fgvc = load_config("fgvc_300ep", {"model": "torchvision_resnet50"})
    assert fgvc.pretrained and fgvc.model == "torchvision_resnet50" and fgvc.milestones == [150, 225]


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(weight_decy=0.1), r"unknown config key 'weight_decy'.*Did you mean 'weight_decay'\?.*Valid keys"),
        (dict(lr=-0.1), "lr must be"),
        (dict(lr="fast"), "lr must be float"),
        (dict(epochs=0), "epochs must be >= 1"),
        (dict(model="resnet1000"), "unknown model 'resnet1000'; available: preactresnet18"),
        (dict(method="mixxup"), "unknown method 'mixxup'; available: vanilla"),
        (dict(dataset="imagenet"), "unknown dataset 'imagenet'; available: synthetic"),
        (dict(method="catchup_mix", method_options={"alpa": 1}), "settable with --set method_options.NAME=VALUE: .*alpha"),
        (dict(method="catchup_mix", method_options={"layers": [0, 7]}), r"layers must be .* \[0, 5\]"),
        (dict(model="wrn16_8", method="catchup_mix", method_options={"layers": [5]}), r"\[0, 4\]"),
        (dict(milestones=[100, "x"]), "milestones must be list"),
        (dict(width=None, deterministic="yes"), "deterministic must be bool"),
    ],
)
def test_bad_configs_are_rejected_with_the_allowed_values(values, message):
    with pytest.raises(ConfigError, match=message):
        make_config(values)


def test_overrides_parse_json_values_and_dotted_keys():
    overrides = parse_overrides(["lr=0.1", "method=catchup_mix", "method_options.alpha=2",
                                 "method_options.layers=[0,1]", "width=null", "deterministic=true"])
    assert overrides == {"lr": 0.1, "method": "catchup_mix", "method_options": {"alpha": 2, "layers": [0, 1]},
                         "width": None, "deterministic": True}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lr"])
    config = load_config("smoke", {"epochs": 3})
    assert config.epochs == 3 and config.dataset == "synthetic" and isinstance(config.lr, float)


def run_cli(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(REPOSITORY))
    return subprocess.run([sys.executable, "-m", "catchup_mix", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_cli_train_then_evaluate(tmp_path):
    out = tmp_path / "cli"
    result = run_cli("train", "--config", "smoke", "--set", "num_classes=4", "train_per_class=16",
                     "test_per_class=10", "width=4", "--set", "epochs=2", "batch_size=16", "method=cutmix",
                     f"output_dir={out}", "deterministic=true")
    assert result.returncode == 0, result.stderr
    assert "done: top-1 last" in result.stdout and "commit" in result.stdout
    last = metrics(out)[-1]
    evaluation = run_cli("evaluate", "--checkpoint", str(out / "checkpoints" / "last.pt"))
    assert evaluation.returncode == 0, evaluation.stderr
    measured = json.loads(evaluation.stdout)
    assert measured["n"] == 40 and measured["epoch"] == 2
    assert math.isclose(measured["top1"], last["test_top1"], abs_tol=1e-6)
    assert 0 <= measured["ece"] <= 100 and measured["nll"] > 0
    # the same command with --resume finds the run finished and trains nothing more
    before = metrics(out, drop_timing=False)
    again = run_cli("train", "--config", "smoke", "--set", "num_classes=4", "train_per_class=16",
                    "test_per_class=10", "width=4", "epochs=2", "batch_size=16", "method=cutmix", f"output_dir={out}",
                    "deterministic=true", "--resume")
    assert again.returncode == 0, again.stderr
    assert metrics(out, drop_timing=False) == before


def test_resuming_a_finished_run_writes_nothing_and_extend_trains_further(tmp_path):
    train(tiny(tmp_path, epochs=2))
    run = tmp_path / "run"
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    summary = train(tiny(tmp_path, epochs=2), resume=True)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()} == before
    assert summary["epochs"] == 2
    with pytest.raises(CheckpointError, match="--extend"):  # more epochs without --extend: refused
        train(tiny(tmp_path, epochs=4), resume=True)
    extended = train(tiny(tmp_path, epochs=4), resume=True, extend=True)
    assert extended["epochs"] == 4 and [row["epoch"] for row in metrics(run)] == [1, 2, 3, 4]
    with pytest.raises(CheckpointError, match="already trained 4 epochs"):
        train(tiny(tmp_path, epochs=3), resume=True, extend=True)


def test_a_checkpoint_written_before_a_config_key_existed_resumes_with_its_default(tmp_path):
    train(tiny(tmp_path, epochs=1))
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    saved = torch.load(last, weights_only=True)
    del saved["config"]["eval_every"]  # as if written before eval_every existed (default 1)
    torch.save(saved, last)
    assert train(tiny(tmp_path, epochs=2), resume=True, extend=True)["epochs"] == 2
    with pytest.raises(CheckpointError, match="eval_every: checkpoint 1 vs now 2"):  # not the default now
        train(tiny(tmp_path, "run", epochs=3, eval_every=2), resume=True, extend=True)


def test_a_run_trained_in_one_precision_is_not_resumed_in_another(tmp_path):
    train(tiny(tmp_path, epochs=1))
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    saved = torch.load(last, weights_only=True)
    assert (saved["config"]["device"], saved["config"]["precision"]) == ("cpu", "fp32")  # resolved, recorded
    saved["config"].update(device="cuda", precision="bf16")  # as if trained on a GPU
    torch.save(saved, last)
    with pytest.raises(CheckpointError, match="device: checkpoint 'cuda' vs now 'cpu'.*precision=fp32"):
        train(tiny(tmp_path, epochs=2), resume=True)


def test_ctrl_c_says_where_the_checkpoint_is_and_how_to_resume(tmp_path, monkeypatch, capsys):
    from catchup_mix.__main__ import main

    real_save = train_module.save_checkpoint

    def save_then_interrupt(path, state):
        real_save(path, state)
        if path.name == "last.pt":
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_interrupt)
    out = tmp_path / "interrupted"
    argv = ["train", "--config", "smoke", "--set", "num_classes=2", "train_per_class=8", "test_per_class=4",
            "width=4", "epochs=3", "batch_size=8", f"output_dir={out}"]
    assert main(argv) == 130
    message = capsys.readouterr().err
    assert f"{out}/checkpoints/last.pt" in message and "--resume" in message and "Traceback" not in message
    assert "python -m catchup_mix train --config smoke" in message


def test_the_first_epoch_prints_an_estimate_of_the_whole_run(tmp_path, capsys):
    train(tiny(tmp_path, epochs=3, log_every=2))
    out = capsys.readouterr().out
    assert len(re.findall(r"time: about .* per epoch of training .* for the 3 epoch\(s\) left", out)) == 1


def test_num_hook_points_is_not_a_method_option_of_a_config():
    with pytest.raises(ConfigError, match="num_hook_points comes from the model"):
        make_config({"method": "catchup_mix", "method_options": {"num_hook_points": 3}})


def test_curves_command_plots_the_runs(tmp_path):
    train(tiny(tmp_path, epochs=2))
    result = run_cli("curves", str(tmp_path / "run"), "--out", str(tmp_path / "curves.png"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "curves.png").stat().st_size > 10_000
    missing = run_cli("curves", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and "metrics.jsonl" in missing.stderr


def test_cli_rejects_bad_config_with_nonzero_exit(tmp_path):
    result = run_cli("train", "--config", "smoke", "--set", "epoch=3", f"output_dir={tmp_path}")
    assert result.returncode != 0
    assert "Did you mean 'epochs'" in result.stderr
    missing = run_cli("train", "--config", "no_such_preset.json")
    assert missing.returncode != 0 and "neither a preset" in missing.stderr


@pytest.mark.slow
def test_two_process_distributed_run_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONPATH=str(REPOSITORY), OMP_NUM_THREADS="1")
    overrides = [f"{k}={json.dumps(v)}" for k, v in {**TINY, "epochs": 2, "output_dir": str(out)}.items()]
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
         "-m", "catchup_mix", "train", "--set", *overrides],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = load_checkpoint(out / "checkpoints" / "last.pt")
    assert len(saved["mixing_generators"]) == 2
    assert not torch.equal(saved["mixing_generators"][0], saved["mixing_generators"][1])
    rows = metrics(out)
    assert len(rows) == 2 and sum(rows[0]["layer_counts"].values()) == 6  # 96 images, 16 per step (8 per process)
    assert json.loads((out / "provenance.json").read_text())["world_size"] == 2


@pytest.mark.slow
@pytest.mark.parametrize(
    "folder, dataset, classes",
    [("cifar10-jpeg", "imagefolder", 10), ("tiny-imagenet-200", "tiny_imagenet", 5)],
)
def test_short_run_on_real_data(tmp_path, shared_data_dir, folder, dataset, classes):
    from catchup_mix.evaluate import evaluate_checkpoint

    config = make_config(dict(
        dataset=dataset, data_root=str(shared_data_dir / folder), num_classes=classes, train_per_class=20,
        test_per_class=10, model="preactresnet18", width=4, method="catchup_mix", epochs=2, batch_size=20,
        lr=0.05, schedule="onecycle", output_dir=str(tmp_path / dataset),
    ))
    summary = train(config)
    rows = metrics(tmp_path / dataset)
    assert all(math.isfinite(row["train_loss"]) for row in rows) and summary["epochs"] == 2
    assert sum(rows[0]["layer_counts"].values()) == classes * 20 // 20
    evaluation = evaluate_checkpoint(str(tmp_path / dataset / "checkpoints" / "last.pt"))
    assert evaluation["n"] == classes * 10 and evaluation["top1"] == pytest.approx(rows[-1]["test_top1"])
    if classes <= 5:  # every label lies among the first 5 classes, so top-5 must be perfect
        assert evaluation["top5"] == 100.0


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    eager = train(tiny(tmp_path, "eager", epochs=1, deterministic=False))
    compiled = train(tiny(tmp_path, "compiled", epochs=1, deterministic=False, compile=True))
    assert compiled["last_nll"] == pytest.approx(eager["last_nll"], rel=1e-3)


def test_eval_every_tests_every_kth_epoch_and_each_of_the_last_ten(tmp_path):
    summary = train(tiny(tmp_path, epochs=14, eval_every=4))
    rows = metrics(tmp_path / "run")
    evaluated = [row["epoch"] for row in rows if "test_top1" in row]
    assert evaluated == [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]
    assert summary["epochs"] == 14 and summary["best_epoch"] in evaluated
    assert summary["best_top1"] == max(row["test_top1"] for row in rows if "test_top1" in row)
