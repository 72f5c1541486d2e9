"""`svp synth`, `svp curate`, `svp curate filter`, `svp curate report`: the commands a user types, run
through the real CLI entry point (in this process, on the session's Ray; `svp curate` itself as a user runs it,
in a process of its own, whose console must stay calm)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from process_groups import own_session_svp

from orchestration.cli import main

# Library chatter a user must not see on `svp curate`'s console without --verbose: Ray's C++ log lines
# (`[DATE TIME E PID TID] core_worker.cc:N: … max_restarts > 0`), its Python INFO lines, matplotlib's font cache.
CHATTER = re.compile(
    r"\[\d{4}-\d\d-\d\d [\d:,]+ [IWE] \d+ \d+\]|core_worker\.cc|logging\.cc|fontManager| INFO "
)


@pytest.fixture(scope="module")
def curated(ray_session, tmp_path_factory):
    """`svp curate` as a user runs it: its own process and private Ray; (corpus root, output, console)."""
    root = tmp_path_factory.mktemp("cli")
    assert main(["synth", str(root / "corpus"), "--videos", "3", "--seed", "4"]) == 0
    assert (root / "corpus" / "ground_truth.json").is_file()
    out = root / "out"
    args = ["curate", "--input", str(root / "corpus" / "videos"), "--output", str(out)]
    # An empty matplotlib cache: the report's chart builds the font cache, which matplotlib announces.
    env = {"MPLCONFIGDIR": str(root / "mpl")}
    with own_session_svp([*args, "--min-clip-s", "1", "--max-clip-s", "2"], set_env=env, text=True) as proc:
        console = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, console[-3000:]
    return root, out, console


def test_curate_console_shows_no_library_chatter(curated):
    console = curated[2]
    assert "Curation: in and out" in console  # the report, and nothing of Ray's or matplotlib's
    assert not CHATTER.search(console), console
    assert (curated[0] / "mpl").is_dir()  # matplotlib did build its font cache in this run


def test_curate_writes_the_output_folder(curated, capsys):
    root, out, _ = curated
    for name in (
        "sources.parquet",
        "clips.parquet",
        "thresholds.yaml",
        "report.json",
        "shards/index.parquet",
    ):
        assert (out / name).is_file(), name
    clips = pd.read_parquet(out / "clips.parquet")
    # --max-clip-s 2 at 24 fps: no clip longer than 48 frames.
    assert (clips["end_frame"] - clips["start_frame"]).max() <= 48
    assert main(["curate", "report", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sources in" in printed
    assert main(["curate", "report", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["clips"]["total"] == len(clips)


def test_filter_rewrites_decisions_without_decoding(curated):
    root, out, _ = curated
    clips = pd.read_parquet(out / "clips.parquet")
    cut = float(clips["motion_score"].median())
    strict = root / "strict.yaml"
    strict.write_text(yaml.safe_dump({"scores": {"motion_score": {"min": cut}}}))
    assert main(["curate", "filter", str(out), "--thresholds", str(strict)]) == 0
    after = pd.read_parquet(out / "clips.parquet")
    expect = after["motion_score"] >= cut
    assert list(after["kept"]) == list(expect)
    assert all("motion_score.min" in f for f in after.loc[~after["kept"], "filtered_by"])
    index = pd.read_parquet(out / "shards" / "index.parquet")
    assert set(index["key"]) == set(after.loc[after["kept"], "clip_id"])
    assert yaml.safe_load((out / "thresholds.yaml").read_text())["scores"]["motion_score"]["min"] == cut


def test_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    assert main(["curate", "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"svp: error: input not found: {tmp_path / 'missing'}"
    bad = tmp_path / "bad.yaml"
    bad.write_text("scenes:\n  min_clip_z: 3\n")
    assert (
        main(["curate", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--config", str(bad)]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("svp: error: ") and str(bad) in err and "scenes.min_clip_z" in err
    assert main(["curate", "--input", str(tmp_path)]) == 2
    assert "--output" in capsys.readouterr().err
    assert main(["curate", "report", str(tmp_path)]) == 2
    assert "no report.json" in capsys.readouterr().err


def test_sidecars_of_a_single_file_and_a_glob_and_missing_captions_are_null(curated, tmp_path):
    root, _, _ = curated
    videos = root / "corpus" / "videos"
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(videos / "video_000.mp4", inputs / "captioned.mp4")
    shutil.copy(videos / "video_000.txt", inputs / "captioned.txt")
    shutil.copy(videos / "video_001.mp4", inputs / "bare.mp4")  # no sidecar
    caption = (inputs / "captioned.txt").read_text().strip()
    for name, given in (("single", inputs / "captioned.mp4"), ("glob", inputs / "*.mp4")):
        out = tmp_path / name
        args = [
            "curate",
            "--input",
            str(given),
            "--output",
            str(out),
            "--min-clip-s",
            "1",
            "--max-clip-s",
            "2",
        ]
        assert main(args) == 0
        clips = pd.read_parquet(out / "clips.parquet")
        sources = pd.read_parquet(out / "sources.parquet").set_index("source_id")["uri"]
        names = clips["source_id"].map(sources).map(lambda u: u.rsplit("/", 1)[-1])
        assert set(names) == ({"captioned.mp4"} if name == "single" else {"captioned.mp4", "bare.mp4"})
        found = clips[names == "captioned.mp4"]
        assert (
            len(found)
            and (found["caption"] == caption).all()
            and (found["caption_source"] == "sidecar").all()
        )
        missing = clips[names == "bare.mp4"]
        assert missing["caption"].isna().all(), missing["caption"].tolist()  # null, not the string "nan"
        assert all("caption.required" in f for f in missing["filtered_by"])


def _tree(folder):
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_filter_history_dry_run_kept_transcodes_and_prune(curated, tmp_path, monkeypatch, capsys):
    from curation import shards
    from curation.thresholds import load_thresholds, thresholds_hash

    root, out, _ = curated
    every = tmp_path / "every.yaml"
    every.write_text(yaml.safe_dump({"caption": {"require_caption": False, "max_caption_issues": None}}))
    before = load_thresholds(out / "thresholds.yaml")
    assert main(["curate", "filter", str(out), "--thresholds", str(every)]) == 0
    history = {p.stem for p in (out / "thresholds-history").glob("*.yaml")}
    assert {thresholds_hash(before), thresholds_hash(load_thresholds(every))} <= history
    clips = pd.read_parquet(out / "clips.parquet")
    assert clips["kept"].all()
    cut = float(clips["motion_score"].median())
    drops = int((clips["motion_score"] < cut).sum())
    strict = tmp_path / "strict.yaml"
    strict.write_text(
        yaml.safe_dump({"scores": {"motion_score": {"min": cut}}, **yaml.safe_load(every.read_text())})
    )

    capsys.readouterr()
    files = _tree(out)
    assert main(["curate", "filter", str(out), "--thresholds", str(strict), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("dry run:") and re.search(rf"motion_score\.min\s*│\s*{drops}\s*│", printed)
    assert _tree(out) == files  # nothing written
    # The same thresholds as `every` plus one key from the command line.
    argv = ["curate", "filter", str(out), "--thresholds", str(every), "--dry-run"]
    assert main([*argv, "--set", f"scores.motion_score.min={cut!r}"]) == 0
    assert re.search(rf"motion_score\.min\s*│\s*{drops}\s*│", capsys.readouterr().out)

    assert main(["curate", "filter", str(out), "--thresholds", str(strict)]) == 0
    cache = out / "shards" / ".transcoded"
    assert {p.stem for p in cache.glob("*.mp4")} == set(clips["clip_id"])  # dropped clips keep theirs

    def no_decoding(*args, **kwargs):
        raise AssertionError("loosening the thresholds again must not transcode")

    with monkeypatch.context() as patch:
        patch.setattr(shards, "transcode_rows", no_decoding)
        assert main(["curate", "filter", str(out), "--thresholds", str(every)]) == 0
    assert len(pd.read_parquet(out / "shards" / "index.parquet")) == len(clips)

    assert main(["curate", "filter", str(out), "--thresholds", str(strict)]) == 0
    capsys.readouterr()
    assert main(["curate", "prune", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"removed {drops} transcoded clips")
    kept = set(pd.read_parquet(out / "shards" / "index.parquet")["key"])
    assert {p.stem for p in cache.glob("*.mp4")} == kept and len(kept) == len(clips) - drops


def test_report_shows_times_rejected_files_and_scene_time_lost(curated):
    root, out, _ = curated
    data = json.loads((out / "report.json").read_text())
    s = data["sources"]
    seconds = round(s["hours_in"] * 3600)
    # As a user types it: a process of its own (the report needs no Ray).
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    argv = [sys.executable, "-m", "orchestration.cli", "curate", "report", str(out), "--limit", "1"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    printed = done.stdout
    time_in = f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    assert re.search(rf"sources in\s*│\s*{s['total']}\s*│\s*{time_in}\s*│", printed), printed

    sources = pd.read_parquet(out / "sources.parquet")
    bad = sources[sources["status"] != "ok"].sort_values(["status", "uri"])
    assert len(bad) >= 2  # synth adds broken files
    first = bad.iloc[0]
    assert first["uri"].rsplit("/", 1)[-1] in printed and first["reason"][:30] in printed
    assert bad.iloc[1]["uri"].rsplit("/", 1)[-1] not in printed
    assert f"and {len(bad) - 1} more" in printed

    # Scene time no clip covers, by cause; with the clips it adds up to the time of the ok sources.
    assert "scene time lost: trimmed at cuts" in printed and "scene time lost: pieces < min_clip_s" in printed
    lost = s["hours_trimmed"] + s["hours_short_pieces"]
    assert s["hours_trimmed"] > 0  # the synthetic videos have cuts
    assert abs(s["hours_ok"] - data["clips"]["hours_total"] - lost) * 3600 < 0.2 * s["ok"]
