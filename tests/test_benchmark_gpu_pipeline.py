"""benchmarks/gpu_pipeline.py --tiny: the one-GPU recipe's code path on the CPU, every part through the real
`svp` commands (curate with the aesthetic scorer and the VLM captioner as actor pools, filter, encode, a
stage trained from the latents with a worker SIGKILLed after its first checkpoint, generate)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from benchmarks.gpu_pipeline_parts import PARTS


def test_the_recipe_runs_every_part_and_records_its_figures(tmp_path):
    out = tmp_path / "tiny.json"
    argv = [sys.executable, "-m", "benchmarks.gpu_pipeline", "--tiny", "--out", str(out)]
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert all(report[part]["done"] for part in PARTS), report.keys()
    assert not report.get("errors")

    curate = report["curate"]
    # Both GPU-side scorers ran as actor pools and said how fast; the filter kept the clips asked for.
    assert curate["aesthetic_clips_per_s"] > 0 and curate["caption_clips_per_s"] > 0
    assert curate["clips"] >= curate["kept"] == 6
    assert report["encode"]["clips"] == 6

    train = report["train"]
    # The worker died after the step-4 checkpoint; the same run went on from its last checkpoint (4, or 8
    # when the kill came after that one) to the last step, with no step lost.
    assert train["kill"]["event"] == "SIGKILL" and train["kill"]["pid"] > 0
    assert train["kill"]["last_step_logged"] > 4 and train["resumed_from_step"][0] in (4, 8)
    assert train["no_step_lost"] and train["last_step"] == 12
    assert train["replayed_max_abs_loss_diff"] is None or train["replayed_max_abs_loss_diff"] < 1e-4

    record = report["generate"]["record"]
    assert record is not None and (tmp_path / "tiny" / "generated.mp4").is_file()
    assert "| curate |" in done.stdout  # the table is printed last


def test_no_step_lost_reads_the_trainers_log_interval():
    """On GPUs the trainer logs every 10th step: the H100 run killed after step 40 and resumed from the step-30
    checkpoint logged 10..40, then 40..60, and lost nothing; a resume that skips past its checkpoint did."""
    from benchmarks.two_gpu_runs import no_step_lost

    every_10th = [{10: 1.54, 20: 1.40, 30: 1.07, 40: 1.0552}, {40: 1.0552, 50: 1.02, 60: 0.99}]
    assert no_step_lost(every_10th, resumed_from=30)
    assert not no_step_lost(every_10th, resumed_from=20)  # attempt 1 should have logged step 30 again
    assert not no_step_lost([every_10th[0], {50: 1.0, 60: 1.0}], resumed_from=30)  # step 40 not redone
    every_step = [{s: 1.0 for s in range(1, 10)}, {s: 1.0 for s in range(5, 13)}]
    assert no_step_lost(every_step, resumed_from=4)
    assert not no_step_lost([every_step[0], {s: 1.0 for s in range(6, 13)}], resumed_from=4)
    assert not no_step_lost([every_step[0], {}], resumed_from=4)
