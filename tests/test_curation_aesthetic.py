"""Aesthetic scorer: skipped without weights, real loading path with a tiny random CLIP + MLP."""

from __future__ import annotations

import numpy as np
import pytest
from curation_tiny_models import save_tiny_aesthetic_mlp, save_tiny_clip

from curation import clip_model
from curation.aesthetic import AestheticConfig, AestheticScorer, availability


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("aesthetic")
    cfg, clip_weights = save_tiny_clip(folder)
    mlp = save_tiny_aesthetic_mlp(folder / "mlp.pth")
    return AestheticConfig(
        clip_model=str(cfg), clip_checkpoint=clip_weights, mlp_checkpoint=mlp, device="cpu"
    )


def _frames(seed: int, n: int = 3, h: int = 40, w: int = 56) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def test_without_weights_the_scorer_says_it_is_skipped(tmp_path):
    reason = availability(AestheticConfig())
    assert reason is not None and "aesthetic.clip_checkpoint" in reason and "skipped" in reason
    _, weights = save_tiny_clip(tmp_path)
    reason = availability(AestheticConfig(clip_checkpoint=weights))
    assert reason is not None and "aesthetic.mlp_checkpoint" in reason
    with pytest.raises(ValueError, match="skipped"):
        AestheticScorer(AestheticConfig())
    with pytest.raises(FileNotFoundError, match="aesthetic.mlp_checkpoint"):
        availability(AestheticConfig(clip_checkpoint=weights, mlp_checkpoint=tmp_path / "missing.pth"))


def test_scores_are_finite_deterministic_and_follow_the_frames(tiny_weights):
    assert availability(tiny_weights) is None
    batch = {"clip_id": np.array(["a", "b", "c"]), "frames": np.stack([_frames(0), _frames(1), _frames(0)])}
    first = AestheticScorer(tiny_weights)(dict(batch))["aesthetic_score"]
    clip_model._load_clip_cached.cache_clear()  # force a second load from the files
    second = AestheticScorer(tiny_weights)(dict(batch))["aesthetic_score"]
    assert np.all(np.isfinite(first)) and first.shape == (3,)
    np.testing.assert_allclose(first, second, rtol=0, atol=1e-6)
    assert first[0] == pytest.approx(first[2], abs=1e-6)  # same frames, same score
    assert abs(first[0] - first[1]) > 1e-6  # different frames, different score
    out = AestheticScorer(tiny_weights)(dict(batch))
    assert out["frames"] is batch["frames"]  # frames stay for the next stage


def test_rows_of_different_shapes_and_rows_without_frames(tiny_weights):
    scorer = AestheticScorer(tiny_weights)
    frames = np.empty(3, dtype=object)
    frames[0], frames[1] = _frames(0), _frames(2, n=2, h=64, w=36)
    frames[2] = np.zeros((0, 8, 8, 3), dtype=np.uint8)
    scores = scorer({"frames": frames})["aesthetic_score"]
    assert np.isfinite(scores[:2]).all() and np.isnan(scores[2])
    same = scorer({"frames": _frames(0)[None]})["aesthetic_score"]
    assert same[0] == pytest.approx(scores[0], abs=1e-5)  # batching does not change a row's score


def test_min_reduction_is_at_most_the_mean(tiny_weights):
    batch = {"frames": np.stack([_frames(5, n=4)])}
    mean = AestheticScorer(tiny_weights)(dict(batch))["aesthetic_score"][0]
    low = AestheticScorer(tiny_weights.model_copy(update={"frame_reduce": "min"}))(dict(batch))
    assert low["aesthetic_score"][0] <= mean + 1e-6


def test_mlp_that_does_not_fit_the_clip_width_is_a_clear_error(tiny_weights, tmp_path):
    wrong = save_tiny_aesthetic_mlp(tmp_path / "mlp768.pth", input_size=768)
    with pytest.raises(ValueError, match="768-d embeddings"):
        AestheticScorer(tiny_weights.model_copy(update={"mlp_checkpoint": wrong}))


def test_hub_folder_layout_loads_through_local_dir(tmp_path):
    import json

    from benchmarks.random_weights import TINY_CLIP_CFG

    folder = tmp_path / "clip"
    _, weights = save_tiny_clip(folder)
    weights.rename(folder / "open_clip_model.safetensors")
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CFG}))
    mlp = save_tiny_aesthetic_mlp(tmp_path / "mlp.safetensors")
    cfg = AestheticConfig(clip_checkpoint=folder, mlp_checkpoint=mlp, device="cpu")
    scores = AestheticScorer(cfg)({"frames": np.stack([_frames(0)])})["aesthetic_score"]
    assert np.isfinite(scores).all()
