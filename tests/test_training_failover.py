"""A worker process killed mid-stage is restarted by Ray and the stage ends exactly where an uninterrupted
one does; errors a retry cannot fix stop at once instead of burning Ray's retries."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient
from ray.train.v2.api.exceptions import ControllerError
from safetensors.torch import load_file
from training_runs import image_pipeline, reference_run, sqlite_tracker, tiny_data

from model import LinearDiT, LinearDiTConfig
from model.pretrained import save_pretrained
from training.driver.drills import FaultInjection, fault_drills
from training.driver.stage_run import run_stage
from training.errors import ShapeMismatchError
from training.tracking.runs import TAG_ERROR
from training.worker.checkpoints import staging_dir

pytestmark = pytest.mark.slow


def test_killed_worker_resumes_from_checkpoint_and_matches_uninterrupted_run(
    ray_session, tmp_path, tmp_path_factory
):
    reference = reference_run(tmp_path_factory)
    pipeline = image_pipeline(tiny_data(tmp_path_factory.getbasetemp()))
    work = tmp_path / "work"
    tracker = sqlite_tracker(pipeline, work)
    marker = tmp_path / "killed.txt"
    # Rank 1 dies with SIGKILL inside the step-8 save (first attempt only), its copy staged but not reported:
    # the last checkpoint is step 4.
    fault = FaultInjection(kill_at_step=8, rank=1, marker=str(marker), during="save")

    with fault_drills():
        result = run_stage(
            pipeline, "image", workers=2, work_dir=work, tracker=tracker, max_failures=2, fault=fault
        )

    assert "killed rank 1 at step 8 during save" in marker.read_text()
    # The killed save was staged under the run's own folder, and the restarted worker removed it.
    (run_dir,) = [p for p in (work / "ray").iterdir() if p.name.startswith("tiny-image-")]
    staging = staging_dir(run_dir)
    assert staging.is_dir() and not list(staging.rglob("step*"))
    resumed = MlflowClient(tracker.tracking_uri).get_metric_history(
        result.mlflow_run_id, "train/resumed_from_step"
    )
    assert [m.value for m in resumed] == [4.0]
    # Exactly equal, not just close: the resumed attempt replays steps 5-12 with the same data (saved
    # positions), the same random draws (generators seeded by seed/rank/step), the same optimizer and LR
    # state (DeepSpeed checkpoint) and the same reduction order (2 ranks, gloo, fp32 on CPU), so every
    # float operation is repeated bit for bit.
    for name in ("model.safetensors", "ema.safetensors"):
        expected = load_file(str(reference.export_dir / name))
        got = load_file(str(result.export_dir / name))
        assert expected.keys() == got.keys()
        for key in expected:
            assert torch.equal(expected[key], got[key]), (name, key)


def test_shape_mismatch_fails_at_once_without_retries(ray_session, tmp_path, tmp_path_factory):
    # An export whose patch embedding does not fit the stage's model (192 latent channels vs 48).
    wrong = LinearDiT(
        LinearDiTConfig.from_preset("tiny", in_channels=192, out_channels=192, patch_size=(1, 1, 1))
    )
    export = save_pretrained(wrong, tmp_path / "wrong-export")
    pipeline = image_pipeline(
        tiny_data(tmp_path_factory.getbasetemp()), **{"stages.image.init_from": {"path": str(export)}}
    )

    tracker = sqlite_tracker(pipeline, tmp_path / "work")
    with pytest.raises(ShapeMismatchError, match=r"patch_embedding\.weight .*drop_keys") as caught:
        run_stage(pipeline, "image", workers=1, work_dir=tmp_path / "work", max_failures=3, tracker=tracker)
    # Raised by the fail-fast callback on the controller (not retried), not after the retries ran out.
    assert isinstance(caught.value.__cause__, ControllerError)
    # The stage's child run and the parent it made end FAILED, with the error as a tag (not left RUNNING).
    runs = MlflowClient(tracker.tracking_uri).search_runs([tracker.experiment_id])
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "FAILED"
        assert run.data.tags[TAG_ERROR].startswith("ShapeMismatchError: rank 0: ")
        assert "patch_embedding.weight" in run.data.tags[TAG_ERROR]


def test_fault_injection_is_refused_outside_a_drill(tmp_path, tmp_path_factory):
    # A fault kills real workers: it must never ride along in a production run by accident.
    pipeline = image_pipeline(tiny_data(tmp_path_factory.getbasetemp()))
    fault = FaultInjection(kill_at_step=1, rank=0, marker=str(tmp_path / "killed.txt"))
    with pytest.raises(RuntimeError, match="for tests and drills only"):
        run_stage(pipeline, "image", workers=1, work_dir=tmp_path / "work", fault=fault)
    assert not (tmp_path / "work").exists()
