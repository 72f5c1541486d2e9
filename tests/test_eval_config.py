"""A stage's `eval:` block: validated like every key, paths relative to the YAML, and never part of what
decides whether the stage retrains."""

from __future__ import annotations

import pytest
from test_training_config import edited, load_error, write

from training.config import load_pipeline


def test_eval_block_resolves_paths_and_leaves_the_fingerprint_alone(tmp_path):
    plain = load_pipeline(write(tmp_path, edited()), variables={"data_root": "/data"}).stage("vid")
    block = {"prompts_file": "prompts.txt", "clip_checkpoint": "w/clip.safetensors", "seeds": [0, 3]}
    block |= {"video": "clip.mp4", "every": 4}  # continuation, and during training every 4 steps
    path = write(tmp_path, edited(eval=block), "with_eval.yaml")
    stage = load_pipeline(path, variables={"data_root": "/data"}).stage("vid")
    assert stage.eval.prompts_file == str(tmp_path / "prompts.txt")
    assert stage.eval.clip_checkpoint == str(tmp_path / "w" / "clip.safetensors")
    assert stage.eval.seeds == [0, 3] and stage.eval.steps == 10
    assert stage.eval.video == str(tmp_path / "clip.mp4") and stage.eval.every == 4
    # Scoring an export never retrains it: the block is outside the fingerprint and the training inputs.
    assert stage.fingerprint() == plain.fingerprint()
    assert stage.training_inputs() == plain.training_inputs() == plain.resolved()
    assert stage.resolved()["eval"]["seeds"] == [0, 3] and "eval.seeds" in stage.to_flat_params()


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ({"prompts": ["a"], "every": 0}, "every"),
        ({"prompts": ["a"], "evry": 2}, "evry"),
        ({"prompts": ["a"], "image": "a.png", "video": "b.mp4"}, "cannot be combined"),
        ({"seeds": [0]}, "needs prompts"),
        ({"prompts": ["a"], "steps": 0}, "steps"),
    ],
)
def test_bad_eval_blocks_name_the_key(tmp_path, block, expected):
    assert expected in load_error(tmp_path, edited(eval=block))
