"""2 workers, ZeRO-2, tiny model, real Ray + DeepSpeed (gloo, CPU) + MLflow sqlite: the loss goes down, and the
`eval:` block is scored during training (`eval.every`), its videos shared between the ranks."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient
from training_runs import STEPS, image_pipeline, reference_run, tiny_data

from model import LinearDiT
from model.flow import flow_matching_loss
from model.pretrained import load_pretrained
from training.data.stage_data import StageData
from training.worker.checkpoints import export_complete
from training.worker.step import StageStep, step_generator

pytestmark = pytest.mark.slow


def fixed_loss(model: torch.nn.Module, step_math: StageStep, batch) -> float:
    """Flow-matching loss on one batch with fixed caption dropout, noise levels and noise."""
    losses = []
    with torch.no_grad():
        for k in range(4):
            g = step_generator(99, 0, k)
            latents, text, mask = step_math.encode(batch, g)
            noisy, timesteps, noise, weights = step_math.noise(latents, g)
            prediction = model(noisy, text, timesteps, text_mask=mask)
            losses.append(float(flow_matching_loss(prediction, latents, noise, weights)))
    return sum(losses) / len(losses)


def test_two_workers_zero2_loss_decreases(ray_session, tmp_path_factory):
    result = reference_run(tmp_path_factory)
    assert export_complete(result.export_dir)
    stage = image_pipeline(tiny_data(tmp_path_factory.getbasetemp())).stage("image")

    trained = load_pretrained(result.export_dir)
    torch.manual_seed(stage.seed)
    initial = LinearDiT(stage.model_config())  # the workers' fresh init: same seed, same config
    step_math = StageStep(stage, torch.device("cpu"), torch.float32)
    batch = next(StageData(stage, 0, 1).batches())
    before, after = fixed_loss(initial, step_math, batch), fixed_loss(trained, step_math, batch)
    assert after < 0.8 * before, (before, after)

    client = MlflowClient(f"sqlite:///{result.export_dir.parents[2]}/mlflow.db")
    history = client.get_metric_history(result.mlflow_run_id, "train/loss")
    assert [m.step for m in history] == list(range(1, STEPS + 1))
    metrics = client.get_run(result.mlflow_run_id).data.metrics
    for key in (
        "perf/samples_per_s",
        "perf/tokens_per_s",
        "perf/mfu",
        "data/wait_share",
        "train/grad_norm",
        "train/lr",
    ):
        assert key in metrics, key
    assert metrics["perf/samples_per_s"] > 0 and metrics["train/skipped_steps"] == 0

    # `eval.every: 4` (training_runs.REFERENCE_EVAL): the eval videos generated with the live weights at steps 4
    # and 8, one seed on each rank, gathered and logged by rank 0; step 12 (the last) by the export's evaluation.
    assert [m.step for m in client.get_metric_history(result.mlflow_run_id, "eval/flicker")] == [4, 8, 12]
    assert [m.step for m in client.get_metric_history(result.mlflow_run_id, "time/eval_s")] == [4, 8]
    files = {
        f.path.rsplit("/", 1)[1] for f in client.list_artifacts(result.mlflow_run_id, "eval/step00000004")
    }
    assert files == {"prompt00-seed0.mp4", "prompt00-seed1.mp4", "eval.json"}
    report = json.loads((result.export_dir.parent / "eval" / "step00000008" / "eval.json").read_text())
    assert [v["seed"] for v in report["videos"]] == [0, 1] and report["step"] == 8
    assert report["metrics"]["flicker"] >= 0 and not [s for s in report["skipped"] if "failed" in s]
