"""The two-GPU training recipe: the 2B model's 480p video stage through `svp train` on Ray Train + DeepSpeed
(bf16, ZeRO-2, NCCL, compile_blocks), one worker per GPU, with a worker killed and the stage resumed.

    python -m benchmarks.two_gpu_training --out two_gpu.json [--work /tmp/svp-2gpu] [--data CURATION_OUT]
    python -m benchmarks.two_gpu_training --tiny --out tiny.json     # CPU: tiny preset, 2 gloo workers

On a machine with 2 GPUs (benchmarks/gpu_setup.sh brings the packages a bare GPU machine lacks):
  1. data: a synthetic 480p corpus (`curation.synth`) curated by `svp curate` into shards at 480p, or --data;
  2. weights: random Wan2.1 VAE (diffusers AutoencoderKLWan) and random Gemma-2-2B, written where the real
     loaders read them (benchmarks/random_weights.py);
  3. run A, `svp train --workers 2 --gpus-per-worker 1`: once the checkpoint of step E (--checkpoint-every)
     is committed and step E+1 is logged, one Ray Train worker process is SIGKILLed (found in the process
     table); Ray restarts the group on the same GPUs from that checkpoint; the steps after E run again and
     their losses are compared with the first attempt's (same data position and seeds: equal up to bf16
     nondeterminism). Once step E+3 is logged again, the driver gets SIGINT (Ctrl-C: no export);
  4. run B, the same command with `--workers 1`: the 2-GPU checkpoint is converted to a universal one, the
     stage continues on 1 GPU with the same per-GPU batch to the last step and is exported.
With --stop-after-a the recipe ends after step 3 (for machines lent in calls of limited length); run again
with the same --work, it finds run A recorded there (run_a.json, report.json) and goes on with step 4.
Figures (steps/s, tokens/s per GPU on 2 and on 1 GPU, scaling efficiency, first-step time, checkpoint save
and load time and size, export time, the losses around the kill and the 2 -> 1 resume) and svp's essential
console lines go to the --out JSON; progress is printed as it goes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.two_gpu_runs import (
    TrainRun,
    checkpoint_sizes,
    folder_bytes,
    last_step,
    no_step_lost,
    say,
    stage_history,
    svp_train_argv,
)

PIPELINE = "two-gpu"
STAGE = "video-480p"
RUNS: dict[str, TrainRun] = {}  # the runs started so far, by name
PRESETS = Path(__file__).resolve().parent.parent / "training" / "presets"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="JSON of every figure and the essential log lines")
    p.add_argument("--work", type=Path, default=None, help="work folder (default: beside --out)")
    p.add_argument("--data", default=None, help="an existing curation output (skips synth + curate)")
    p.add_argument("--tiny", action="store_true", help="CPU: tiny preset, 2 gloo workers")
    p.add_argument(
        "--gpus",
        type=int,
        default=2,
        help="workers of run A (1: the kill and resume on one GPU, no 2 -> 1 step)",
    )
    p.add_argument("--steps", type=int, default=None, help="default: 8 on GPUs, 30 with --tiny")
    p.add_argument("--checkpoint-every", type=int, default=None, help="default: 4 on GPUs, 10 with --tiny")
    p.add_argument("--videos", type=int, default=4, help="synthetic source videos")
    p.add_argument("--timeout", type=float, default=3600, help="seconds for each svp train run")
    p.add_argument(
        "--stop-after-a",
        action="store_true",
        help="end after run A; the same command again (same --work) goes on with run B",
    )
    args = p.parse_args()
    args.steps = args.steps or (30 if args.tiny else 8)
    args.checkpoint_every = args.checkpoint_every or (10 if args.tiny else 4)
    if args.steps < args.checkpoint_every + 4:
        p.error("--steps must leave >= 4 steps after the first checkpoint (the kill, the rerun, 1 GPU)")
    args.work = (args.work or args.out.with_suffix("")).resolve()
    return args


def make_data(args: argparse.Namespace, report: dict) -> Path:
    """A synthetic corpus curated by the real `svp curate` (480p shards), or --data as it is."""
    if args.data:
        return Path(args.data).resolve()
    from curation.synth import VIDEOS_DIR, make_corpus

    raw, out = args.work / "raw", args.work / "curated"
    t0 = time.perf_counter()
    size = dict(width=160, height=96, fps=24.0) if args.tiny else dict(width=832, height=480, fps=16.0)
    shots = (2.0, 3.0) if args.tiny else (6.0, 7.0)
    make_corpus(raw, args.videos, seed=0, broken=False, shot_seconds=shots, shots_per_video=(1, 1), **size)
    curate_yaml = args.work / "curate.yaml"
    shards = {"short_side": 96 if args.tiny else 480, "fps": 8.0 if args.tiny else 16.0}
    curate_yaml.write_text(
        yaml.safe_dump({"shards": shards, "scenes": {"min_clip_s": 1.5 if args.tiny else 5.5}})
    )
    t1 = time.perf_counter()
    argv = [sys.executable, "-m", "orchestration.cli", "curate", "--input", str(raw / VIDEOS_DIR)]
    argv += ["--output", str(out), "--config", str(curate_yaml)]
    say(f"data: {args.videos} synthetic videos at {size['width']}x{size['height']} -> svp curate")
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    (args.work / "curate.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"svp curate failed ({done.returncode}): {done.stderr[-2000:]}")
    clips = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    report["data"] = {"synth_s": round(t1 - t0, 1), "curate_s": round(time.perf_counter() - t1, 1)}
    report["data"]["clips"] = clips.get("clips")
    say(f"data: curated in {report['data']['curate_s']} s -> {out}")
    return out


def make_weights(args: argparse.Namespace, report: dict) -> Path | None:
    """Random Wan2.1 VAE + Gemma-2-2B on disk (GPU run only; --tiny uses the tiny preset's built-in ones)."""
    if args.tiny:
        return None
    from benchmarks.random_weights import write_gemma2, write_wan_vae

    root = args.work / "weights"
    t0 = time.perf_counter()
    if not (root / "Wan2.1-VAE" / "config.json").is_file():
        write_wan_vae(root / "Wan2.1-VAE", device="cuda")
    if not (root / "gemma-2-2b-it" / "config.json").is_file():
        write_gemma2(root / "gemma-2-2b-it", "2b", device="cuda")
    import torch

    torch.cuda.empty_cache()  # the training workers get the GPUs' memory back
    report["weights"] = {"write_s": round(time.perf_counter() - t0, 1), "bytes": folder_bytes(root)}
    say(f"weights: random Wan2.1 VAE + Gemma-2-2B in {report['weights']['write_s']} s -> {root}")
    return root


def write_pipeline(args: argparse.Namespace) -> Path:
    """One stage taken from a bundled preset: sana-video's video stage at 480p (the 2B preset) or tiny's."""
    preset = yaml.safe_load((PRESETS / ("tiny.yaml" if args.tiny else "sana-video.yaml")).read_text())
    base = next(s for s in preset["stages"] if s["name"] == ("video" if args.tiny else "video-256"))
    stage = {k: v for k, v in base.items() if k not in ("init_from", "name")}
    stage.update(name=STAGE, steps=args.steps, data=["${data_root}"])
    stage["checkpoint"] = {"every": args.checkpoint_every, "keep_last": 2}
    if not args.tiny:
        stage["model"] = {"preset": "sana-video-2b-480p"}
        stage["buckets"] = [{"height": 480, "width": 832, "num_frames": 81, "batch_size": 1}]
        stage["num_workers"] = 2
    path = args.work / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"name": PIPELINE, "defaults": preset["defaults"], "stages": [stage]}))
    return path


def run_a(args, pipeline: Path, variables: dict, gpus: float) -> TrainRun:
    """args.gpus workers: kill one after the first checkpoint, let Ray resume, then Ctrl-C the driver."""
    work = args.work / "train"
    argv = svp_train_argv(pipeline, work, args.gpus, gpus, variables)
    run = TrainRun(f"run A ({args.gpus} workers)", argv, args.work / "a.log",
                   f"sqlite:///{work / 'mlflow.db'}", PIPELINE, STAGE)  # fmt: skip
    every = args.checkpoint_every
    run.start()
    try:
        _kill_then_interrupt(run, every, args.timeout)
    finally:
        run.stop()
    run.checkpoint_bytes = checkpoint_sizes(work / "ray")  # the 2-worker ones, before run B prunes them
    return run


def _kill_then_interrupt(run: TrainRun, every: int, timeout: float) -> None:
    saved = lambda h: any(r["step"] == every and "perf/checkpoint_save_s" in r for r in h)  # noqa: E731
    run.wait_for(lambda h: saved(h) and last_step(h, 0) > every, f"step {every + 1} after the checkpoint",
                 timeout)  # fmt: skip
    run.kill_worker(last_step(stage_history(run.tracking_uri, PIPELINE, STAGE), 0))
    # Ctrl-C well before the last step, so that run B has steps left to train on 1 GPU
    run.wait_for(lambda h: last_step(h, 1) >= every + 2, f"step {every + 2} after the restart", timeout)
    run.interrupt(last_step(stage_history(run.tracking_uri, PIPELINE, STAGE), 1))
    run.wait(timeout)


def run_b(args, pipeline: Path, variables: dict, gpus: float) -> TrainRun:
    """The same stage on 1 worker from the 2-worker checkpoint (universal), to the end and the export."""
    work = args.work / "train"
    run = TrainRun("run B (1 worker)", svp_train_argv(pipeline, work, 1, gpus, variables), args.work / "b.log",
                   f"sqlite:///{work / 'mlflow.db'}", PIPELINE, STAGE)  # fmt: skip
    RUNS["b"] = run
    run.start()
    try:
        code = run.wait(args.timeout)
    finally:
        run.stop()
    if code != 0:
        raise SystemExit(f"run B failed: see {run.log_path}")
    return run


def _after_first(rows: list[dict]) -> list[dict]:
    """An attempt's logged steps without its first one (compile, warm-up, the data loader's start)."""
    steps = [r["step"] for r in rows if "perf/step_time_s" in r]
    return [r for r in rows if "perf/step_time_s" in r and r["step"] > min(steps)] if steps else []


def speed_of(attempts: list[list[dict]], world: int) -> dict[str, Any]:
    """Median step figures over the attempts' steps, each attempt's first step (compile) left out."""
    attempts = [rows for rows in attempts if any("perf/step_time_s" in r for r in rows)]
    if not attempts:
        return {}
    first = min(r["step"] for r in attempts[0] if "perf/step_time_s" in r)
    out = {
        "first_step": first,
        "first_step_s": next(r["perf/step_time_s"] for r in attempts[0] if r["step"] == first),
        "first_step_s_per_attempt": [_first_step_time(rows) for rows in attempts],
    }
    timed = [r for rows in attempts for r in _after_first(rows)]
    if timed:
        median = statistics.median(r["perf/step_time_s"] for r in timed)
        tokens = statistics.median(r["perf/tokens_per_s"] * r["perf/step_time_s"] for r in timed)
        out.update(steps_timed=len(timed), step_s_median=median, steps_per_s=1 / median)
        out["tokens_per_s_per_gpu"] = tokens / median / world
        mfu = [r["perf/mfu"] for r in timed if "perf/mfu" in r]
        out["mfu_median"] = statistics.median(mfu) if mfu else None
    return out


def _first_step_time(rows: list[dict]) -> float:
    """The step time of an attempt's first step."""
    first = min(r["step"] for r in rows if "perf/step_time_s" in r)
    return next(r["perf/step_time_s"] for r in rows if r["step"] == first and "perf/step_time_s" in r)


def figures(args, a: TrainRun, b: TrainRun | None, report: dict) -> None:
    """Every figure the runs so far allow (run B may not have run yet)."""
    history = stage_history(a.tracking_uri, PIPELINE, STAGE)
    by_attempt = {n: [r for r in history if r["attempt"] == n] for n in (0, 1, 2)}
    losses = {
        n: {r["step"]: r["train/loss"] for r in rows if "train/loss" in r} for n, rows in by_attempt.items()
    }
    replayed = sorted(set(losses[0]) & set(losses[1]))
    resume = [r for r in history if "train/resumed_from_step" in r]
    two, one = speed_of([by_attempt[0], by_attempt[1]], args.gpus), speed_of([by_attempt[2]], 1)
    report["two_gpus"], report["one_gpu"] = two, one
    if args.gpus > 1 and two.get("tokens_per_s_per_gpu") and one.get("tokens_per_s_per_gpu"):
        report["scaling_efficiency"] = two["tokens_per_s_per_gpu"] / one["tokens_per_s_per_gpu"]
    report["checkpoint"] = {
        "save_s": {f"a{r['attempt']}/{r['step']}": r["perf/checkpoint_save_s"] for r in history
                   if "perf/checkpoint_save_s" in r},
        "load_s": {f"a{r['attempt']}/{r['step']}": r["perf/checkpoint_load_s"] for r in resume
                   if "perf/checkpoint_load_s" in r},
        "bytes_after_run_a": a.checkpoint_bytes,
        "bytes_after_run_b": checkpoint_sizes(args.work / "train" / "ray"),
    }  # fmt: skip
    report["kill_resume"] = {
        "kill": a.events[0],
        "resumed_from_step": [int(r["train/resumed_from_step"]) for r in resume],
        "steps_attempt0": sorted(losses[0]),
        "steps_attempt1": sorted(losses[1]),
        "replayed": {s: [losses[0][s], losses[1][s]] for s in replayed},
        "max_abs_loss_diff": max((abs(losses[0][s] - losses[1][s]) for s in replayed), default=None),
        "no_step_lost": no_step_lost(losses, int(resume[0]["train/resumed_from_step"]) if resume else None),
        "kill_to_resumed_s": resume[0]["time"] - a.events[0]["time"] if resume else None,
        "kill_to_next_step_s": _seconds_between(a.events[0]["time"] if a.events else None, by_attempt[1]),
    }
    tail = [losses[n][s] for n in (0, 1) for s in sorted(losses[n]) if s > 1]
    report["two_to_one"] = {
        "resumed_from_step": int(resume[-1]["train/resumed_from_step"]) if len(resume) > 1 else None,
        "steps": sorted(losses[2]),
        "loss_2gpu_mean_std": [statistics.mean(tail), statistics.pstdev(tail)] if tail else None,
        "loss_1gpu": losses[2],
        "final_step": max(losses[2], default=None),
        "start_to_resumed_s": resume[-1]["time"] - b.started if b and len(resume) > 1 else None,
        "start_to_first_step_s": _seconds_between(b.started if b else None, by_attempt[2]),
    }
    report["two_gpus"]["start_to_first_step_s"] = _seconds_between(a.started, by_attempt[0])
    export = args.work / "train" / PIPELINE / STAGE / "export"
    report["export"] = {"bytes": folder_bytes(export) if export.is_dir() else None}
    report["export"]["build_s"] = _export_seconds(b.log_path) if b else None
    report["runs"] = {
        r.label: {
            "wall_s": round((r.ended or time.time()) - r.started, 1),
            "exit": r.returncode,
            "lines": r.essential_lines(),
        }
        for r in (a, b)
        if r is not None
    }


def _seconds_between(since: float | None, rows: list[dict]) -> float | None:
    """From `since` (epoch seconds) to the attempt's first logged step; None if either is missing."""
    times = [r["time"] for r in rows if "train/loss" in r]
    return min(times) - since if since is not None and times else None


def _export_seconds(log: Path) -> float | None:
    for line in log.read_text(errors="replace").splitlines():
        if "export built in" in line:
            return float(line.rsplit("built in", 1)[1].split()[0])
    return None


def main() -> None:
    # `timeout` sends SIGTERM: stop the svp runs and write what was measured, as on an error
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # never NVLink multicast on shared hosts
    # Ray 2.60's client reads the auth mode when `ray` is imported, before `svp` sets it for a local Ray.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if args.tiny:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    report: dict[str, Any] = {
        "machine": platform.node(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    report["args"] = {k: str(v) for k, v in vars(args).items()}
    try:
        run_recipe(args, report)
    except BaseException as err:  # what ran so far is still written, with why it stopped
        report["error"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        save(args, report)


def run_recipe(args: argparse.Namespace, report: dict) -> None:
    gpus = 0.0 if args.tiny else 1.0
    t0 = time.time()
    done_a = args.work / "run_a.json"
    if done_a.is_file():  # an earlier call ran steps 1-3 (--stop-after-a)
        a = TrainRun.from_json(json.loads(done_a.read_text()))
        earlier = json.loads((args.work / "report.json").read_text())
        report.update({k: v for k, v in earlier.items() if k in ("data", "weights")})
        data = Path(args.data).resolve() if args.data else args.work / "curated"
        weights = None if args.tiny else args.work / "weights"
        say(f"{a.label}: recorded in {done_a} (exit {a.returncode}); going on with run B")
    else:
        data = make_data(args, report)
        weights = make_weights(args, report)
        save(args, report)
    variables = {"data_root": data, **({"weights_root": weights} if weights else {})}
    pipeline = write_pipeline(args)
    if not done_a.is_file():
        a = run_a(args, pipeline, variables, gpus)
        done_a.write_text(json.dumps(a.to_json(), indent=1))
    figures(args, a, None, report)
    save(args, report)
    if args.stop_after_a:
        say(f"stopped after run A; run the same command again to go on with run B ({done_a})")
        return
    try:
        run_b(args, pipeline, variables, gpus)
    finally:  # run B's figures so far, also when it failed or the time ran out
        figures(args, a, RUNS.get("b"), report)
    report["total_s"] = round(time.time() - t0, 1)
    keys = ("two_gpus", "one_gpu", "scaling_efficiency")
    say(f"figures: {json.dumps({k: report.get(k) for k in keys})}")


def save(args: argparse.Namespace, report: dict) -> None:
    """The JSON, and the console logs of curate and both runs beside it (`<out>.<name>.log`)."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    (args.work / "report.json").write_text(args.out.read_text())  # for a later call (--stop-after-a)
    for name in ("curate", "a", "b"):
        log = args.work / f"{name}.log"
        if log.is_file():
            shutil.copyfile(log, args.out.with_suffix(f".{name}.log"))
    say(f"wrote {args.out}")


if __name__ == "__main__":
    main()
