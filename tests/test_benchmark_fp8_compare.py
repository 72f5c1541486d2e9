"""benchmarks/fp8_compare.py: the inference part's rows at tiny size on the CPU (every section issue 23's goals
table is read from, from one run), and the loss-gap arithmetic on known losses."""

from __future__ import annotations

import json

import pytest

from benchmarks import fp8_goals_table
from benchmarks.fp8_compare import compare_losses, main


def test_the_inference_run_gives_every_goal_row_from_one_run(tmp_path):
    out = tmp_path / "inference.json"
    main(["inference", "--tiny", "--out", str(out)])
    rows = json.loads(out.read_text())
    assert not [r for r in rows if "error" in r or "skipped" in r], rows
    sections = {r["section"] for r in rows}
    assert {"transformer", "velocity_vs_bf16", "fp8_error", "vae_decode", "block_ar", "goals"} <= sections
    loops = {r["variant"] for r in rows if r["section"] == "transformer"}
    # Float8 side by side with bf16 and diffusers on the same weights and inputs.
    assert loops == {"eager, native", "eager, fp8", "diffusers eager"}
    agreement = {r["variant"]: r["rel_l2"] for r in rows if r["section"] == "velocity_vs_bf16"}
    assert agreement["diffusers eager"] < 1e-4  # the same math in fp32
    assert 1e-4 < agreement["fp8"] < 0.1  # float8 rounds, but not by much
    goals = {r["precision"]: r for r in rows if r["section"] == "goals"}
    assert set(goals) == {"native", "fp8"}
    fp8 = goals["fp8"]
    decode = next(r["seconds"] for r in rows if r["section"] == "vae_decode")
    assert fp8["end_to_end_s"] == pytest.approx(fp8["loop_s"] + decode, abs=0.01)
    assert 0 < fp8["final_latent_rel_l2"] < 0.2 and fp8["vs_diffusers"] > 0
    assert {r["variant"] for r in rows if r["section"] == "block_ar"} == {"eager, fused", "eager, fused, fp8"}

    # The goals table reads the same file: the inference goals measured, the training ones not run yet.
    table = fp8_goals_table.main([str(tmp_path)])
    assert f"| 50-step CFG loop, float8 | 22.68 s hand-written | ≤ 12 s | {fp8['loop_s']} s |" in table
    assert "| training MFU, 2B 480p, bf16 | 35.6% | ≥ 40% | not run |  |" in table
    ours, theirs = fp8["loop_s"], next(r["loop_s"] for r in rows if r.get("variant") == "diffusers eager")
    assert f"| 50-step loop: ours fp8 vs diffusers eager | {ours} s | {theirs} s |" in table


def test_the_loss_gap_is_read_from_the_last_third_and_a_running_mean():
    steps = 60
    bf16 = {"float8": "off", "losses": [1.0] * steps}
    fp8 = {"float8": "rowwise", "losses": [1.02] + [1.0] * 39 + [1.01] * 20}
    gap = compare_losses(bf16, fp8)
    assert gap["steps"] == steps and gap["mean_last_20"] == [1.0, 1.01]
    assert gap["gap_last"] == pytest.approx(0.01) and gap["gap_first_step"] == pytest.approx(0.02)
    assert gap["max_gap_running_mean_20"] == pytest.approx(0.01)
    # A float8 run its time box stopped at step 40 is compared over the 40 steps both ran.
    cut = compare_losses(bf16, {"float8": "rowwise", "losses": fp8["losses"][:40]})
    assert cut["steps"] == 40 and cut["steps_run"] == [60, 40] and cut["gap_last"] == pytest.approx(0.0)
    with pytest.raises(SystemExit, match="no losses"):
        compare_losses(bf16, {"float8": "rowwise", "losses": []})
