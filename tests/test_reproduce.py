"""The reproduction harness: plans, caching and locking of runs, tables with provenance, the CLI."""

import dataclasses
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import matplotlib.image
import pytest

from catchup_mix import methods
from reproduce import artifacts, report, runner
from reproduce.__main__ import main as reproduce_main
from reproduce.artifacts import ARTIFACTS, Settings
from reproduce.local import worker_order
from reproduce.runner import Run

REPOSITORY = Path(__file__).resolve().parent.parent
TINY_TRAINING = dict(epochs=2, batch_size=10, lr=0.05, schedule="onecycle", weight_decay=5e-4, log_every=10**6)
TINY_SUBSET = dict(num_classes=2, train_per_class=10, test_per_class=5)


@pytest.fixture
def tiny_smoke(monkeypatch):
    """Smoke scale shrunk further, so an artifact trains in seconds."""
    monkeypatch.setattr(artifacts, "SMOKE_TRAINING", TINY_TRAINING)
    monkeypatch.setattr(artifacts, "SMOKE_SUBSET", TINY_SUBSET)
    monkeypatch.setattr(artifacts, "SMOKE_WIDTH", {"preactresnet18": 4, "wrn16_8": 1, "resnext29_4_24": 8})


def tiny_run(seed=0, **changes):
    config = {**TINY_TRAINING, "dataset": "synthetic", **TINY_SUBSET, "model": "preactresnet18", "width": 4,
              "method": "catchup_mix", "method_options": {}, **changes}
    return Run("table1", "smoke", {"section": "preactresnet18", "method": config["method"]}, config, seed)


def test_every_artifact_plans_runs_of_valid_configs_at_each_of_its_scales():
    for name, artifact in ARTIFACTS.items():
        for scale in artifact.scales:
            settings = Settings(scale, [0, 1], Path("."))
            runs = artifact.plan(settings)
            assert len({run.key for run in runs}) == len(runs), name  # no run planned twice
            for run in runs:
                assert run.scale == scale and run.seed in (0, 1)
                assert len(run.key) == 12  # resolving the key validates the whole config


def test_paper_scale_uses_the_presets_of_method_md():
    paper = Settings("paper", [0], Path("."), data_root="/data")
    table1 = artifacts.plan_table1(paper)
    assert {run.labels["section"] for run in table1} == {"preactresnet18", "wrn16_8", "resnext29_4_24"}
    assert all(run.config["epochs"] == 300 and run.config["lr"] == 0.2 and run.config["width"] is None
               and run.config["dataset"] == "cifar100" for run in table1)
    table2 = artifacts.plan_table2(paper)
    assert all(run.config["dataset"] == "tiny_imagenet" and run.config["epochs"] == 1200 for run in table2)
    fgvc = artifacts.plan_table_fgvc(paper)
    assert {run.config["dataset"] for run in fgvc} == {"cub200", "stanford_cars", "fgvc_aircraft"}
    assert all(run.config["pretrained"] for run in fgvc)


def test_a_new_registered_method_joins_the_tables(monkeypatch):
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))

    @methods.register("my_new_mix")
    @dataclasses.dataclass(kw_only=True)
    class MyNewMix(methods.Vanilla):
        pass

    runs = artifacts.plan_table1(Settings("smoke", [0], Path(".")))
    assert {"preactresnet18", "wrn16_8", "resnext29_4_24"} == {
        run.labels["section"] for run in runs if run.labels["method"] == "my_new_mix"}


def test_ablation_covers_the_options_of_method_md():
    variants = artifacts.ablation_variants(5)
    options = [v for v in variants.values()]
    assert {"layers": [0]} in options and {"layers": [1, 2, 3, 4, 5]} in options
    assert all({"layers": [k]} in options for k in range(1, 6))
    for change in ({"selection": "high"}, {"selection": "random"}, {"rfi": "absolute"}, {"alpha": 0.5},
                   {"alpha": 2.0}, {"label": "channels"}):
        assert change in options


def test_run_key_follows_what_changes_the_numbers():
    base = tiny_run()
    assert tiny_run().key == base.key
    assert tiny_run(seed=1).key != base.key
    assert tiny_run(lr=0.1).key != base.key
    assert tiny_run(data_root="/elsewhere", log_every=5).key == base.key  # where, not what
    # the same config in another artifact is the same run, trained once
    assert dataclasses.replace(base, artifact="figure_mixing", labels={}).key == base.key


def test_execute_trains_once_then_reuses_the_result(tmp_path, monkeypatch):
    run = tiny_run()
    first = runner.execute(run, tmp_path)
    assert first["summary"]["epochs"] == 2 and first["key"] == run.key
    assert first["summary"]["provenance"]["commit"]
    stored = json.loads(run.result_path(tmp_path).read_text())
    assert stored["summary"]["last_top1"] == first["summary"]["last_top1"]

    import catchup_mix.train

    monkeypatch.setattr(catchup_mix.train, "train", lambda *a, **k: pytest.fail("a finished run was retrained"))
    assert runner.execute(run, tmp_path) == first
    # another artifact asking for the same run takes it from the shared run folder
    twin = dataclasses.replace(run, artifact="figure_mixing")
    assert runner.execute(twin, tmp_path)["summary"] == first["summary"]


def test_a_result_stored_before_a_new_config_key_is_still_found_and_another_precision_is_not(tmp_path):
    run = tiny_run()
    result = runner.execute(run, tmp_path)
    old_path = run.result_path(tmp_path).with_name(f"{run.name}-0123456789ab.json")  # an older key
    run.result_path(tmp_path).rename(old_path)
    del result["summary"]["config"]["eval_every"]  # as if written before eval_every existed (default 1)
    old_path.write_text(json.dumps(result))
    assert runner.find_result(run, tmp_path)["summary"]["last_top1"] == result["summary"]["last_top1"]
    result["summary"]["config"]["precision"] = "bf16"  # a GPU bf16 result is not this CPU fp32 run
    result["summary"]["config"]["device"] = "cuda"
    old_path.write_text(json.dumps(result))
    assert runner.find_result(run, tmp_path) is None


def test_a_run_held_by_another_process_is_skipped(tmp_path):
    run = tiny_run()
    folder = run.run_dir(tmp_path)
    folder.mkdir(parents=True)
    with open(folder / ".lock", "w") as other:  # a second open file description: flock sees a rival
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert runner.execute(run, tmp_path) is None
    assert not run.result_path(tmp_path).exists()


def test_dry_run_prints_commands_and_trains_nothing(tmp_path, capsys):
    assert reproduce_main(["table1", "--scale", "smoke", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("python -m catchup_mix train --resume --set") == 3 * len(methods.available())
    assert "method=catchup_mix" in out and "model=wrn16_8" in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_list_shows_every_artifact_with_runs_and_hours(capsys):
    assert reproduce_main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for name in ARTIFACTS:
        rows = [line.split() for line in lines if line.startswith(name + " ")]
        paper = [row for row in rows if "paper" in row[1]]
        if "paper" in ARTIFACTS[name].scales:  # one row at paper scale, with its scales, runs and GPU hours
            (row,) = paper
            assert row[1].split("/") == list(ARTIFACTS[name].scales) and int(row[2]) >= 0 and float(row[3]) > 0
        cpu = [row[1] for row in rows if row[3] == "CPU"]  # one row per CPU scale (the evidence's)
        assert cpu == [scale for scale in ARTIFACTS[name].scales if scale in ("medium", "medium_wd")]
    table1 = next(line for line in lines if line.startswith("table1 ")).split()
    assert int(table1[2]) == 3 * 3 * len(methods.available())
    assert reproduce_main(["list", "--names"]) == 0
    assert capsys.readouterr().out.split() == list(ARTIFACTS)


def test_paper_scale_refuses_to_start_on_a_cpu(capsys):
    assert reproduce_main(["table1", "--scale", "paper"]) == 2
    assert "--allow-cpu" in capsys.readouterr().err


def test_smoke_titles_name_the_data_as_a_reader_knows_it():
    """A smoke run on a real image folder says which folder, never the loader's name `imagefolder`."""
    settings = Settings("smoke", [0], Path("out"), data_root="/somewhere/cifar10-jpeg/")
    runs = ARTIFACTS["table1"].plan(settings)
    title = report.scaled_title(settings, "CIFAR-100 top-1", [(runs[0], None)])
    assert title == "CIFAR-100 top-1 [smoke scale on the images in cifar10-jpeg, 5 classes: not paper numbers]"
    assert report.data_title({"dataset": "tiny_imagenet"}) == "Tiny-ImageNet data"


def test_smoke_artifact_end_to_end_writes_tables_and_figure_from_its_results(tmp_path, tiny_smoke):
    assert reproduce_main(["table2", "--scale", "smoke", "--out", str(tmp_path), "--seeds", "0", "1"]) == 0
    results = [json.loads(p.read_text()) for p in (tmp_path / "results" / "table2" / "smoke").glob("*.json")]
    assert len(results) == 2 * len(methods.available())
    markdown = (tmp_path / "tables" / "smoke" / "table2.md").read_text()
    assert "Smoke scale, not paper numbers" in markdown and "smoke scale on synthetic data" in markdown
    assert f"Runs done: {len(results)} of {len(results)}" in markdown
    for method in methods.available():
        last = sorted(r["summary"]["last_top1"] for r in results if r["labels"]["method"] == method)
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {method} |"))
        assert report.mean_std(last) in row and row.split("|")[5].strip() == "2"
    commit = results[0]["summary"]["provenance"]["commit"][:10]
    assert f"commit {commit}" in markdown
    assert "puzzlemix" in markdown and "63.90 [" in markdown  # a published-only row, with its source
    assert "Method options other than the method's defaults (cheaper smoke settings" in markdown
    assert "comixup part=5; alignmixup max_iter=20." in markdown
    latex = (tmp_path / "tables" / "smoke" / "table2.tex").read_text()
    assert r"\begin{tabular}" in latex and r"manifold\_mixup" in latex and r"$\pm$" in latex
    image = matplotlib.image.imread(tmp_path / "figures" / "smoke" / "table2.png")
    assert image.shape[0] > 200 and image.shape[1] > 200 and image[..., :3].std() > 0.05  # not blank
    assert (tmp_path / "figures" / "smoke" / "table2.pdf").read_bytes().startswith(b"%PDF")


def test_the_process_that_finishes_last_renders_the_runs_another_process_trained(tmp_path, tiny_smoke, monkeypatch):
    import reproduce.local as cli

    real_execute = runner.execute
    held_by_the_other = []

    def execute(run, out):  # every other run is "being trained by another process", which finishes it meanwhile
        if len(held_by_the_other) % 2 == 0:
            held_by_the_other.append(run)
            real_execute(run, out)  # the other process's work, done before this one renders
            return None
        held_by_the_other.append(None)
        return real_execute(run, out)

    monkeypatch.setattr(cli, "execute", execute)
    assert reproduce_main(["table2", "--scale", "smoke", "--out", str(tmp_path)]) == 0
    markdown = (tmp_path / "tables" / "smoke" / "table2.md").read_text()
    total = len(methods.available())
    assert f"Runs done: {total} of {total}" in markdown


def test_tables_only_renders_missing_runs_as_pending(tmp_path, tiny_smoke):
    first = ARTIFACTS["table2"].runs(Settings("smoke", [0], tmp_path))[0]
    runner.execute(first, tmp_path)
    runs_before = sorted((tmp_path / "runs").rglob("*"))
    assert reproduce_main(["table2", "--scale", "smoke", "--out", str(tmp_path), "--tables-only"]) == 0
    markdown = (tmp_path / "tables" / "smoke" / "table2.md").read_text()
    assert f"Runs done: 1 of {len(methods.available())}" in markdown and first.labels["method"] != "catchup_mix"
    assert "| catchup_mix | — | — | — | 0 |" in markdown
    assert sorted((tmp_path / "runs").rglob("*")) == runs_before  # nothing trained


def test_provenance_names_the_seeds_done_and_those_planned():
    runs = [SimpleNamespace(seed=seed, config={"epochs": 1}, labels={}, artifact="evidence") for seed in range(3)]
    result = {"summary": {"provenance": {"commit": "a" * 40, "dirty": False, "device": "cpu"}}}
    partial = report.provenance_notes(SimpleNamespace(scale="medium"), [(runs[0], result), (runs[1], None),
                                                                       (runs[2], result)])
    assert "Runs done: 2 of 3; seeds 0, 2 (planned: 0, 1, 2)." in partial[0]
    complete = report.provenance_notes(SimpleNamespace(scale="medium"), [(run, result) for run in runs])
    assert "Runs done: 3 of 3; seeds 0, 1, 2." in complete[0]


def test_figure_mixing_measures_a_trained_pair(tmp_path, tiny_smoke):
    assert reproduce_main(["figure_mixing", "--scale", "smoke", "--out", str(tmp_path)]) == 0
    measurement = json.loads(next((tmp_path / "results" / "figure_mixing" / "smoke").glob("measurement-*")).read_text())
    assert [layer["k"] for layer in measurement["layers"]] == [1, 2, 3, 4, 5]
    for layer in measurement["layers"]:
        channels = layer["channels"]
        assert sum(layer["kept"]) == channels // 2  # lam = 0.5
        # the source keeps its lowest-RFI channels: every kept RFI is <= every replaced one
        kept = [r for r, k in zip(layer["rfi"], layer["kept"], strict=True) if k]
        replaced = [r for r, k in zip(layer["rfi"], layer["kept"], strict=True) if not k]
        assert max(kept) <= min(replaced)
    assert 0 < measurement["images"]["cutmix_lam"] <= 1
    image = matplotlib.image.imread(tmp_path / "figures" / "smoke" / "figure_mixing.png")
    assert image[..., :3].std() > 0.05


def test_overhead_reports_each_method_relative_to_vanilla(tmp_path, monkeypatch):
    monkeypatch.setattr(artifacts, "overhead_setup", lambda settings: dict(
        model_name="preactresnet18", width=4, batch_size=8, rounds=2, steps_per_epoch=10))
    assert reproduce_main(["overhead", "--scale", "smoke", "--out", str(tmp_path)]) == 0
    markdown = (tmp_path / "tables" / "smoke" / "overhead.md").read_text()
    assert "| vanilla |" in markdown and "| 1.000 |" in markdown
    assert all(f"| {name} |" in markdown for name in methods.available())


def test_published_reference_file_names_a_source_for_every_number():
    reference = report.load_published()
    for entry in reference["numbers"]:
        assert entry["source"] in reference["sources"], entry
        assert entry["artifact"] in ARTIFACTS and entry["protocol"]
        if entry["top1"] is None:  # a cell the paper has but that is not filled in yet: shown as n/a
            assert entry["source"] == "catchup_mix_paper", entry
        else:
            assert 0 < entry["top1"] < 100
            if entry["source"] == "catchup_mix_paper":  # filled from the paper: say from which table
                assert "Table" in entry["protocol"], entry
    published = report.Published("table1")
    assert published.other_cell("preactresnet18", "puzzlemix") == "80.40 [1]; 81.13 [2]"
    assert len(published.footnotes) == 2 and "PuzzleMix README" in published.footnotes[0]


def test_paper_cells_show_filled_numbers_with_their_table_and_unfilled_ones_as_na(monkeypatch):
    reference = report.load_published()
    filled = {"artifact": "table1", "section": "wrn16_8", "method": "cutmix", "top1": 79.5,
              "source": "catchup_mix_paper", "protocol": "Table 1 of the paper (example)"}
    unfilled = {**filled, "method": "mixup", "top1": None, "protocol": "not yet filled from the paper"}
    monkeypatch.setattr(report, "load_published", lambda: {**reference, "numbers": [filled, unfilled]})
    published = report.Published("table1")
    assert published.paper_cell("wrn16_8", "cutmix") == "79.50 [1]"
    assert "Table 1 of the paper (example)" in published.footnotes[0]
    assert published.paper_cell("wrn16_8", "mixup") == "n/a"
    assert published.paper_cell("preactresnet18", "cutmix") == "n/a"


def test_cli_entry_point_runs_as_a_module(tmp_path):
    result = subprocess.run([sys.executable, "-m", "reproduce", "ablation", "--scale", "smoke", "--dry-run",
                             "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPOSITORY,
                            env=dict(os.environ, PYTHONPATH=str(REPOSITORY)), timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("catchup_mix train") == 1 + len(artifacts.ablation_variants())


def test_gpucheck_refuses_an_unwritable_report_folder_before_any_work(tmp_path, capsys, monkeypatch):
    from reproduce import gpucheck

    monkeypatch.setattr(gpucheck, "run_tests", lambda: pytest.fail("work started"))
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert reproduce_main(["gpucheck", "--device", "cpu", "--tiny", "--out", str(blocked / "reports")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: cannot write to") and "Traceback" not in error


def test_gpucheck_verdicts_judge_targets_only_at_full_size():
    from reproduce import gpucheck

    rows = [{"method": "vanilla", "epoch_s": 3.0, "ratio": 1.0}, {"method": "catchup_mix", "epoch_s": 3.1, "ratio": 1.2}]
    report = {"tests": {"passed": 3, "failed": 0, "errors": 0, "skipped": 0}, "data_path": {"speedup": 4.0},
              "benchmark": {"modes": {"eager": rows, "compiled": rows}},
              "scale": gpucheck._scale(tiny=False)}
    full = gpucheck.verdicts(report)
    assert "(target <= 4.0 s: met)" in full[1] and "(target <= 1.05: not met)" in full[1]
    tiny = gpucheck.verdicts({**report, "scale": gpucheck._scale(tiny=True)})
    assert "not met" not in " ".join(tiny) and "not comparable at --tiny" in tiny[1]
    assert "not meaningful at --tiny: 2 warm-up rounds" in tiny[2]


def test_gpucheck_unpacks_only_the_images_its_run_reads_and_leaves_nothing_behind(tmp_path, monkeypatch):
    import tarfile
    import tempfile

    import numpy
    import PIL.Image
    import torch

    from catchup_mix import data
    from reproduce import gpucheck

    tree = tmp_path / "tree" / "cifar10-jpeg"
    noise = numpy.random.default_rng(0)
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (tree / split / name).mkdir(parents=True)
            for index in range(1, 12):  # natural order puts 2.jpg before 10.jpg; a plain sort would not
                image = noise.integers(0, 256, (32, 32, 3), dtype=numpy.uint8)
                PIL.Image.fromarray(image).save(tree / split / name / f"{index}.jpg")
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    with tarfile.open(shelf / gpucheck.ARCHIVE, "w:gz") as tar:
        tar.add(tree, arcname="cifar10-jpeg")

    root, source = gpucheck.find_cifar10(str(shelf), tmp_path / "unpacked", per_class=3)
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg")) == sorted(
        f"{split}/{name}/{index}.jpg" for split in ("train", "test") for name in ("cat", "dog") for index in (1, 2, 3))
    assert source == f"{shelf / gpucheck.ARCHIVE} (unpacked: the first 3 images of each class)"
    partial, whole = (data.load("imagefolder", folder, train_per_class=3, test_per_class=3) for folder in (root, tree))
    assert torch.equal(partial.train.images, whole.train.images) and torch.equal(partial.test.images, whole.test.images)

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    scale = {**gpucheck._scale(tiny=True), "width": 4, "batch_size": 2, "cifar_per_class": 3}
    result = gpucheck.train_on_cifar10(torch.device("cpu"), scale, str(shelf))
    assert set(result["runs"]) == {"vanilla", "catchup_mix"} and "unpacked" in result["data_root"]
    assert list(scratch.iterdir()) == []  # the unpacked copy and the runs' folders are gone


def test_smoke_scale_gives_the_costly_baselines_their_cheaper_options_and_paper_scale_the_defaults():
    smoke = {run.labels["method"]: run.config["method_options"] for run in
             artifacts.plan_table1(Settings("smoke", [0], Path(".")))}
    assert smoke["comixup"] == {"part": 5} and smoke["alignmixup"] == {"max_iter": 20}
    assert smoke["catchup_mix"] == {} and smoke["puzzlemix"] == {}
    paper = artifacts.plan_table1(Settings("paper", [0], Path("."), data_root="/data"))
    assert all(run.config["method_options"] == artifacts.PAPER_METHOD_OPTIONS.get(run.labels["method"], {})
               for run in paper)  # the defaults, except the original saliency SaliencyMix names
    assert "comixup" not in artifacts.PAPER_METHOD_OPTIONS and "alignmixup" not in artifacts.PAPER_METHOD_OPTIONS
    for method, options in artifacts.SMOKE_METHOD_OPTIONS.items():  # each a real option of the method
        built = methods.build(method, num_hook_points=5, **options)
        assert all(getattr(built, key) == value for key, value in options.items())


def test_workers_take_every_run_once_each_its_own_share_first_then_the_others_from_their_ends():
    runs = list(range(10))
    for count in (1, 2, 3, 4):
        assert all(sorted(worker_order(runs, index, count)) == runs for index in range(count))
    assert worker_order(runs, 0, 2) == [0, 1, 2, 3, 4, 9, 8, 7, 6, 5]
    assert worker_order(runs, 1, 2) == [5, 6, 7, 8, 9, 4, 3, 2, 1, 0]
    assert worker_order(runs, 2, 3) == [6, 7, 8, 9, 2, 1, 0, 5, 4, 3]


def test_a_started_worker_trains_in_its_own_order_and_renders_nothing(tmp_path, tiny_smoke, monkeypatch):
    import reproduce.local as cli

    trained = []
    monkeypatch.setattr(cli, "execute", lambda run, out: trained.append(run.labels["method"]))
    assert reproduce_main(["table2", "--scale", "smoke", "--out", str(tmp_path), "--workers", "2",
                           "--worker", "2"]) == 0
    names = methods.available()
    half = len(names) // 2
    assert trained == [*names[half:], *reversed(names[:half])]
    assert not (tmp_path / "tables").exists() and not (tmp_path / "figures").exists()


@pytest.mark.slow
def test_workers_share_an_artifact_and_the_first_renders_it_once_all_finished(tmp_path):
    tiny = ["epochs=1", "batch_size=10", "num_classes=2", "train_per_class=10", "test_per_class=5", "width=4"]
    result = subprocess.run([sys.executable, "-m", "reproduce", "table2", "--scale", "smoke", "--out", str(tmp_path),
                             "--workers", "2", "--log", str(tmp_path / "log.txt"), "--set", *tiny],
                            capture_output=True, text=True, cwd=REPOSITORY,
                            env=dict(os.environ, PYTHONPATH=str(REPOSITORY)), timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    total = len(methods.available())
    assert f"{total} runs to train, shared by 2 worker processes" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout.count("wrote ") == 4  # the table (.md, .tex) and figure (.png, .pdf), once
    markdown = (tmp_path / "tables" / "smoke" / "table2.md").read_text()
    assert f"Runs done: {total} of {total}" in markdown
    assert "shared by 2 worker processes" in (tmp_path / "log.txt").read_text()


def test_workers_must_be_at_least_one(capsys):
    assert reproduce_main(["table1", "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_an_output_folder_it_cannot_write_stops_it_at_once_in_one_line_with_the_fix(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != out and real_access(path, mode))
    assert reproduce_main(["table2", "--scale", "smoke", "--tables-only", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith(f"error: cannot write to {out} (--out)")
    assert "pass --out a folder you can write to" in error and "--user" not in error
    assert list(out.iterdir()) == []  # nothing written
    monkeypatch.setenv("CATCHUP_MIX_IMAGE", "1")  # in the project's Docker image the fix is docker run's --user
    assert reproduce_main(["all", "--tables-only", "--out", str(out / "tables")]) == 2
    error = capsys.readouterr().err
    assert "where --out" in error and 'add --user "$(id -u):$(id -g)" to docker run' in error
    assert reproduce_main(["table2", "--dry-run", "--out", str(out)]) == 0  # a dry run writes nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any folder")
def test_a_read_only_output_folder_is_refused_before_any_work(tmp_path, capsys):
    tmp_path.chmod(0o555)
    try:
        assert reproduce_main(["table2", "--scale", "smoke", "--tables-only", "--out", str(tmp_path)]) == 2
    finally:
        tmp_path.chmod(0o755)
    assert capsys.readouterr().err.startswith(f"error: cannot write to {tmp_path} (--out)")


def test_tables_only_without_stored_results_writes_nothing_and_says_where_they_are(tmp_path, capsys):
    """Issue 30: `evidence --tables-only --out EMPTY` wrote a 504-line table of dashes."""
    assert reproduce_main(["evidence", "--scale", "medium", "--tables-only", "--out", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert "no stored result of its 52 runs at medium scale" in error and "repository's results/ folder" in error
    assert not (tmp_path / "tables").exists() and not (tmp_path / "figures").exists()


def test_list_counts_the_evidence_runs_from_the_plan_it_runs(capsys):
    """Issue 30: `list` said 36 runs of about 10 minutes where the plan had 52 of about 45."""
    from reproduce import artifacts, evidence

    assert reproduce_main(["list"]) == 0
    printed = capsys.readouterr().out
    for scale in artifacts.CPU_SCALES:
        runs = len(artifacts.ARTIFACTS["evidence"].plan(artifacts.Settings(scale, list(range(10)), Path("."))))
        row = next(line for line in printed.splitlines() if line.split()[:2] == ["evidence", scale])
        assert row.split()[2] == str(runs) and f"CPU: {runs} runs, about {evidence.MINUTES_PER_RUN} min each" in row


def test_outside_a_checkout_the_commit_is_the_one_the_image_was_built_from(tmp_path, monkeypatch):
    """Issue 29: tables written in the Docker image said "Code: commit unknown" (.dockerignore leaves out .git)."""
    from catchup_mix import provenance

    monkeypatch.setattr(provenance, "REPOSITORY", tmp_path)  # no .git here
    provenance.git_state.cache_clear()
    try:
        monkeypatch.setenv("CATCHUP_MIX_COMMIT", "0123abcd")
        assert provenance.git_state() == {"commit": "0123abcd", "dirty": None}
        provenance.git_state.cache_clear()
        monkeypatch.delenv("CATCHUP_MIX_COMMIT")
        assert provenance.git_state()["commit"] == "unknown"
    finally:
        provenance.git_state.cache_clear()
    dockerfile = (Path(__file__).resolve().parent.parent / "Dockerfile").read_text()
    assert "ENV CATCHUP_MIX_COMMIT=$CATCHUP_MIX_COMMIT" in dockerfile and "--build-arg CATCHUP_MIX_COMMIT=" in dockerfile


def test_no_import_runs_back_up_or_in_a_circle():
    """Issue 29: reproduce/slurm.py imported reproduce/__main__.py, which imports slurm.py. Every import between the
    project's modules, at the top of a file or inside a function, must form no circle, and catchup_mix (importable
    alone) never imports reproduce."""
    import ast

    repository = Path(__file__).resolve().parent.parent
    modules = {}
    for path in [*repository.glob("catchup_mix/**/*.py"), *repository.glob("reproduce/*.py")]:
        parts = path.relative_to(repository).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")
                base = base[:len(base) - node.level + 1] if node.level else []
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
                found |= {f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target
                          for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
        graph[name] = {target for target in found if target in modules and target != name}
    assert not [name for name, targets in graph.items() if name.startswith("catchup_mix")
                and any(target.startswith("reproduce") for target in targets)]
    state, circle = {}, []

    def visit(name, path):
        state[name] = "open"
        for target in graph[name]:
            if state.get(target) == "open":
                circle.append([*path, name, target])
            elif target not in state:
                visit(target, [*path, name])
        state[name] = "done"

    for name in graph:
        if name not in state:
            visit(name, [])
    assert not circle, circle
