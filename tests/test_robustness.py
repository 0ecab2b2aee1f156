"""Attacks against captum's, deformations, OOD metrics on hand-made scores, the suite, the CLI and the
robustness artifact."""

import contextlib
import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.robust import FGSM, PGD

from catchup_mix import corruptions, data, methods, models
from catchup_mix.__main__ import main as cli
from catchup_mix.config import make_config
from catchup_mix.evaluate import evaluate, evaluate_checkpoint
from catchup_mix.robustness import (
    DEFORMATIONS,
    Normalized,
    SuiteSettings,
    deform,
    energy_score,
    eps_label,
    fgsm,
    msp_score,
    noise_images,
    ood_metrics,
    ood_sets,
    pgd,
    run_suite,
)
from catchup_mix.train import train
from reproduce.__main__ import main as reproduce_main

MEAN, STD = (0.5, 0.45, 0.4), (0.25, 0.24, 0.26)


@pytest.fixture(scope="module")
def pixel_model():
    torch.manual_seed(0)
    return Normalized(models.build("preactresnet18", 5, width=4), MEAN, STD).eval()


@pytest.fixture(scope="module")
def batch():
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 32, 32, generator=generator)
    x[0, 0, :4] = 0.0  # values on both bounds, where the clip to [0, 1] matters
    x[1, 1, :4] = 1.0
    return x, torch.randint(0, 5, (6,), generator=generator)


def summed_cross_entropy(logits, labels):
    return F.cross_entropy(logits, labels, reduction="none")  # captum sums the per-sample losses


@pytest.mark.parametrize("eps", [4 / 255, 8 / 255])
def test_fgsm_equals_captums(pixel_model, batch, eps):
    x, y = batch
    attack = FGSM(pixel_model, summed_cross_entropy, lower_bound=0.0, upper_bound=1.0)
    attack.zero_thresh = 0.0  # captum leaves |gradient| <= 1e-6 unperturbed by default; FGSM itself does not
    assert torch.equal(fgsm(pixel_model, x, y, eps), attack.perturb(x, eps, y))


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_equals_captums(pixel_model, batch, random_start):
    x, y = batch
    attack = PGD(pixel_model, summed_cross_entropy, lower_bound=0.0, upper_bound=1.0)
    attack.fgsm.zero_thresh = 0.0
    torch.manual_seed(3)  # captum draws its start from torch's global generator; ours from the one we pass
    expected = attack.perturb(x, radius=4 / 255, step_size=2 / 255, step_num=5, target=y, random_start=random_start)
    ours = pgd(pixel_model, x, y, 4 / 255, 2 / 255, 5, random_start=random_start,
               generator=torch.Generator().manual_seed(3))
    assert torch.equal(ours, expected)


def test_attacks_stay_in_the_ball_and_the_image_range_and_raise_the_loss(pixel_model, batch):
    x, y = batch
    assert torch.equal(fgsm(pixel_model, x, y, 0.0), x)
    assert torch.equal(pgd(pixel_model, x, y, 0.0, 2 / 255, 5), x)
    with torch.no_grad():
        clean_loss = F.cross_entropy(pixel_model(x), y)
    for eps in (4 / 255, 8 / 255):
        for adversarial in (fgsm(pixel_model, x, y, eps), pgd(pixel_model, x, y, eps, 2 / 255, 10)):
            assert (adversarial - x).abs().max() <= eps + 1e-6
            assert adversarial.min() >= 0 and adversarial.max() <= 1
            with torch.no_grad():
                assert F.cross_entropy(pixel_model(adversarial), y) >= clean_loss


def test_attacks_run_in_eval_mode_restore_modes_and_leave_no_gradient(batch):
    x, y = batch
    network = models.build("preactresnet18", 5, width=4)
    network.train()
    frozen = next(m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d))
    frozen.eval()  # a model in mixed modes gets exactly its modes back
    modes = {name: m.training for name, m in network.named_modules()}
    seen = []
    network.register_forward_pre_hook(lambda module, inputs: seen.append(module.training))
    statistics = {k: v.clone() for k, v in network.state_dict().items()}
    pixel_model = Normalized(network, MEAN, STD)
    fgsm(pixel_model, x, y, 8 / 255)
    pgd(pixel_model, x, y, 8 / 255, 2 / 255, 3)
    assert seen and not any(seen)  # every forward pass in eval mode
    assert {name: m.training for name, m in network.named_modules()} == modes
    assert all(p.grad is None for p in network.parameters())
    assert all(torch.equal(v, network.state_dict()[k]) for k, v in statistics.items())  # BN statistics untouched


def test_normalized_model_and_input_checks(pixel_model, batch):
    x, y = batch
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(pixel_model(x), pixel_model.model((x - mean) / std))
    with pytest.raises(ValueError, match="Normalized"):
        fgsm(pixel_model, (x - mean) / std, y, 8 / 255)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        pgd(pixel_model, x, y, -1.0, 2 / 255, 3)
    assert eps_label(4 / 255) == "4/255" and eps_label(0.01) == "0.01"


def test_deformations_fill_the_outside_black_and_keep_the_inside():
    white = torch.ones(2, 3, 32, 32)
    for name in DEFORMATIONS:
        out = deform(white, name)
        assert out.shape == white.shape
        assert torch.allclose(out[..., 12:20, 12:20], torch.ones(1))  # the centre stays
        if name != "zoom_in_1.25":  # everything else uncovers some outside, filled with 0 as the training pad
            assert out.min() == 0.0
    assert torch.allclose(deform(white, "zoom_in_1.25"), white)
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    ramp = ((ys + 2 * xs) / 93)[None, None]  # bilinear resampling is exact on a linear ramp
    rotated = deform(deform(ramp, "rotate+30"), "rotate-30")
    assert (rotated[..., 10:22, 10:22] - ramp[..., 10:22, 10:22]).abs().max() < 0.01  # back where it was
    assert (deform(ramp, "rotate+30") - ramp)[..., 10:22, 10:22].abs().max() > 0.05
    with pytest.raises(ValueError, match="available: rotate-30"):
        deform(ramp, "twirl")


def test_ood_metrics_on_hand_made_scores():
    perfect = ood_metrics([0.9, 0.8, 0.7], [0.1, 0.2])
    assert perfect == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}
    same = ood_metrics([0.5] * 4, [0.5] * 6)
    assert same["auroc"] == 0.5 and same["fpr95"] == 1.0
    assert same["aupr_in"] == pytest.approx(0.4) and same["aupr_out"] == pytest.approx(0.6)  # base rates
    assert ood_metrics([0.1, 0.2], [0.8, 0.9])["auroc"] == 0.0
    # in-distribution scores 1..100: 95% of them are >= 6, so OOD scores 5.5, 6, 6.5, 7 give FPR 3/4
    assert ood_metrics(np.arange(1, 101), [5.5, 6, 6.5, 7])["fpr95"] == 0.75
    # ranked in 3, out 2, in 1: precision 1 at recall 1/2, then 2/3 at recall 1 -> AP = 1/2 + 1/3
    assert ood_metrics([3, 1], [2])["aupr_in"] == pytest.approx(5 / 6)
    assert ood_metrics([3, 1], [2])["auroc"] == 0.5
    with pytest.raises(ValueError, match="at least one"):
        ood_metrics([], [1.0])


def test_scores_and_noise_sets():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(msp_score(logits), torch.tensor([0.25, 1 / (1 + 3 * np.exp(-10.0))], dtype=torch.float32))
    assert torch.allclose(energy_score(logits), torch.logsumexp(logits, 1))
    gaussian = noise_images("noise_gaussian", 64, 32, seed=5)
    assert gaussian.dtype == torch.uint8 and gaussian.shape == (64, 3, 32, 32)
    assert torch.equal(gaussian, noise_images("noise_gaussian", 64, 32, seed=5))
    assert (gaussian.float() / 255).mean().item() == pytest.approx(0.5, abs=0.01)
    assert (gaussian.float() / 255).std().item() == pytest.approx(0.25, abs=0.02)  # a little clipped
    uniform = noise_images("noise_uniform", 64, 32).float() / 255
    assert uniform.std().item() == pytest.approx((1 / 12) ** 0.5, abs=0.01)


def test_ood_sets_offline(tmp_path):
    from PIL import Image

    config = make_config({"dataset": "synthetic", "num_classes": 3, "test_per_class": 4})
    sets = ood_sets(None, config, 32, count=50)
    assert set(sets) == {"noise_gaussian", "noise_uniform", "unseen_classes"}  # no data folder: no CIFAR
    unseen = sets["unseen_classes"]
    classes_3_to_5 = data.load("synthetic", num_classes=6, train_per_class=1, test_per_class=4).test
    assert torch.equal(unseen, classes_3_to_5.images[classes_3_to_5.labels >= 3])
    for i, size in enumerate((20, 48, 48)):
        Image.fromarray(np.full((size, size, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    folder = ood_sets([str(tmp_path)], config, 32, count=50)[f"folder:{tmp_path.name}"]
    assert folder.shape == (3, 3, 32, 32) and folder[2].float().mean() == pytest.approx(80, abs=1)
    with pytest.raises(ValueError, match="neither a known OOD set"):
        ood_sets(["cifar11"], config, 32, count=5)
    with pytest.raises(ValueError, match="'cifar10' is not available"):
        ood_sets(["cifar10"], config, 32, count=5)


def test_real_data_corruptions_and_ood_sets(shared_data_dir, tmp_path):
    tiny = data.load("tiny_imagenet", shared_data_dir, num_classes=2, train_per_class=1, test_per_class=3)
    images = tiny.test.images.permute(0, 2, 3, 1).numpy()  # 64 x 64: the Tiny-ImageNet-C constants
    corruptions.write_set(images, tiny.test.labels.numpy(), tmp_path, ["frost", "motion_blur"], progress=False)
    loaded, labels = corruptions.load_set(tmp_path, "frost", expected_labels=tiny.test.labels, image_size=64)
    assert loaded.shape == (5, 6, 64, 64, 3) and labels.tolist() == tiny.test.labels.tolist()
    config = make_config({"dataset": "synthetic", "num_classes": 3, "test_per_class": 4})
    sets = ood_sets(["tiny_imagenet"], config, 32, count=20, data_root=str(shared_data_dir))
    assert sets["tiny_imagenet"].shape == (20, 3, 32, 32)  # 20 val images of 20 classes, resized


def test_long_parts_say_how_far_they_have_come_in_a_log(tmp_path, capsys, monkeypatch):
    """Issue 30: without a terminal, PGD and the corruptions were silent for minutes; now a line every
    PROGRESS_EVERY_S seconds (0 here: after every batch but the last)."""
    import catchup_mix.robustness

    monkeypatch.setattr(catchup_mix.robustness, "PROGRESS_EVERY_S", 0)
    dataset = data.load("synthetic", num_classes=3, train_per_class=1, test_per_class=4)
    network = models.build("preactresnet18", 3, width=4).eval()
    images = dataset.test.images.permute(0, 2, 3, 1).numpy()
    corruptions.write_set(images, dataset.test.labels.numpy(), tmp_path, ["contrast", "fog"], progress=False)
    settings = SuiteSettings(pgd_steps=2, pgd_eps=(8 / 255,), corruption_names=("contrast", "fog"),
                             severities=(1, 2), batch_size=5)
    config = make_config({"dataset": "synthetic", "num_classes": 3, "test_per_class": 4})
    run_suite(network, dataset, config, ["pgd", "corruptions"], settings, corruptions_dir=tmp_path, progress=True)
    printed = capsys.readouterr().out.splitlines()
    assert "PGD-2 8/255: 5 of 12 images" in printed and "PGD-2 8/255: 10 of 12 images" in printed
    assert "corruptions: 3 of 4 sets (corruption x severity)" in printed
    run_suite(network, dataset, config, ["pgd"], settings, corruptions_dir=tmp_path, progress=False)
    assert capsys.readouterr().out == ""  # progress off: nothing
    # the OOD sets chosen automatically: which run, and which are skipped and why, before the work
    run_suite(network, dataset, config, ["ood"], settings, progress=True)
    said = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("OOD sets: "))
    assert said.startswith("OOD sets: noise_gaussian, noise_uniform, unseen_classes; skipped cifar10 (")
    assert "skipped tiny_imagenet (" in said and "--ood-root DIR" in said


def test_suite_on_a_small_model_agrees_with_the_clean_evaluation(tmp_path):
    dataset = data.load("synthetic", num_classes=3, train_per_class=1, test_per_class=4)
    config = make_config({"dataset": "synthetic", "num_classes": 3, "test_per_class": 4})
    torch.manual_seed(0)
    network = models.build("preactresnet18", 3, width=4).eval()
    images = dataset.test.images.permute(0, 2, 3, 1).numpy()
    corruptions.write_set(images, dataset.test.labels.numpy(), tmp_path, ["contrast", "fog"], progress=False)
    settings = SuiteSettings(pgd_steps=2, corruption_names=("contrast", "fog"), deformations=("rotate+15",),
                             ood=("noise_uniform",), batch_size=5)
    result = run_suite(network, dataset, config, ["clean", "fgsm", "pgd", "corruptions", "deformations", "ood"],
                       settings, corruptions_dir=tmp_path)
    loader = data.BatchLoader(dataset.test, 5, mean=dataset.mean, std=dataset.std, train=False, crop_size=32)
    clean = evaluate(network, loader, torch.device("cpu"), contextlib.nullcontext)
    assert result["clean"]["top1"] == clean["top1"] and result["clean"]["nll"] == pytest.approx(clean["nll"], 1e-4)
    assert sum(b["count"] for b in result["clean"]["reliability"]) == 12
    assert set(result["fgsm"]) == {"4/255", "8/255"} and set(result["pgd"]) == {"4/255", "8/255"}
    part = result["corruptions"]
    assert part["source"] == "generated" and set(part["per_corruption"]) == {"contrast", "fog"}
    assert part["mean"] == pytest.approx(np.mean([row["mean"] for row in part["per_corruption"].values()]))
    assert set(result["deformations"]) == {"rotate+15", "mean"}
    assert set(result["ood"]) == {"noise_uniform", "mean"} and result["ood"]["noise_uniform"]["n"] == 12
    numbers = [result["clean"]["top1"], *result["fgsm"].values(), *result["pgd"].values(), part["mean"]]
    assert all(0 <= v <= 100 for v in numbers)
    with pytest.raises(corruptions.CorruptionSetError, match="--corruptions-dir"):
        run_suite(network, dataset, config, ["corruptions"], settings)
    with pytest.raises(ValueError, match="unknown suite fog"):
        run_suite(network, dataset, config, ["clean", "fog"], settings)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    train(make_config(dict(dataset="synthetic", num_classes=3, train_per_class=8, test_per_class=4, width=4,
                           epochs=1, batch_size=8, log_every=10**6, output_dir=str(folder), device="cpu")))
    return folder / "checkpoints" / "last.pt"


def test_evaluate_suite_command_writes_every_number_beside_the_checkpoint(checkpoint, tmp_path, capsys):
    corrupted = tmp_path / "c"
    assert cli(["corrupt", "--dataset", "synthetic", "--num-classes", "3", "--test-per-class", "4", "--out",
                str(corrupted), "--corruptions", *corruptions.CORRUPTIONS[:2]]) == 0
    assert "wrote 2 corruptions" in capsys.readouterr().out
    # a set with 2 of the 15 corruptions: measured on what is there, the rest named with the command that makes it
    out = tmp_path / "numbers.json"
    assert cli(["evaluate", "--checkpoint", str(checkpoint), "--suite", "corruptions", "--corruptions-dir",
                str(corrupted), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "lacks 13 of the 15" in printed and "--corruptions impulse_noise" in printed
    stored = json.loads(out.read_text())["parts"]["corruptions"]
    (entry,) = stored.values()
    assert set(entry["numbers"]["per_corruption"]) == set(corruptions.CORRUPTIONS[:2])
    assert cli(["evaluate", "--checkpoint", str(checkpoint), "--suite", "clean,fgsm,deformations,ood",
                "--max-images", "6"]) == 0
    printed = capsys.readouterr().out
    assert "FGSM 8/255" in printed and "OOD unseen_classes" in printed and "6 test images" in printed
    written = json.loads(checkpoint.with_suffix(".robustness.json").read_text())
    assert set(written["parts"]) == {"clean", "fgsm", "deformations", "ood"} and written["method"] == "vanilla"
    clean = next(iter(written["parts"]["clean"].values()))
    assert clean["subset"]["images"] == 6 and clean["subset"]["classes"] == 3 and clean["subset"]["per_class"] == [2, 2]
    assert clean["provenance"]["commit"] and clean["settings"]["max_images"] == 6
    assert not list(checkpoint.parent.glob(".*.tmp"))  # written atomically


def test_evaluate_suite_merges_parts_and_a_rerun_continues(checkpoint, tmp_path, capsys, monkeypatch):
    out = tmp_path / "kept.json"
    base = ["evaluate", "--checkpoint", str(checkpoint), "--out", str(out), "--max-images", "6"]
    assert cli([*base, "--suite", "clean,fgsm", "--eps", "2/255", "4/255"]) == 0
    first = json.loads(out.read_text())["parts"]
    assert set(next(iter(first["fgsm"].values()))["numbers"]) == {"2/255", "4/255"}
    # another part, and the same part with other settings: neither removes what was there
    assert cli([*base, "--suite", "pgd", "--steps", "2"]) == 0
    assert cli([*base, "--suite", "fgsm"]) == 0
    stored = json.loads(out.read_text())["parts"]
    assert set(stored) == {"clean", "fgsm", "pgd"} and len(stored["fgsm"]) == 2
    assert stored["clean"] == first["clean"]
    # a rerun with the same settings measures nothing again, unless asked
    capsys.readouterr()
    import catchup_mix.robustness

    monkeypatch.setattr(catchup_mix.robustness, "run_suite", lambda *a, **k: pytest.fail("measured again"))
    assert cli([*base, "--suite", "clean,fgsm", "--eps", "2/255", "4/255"]) == 0
    assert "kept: clean, fgsm" in capsys.readouterr().out


def test_a_run_trained_further_is_measured_anew_and_the_old_numbers_kept_apart(tmp_path, capsys):
    """Issue 30: after `train --resume --extend`, `evaluate --suite` reprinted the earlier epoch's numbers."""
    folder = tmp_path / "run"
    values = dict(dataset="synthetic", num_classes=3, train_per_class=8, test_per_class=8, width=4, epochs=1,
                  batch_size=8, log_every=10**6, output_dir=str(folder), device="cpu")
    train(make_config(values))
    checkpoint = folder / "checkpoints" / "last.pt"
    suite = ["evaluate", "--checkpoint", str(checkpoint), "--suite", "clean"]
    assert cli(suite) == 0
    first = json.loads(checkpoint.with_suffix(".robustness.json").read_text())
    train(make_config({**values, "epochs": 3}), resume=True, extend=True)
    capsys.readouterr()
    assert cli(suite) == 0
    printed = capsys.readouterr().out
    assert "measured on other weights (epoch 1" in printed and "kept:" not in printed
    kept = json.loads(checkpoint.with_suffix(".robustness.json").read_text())
    (entry,) = kept["parts"]["clean"].values()
    plain = evaluate_checkpoint(checkpoint, out=tmp_path / "plain.json")
    assert entry["checkpoint"]["epoch"] == 3 == kept["epoch"] and entry["numbers"]["top1"] == plain["top1"]
    assert entry["checkpoint"]["weights"] == plain["weights"] != next(iter(first["parts"]["clean"].values()))[
        "checkpoint"]["weights"]
    (replaced,) = kept["replaced"]  # the epoch-1 numbers, apart, never shown as the new model's
    assert replaced["part"] == "clean" and replaced["checkpoint"]["epoch"] == 1
    assert f"top-1 {plain['top1']:6.2f}" in printed
    # the same weights again: kept, not measured twice
    assert cli(suite) == 0 and "kept: clean" in capsys.readouterr().out


def test_an_interrupted_suite_keeps_the_parts_that_finished(checkpoint, tmp_path, capsys, monkeypatch):
    import catchup_mix.robustness

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(catchup_mix.robustness, "fgsm_accuracies", interrupted)
    out = tmp_path / "kept.json"
    assert cli(["evaluate", "--checkpoint", str(checkpoint), "--out", str(out), "--suite", "clean,fgsm"]) == 130
    error = capsys.readouterr().err
    assert "interrupted" in error and "run the same command again" in error and "Traceback" not in error
    assert f"kept in {out};" in error  # the file named
    assert set(json.loads(out.read_text())["parts"]) == {"clean"}


def test_an_output_folder_that_cannot_be_written_stops_before_any_work(checkpoint, tmp_path, capsys, monkeypatch):
    import catchup_mix.evaluate

    monkeypatch.setattr(catchup_mix.evaluate, "load_run", lambda *a, **k: pytest.fail("work started"))
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder should be")
    for suite in (["--suite", "clean"], []):
        assert cli(["evaluate", "--checkpoint", str(checkpoint), "--out", str(blocked / "x.json"), *suite]) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: cannot write to") and "--out" in error and "Traceback" not in error


@pytest.mark.parametrize("arguments, message", [
    (["--max-images", "5"], "--max-images does nothing in plain evaluate"),
    (["--batch-size", "5", "--eps", "8/255"], "--batch-size, --eps do nothing in plain evaluate"),
    (["--suite", "clean", "--ood", "noise_uniform"], "--ood is for the ood part of the suite"),
    (["--suite", "clean,ood", "--eps", "8/255"], "--eps is for the fgsm or pgd part"),
    (["--suite", "fgsm", "--severity", "3"], "--severity is for the corruptions part"),
    (["--suite", "fgsm", "--eps", "8"], "outside [0, 1]"),
    (["--suite", "fgsm", "--eps", "big"], "is not a number"),
])
def test_evaluate_refuses_options_that_would_do_nothing(checkpoint, capsys, arguments, message):
    assert cli(["evaluate", "--checkpoint", str(checkpoint), *arguments]) == 2
    assert message in capsys.readouterr().err


def test_corrupt_says_what_it_did(tmp_path, capsys):
    target = tmp_path / "c"
    arguments = ["corrupt", "--dataset", "synthetic", "--num-classes", "2", "--test-per-class", "2", "--corruptions",
                 "fog", "contrast"]
    assert cli([*arguments, "--out", str(target)]) == 0
    assert "wrote 2 corruptions" in capsys.readouterr().out
    assert cli([*arguments, "--out", str(target)]) == 0
    assert "already complete" in capsys.readouterr().out
    (tmp_path / "file").write_text("")
    assert cli([*arguments, "--out", str(tmp_path / "file")]) == 2
    assert "is an existing file, not a folder" in capsys.readouterr().err


def test_evaluate_hints_name_its_own_flags(checkpoint, tmp_path, capsys):
    saved = torch.load(checkpoint, weights_only=True)
    saved["config"] = {**saved["config"], "dataset": "cifar10", "data_root": str(tmp_path / "nowhere")}
    moved = tmp_path / "moved.pt"
    torch.save(saved, moved)
    assert cli(["evaluate", "--checkpoint", str(moved)]) == 2
    error = capsys.readouterr().err
    assert "--set" not in error and "cifar10 not found" in error


@pytest.mark.parametrize("arguments, message", [
    (["--suite", "clean,rain"], "unknown suite rain; choose from clean, fgsm, pgd"),
    (["--suite", "pgd,corruptions"], "--corruptions-dir DIR"),
    (["--suite", "ood", "--ood", "cifar11"], "neither a known OOD set"),
    (["--suite", "fgsm", "--eps", "8/0"], "--eps '8/0' is not a number"),
    (["--suite", "fgsm", "--eps", "nan"], "--eps 'nan' is not a number"),
])
def test_evaluate_suite_errors_exit_2_with_the_fix(checkpoint, capsys, arguments, message):
    assert cli(["evaluate", "--checkpoint", str(checkpoint), *arguments]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_robustness_artifact_measures_table1_runs_once_and_renders(tmp_path, monkeypatch):
    from reproduce import artifacts
    from reproduce import robustness as artifact

    monkeypatch.setattr(artifacts, "SMOKE_TRAINING", dict(epochs=1, batch_size=10, lr=0.05, schedule="onecycle",
                                                          weight_decay=5e-4, log_every=10**6, device="cpu"))
    monkeypatch.setattr(artifacts, "SMOKE_SUBSET", dict(num_classes=2, train_per_class=10, test_per_class=5))
    monkeypatch.setattr(artifacts, "SMOKE_WIDTH", {"preactresnet18": 4, "wrn16_8": 1, "resnext29_4_24": 8})
    monkeypatch.setattr(artifact, "SMOKE_SUITE", SuiteSettings(pgd_steps=2, batch_size=10))
    settings = artifacts.Settings("smoke", [0], tmp_path)
    planned = artifacts.ARTIFACTS["robustness"].plan(settings)
    assert {run.key for run in planned} == {run.key for run in artifacts.plan_table1(settings)
                                            if run.labels["section"] == "preactresnet18"}
    assert reproduce_main(["robustness", "--scale", "smoke", "--out", str(tmp_path)]) == 0
    cached = sorted((tmp_path / "results" / "robustness" / "smoke").glob("preactresnet18-*.json"))
    assert len(cached) == len(methods.available())
    markdown = (tmp_path / "tables" / "smoke" / "robustness.md").read_text()
    for method in methods.available():
        measured = next(json.loads(p.read_text()) for p in cached if f"-{method}-seed0-" in p.name)
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {method} |"))
        assert f"{measured['clean']['top1']:.2f}" in row and f"{measured['pgd']['8/255']:.2f}" in row
    assert "a set generated by catchup_mix.corruptions" in markdown and "PGD-2" in markdown
    assert "gaussian_noise" in markdown and "noise_uniform" in markdown
    assert matplotlib.image.imread(tmp_path / "figures" / "smoke" / "robustness.png")[..., :3].std() > 0.05

    import catchup_mix.robustness

    monkeypatch.setattr(catchup_mix.robustness, "run_suite", lambda *a, **k: pytest.fail("measured twice"))
    (next((tmp_path / "results" / "robustness" / "smoke").glob("measurement-*"))).unlink()
    assert reproduce_main(["robustness", "--scale", "smoke", "--out", str(tmp_path)]) == 0  # from the cache


def test_messages_point_the_right_way_and_a_refused_start_leaves_nothing(checkpoint, tmp_path, capsys):
    """Issue 30: a folder that exists but cannot be written was "No such file or directory"; a config.json given
    as --checkpoint dumped torch's weights_only text and advised deleting it; a missing dataset left empty
    output folders behind (train's output_dir, corrupt's --out)."""
    if Path("/proc/sys").is_dir():
        assert cli(["evaluate", "--checkpoint", str(checkpoint), "--out", "/proc/sys/x.json"]) == 2
        error = capsys.readouterr().err
        assert "the folder exists, but no file can be created in it" in error and "No such file" not in error.split(":")[1]
    config = checkpoint.parent.parent / "config.json"
    assert cli(["evaluate", "--checkpoint", str(config)]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "weights_only" not in error and "delete" not in error
    assert "point at a run's checkpoints/last.pt or best.pt" in error
    missing = tmp_path / "no-data"
    with pytest.raises(data.DatasetNotFoundError):
        train(make_config(dict(dataset="cifar10", data_root=str(missing), output_dir=str(tmp_path / "a" / "run"))))
    assert cli(["corrupt", "--dataset", "cifar10", "--data-root", str(missing), "--out", str(tmp_path / "c" / "d")]) == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()
    assert reproduce_main(["table1", "--data-root", str(missing), "--out", str(tmp_path / "r"), "--workers", "1"]) == 2
    assert not (tmp_path / "r" / "runs").exists() or not list((tmp_path / "r" / "runs").rglob("*"))
