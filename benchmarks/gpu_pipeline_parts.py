"""The parts of benchmarks/gpu_pipeline.py: each runs the real `svp` commands and records its figures."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from benchmarks.storage_placement import KEEP_LAST, Placement, choose, free_bytes, memory_room
from benchmarks.two_gpu_runs import TrainRun, folder_bytes, last_step, no_step_lost, say, stage_history
from benchmarks.two_gpu_training import speed_of

PARTS = ("weights", "corpus", "curate", "encode", "train", "generate")
PIPELINE = "gpu-pipeline"
STAGE = "video-480p"
PRESETS = Path(__file__).resolve().parent.parent / "training" / "presets"
MEMORY = Path("/dev/shm")  # a tmpfs: what the disk cannot hold (benchmarks.storage_placement)
PROMPT = "a red kite waves over a busy street in soft morning light"


def _svp(*argv: str) -> list[str]:
    return [sys.executable, "-m", "orchestration.cli", *argv]


class Recipe:
    """One work folder, the report, and one method per part."""

    def __init__(self, args: argparse.Namespace, report: dict[str, Any]) -> None:
        self.args = args
        self.report = report
        self.work: Path = args.work
        self.weights_dir = self.work / "weights"
        self.pipeline_file = self.work / "pipeline.yaml"
        self.curated = self.work / "runs" / PIPELINE / "curated"
        self.tracking_uri = f"sqlite:///{self.work / 'runs' / 'mlflow.db'}"

    def run(self, name: str, argv: list[str]) -> float:
        """Run an svp command to its end, its output in WORK/<name>.log; returns its wall seconds."""
        say(f"{name}: {' '.join(argv[2:])}")
        t0 = time.perf_counter()
        with (self.work / f"{name}.log").open("w") as log:
            code = subprocess.run(
                argv, stdout=log, stderr=subprocess.STDOUT, timeout=self.args.timeout
            ).returncode
        wall = time.perf_counter() - t0
        if code != 0:
            tail = (self.work / f"{name}.log").read_text(errors="replace")[-3000:]
            raise SystemExit(f"{name} failed (exit {code}) after {wall:.0f} s:\n{tail}")
        say(f"{name}: {wall:.1f} s")
        return wall

    # ---- weights ------------------------------------------------------------------------------------------

    def weights(self) -> None:
        from benchmarks.random_weights import (
            write_aesthetic_mlp,
            write_clip,
            write_gemma2,
            write_qwen2_5_vl,
            write_wan_vae,
        )

        tiny, device = self.args.tiny, "cpu" if self.args.tiny else "cuda"
        t0 = time.perf_counter()
        clip_model, clip_weights = write_clip(
            self.weights_dir / "clip", "tiny" if tiny else "vit-l-14", device=device
        )
        write_aesthetic_mlp(self.weights_dir / "aesthetic_mlp.safetensors", 32 if tiny else 768)
        write_qwen2_5_vl(self.weights_dir / "qwen2.5-vl", "tiny" if tiny else "3b",
                         new_tokens=self.args.caption_tokens, device=device)  # fmt: skip
        if not tiny:
            write_wan_vae(self.weights_dir / "Wan2.1-VAE", device=device)
            write_gemma2(self.weights_dir / "gemma-2-2b-it", "2b", device=device)
        self.report["weights"] = {
            "write_s": round(time.perf_counter() - t0, 1),
            "gib": round(folder_bytes(self.weights_dir) / 2**30, 2),
            "clip_model": clip_model,
            "clip_checkpoint": str(clip_weights),
            "done": True,
        }

    # ---- corpus -------------------------------------------------------------------------------------------

    def corpus(self) -> None:
        """--minutes of video in ~30 s files, rendered by one process per core (each file is held in memory
        while it is encoded: 2 GB at 720p)."""
        a = self.args
        height = 96 if a.tiny else a.height
        width = 160 if a.tiny else round(height * 16 / 9 / 16) * 16
        videos = 4 if a.tiny else max(1, math.ceil(a.minutes * 60 / 30))
        workers = 1 if a.tiny else max(1, min(videos, (os.cpu_count() or 2) - 1))
        shots = dict(shot_seconds=(2.0, 3.0), shots_per_video=(2, 2)) if a.tiny else dict(
            shot_seconds=(5.5, 8.0), shots_per_video=(4, 5))  # fmt: skip
        jobs = [dict(out=self.work / "raw" / f"part{k:02d}", num_videos=len(range(k, videos, workers)), seed=k,
                     width=width, height=height, fps=24.0, broken=False, grain=0.0 if a.tiny else 6.0, **shots)
                for k in range(workers)]  # fmt: skip
        t0 = time.perf_counter()
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_make_corpus, jobs))
        files = sorted((self.work / "raw").rglob("*.mp4"))
        seconds = sum(_duration(f) for f in files)
        size = sum(f.stat().st_size for f in files)
        self.report["corpus"] = {
            "videos": len(files), "size": f"{width}x{height}", "hours": round(seconds / 3600, 3),
            "mbit_s": round(size * 8 / max(seconds, 1e-9) / 1e6, 2), "render_s": round(time.perf_counter() - t0, 1),
            "processes": workers, "done": True,
        }  # fmt: skip

    # ---- curate + filter ----------------------------------------------------------------------------------

    def curate(self) -> None:
        self._write_pipeline_files()
        curate_s = self.run("curate", _svp("pipeline", "run", str(self.pipeline_file), "--only", "curate"))
        self._keep_the_most_moving(self.args.keep)
        filter_s = self.run("filter", _svp("pipeline", "run", str(self.pipeline_file), "--only", "filter"))
        work = json.loads((self.curated / ".svp-work" / "stage_work.json").read_text())
        report = json.loads((self.curated / "report.json").read_text())
        hours = work["decode"]["video_s"] / 3600
        out: dict[str, Any] = {
            "wall_s": round(curate_s, 1), "filter_s": round(filter_s, 1), "scoring_wall_s": round(work["wall_s"], 1),
            "video_h_per_h": round(hours / (work["wall_s"] / 3600), 1), "clips": report["clips"]["total"],
            "kept": report["clips"]["kept"],
            "decode_cpu_s_per_video_h": round(work["decode"]["busy_s"] / max(hours, 1e-9)),
        }  # fmt: skip
        for stage, done in work["scorers"].items():  # one actor per stage: its own rate
            out[f"{stage}_clips_per_s"] = round(done["rows"] / max(done["busy_s"], 1e-9), 2)
            out[f"{stage}_busy_of_wall_pct"] = round(100 * done["busy_s"] / work["wall_s"], 1)
        self.report["curate"] = out | {"stage_work": work, "done": True}

    def _keep_the_most_moving(self, keep: int) -> None:
        """Thresholds that keep the `keep` clips of most motion, chosen from the scores as a user does on the
        dashboard (random captions and a random aesthetic head judge nothing): the encode and training parts
        then work on a known number of clips, whatever the corpus's length."""
        import pandas as pd

        rules: dict[str, Any] = {"caption": {"require_caption": False, "max_caption_issues": None}}
        if keep > 0:
            motion = pd.read_parquet(self.curated / "clips.parquet", columns=["motion_score"])["motion_score"]
            ranked = motion.dropna().sort_values(ascending=False).to_numpy()
            if keep < len(ranked):
                rules["scores"] = {"motion_score": {"min": float(ranked[keep - 1])}}
        (self.work / "thresholds.yaml").write_text(yaml.safe_dump(rules))

    def _write_pipeline_files(self) -> None:
        a, w = self.args, self.report["weights"]
        shards = {"short_side": 96 if a.tiny else 480, "fps": 8.0 if a.tiny else 16.0}
        clip = {"clip_model": w["clip_model"], "clip_checkpoint": w["clip_checkpoint"]}
        curate = {
            "scenes": {"min_clip_s": 1.5 if a.tiny else 5.5},
            "shards": shards,
            "aesthetic": {**clip, "mlp_checkpoint": str(self.weights_dir / "aesthetic_mlp.safetensors")},
            "caption": {**clip, "backend": "vlm", "vlm_path": str(self.weights_dir / "qwen2.5-vl"),
                        "vlm_regenerate": True, "vlm_max_new_tokens": a.caption_tokens,
                        "vlm_batch_size": a.caption_batch},
            # The scorers' GPU and CPU shares are the defaults: sized from the machine (curation.scorer_resources).
            "ray": {"scorer_batch_size": a.caption_batch, "stage_actors": {"caption": a.caption_actors}},
        }  # fmt: skip
        (self.work / "curate.yaml").write_text(yaml.safe_dump(curate))
        self._keep_the_most_moving(0)  # the curate step's own thresholds: every clip
        spec = {
            "name": PIPELINE,
            "work_dir": "runs",
            "curate": {"input": "raw", "config": "curate.yaml"},
            "filter": {"thresholds": "thresholds.yaml"},
            "encode": {"batch_size": 1},  # 81 x 480 x 832 clips through the Wan2.1 VAE, one at a time
            "training": self._training(),
        }
        self.pipeline_file.write_text(yaml.safe_dump(spec, sort_keys=False))

    def _training(self) -> dict[str, Any]:
        """sana-video's video stage at 480p on the 2B preset (tiny's video stage with --tiny)."""
        a = self.args
        preset = yaml.safe_load((PRESETS / ("tiny.yaml" if a.tiny else "sana-video.yaml")).read_text())
        base = next(s for s in preset["stages"] if s["name"] == ("video" if a.tiny else "video-256"))
        stage = {k: v for k, v in base.items() if k not in ("init_from", "name")}
        stage.update(name=STAGE, steps=a.steps, data=["filter"])
        stage["checkpoint"] = {"every": a.checkpoint_every, "keep_last": KEEP_LAST}  # 37 GB each (2B)
        stage["sample"] = {"every": 10**6}
        if not a.tiny:
            stage["model"] = {"preset": "sana-video-2b-480p"}
            stage["buckets"] = [{"height": 480, "width": 832, "num_frames": 81, "batch_size": 1}]
        variables = {"weights_root": str(self.weights_dir)}
        return {"variables": variables, "defaults": preset["defaults"], "stages": [stage]}

    # ---- encode -------------------------------------------------------------------------------------------

    def encode(self) -> None:
        """The pipeline's encode step (`svp encode` as a fingerprinted step): latents + caption embeddings."""
        wall = self.run("encode", _svp("pipeline", "run", str(self.pipeline_file), "--only", "encode"))
        kept = json.loads((self.curated / "report.json").read_text())["clips"]["kept"]
        self.report["encode"] = {"wall_s": round(wall, 1), "clips": kept, "clips_per_s": round(kept / wall, 3),
                                 "done": True}  # fmt: skip

    # ---- train, with a worker killed after the first checkpoint ------------------------------------------

    def train(self) -> None:
        a = self.args
        argv = _svp("pipeline", "run", str(self.pipeline_file), "--workers", "1")
        argv += ["--gpus-per-worker", "0" if a.tiny else "1"]
        placement = self._place_checkpoints()
        run = TrainRun("train", argv, self.work / "train.log", self.tracking_uri, PIPELINE, STAGE)
        run.start()
        try:
            if not a.no_kill:
                every = a.checkpoint_every
                saved = lambda h: any(r["step"] == every and "perf/checkpoint_save_s" in r for r in h)  # noqa: E731
                run.wait_for(lambda h: saved(h) and last_step(h, 0) > every, f"step {every + 1}", a.timeout)
                run.kill_worker(last_step(stage_history(self.tracking_uri, PIPELINE, STAGE), 0))
            code = run.wait(a.timeout)
        finally:
            run.stop()
        if code != 0:
            raise SystemExit(f"svp pipeline run (training) failed ({code}): see {run.log_path}")
        self.report["train"] = self._train_figures(run) | {"placement": placement.as_dict(), "done": True}

    def _place_checkpoints(self) -> Placement:
        """Ray's run folder (the checkpoints) and the stage folder (the export) on the disk or in memory, and
        the EMA dropped only where neither holds the stage with it (`benchmarks.storage_placement`)."""
        from training.config.loader import build_pipeline
        from training.driver.disk_budget import stage_sizes

        spec = yaml.safe_load(self.pipeline_file.read_text())
        sizes = {}
        for ema in (True, False):
            training = spec["training"] | {"name": PIPELINE}
            if not ema:
                training["stages"] = [training["stages"][0] | {"ema": None}]
            stage = build_pipeline(training, self.work, str(self.pipeline_file), {}, {}).stages[0]
            sizes[ema] = stage_sizes(stage, use_gpu=not self.args.tiny)
        placement = choose(sizes, free_bytes(self.work), memory_room(MEMORY))
        if placement is None:
            raise SystemExit(
                f"{STAGE}: no room for two checkpoints and the export ({sizes[False][0] / 1e9:.0f} and "
                f"{sizes[False][1] / 1e9:.0f} GB without EMA): {free_bytes(self.work) / 1e9:.0f} GB free on "
                f"{self.work}, {memory_room(MEMORY) / 1e9:.0f} GB of room in {MEMORY}"
            )
        say(
            f"train: checkpoints on {placement.checkpoints}, export on {placement.export}, EMA {placement.ema}"
        )
        if not placement.ema:
            spec["training"]["stages"][0]["ema"] = None
            self.pipeline_file.write_text(yaml.safe_dump(spec, sort_keys=False))
        runs = self.work / "runs"
        for name, where in (("ray", placement.checkpoints), (f"{PIPELINE}/{STAGE}", placement.export)):
            link = runs / name
            if where == "memory" and not link.is_symlink():
                target = MEMORY / "svp-gpu-pipeline" / name.replace("/", "-")
                target.mkdir(parents=True, exist_ok=True)
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(target, target_is_directory=True)
        return placement

    def _train_figures(self, run: TrainRun) -> dict[str, Any]:
        history = stage_history(self.tracking_uri, PIPELINE, STAGE)
        attempts = [[r for r in history if r["attempt"] == n] for n in (0, 1)]
        losses = [{r["step"]: r["train/loss"] for r in rows if "train/loss" in r} for rows in attempts]
        resumed = [r for r in history if "train/resumed_from_step" in r]
        out: dict[str, Any] = {"wall_s": round(run.ended - run.started, 1), **speed_of(attempts, 1)}
        out["checkpoint_save_s"] = [round(r["perf/checkpoint_save_s"], 1) for r in history
                                    if "perf/checkpoint_save_s" in r]  # fmt: skip
        if run.events:
            kill = run.events[0]
            replayed = sorted(set(losses[0]) & set(losses[1]))
            out["kill"] = kill
            out["resumed_from_step"] = [int(r["train/resumed_from_step"]) for r in resumed]
            out["checkpoint_load_s"] = [round(r["perf/checkpoint_load_s"], 1) for r in resumed
                                        if "perf/checkpoint_load_s" in r]  # fmt: skip
            out["kill_to_next_step_s"] = round(
                min(r["time"] for r in attempts[1] if "train/loss" in r) - kill["time"], 1
            )
            out["replayed_max_abs_loss_diff"] = max(
                (abs(losses[0][s] - losses[1][s]) for s in replayed), default=None
            )
            out["steps_logged"] = [sorted(losses[0]), sorted(losses[1])]
            start = out["resumed_from_step"][0] if out["resumed_from_step"] else None
            out["no_step_lost"] = no_step_lost(losses, start)
            out["last_step"] = max(losses[1], default=None)
        return out

    # ---- generate -----------------------------------------------------------------------------------------

    def generate(self) -> None:
        export = self.work / "runs" / PIPELINE / STAGE / "export"
        video = self.work / "generated.mp4"
        argv = _svp("generate", str(export), "--prompt", PROMPT, "--out", str(video), "--seconds", "5")
        argv += ["--steps", "4" if self.args.tiny else "50"]  # the device, dtype and compile: svp's defaults
        wall = self.run("generate", argv)
        record = video.with_suffix(".json")
        self.report["generate"] = {
            "wall_s": round(wall, 1),
            "record": json.loads(record.read_text()) if record.is_file() else None,
            "done": True,
        }


def _make_corpus(job: dict[str, Any]) -> None:
    from curation.synth import make_corpus

    if job["num_videos"]:
        make_corpus(**job)


def _duration(path: Path) -> float:
    import av

    with av.open(str(path)) as media:
        return float(media.duration or 0) / 1e6
