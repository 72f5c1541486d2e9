"""Streamlit's AppTest drives both dashboard pages on real data: a real curation folder (thumbnails,
shards, report) and two real tiny training runs in one MLflow sqlite store."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dashboard_fixtures import curated_copy, two_runs
from mlflow.tracking import MlflowClient
from streamlit.testing.v1 import AppTest

from curation.report import read_report
from curation.tables import CLIPS_FILE, clips_table, write_table_atomic
from curation.thumbs import THUMBS_DIR
from orchestration.cli import main
from orchestration.dashboard.launch import CONFIG_ENV, config_env

PAGES = Path(__file__).resolve().parent.parent / "orchestration" / "dashboard"


def _page(name: str, monkeypatch, curation=(), tracking_uri=None) -> AppTest:
    monkeypatch.setenv(CONFIG_ENV, config_env(list(curation), tracking_uri)[CONFIG_ENV])
    at = AppTest.from_file(str(PAGES / f"{name}.py"), default_timeout=120)
    return at.run()


def _kept(at: AppTest) -> tuple[int, float]:
    """(clips kept, hours kept) as the page shows them; time as h:mm:ss, as `svp curate report` prints it."""
    clips = next(m for m in at.metric if m.label == "clips kept").value
    time = next(m for m in at.metric if m.label == "time kept").value
    h, m, s = re.fullmatch(r"(\d+):(\d\d):(\d\d) of \d+:\d\d:\d\d", time).groups()
    return int(re.match(r"([\d,]+) of", clips)[1].replace(",", "")), (
        int(h) * 3600 + int(m) * 60 + int(s)
    ) / 3600


def _hashes(at: AppTest) -> tuple[str, str]:
    """(the edited thresholds' hash, the folder's), from the page's caption."""
    caption = next(c.value for c in at.caption if " · thresholds " in c.value)
    return re.search(r"thresholds (\w+) \(folder: (\w+)\)", caption).groups()


@pytest.fixture(scope="module")
def folders(ray_session, tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "dashboard"
    work = tmp_path_factory.mktemp("dashboard_pages")
    return curated_copy(base, work / "page"), curated_copy(base, work / "cli")


def test_moving_a_threshold_gives_the_counts_svp_curate_filter_produces(folders, monkeypatch):
    page_folder, cli_folder = folders
    at = _page("curation_page", monkeypatch, [page_folder])
    assert not at.exception and not at.error
    before = _kept(at)
    assert at.text_input(key="save:name").value == f"thresholds-{_hashes(at)[1]}.yaml"
    clips = pd.read_parquet(page_folder / CLIPS_FILE)
    assert before[0] == int(clips["kept"].sum())  # starts at the folder's own thresholds
    motion = clips["motion_score"].dropna().to_numpy()
    new_min = float(np.quantile(motion, 0.5))
    key = next(w.key for w in at.number_input if w.key.endswith(":motion_score:min"))
    at.number_input(key=key).set_value(new_min).run()
    assert not at.exception
    moved = _kept(at)
    assert moved[0] != before[0]
    # The proposed file name follows the edits: the hash of the thresholds as moved, not the folder's.
    edited, folder_hash = _hashes(at)
    assert edited != folder_hash and at.text_input(key="save:name").value == f"thresholds-{edited}.yaml"

    at.text_input(key="save:name").set_value("tighter.yaml").run()
    at.button(key="save:go").click().run()
    saved = Path(at.session_state[f"saved:{page_folder.resolve()}"])
    assert saved == page_folder.resolve() / "tighter.yaml" and saved.is_file()
    at.button(key="save:go").click().run()  # saving again without "overwrite" refuses
    assert any("exists" in e.value for e in at.error)

    # The command line on an identical copy of the folder keeps exactly what the page counted.
    assert main(["curate", "filter", str(cli_folder), "--thresholds", str(saved)]) == 0
    report = read_report(cli_folder)
    assert report["clips"]["kept"] == moved[0]
    assert report["clips"]["hours_kept"] == pytest.approx(moved[1], abs=5e-4)

    # "Apply" runs the same re-filter in the background; afterwards the page starts from the new thresholds.
    at.button(key="apply:go").click().run()
    job = at.session_state["apply_job"]
    job.wait(300)
    assert job.error is None, job.error
    at.run()
    assert not at.exception
    assert _kept(at)[0] == moved[0]
    # The applied report's tables are plain text, not highlighted as Python.
    assert any("Curation: in and out" in c.value for c in at.code)
    assert {c.proto.language for c in at.code} <= {"", "plaintext", "text"}, [
        c.proto.language for c in at.code
    ]
    applied = pd.read_parquet(page_folder / CLIPS_FILE)
    assert applied["kept"].tolist() == pd.read_parquet(cli_folder / CLIPS_FILE)["kept"].tolist()


def test_curation_page_shows_charts_gallery_and_sources(folders, monkeypatch):
    page_folder, _ = folders
    at = _page("curation_page", monkeypatch, [page_folder])
    assert not at.exception
    assert len(at.get("image")) >= 4  # histograms, keep curves and boundary thumbnails render as images
    assert {"failed", "rejected"} & set(at.dataframe[-1].value["status"])
    first = next(b for b in at.button if b.key.startswith("play:"))
    first.click().run()
    assert not at.exception and at.get("video")


def test_folders_curated_before_thumbnails_open_with_placeholders(folders, monkeypatch, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(folders[0], old)
    shutil.rmtree(old / THUMBS_DIR)
    at = _page("curation_page", monkeypatch, [old])
    assert not at.exception and not at.error
    with_thumbs = _page("curation_page", monkeypatch, [folders[0]])
    assert len(at.get("image")) == len(with_thumbs.get("image")) > 2  # a placeholder per boundary clip


def test_curation_page_bad_inputs_are_messages(folders, monkeypatch, tmp_path):
    at = _page("curation_page", monkeypatch, [tmp_path])
    assert not at.exception and "not a curation output folder" in at.error[0].value

    page_folder, _ = folders
    at = _page("curation_page", monkeypatch, [page_folder])
    key = next(w.key for w in at.number_input if w.key.endswith(":motion_score:min"))
    at.text_input(key="save:name").set_value("mine.yaml")
    at.number_input(key=key).set_value(1e6).run()
    assert not at.exception and any("above every score" in w.value for w in at.warning)
    assert at.text_input(key="save:name").value == "mine.yaml"  # a name the user typed stays

    lacking = tmp_path / "lacking"
    shutil.copytree(page_folder, lacking)
    # The folder's thresholds.yaml names aesthetic_score (the default thresholds); the table lacks it.
    clips = pd.read_parquet(lacking / CLIPS_FILE).drop(columns=["aesthetic_score"])
    write_table_atomic(clips_table(clips), lacking / CLIPS_FILE)
    at = _page("curation_page", monkeypatch, [lacking])
    assert not at.exception and "aesthetic_score" in at.error[0].value


def test_experiments_page_shows_only_the_changed_params(ray_session, monkeypatch, tmp_path_factory, tmp_path):
    store = two_runs(tmp_path_factory.getbasetemp() / "dashboard")
    uri = f"sqlite:///{store.resolve()}/mlflow.db"
    at = _page("experiments_page", monkeypatch, tracking_uri=uri)
    assert not at.exception and not at.error
    table = at.dataframe[0].value
    assert len(table) == 2 and set(table["status"]) == {"FINISHED"}
    at.multiselect(key="exp:pick").set_value(at.multiselect(key="exp:pick").options).run()
    assert not at.exception
    params = at.dataframe[1].value
    assert [i for i in params.index if "lr" in i], params
    assert all(len(set(row)) > 1 for row in params.itertuples(index=False))  # only params that differ
    assert not any("steps" in i or "seed" in i for i in params.index)
    assert len(at.get("image")) >= 2  # loss and lr curves
    assert len(at.get("video")) == 2  # the same step's sample of each run, side by side

    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    MlflowClient(empty).search_experiments()  # a store with its tables and no runs
    at = _page("experiments_page", monkeypatch, tracking_uri=empty)
    assert not at.exception and "no training runs" in at.error[0].value


def test_compare_opens_on_the_latest_sample_step_every_run_has(
    ray_session, monkeypatch, tmp_path_factory, tmp_path
):
    """One run sampled at steps 2 and 4, the other at step 2 only: the page starts on step 2, both side by side
    (not on step 4, which one run lacks)."""
    from training.tracking.runs import TAG_PIPELINE, TAG_STAGE

    base = tmp_path_factory.getbasetemp() / "dashboard"
    two_runs(base)  # made once per session: a real sample video to log
    video = next(base.rglob("step00000002.mp4"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("samples", artifact_location=str(tmp_path / "artifacts"))
    for name, steps in (("short", (2,)), ("long", (2, 4))):
        run = client.create_run(experiment, tags={TAG_PIPELINE: "samples", TAG_STAGE: "image"}, run_name=name)
        for step in steps:
            copy = tmp_path / name / f"step{step:08d}.mp4"
            copy.parent.mkdir(exist_ok=True)
            shutil.copyfile(video, copy)
            client.log_artifact(run.info.run_id, str(copy), "samples")
        client.set_terminated(run.info.run_id)
    at = _page("experiments_page", monkeypatch, tracking_uri=uri)
    at.multiselect(key="exp:pick").set_value(at.multiselect(key="exp:pick").options).run()
    assert not at.exception and not at.error
    assert at.selectbox(key="exp:sample").value == "step00000002.mp4"
    assert len(at.get("video")) == 2


def test_a_failed_apply_says_so_and_leaves_tables_and_thresholds(folders, monkeypatch, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(folders[1], broken)
    # Sources that went away and no transcoded clips kept: the re-filter cannot write its shards.
    clips = pd.read_parquet(broken / CLIPS_FILE).assign(uri=str(tmp_path / "gone.mp4"))
    write_table_atomic(clips_table(clips), broken / CLIPS_FILE)
    shutil.rmtree(broken / "shards" / ".transcoded")
    before = {n: (broken / n).read_bytes() for n in (CLIPS_FILE, "thresholds.yaml", "report.json")}
    at = _page("curation_page", monkeypatch, [broken])
    key = next(w.key for w in at.number_input if w.key.endswith(":motion_score:max"))
    at.number_input(key=key).set_value(1e9).run()
    at.button(key="save:go").click().run()
    at.button(key="apply:go").click().run()
    at.session_state["apply_job"].wait(300)
    at.run()
    assert not at.exception
    assert any("apply failed" in e.value for e in at.error)
    assert {n: (broken / n).read_bytes() for n in before} == before
