"""`svp pipeline plan|run` on a real pipeline file: synthetic corpus → curate → filter → two tiny stages.

One real run (local Ray, DeepSpeed on CPU, MLflow sqlite); then `plan` is asked what each kind of change
would rerun, and says why: unchanged → everything skipped; new thresholds → filter and every stage; only the
second stage's lr → only that stage; `--from` → that step onward; a half-written export is not finished.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient
from pipeline_files import KEEP_ALL, make_pipeline, write_pipeline

from orchestration.cli import main
from orchestration.pipeline.plan import plan_pipeline
from orchestration.pipeline.spec import load_spec
from training.driver.fingerprints import FINGERPRINT_FILE

pytestmark = pytest.mark.slow
STEPS = ["curate", "filter", "image", "video"]


def actions(path, **kwargs):
    return {p.step: (p.action, p.reason) for p in plan_pipeline(load_spec(path), **kwargs)}


@pytest.fixture(scope="module")
def finished_pipeline(ray_session, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline")
    path = make_pipeline(folder, videos=2)
    assert {s: a for s, (a, _) in actions(path).items()} == dict.fromkeys(STEPS, "run")
    import curation.publish

    published = []  # curation publishes once: the curate step scores, the filter step writes the shards
    real_write_shards = curation.publish.write_shards
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out):
        # (redirect_stdout: capsys is per test; this fixture runs once for the module)
        patch.setattr(
            curation.publish,
            "write_shards",
            lambda *a, **k: published.append(a[0]) or real_write_shards(*a, **k),
        )
        assert main(["pipeline", "run", str(path)]) == 0
    assert len(published) == 1, published
    # Each stage says what became of it, as `svp train` does: trained, why, and where its export is.
    export = (folder / "work" / "pipe" / "image" / "export").resolve()
    assert f"image: trained (no export yet) and exported to {export}" in out.getvalue(), out.getvalue()
    return folder


def test_unchanged_pipeline_is_skipped_and_mlflow_records_steps(finished_pipeline, capsys):
    path = finished_pipeline / "pipeline.yaml"
    plan = actions(path)
    assert {s: a for s, (a, _) in plan.items()} == dict.fromkeys(STEPS, "skip"), plan
    capsys.readouterr()
    assert main(["pipeline", "run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "curate: skipped" in out and "filter: skipped" in out and "video: skipped" in out
    client = MlflowClient(f"sqlite:///{finished_pipeline / 'work' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("pipe")
    parent = client.search_runs([experiment.experiment_id], filter_string="tags.`svp.stage` = '-'")[0]
    for step in STEPS:
        assert parent.data.tags[f"svp.step.{step}.status"] == "skipped"
        assert len(parent.data.tags[f"svp.step.{step}.fingerprint"]) == 16


def test_a_pipeline_with_nothing_to_do_answers_without_starting_ray(finished_pipeline):
    """`svp pipeline run` as a user types it, in its own process: with every step skipped it starts no Ray
    (a Ray it started would keep its session under RAY_TMPDIR). The runs that train (the fixture, the other
    tests) get theirs when a step runs."""
    import os
    import subprocess
    import sys
    import tempfile

    path = str(finished_pipeline / "pipeline.yaml")
    # Short: Ray's socket paths under it must stay within AF_UNIX's 107 bytes.
    ray_tmp = Path(tempfile.mkdtemp(prefix="svp-ray-", dir="/tmp"))
    try:
        env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
        svp = [sys.executable, "-m", "orchestration.cli", "pipeline", "run", path]
        done = subprocess.run(svp, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert "curate: skipped" in done.stdout and "video: skipped" in done.stdout, done.stdout
        assert not any(ray_tmp.iterdir()), sorted(ray_tmp.rglob("*"))[:5]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_plan_says_what_each_change_reruns(finished_pipeline, capsys):
    path = finished_pipeline / "pipeline.yaml"
    # New thresholds: filter and every training stage, with the reason.
    thresholds = finished_pipeline / "thresholds.yaml"
    thresholds.write_text(yaml.safe_dump({**KEEP_ALL, "scores": {"motion_score": {"max": 1.0e6}}}))
    try:
        plan = actions(path)
    finally:
        thresholds.write_text(yaml.safe_dump(KEEP_ALL))
    assert plan["curate"][0] == "skip"
    assert plan["filter"][0] == "rerun" and "thresholds" in plan["filter"][1]
    assert plan["image"][0] == "rerun" and "step filter" in plan["image"][1]
    assert plan["video"][0] == "rerun"

    # Only the second stage's lr: only that stage.
    write_pipeline(finished_pipeline, **{"stages.video.optimizer.lr": 5e-4})
    try:
        plan = actions(path)
        assert main(["pipeline", "plan", str(path)]) == 0
        assert "optimizer.lr 0.001 -> 0.0005" in capsys.readouterr().out
    finally:
        write_pipeline(finished_pipeline)
    assert [plan[s][0] for s in STEPS] == ["skip", "skip", "skip", "rerun"]
    assert "optimizer.lr 0.001 -> 0.0005" in plan["video"][1]
    # The same change from the command line: --set, with no edited file.
    lr = "training.stages.video.optimizer.lr=5e-4"
    assert main(["pipeline", "plan", str(path), "--set", lr]) == 0
    assert "optimizer.lr 0.001 -> 0.0005" in capsys.readouterr().out
    assert main(["pipeline", "plan", str(path), "--set", "training.stages.video.optimizer.lrr=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown key 'lrr' (did you mean 'lr'?)" in err and "warmup_steps" in err, err

    # --from reruns from a step onward whatever the fingerprints say; --only picks one step.
    plan = actions(path, from_step="filter")
    assert [plan[s][0] for s in STEPS] == ["skip", "rerun", "rerun", "rerun"]
    plan = actions(path, only="video")
    assert [plan[s][0] for s in STEPS] == ["not selected"] * 3 + ["skip"]

    # A half-written export (no fingerprint yet) is not taken for a finished one. It retrains on the same
    # inputs, so its fingerprint (and so the next stage's init_from) stays the same: the next stage is kept.
    record = finished_pipeline / "work" / "pipe" / "image" / "export" / FINGERPRINT_FILE
    saved = record.read_bytes()
    record.unlink()
    try:
        plan = actions(path)
    finally:
        record.write_bytes(saved)
    assert plan["image"][0] == "rerun" and FINGERPRINT_FILE in plan["image"][1]
    assert plan["video"][0] == "skip"
    assert actions(path)["image"][0] == "skip"


def test_pipeline_file_errors_are_one_line(tmp_path, capsys):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "curate": {"input": "in", "inptu": 1}}))
    assert main(["pipeline", "plan", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    expected = (
        "curate.inptu: unknown key 'inptu' (did you mean 'input'?); keys of curate: config, input, output"
    )
    assert err == f"svp: error: {path}: {expected}", err

    # A misspelt key is the cause even where it also leaves a required key missing.
    spec = {"name": "x", "curate": {"input": "in"}, "filter": {"threshold": "t.yaml"}, "training": {}}
    path.write_text(yaml.safe_dump(spec))
    assert main(["pipeline", "plan", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    expected = (
        "filter.threshold: unknown key 'threshold' (did you mean 'thresholds'?); keys of filter: thresholds"
    )
    assert err == f"svp: error: {path}: {expected}", err


def test_training_typos_name_the_users_file_or_flag_not_the_preset(tmp_path, capsys):
    """A typo in the training part is said against the pipeline file's key or the `--set` flag that holds
    it; the bundled preset's path would send the user to a file they never wrote."""
    path = write_pipeline(tmp_path, **{"stages.*.stepz": 6})
    assert main(["pipeline", "plan", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    expected = f"svp: error: {path}: training.overrides: stages.*.stepz: unknown key 'stepz' (did you mean"
    assert err.startswith(expected) and "presets" not in err, err

    spec = yaml.safe_load(write_pipeline(tmp_path).read_text())
    spec["training"]["stages"] = ["image", "vidoe"]
    path.write_text(yaml.safe_dump(spec))
    assert main(["pipeline", "plan", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    expected = (
        f"svp: error: {path}: training.stages: preset tiny has no stage 'vidoe' (did you mean 'video'?)"
    )
    assert err.startswith(expected) and "presets" not in err, err

    path = write_pipeline(tmp_path)
    assert main(["pipeline", "plan", str(path), "--set", "training.stages.video.optimizer.lrr=1e-3"]) == 2
    err = capsys.readouterr().err.strip()
    expected = "svp: error: --set training.stages.video.optimizer.lrr: unknown key 'lrr' (did you mean 'lr'?)"
    assert err.startswith(expected) and "presets" not in err, err


def test_filter_output_that_does_not_match_its_record_is_redone(finished_pipeline, capsys, monkeypatch):
    """What a job stopped during the filter step leaves (an index written empty, a shard gone, a forced
    rerun cut between the shards and the clips table) is never skipped as finished: `run` redoes the step,
    saying why, and gives the same shards."""
    import curation.publish
    from curation.format import INDEX_FILE, SHARDS_DIR
    from curation.shard_index import INDEX_SCHEMA
    from curation.tables import write_table_atomic

    path = finished_pipeline / "pipeline.yaml"
    shards = finished_pipeline / "work" / "pipe" / "curated" / SHARDS_DIR
    index = shards / INDEX_FILE
    finished = {p.name: p.read_bytes() for p in sorted(shards.glob("*.tar"))} | {
        INDEX_FILE: index.read_bytes()
    }

    def redone(reason: str, *args: str) -> None:
        plan = actions(path)
        assert plan["filter"][0] == "rerun" and reason in plan["filter"][1], plan["filter"]
        capsys.readouterr()
        assert main(["pipeline", "run", str(path), *args]) == 0
        out = capsys.readouterr().out
        assert "filter: rerun" in out and "curate: skipped" in out and "video: skipped" in out, out
        now = {p.name: p.read_bytes() for p in sorted(shards.glob("*.tar"))} | {
            INDEX_FILE: index.read_bytes()
        }
        assert now == finished
        assert actions(path)["filter"][0] == "skip"

    write_table_atomic(INDEX_SCHEMA.empty_table(), index)  # the index written empty
    redone("index.parquet has 0 rows")
    next(shards.glob("*.tar")).unlink()
    redone("is missing")

    # A forced rerun stopped after the shards, before the clips table: its old record must not survive it.
    def stopped_after_shards(*args, **kwargs):
        real_write_shards(*args, **kwargs)
        raise KeyboardInterrupt

    real_write_shards = curation.publish.write_shards
    monkeypatch.setattr(curation.publish, "write_shards", stopped_after_shards)
    stopped = main(["pipeline", "run", str(path), "--from", "filter", "--only", "filter"])
    assert stopped != 0
    monkeypatch.undo()
    assert actions(path)["filter"] == ("run", "no finished output yet")
    assert main(["pipeline", "run", str(path)]) == 0
    assert actions(path)["filter"][0] == "skip"


def test_encode_step_runs_between_filter_and_stages_and_is_skipped_after(finished_pipeline, capsys):
    """An `encode:` block adds `svp encode` as a step: planned after the filter step, the stage it encodes
    waits for it and then trains from the latents; run again, everything is skipped. Taken out again, the
    stage's earlier export is restored, not retrained."""
    from training.data.latent_store import ENCODING_FILE, encoding_id, encoding_identity, latents_folder
    from training.data.stage_data import StageData
    from training.driver.fingerprints import export_record

    path = write_pipeline(finished_pipeline, encode={"stages": ["vidoe"]})
    assert main(["pipeline", "plan", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "encode.stages: no stage 'vidoe'" in err, err
    path = write_pipeline(finished_pipeline, encode={"stages": ["video"], "batch_size": 2})
    plan = actions(path)
    assert list(plan) == ["curate", "filter", "encode", "image", "video"]
    assert [a for a, _ in plan.values()] == ["skip", "skip", "run", "skip", "rerun"], plan
    assert "step encode" in plan["video"][1]
    capsys.readouterr()
    assert main(["pipeline", "run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "encode: run" in out and "image: skipped" in out and "video: trained" in out, out

    spec = load_spec(path)
    stage = spec_stage(spec, "video")
    shards = spec.curated / "shards"
    assert (
        Path(latents_folder(str(shards), encoding_id(encoding_identity(stage)))) / ENCODING_FILE
    ).is_file()
    trained_on = export_record(spec.work / "pipe" / "video" / "export")[0]["dataset"]
    assert (
        trained_on
        == StageData(stage).dataset_fingerprint()
        != StageData(stage.replace(latents="off")).dataset_fingerprint()
    )
    assert {s: a for s, (a, _) in actions(path).items()} == dict.fromkeys(
        [*STEPS[:2], "encode", *STEPS[2:]], "skip"
    )

    # Without the encode block and its latents the stage reads pixels again: the export it had then is
    # kept, so it is restored (the plan says from where), not retrained, and MLflow points to the run that
    # trained it.
    path = write_pipeline(finished_pipeline)
    shutil.rmtree(shards / "latents")
    kept = spec.work / "pipe" / "video" / "exports"
    capsys.readouterr()
    assert main(["pipeline", "plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert ["video", "restore", "restore", "from"] in [line.split()[:4] for line in out.splitlines()], out
    assert f"restore from {kept}/" in out, out
    assert main(["pipeline", "run", str(path)]) == 0
    assert "video: restored (restore from" in capsys.readouterr().out
    assert export_record(spec.work / "pipe" / "video" / "export")[0]["dataset"] != trained_on
    client = MlflowClient(f"sqlite:///{spec.work / 'mlflow.db'}")
    parent = client.search_runs(
        [client.get_experiment_by_name("pipe").experiment_id], filter_string="tags.`svp.stage` = '-'"
    )[0]
    assert parent.data.tags["svp.step.video.status"] == "restored"
    trained_by = client.get_run(parent.data.tags["svp.step.video.run_id"])
    assert trained_by.data.tags["svp.stage_fingerprint"] == parent.data.tags["svp.step.video.fingerprint"]
    assert {s: a for s, (a, _) in actions(path).items()} == dict.fromkeys(STEPS, "skip")


def spec_stage(spec, name):
    from orchestration.pipeline.spec import training_pipeline

    return training_pipeline(spec).stage(name)


def test_failed_source_is_retried_not_skipped(ray_session, tmp_path, capsys):
    """A curate step that finished with a failed source (its worker killed on every attempt, as on a lost
    node) is not complete: the next run retries the source, then the filter step reruns."""
    from curation.worker import CRASH_ENV

    path = make_pipeline(tmp_path, videos=2)
    curate_yaml = tmp_path / "curate.yaml"
    kept = curate_yaml.read_text()
    lost = sorted((tmp_path / "raw" / "videos").glob("*.mp4"))[0].name
    crash = {"max_retries": 0, "runtime_env": {"env_vars": {CRASH_ENV: f"*{lost}"}}}
    curate_yaml.write_text(yaml.safe_dump({"ray": crash}))  # `ray` settings are not in the fingerprint
    assert main(["pipeline", "run", str(path), "--only", "curate"]) == 0
    curate_yaml.write_text(kept)

    plan = actions(path)
    assert plan["curate"][0] == "rerun" and "1 of 2 sources failed" in plan["curate"][1], plan["curate"]
    assert plan["filter"] == ("run", "step curate runs first (it rewrites the clips table)"), plan["filter"]
    capsys.readouterr()
    assert main(["pipeline", "run", str(path), "--only", "curate"]) == 0
    assert "curate: rerun (output incomplete: 1 of 2 sources failed" in capsys.readouterr().out
    sources = pd.read_parquet(tmp_path / "work" / "pipe" / "curated" / "sources.parquet")
    assert list(sources["status"]) == ["ok", "ok"]
    assert not (tmp_path / "work" / "pipe" / "curated" / "shards").exists()  # scored, not published
    plan = actions(path)
    assert plan["curate"][0] == "skip" and plan["filter"] == ("run", "no finished output yet"), plan
