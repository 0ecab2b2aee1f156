"""The evidence artifact: every run measures itself after training, part by part, into its result; a failed
measurement loses no training; the tables answer the three claims from the stored results alone."""

import json
import shutil
from pathlib import Path

import matplotlib.image
import pytest

from catchup_mix import corruptions
from reproduce import artifacts, evidence, evidence_report, runner
from reproduce.__main__ import main as reproduce_main

TINY_TRAINING = dict(epochs=2, batch_size=10, lr=0.05, schedule="onecycle", weight_decay=5e-4, log_every=10**6,
                     device="cpu")
TINY_MEASUREMENTS = {
    "calibration": dict(images=None),
    "fgsm": dict(images=12, eps=(2 / 255, 8 / 255)),
    "pgd": dict(images=6, eps=(8 / 255,), steps=2, step_fraction=0.25),
    "corruptions": dict(images=6, corruptions=("contrast", "fog"), severities=(1, 2, 3, 4, 5)),
    "deformations": dict(images=12, deformations=("rotate+15",)),
    "ood": dict(images=12, sets=("noise_uniform",)),
    "filters": dict(images=12, top_fraction=0.1),
    "reliance": dict(images=12, fractions=(0.0, 0.25, 0.5), draws=2),
    "hessian": dict(images=6, batch=3, iters=2, tol=1e-3, trace_samples=2),
    "blocks": dict(images=12, top_fraction=0.1),
}
TYPES = ("vanilla", "catchup_mix", "catchup_mix random")


@pytest.fixture
def tiny_evidence(monkeypatch):
    """The smoke evidence shrunk to three run types on 3 classes, so it trains and measures in seconds."""
    monkeypatch.setattr(artifacts, "SMOKE_TRAINING", TINY_TRAINING)
    monkeypatch.setattr(artifacts, "SMOKE_SUBSET", dict(num_classes=3, train_per_class=10, test_per_class=8))
    monkeypatch.setattr(artifacts, "SMOKE_WIDTH", {"preactresnet18": 4, "wrn16_8": 1, "resnext29_4_24": 8})
    monkeypatch.setitem(evidence.MEASUREMENTS, "smoke", TINY_MEASUREMENTS)
    every = evidence.run_types()
    monkeypatch.setattr(evidence, "run_types", lambda: {name: every[name] for name in TYPES})


def stored_results(out: Path) -> dict:
    return {path.name.rsplit("-", 1)[0]: json.loads(path.read_text())
            for path in (out / "results" / "evidence" / "smoke").glob("*.json")}


def test_each_run_measures_itself_and_the_tables_answer_the_three_claims(tmp_path, tiny_evidence, capsys):
    assert reproduce_main(["evidence", "--scale", "smoke", "--out", str(tmp_path)]) == 0
    results = stored_results(tmp_path)
    assert set(results) == {"vanilla-seed0", "catchup_mix-seed0", "catchup_mix_random-seed0"}
    measurement = evidence.Measurement(artifacts.Settings("smoke", [0], tmp_path))
    for result in results.values():
        assert measurement.missing(result) == []
        parts = result["measurements"]
        calibration = parts["calibration"][measurement.key("calibration")]
        # the calibration pass repeats the last test pass of training (batches differ: the last bits may too)
        assert calibration["numbers"]["top1"] == result["summary"]["last_top1"]
        assert calibration["numbers"]["ece"] == pytest.approx(result["summary"]["last_ece"], abs=1e-3)
        fgsm = parts["fgsm"][measurement.key("fgsm")]
        assert fgsm["subset"]["images"] == 12 and fgsm["subset"]["classes"] == 3  # balanced over the classes
        assert fgsm["subset"]["per_class"] == [4, 4] and fgsm["settings"]["eps"] == [2 / 255, 8 / 255]
        assert set(fgsm["numbers"]) == {"clean", "2/255", "8/255"} and fgsm["seconds"] > 0
        hessian = parts["hessian"][measurement.key("hessian")]["numbers"]
        assert hessian["eigenvalue_iterations"] <= 2 and hessian["trace_samples"] == 2
        assert hessian["eigenvalue_residual"] >= 0 and hessian["trace_stderr"] >= 0
        reliance = parts["reliance"][measurement.key("reliance")]["numbers"]["3"]
        assert len(reliance["random_draws"][1]) == 2 and reliance["channels_zeroed"][0] == 0
        made = parts["corruptions"][measurement.key("corruptions")]["numbers"]
        assert made["output_fingerprint"] == corruptions.output_fingerprint(32)
        assert made["set_info"]["generator"] == corruptions.generator_fingerprint(32)
        # inside the blocks: every conv's input channels and every BN's scale, statistics over the distinct inputs
        blocks = parts["blocks"][measurement.key("blocks")]["numbers"]
        assert blocks["conv_reads"]["stem"] == "input" and "stem" not in blocks["conv_input_dead"]
        assert len(blocks["conv_input_norms"]["stages.1.0.conv1"]) == 4 and "stages.1.0.shortcut" in blocks["conv_reads"]
        assert set(blocks["bn_scale_gini"]) == set(blocks["bn_scales"]) and all(
            0 <= value <= 1 for value in blocks["conv_input_dead"].values())
        # the probe ran after every epoch: Gini and lagging over the epochs are in the history, inside the blocks too
        assert all("filter_lagging_0.5" in row and "conv_input_dead" in row for row in result["history"])
    markdown = (tmp_path / "tables" / "smoke" / "evidence.md").read_text()
    for heading in ("the key comparisons", "Claim 1, accuracy", "Claim 2a, adversarial", "Claim 2b, corruptions",
                    "Claim 3, mechanism: Gini", "Claim 3, reliance", "Claim 3, flatness", "What the measurements cost"):
        assert heading in markdown
    assert "catchup_mix − catchup_mix random" in markdown
    assert any(line.startswith("| vanilla |") and "| 100.0 |" in line for line in markdown.splitlines())  # its mCE
    assert "Claim 3, inside the blocks: dead conv-input channels" in markdown
    for name in ("evidence", "evidence_robustness", "evidence_probe", "evidence_reliance", "evidence_blocks"):
        assert matplotlib.image.imread(tmp_path / "figures" / "smoke" / f"{name}.png")[..., :3].std() > 0.05

    # tables and figures again from the stored results alone, identical
    before = markdown
    capsys.readouterr()
    assert reproduce_main(["evidence", "--scale", "smoke", "--out", str(tmp_path), "--tables-only"]) == 0
    assert (tmp_path / "tables" / "smoke" / "evidence.md").read_text() == before
    assert "training" not in capsys.readouterr().out


def test_a_failed_measurement_keeps_the_weights_and_the_next_call_measures_only_what_is_missing(
        tmp_path, tiny_evidence, monkeypatch, capsys):
    def broken(*args):
        raise RuntimeError("measurement failed")

    monkeypatch.setitem(evidence.MEASURE, "ood", broken)
    settings = artifacts.Settings("smoke", [0], tmp_path)
    run = next(run for run in artifacts.ARTIFACTS["evidence"].runs(settings) if run.labels["run_type"] == "vanilla")
    with pytest.raises(RuntimeError, match="measurement failed"):
        runner.execute(run, tmp_path, evidence.Measurement(settings))
    result = json.loads(run.result_path(tmp_path).read_text())
    assert (run.run_dir(tmp_path) / "checkpoints" / "last.pt").is_file()  # the training is not lost
    measurement = evidence.Measurement(settings)
    assert measurement.missing(result) == ["ood", "filters", "reliance", "hessian", "blocks"]  # those before: kept

    monkeypatch.undo()
    monkeypatch.setattr(artifacts, "SMOKE_TRAINING", TINY_TRAINING)
    monkeypatch.setattr(artifacts, "SMOKE_SUBSET", dict(num_classes=3, train_per_class=10, test_per_class=8))
    monkeypatch.setattr(artifacts, "SMOKE_WIDTH", {"preactresnet18": 4, "wrn16_8": 1, "resnext29_4_24": 8})
    monkeypatch.setitem(evidence.MEASUREMENTS, "smoke", TINY_MEASUREMENTS)
    done = {}
    for part, measure in evidence.MEASURE.items():
        def counting(measurement, loaded, pixel_model, plan, part=part, measure=measure):
            done[part] = done.get(part, 0) + 1
            return measure(measurement, loaded, pixel_model, plan)

        monkeypatch.setitem(evidence.MEASURE, part, counting)
    import catchup_mix.train

    monkeypatch.setattr(catchup_mix.train, "train", lambda *a, **k: pytest.fail("a trained run was trained again"))
    again = runner.execute(run, tmp_path, evidence.Measurement(settings))
    assert done == {"ood": 1, "filters": 1, "reliance": 1, "hessian": 1, "blocks": 1} and measurement.missing(again) == []


def test_a_result_without_its_run_folder_is_retrained_to_be_measured_and_says_so(tmp_path, tiny_evidence, capsys):
    settings = artifacts.Settings("smoke", [0], tmp_path)
    run = next(run for run in artifacts.ARTIFACTS["evidence"].runs(settings) if run.labels["run_type"] == "vanilla")
    runner.execute(run, tmp_path)  # trained, not measured (as the committed results of an older version)
    first = json.loads(run.result_path(tmp_path).read_text())
    import shutil

    shutil.rmtree(run.run_dir(tmp_path))  # results are committed, run folders are not
    capsys.readouterr()
    result = runner.execute(run, tmp_path, evidence.Measurement(settings))
    assert "result found but no checkpoint, training it again" in capsys.readouterr().out
    entry = result["measurements"]["calibration"][evidence.Measurement(settings).key("calibration")]
    # the measured checkpoint's own provenance: here a new training, later than the stored result's
    assert entry["checkpoint"]["time_utc"] >= first["summary"]["provenance"]["time_utc"]
    assert entry["numbers"]["top1"] == first["summary"]["last_top1"]  # one CPU thread: the same model again


def test_numbers_measured_with_other_settings_are_not_mixed_in(tmp_path, tiny_evidence):
    assert reproduce_main(["evidence", "--scale", "smoke", "--out", str(tmp_path)]) == 0
    settings = artifacts.Settings("smoke", [0], tmp_path)
    result = stored_results(tmp_path)["catchup_mix-seed0"]
    numbers = evidence_report.run_numbers(result, evidence.Measurement(settings))
    assert "fgsm 8/255" in numbers
    changed = {**TINY_MEASUREMENTS, "fgsm": dict(images=6, eps=(8 / 255,))}
    evidence.MEASUREMENTS["smoke"] = changed
    numbers = evidence_report.run_numbers(result, evidence.Measurement(settings))
    assert "fgsm 8/255" not in numbers and "pgd 8/255" in numbers  # only the part whose settings changed


def test_frost_made_from_another_source_stops_before_any_run_is_trained_again(tmp_path, tiny_evidence, monkeypatch):
    assert reproduce_main(["evidence", "--scale", "smoke", "--out", str(tmp_path)]) == 0
    settings = artifacts.Settings("smoke", [0], tmp_path)
    result = stored_results(tmp_path)["vanilla-seed0"]
    stored = next(iter(result["measurements"]["corruptions"].values()))["numbers"]["set_info"]["generator"]
    other = "generated" if stored["frost"] == "photographs" else "photographs"
    made_here = corruptions.generator_fingerprint

    monkeypatch.setattr(corruptions, "output_fingerprint", lambda size, **options: "0123456789ab")
    monkeypatch.setattr(corruptions, "generator_fingerprint", lambda size, **options: {**made_here(size), "frost": other})
    with pytest.raises(RuntimeError, match=f"frost from {stored['frost']}, but here frost would be made from {other}"):
        evidence.Measurement(settings).missing(result)
    shutil.rmtree(tmp_path / "runs")  # as on a fresh machine: nothing is trained, the error comes first
    with pytest.raises(RuntimeError, match="imagecorruptions"):
        reproduce_main(["evidence", "--scale", "smoke", "--out", str(tmp_path)])
    assert not (tmp_path / "runs" / "smoke").exists() or not any((tmp_path / "runs" / "smoke").glob("*/summary.json"))


def test_corruptions_made_differently_are_measured_again_and_never_mixed(tmp_path, tiny_evidence, monkeypatch):
    assert reproduce_main(["evidence", "--scale", "smoke", "--out", str(tmp_path)]) == 0
    settings = artifacts.Settings("smoke", [0], tmp_path)
    results = stored_results(tmp_path)
    assert all(evidence.Measurement(settings).missing(r) == [] for r in results.values())
    monkeypatch.setattr(corruptions, "output_fingerprint", lambda size, **options: "0123456789ab")
    assert all(evidence.Measurement(settings).missing(r) == ["corruptions"] for r in results.values())
    # one run re-measured with the "new" code: the table keeps the majority's images and says whose it left out
    run = next(run for run in artifacts.ARTIFACTS["evidence"].runs(settings) if run.labels["run_type"] == "vanilla")
    runner.execute(run, tmp_path, evidence.Measurement(settings))
    assert reproduce_main(["evidence", "--scale", "smoke", "--out", str(tmp_path), "--tables-only"]) == 0
    markdown = (tmp_path / "tables" / "smoke" / "evidence.md").read_text()
    assert "images were made by code that corrupts differently from most runs' (run the command again to measure " \
           "them on today's): vanilla seed 0." in markdown


def test_paired_differences_mce_and_their_intervals():
    numbers = {"vanilla": {0: {"corruption errors": {"fog": [10, 20], "contrast": [30, 30]}},
                           1: {"corruption errors": {"fog": [10, 10], "contrast": [20, 20]}}},
               "catchup_mix": {0: {"corruption errors": {"fog": [15, 15], "contrast": [30, 60]}, "top1": 80.0},
                               1: {"corruption errors": {"fog": [5, 5], "contrast": [20, 20]}, "top1": 81.0}},
               "cutmix": {0: {"top1": 79.0}, 1: {"top1": 79.5}, 2: {"top1": 70.0}}}
    evidence_report.add_mce(numbers)
    assert numbers["vanilla"][0]["mce"] == 100
    assert numbers["catchup_mix"][0]["mce"] == pytest.approx(100 * (1.0 + 1.5) / 2)
    assert numbers["catchup_mix"][1]["mce"] == pytest.approx(100 * (0.5 + 1.0) / 2)
    # paired over the seeds both have: seed 2 of cutmix has no partner
    assert evidence_report.paired_differences(numbers, "catchup_mix", "cutmix", "top1") == [1.0, 1.5]
    cell = evidence_report.paired_cell([1.0, 1.5])
    mean, low, high = evidence_report.t_interval([1.0, 1.5])
    assert mean == 1.25 and low < 0 < high and "not resolved" in cell and "(n=2)" in cell
    assert "not resolved" not in evidence_report.paired_cell([1.0, 1.2, 1.1, 0.9])
    assert evidence_report.paired_cell([]) == "—" and "(1 seed)" in evidence_report.paired_cell([0.5])
    # the same difference on every seed has no spread: no interval, and no claim that it is resolved
    assert evidence_report.paired_cell([-0.16, -0.16]) == "-0.16 on every seed, no spread to judge by (n=2)"


def test_medium_plan_follows_the_order_of_the_issue():
    runs = evidence.plan_evidence(artifacts.Settings("medium", list(range(10)), Path(".")), {})
    order = [(run.labels["run_type"], run.seed) for run in runs]
    core = [(label, seed) for seed in range(3) for label in evidence.CORE]
    assert order[:15] == core  # the 15 core runs first, seed by seed
    assert order[15:29] == [(label, seed) for seed in range(3, 10) for label in ("catchup_mix", "catchup_mix random")]
    assert order[29:31] == [("catchup_mix high", 3), ("catchup_mix high", 4)]
    baselines = order[31:]
    assert {label for label, _ in baselines} == {label for label in evidence.run_types() if label not in evidence.CORE}
    assert {seed for _, seed in baselines} == {0, 1, 2}
    assert all(run.config["filter_probe"] == 500 for run in runs)
    just_three = evidence.plan_evidence(artifacts.Settings("medium", [0, 1, 2], Path(".")), {})
    assert len(just_three) == 15 + 3 * len(baselines) // 3


def test_medium_wd_plan_is_the_selection_ablation_at_its_own_weight_decay():
    runs = evidence.plan_evidence(artifacts.Settings("medium_wd", list(range(10)), Path(".")), {})
    order = [(run.labels["run_type"], run.seed) for run in runs]
    first = (*evidence.SELECTIONS, "catchup_mix next_conv_input")
    assert order[:25] == [(label, seed) for seed in range(5) for label in first]
    assert order[25:] == [(label, seed) for seed in range(5, 10) for label in ("catchup_mix", "catchup_mix random")]
    assert runs[4].config["method_options"] == {"rank_by": "next_conv_input"}
    assert {run.config["weight_decay"] for run in runs} == {evidence.MEDIUM_WD_TRAINING["weight_decay"]}
    medium = evidence.plan_evidence(artifacts.Settings("medium", list(range(10)), Path(".")), {})
    # the same protocol but the weight decay, and never one of the medium runs
    assert {k: v for k, v in runs[0].config.items() if k != "weight_decay"} == \
        {k: v for k, v in medium[0].config.items() if k != "weight_decay"}
    assert not {run.key for run in runs} & {run.key for run in medium}
    assert set(evidence.MEASUREMENTS["medium_wd"]) == set(evidence.MEASUREMENTS["medium"]) | {"blocks"}


def test_run_types_restrict_what_is_trained_not_what_is_compared(tmp_path, tiny_evidence, capsys):
    assert reproduce_main(["evidence", "--scale", "smoke", "--out", str(tmp_path), "--run-types", "vanilla",
                           "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "# evidence at smoke scale: 1 runs" in printed and "# vanilla-seed0 [" in printed
    assert "catchup_mix-seed0 [" not in printed and "2 runs of the other run types, 0 of them stored" in printed
    assert reproduce_main(["evidence", "--scale", "smoke", "--out", str(tmp_path), "--run-types", "nosuch"]) == 2
    assert "unknown run type(s) ['nosuch']" in capsys.readouterr().err
    assert reproduce_main(["table1", "--out", str(tmp_path), "--run-types", "vanilla", "--dry-run"]) == 2


def test_a_newly_registered_method_trains_alone_and_is_compared_with_the_stored_runs(tmp_path, tiny_evidence, capsys,
                                                                                     monkeypatch):
    """Issue 29: paired by seed and found by their config hash, the stored runs need no training again; only the
    new method's runs train, and the tables gain its row and its paired differences."""
    import dataclasses

    from catchup_mix import methods

    assert reproduce_main(["evidence", "--scale", "smoke", "--out", str(tmp_path)]) == 0
    stored = {path: path.stat().st_mtime_ns for path in (tmp_path / "results" / "evidence" / "smoke").glob("*.json")}
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))

    @methods.register("flip_mix")
    @dataclasses.dataclass(kw_only=True)
    class FlipMix(methods.Method):
        def mix(self, inputs, targets, generator, model):
            perm = methods.draw_partners(len(inputs), generator)
            lam = methods.draw_beta(1.0, generator)
            return methods.MixedBatch(lam * inputs + (1 - lam) * inputs[perm].flip(-1), targets, targets[perm], lam, 0)

    every = {**evidence.run_types(), "flip_mix": ("flip_mix", {})}
    monkeypatch.setattr(evidence, "run_types", lambda: every)
    capsys.readouterr()
    assert reproduce_main(["evidence", "--scale", "smoke", "--out", str(tmp_path), "--run-types", "flip_mix",
                           "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "# evidence at smoke scale: 1 runs" in printed and "3 runs of the other run types, 3 of them stored" in printed
    assert reproduce_main(["evidence", "--scale", "smoke", "--out", str(tmp_path), "--run-types", "flip_mix"]) == 0
    printed = capsys.readouterr().out
    assert "run 1 of 1: flip_mix-seed0 (training)" in printed and "4 of 4 runs done" in printed
    assert {path: path.stat().st_mtime_ns for path in stored} == stored  # the stored runs: untouched
    markdown = (tmp_path / "tables" / "smoke" / "evidence.md").read_text()
    assert any(line.startswith("| flip_mix |") for line in markdown.splitlines())
    assert "| catchup_mix − flip_mix |" in markdown


@pytest.mark.parametrize("scale", ["medium", "medium_wd"])
def test_the_committed_tables_and_summary_figure_are_what_the_committed_results_give(tmp_path, scale):
    """tables/[scale/]evidence.md is made by script from results/ alone: rendering it again changes no byte, and
    the summary figure is drawn (the README's findings quote these tables, tests/test_readme.py)."""
    repository = Path(__file__).resolve().parent.parent
    stored = repository / "results" / "evidence" / scale
    if not any(stored.glob("*.json")):
        pytest.skip(f"no committed {scale} result yet")
    shutil.copytree(stored, tmp_path / "results" / "evidence" / scale)
    assert reproduce_main(["evidence", "--scale", scale, "--tables-only", "--out", str(tmp_path)]) == 0
    folder = "" if scale == "medium" else scale
    for name in ("evidence.md", "evidence.tex"):
        assert (tmp_path / "tables" / folder / name).read_text() == (repository / "tables" / folder / name).read_text()
    assert matplotlib.image.imread(tmp_path / "figures" / folder / "evidence_summary.png")[..., :3].std() > 0.05
