"""`svp eval` and a stage's `eval:` block on the dashboard tests' two tiny real runs: videos generated from the
exports, metrics in the real MLflow store at the export's step, shown by `svp runs list/compare`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from curation_tiny_models import save_tiny_aesthetic_mlp, save_tiny_clip
from dashboard_fixtures import EVAL_PROMPT, two_runs
from mlflow.tracking import MlflowClient
from PIL import Image

from model.video_io import read_frames, write_mp4
from orchestration.cli import main

WEIGHT_FREE = {"flicker", "vbench_temporal_flickering", "motion", "blank_frames", "saturated_frames"}


def _store(tmp_path_factory) -> tuple[Path, str]:
    store = two_runs(tmp_path_factory.getbasetemp() / "dashboard")
    return store, f"sqlite:///{store.resolve()}/mlflow.db"


def _exports(store: Path) -> list[Path]:
    return sorted(store.parent.glob("work*/tiny/image/export"))


def test_the_stage_eval_block_scores_the_export_into_its_run(ray_session, tmp_path_factory, capsys):
    store, uri = _store(tmp_path_factory)
    client = MlflowClient(uri)
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], "tags.`svp.stage` = 'image'"
    )
    assert len(runs) == 2
    for run in runs:
        metrics = {k.removeprefix("eval/") for k in run.data.metrics if k.startswith("eval/")}
        assert metrics >= WEIGHT_FREE, metrics
        assert "clip_similarity" not in metrics  # no CLIP weights configured: skipped, not made up
        assert {m.step for m in client.get_metric_history(run.info.run_id, "eval/flicker")} == {2}
        # The sample video rendered at step 2 is scored too (one frame: sanity only).
        assert run.data.metrics["sample/blank_frames"] in (0.0, 1.0)
        artifacts = [f.path for f in client.list_artifacts(run.info.run_id, "eval/step00000002")]
        assert any(p.endswith(".mp4") for p in artifacts) and any(p.endswith("eval.json") for p in artifacts)
    for export in _exports(store):
        report = json.loads(next((export.parent / "eval").glob("*/eval.json")).read_text())
        assert report["videos"][0]["prompt"] == EVAL_PROMPT
        assert any("CLIP metrics skipped" in line for line in report["skipped"])


def test_svp_eval_logs_clip_metrics_and_runs_compare_shows_them(
    ray_session, tmp_path_factory, tmp_path, capsys
):
    store, uri = _store(tmp_path_factory)
    cfg, weights = save_tiny_clip(tmp_path / "clip")
    mlp = save_tiny_aesthetic_mlp(tmp_path / "clip" / "mlp.pth", input_size=32)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"# the demo's prompt\n{EVAL_PROMPT}\n\na blue circle\n")
    exports = _exports(store)
    args = ["eval", *map(str, exports), "--prompts", str(prompts), "--seeds", "0,1", "--frames", "5"]
    args += ["--steps", "2", "--clip-model", str(cfg), "--clip-checkpoint", str(weights)]
    args += ["--aesthetic-mlp", str(mlp), "--tracking-uri", uri, "--out", str(tmp_path / "out"), "--json"]
    capsys.readouterr()
    assert main(args) == 0
    reports = json.loads(capsys.readouterr().out)
    assert len(reports) == 2 and all(len(r["videos"]) == 4 for r in reports)  # 2 prompts x 2 seeds, each
    for report in reports:
        assert WEIGHT_FREE | {"clip_similarity", "consistency", "aesthetic"} <= set(report["metrics"])
        assert all(Path(v["path"]).is_file() for v in report["videos"])
        assert client_metric(uri, report["run_id"], "eval/clip_similarity") == [2]

    ids = [r["run_id"] for r in reports]
    assert main(["runs", "compare", *ids, "--runs", str(store)]) == 0
    out = capsys.readouterr().out
    section = out.split("eval (latest")[1]
    assert "clip_similarity" in section and "flicker" in section
    assert "dataset" in section and "thresholds" in section  # the data each run trained on, beside them
    assert main(["runs", "list", "--runs", str(store), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert all(isinstance(r["eval/clip_similarity"], float) for r in rows)

    # The tiny stage keeps an EMA: --ema scores those weights (and says so), here without touching MLflow;
    # with --image every video starts from the image and is scored against it.
    start = tmp_path / "start.png"
    Image.fromarray(np.full((64, 64, 3), 200, dtype=np.uint8)).save(start)
    args = ["eval", str(exports[0]), "--prompts", str(prompts), "--frames", "5", "--steps", "2"]
    args += ["--ema", "--image", str(start), "--no-mlflow", "--out", str(tmp_path / "ema"), "--json"]
    assert main(args) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert report["ema"] is True and set(report["metrics"]) >= WEIGHT_FREE
    assert 0.0 <= report["metrics"]["conditioning_match"] <= 1.0

    # With --video every video continues the clip (in one block: the image stage is not block-AR); the mp4 is
    # the clip then the new frames, and only the new ones are scored, the first against the clip's last frame.
    clip = write_mp4(np.full((4, 32, 32, 3), 90, dtype=np.uint8), tmp_path / "clip.mp4", fps=8.0)
    args = ["eval", str(exports[0]), "--prompts", str(prompts), "--frames", "5", "--steps", "2"]
    args += ["--video", str(clip), "--no-mlflow", "--out", str(tmp_path / "continued"), "--json"]
    assert main(args) == 0
    (report,) = json.loads(capsys.readouterr().out)
    assert set(report["metrics"]) >= WEIGHT_FREE and "conditioning_match" not in report["metrics"]
    assert 0.0 <= report["metrics"]["continuation_match"] <= 1.0
    assert len(read_frames(report["videos"][0]["path"])) == 4 + 5


def client_metric(uri: str, run_id: str, name: str) -> list[int]:
    return [m.step for m in MlflowClient(uri).get_metric_history(run_id, name)]


def test_svp_eval_bad_input_is_one_line(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a prompt\n")
    assert main(["eval", str(tmp_path), "--prompts", str(prompts)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("svp: error:") and "not a stage export" in err and err.count("\n") == 1
    assert main(["eval", str(tmp_path), "--prompts", str(prompts), "--seeds", "a,b"]) == 2
    assert "--seeds expects integers" in capsys.readouterr().err


def test_experiments_page_shows_eval_metrics_beside_the_data_and_their_videos(
    ray_session, monkeypatch, tmp_path_factory
):
    from test_dashboard_pages import _page

    _, uri = _store(tmp_path_factory)
    at = _page("experiments_page", monkeypatch, tracking_uri=uri)
    at.multiselect(key="exp:pick").set_value(at.multiselect(key="exp:pick").options).run()
    assert not at.exception
    evals = next(d.value for d in at.dataframe if "flicker" in d.value.index)
    assert {"step", "dataset", "thresholds"} <= set(evals.index) and evals.shape[1] == 2
    assert at.selectbox(key="exp:eval").value in evals.index  # its curve over steps is drawn below
    videos = len(at.get("video"))
    at.checkbox(key="exp:eval-videos").check().run()
    assert not at.exception and len(at.get("video")) == videos + 2  # one eval video of each run
