"""The curation config: YAML validated by pydantic, errors of one line naming the file and the key."""

from __future__ import annotations

import pytest

from core.errors import UserError
from curation.config import CurationConfig, load_config
from orchestration.cli import main


def test_defaults_and_overrides():
    cfg = load_config(None, {"scenes.min_clip_s": 1.5})
    assert isinstance(cfg, CurationConfig)
    assert cfg.scenes.min_clip_s == 1.5
    assert cfg.scoring_fingerprint() != load_config(None).scoring_fingerprint()
    # Shard settings are applied after scoring: they must not invalidate finished sources.
    assert (
        load_config(None, {"shards.fps": 8}).scoring_fingerprint() == load_config(None).scoring_fingerprint()
    )


def test_file_values_are_read(tmp_path):
    path = tmp_path / "curate.yaml"
    path.write_text("scenes:\n  min_clip_s: 3.0\nframes_per_clip: 6\n")
    cfg = load_config(path)
    assert (cfg.scenes.min_clip_s, cfg.frames_per_clip) == (3.0, 6)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("scenes:\n  min_clip_seconds: 3\n", "scenes.min_clip_seconds: unknown key"),
        ("frames_per_clip: -1\n", "frames_per_clip: Input should be greater than or equal to 1"),
        ("scenes: [1, 2\n", "invalid YAML at line"),
        ("- a\n- b\n", "expected a mapping at the top level, got list"),
    ],
)
def test_bad_files_give_one_line_naming_file_and_key(tmp_path, text, expected):
    path = tmp_path / "curate.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and expected in message
    assert "\n" not in message


def test_cli_reports_a_bad_config_in_one_line(tmp_path, capsys):
    path = tmp_path / "curate.yaml"
    path.write_text("motion:\n  bogus: 1\n")
    (tmp_path / "in").mkdir()
    code = main(
        ["curate", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--config", str(path)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == f"svp: error: {path}: motion.bogus: unknown key"


def test_missing_config_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="curation config not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_dotted_overrides_set_keys_and_name_the_valid_ones(tmp_path, capsys):
    assert load_config(None, {"motion.short_side": 64, "scenes.min_clip_s": 0.5}).scenes.min_clip_s == 0.5
    with pytest.raises(UserError, match=r"config: scenes\.min_clip: unknown key 'min_clip' \(did you mean"):
        load_config(None, {"scenes.min_clip": 1})
    argv = ["curate", "--input", str(tmp_path), "--output", str(tmp_path / "o"), "--set", "motoin.x=1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("svp: error: config: motoin.x: unknown key 'motoin' (did you mean 'motion'?)"), err
    assert "\n" not in err and "scenes" in err and not (tmp_path / "o").exists()


def test_set_values_are_yaml_scalars_and_reach_the_thresholds(tmp_path):
    from core.dotted_keys import parse_value
    from curation.thresholds import load_thresholds

    assert [parse_value(v) for v in ("3e-3", "2", "true", "null", "[1, 2]", "'3'", "abc")] == [
        0.003,
        2,
        True,
        None,
        [1, 2],
        "3",
        "abc",
    ]
    path = tmp_path / "t.yaml"
    path.write_text("scores:\n  aesthetic_score: {min: 4.5}\n")
    t = load_thresholds(path, {"scores.motion_score.max": 9.0, "caption.require_caption": False})
    assert t.scores["motion_score"].max == 9.0 and t.scores["aesthetic_score"].min == 4.5
    with pytest.raises(UserError, match=r"t\.yaml: scores\.aesthetic_score\.mn: unknown key 'mn'.*max, min"):
        load_thresholds(path, {"scores.aesthetic_score.mn": 1})


def test_relative_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    path = folder / "c.yaml"
    path.write_text(
        "thresholds_file: t.yaml\naesthetic: {mlp_checkpoint: w/mlp.pt, clip_checkpoint: /abs/c.pt}\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = load_config("configs/c.yaml", {"caption.clip_checkpoint": "given.pt"})
    assert cfg.thresholds_file == str(folder / "t.yaml")
    assert cfg.aesthetic.mlp_checkpoint == folder / "w" / "mlp.pt"
    assert str(cfg.aesthetic.clip_checkpoint) == "/abs/c.pt"
    assert (
        str(cfg.caption.clip_checkpoint) == "given.pt"
    )  # the command line's own: from the current directory
