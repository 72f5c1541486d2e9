"""The whole platform at real size on one GPU: one corpus, curated, filtered, encoded, trained and generated
from, every part measured.

    python -m benchmarks.gpu_pipeline --out gpu_pipeline.json [--work /tmp/svp-gpu] [--minutes 60]
    python -m benchmarks.gpu_pipeline --tiny --out tiny.json          # CPU: the same code path at toy size

On one GPU (benchmarks/gpu_setup.sh brings the packages a bare GPU machine lacks), in parts that each record
themselves in the work folder, so a machine lent in calls of limited length runs them over several calls
(`--parts`, default all; a finished part is not run again):
  weights   random-weight models of the real architectures, written where the real loaders read them:
            open_clip ViT-L/14 + the LAION aesthetic MLP, Qwen2.5-VL-3B (captions of exactly --caption-tokens
            new tokens), Wan2.1 VAE, Gemma-2-2B (benchmarks/random_weights.py);
  corpus    --minutes of synthetic 720p video at a camera-like bitrate (`curation.synth`, grain), rendered
            in parallel;
  curate    `svp pipeline run --only curate`: CPU decode + cuts + motion tasks beside the GPU aesthetic and
            captioner actor pools (Ray Data); then thresholds that keep the --keep clips of most motion (as a
            user picks them on the dashboard) and `--only filter`;
  encode    `svp pipeline run --only encode` (the pipeline's encode step, `svp encode` fingerprinted): the
            kept clips' Wan2.1 latents and Gemma-2 embeddings, on the GPU;
  train     `svp pipeline run`: the 2B model's 480p video stage from those latents, checkpoints every
            --checkpoint-every steps; after the first checkpoint one Ray Train worker is SIGKILLed and the
            same run resumes from it (the time lost, and that no step was lost or repeated, are recorded);
  generate  `svp generate` of 5 s at 480p from the stage's export.
GPU busy % (nvidia-smi, every 0.5 s) is recorded over each part; each part's figures go to --out (JSON) and a
table is printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.gpu_busy import GpuBusy
from benchmarks.gpu_pipeline_parts import PARTS, Recipe
from benchmarks.two_gpu_runs import say


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="JSON of every figure")
    p.add_argument("--work", type=Path, default=None, help="work folder (default: beside --out)")
    p.add_argument("--tiny", action="store_true", help="CPU: tiny models, a few small videos, 12 steps")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    p.add_argument("--minutes", type=float, default=60.0, help="minutes of synthetic raw video")
    p.add_argument("--height", type=int, default=720, help="raw video height (width 16:9)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 300; 12 with --tiny)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="default 100; 4 with --tiny")
    p.add_argument("--caption-tokens", type=int, default=120, help="new tokens per caption")
    p.add_argument("--caption-batch", type=int, default=16, help="clips per captioner batch")
    p.add_argument(
        "--caption-actors", type=int, default=1, help="captioner actors (curation's ray.stage_actors.caption)"
    )
    p.add_argument(
        "--keep", type=int, default=None, help="clips the filter keeps (default 100; 6 with --tiny)"
    )
    p.add_argument("--no-kill", action="store_true", help="do not kill a training worker")
    p.add_argument("--timeout", type=float, default=3600, help="seconds for each svp command")
    args = p.parse_args()
    args.parts = [x for x in args.parts.split(",") if x]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}: choose from {', '.join(PARTS)}")
    args.steps = args.steps or (12 if args.tiny else 300)
    args.checkpoint_every = args.checkpoint_every or (4 if args.tiny else 100)
    args.keep = args.keep if args.keep is not None else (6 if args.tiny else 100)
    if args.steps < args.checkpoint_every + 3:
        p.error("--steps must leave >= 3 steps after the first checkpoint (the kill and the resume)")
    args.work = (args.work or args.out.with_suffix("")).resolve()
    return args


def table(report: dict[str, Any]) -> str:
    """The figures as the rows of docs/benchmarks.md's "one GPU, real sizes" table."""
    rows = []
    for part in PARTS:
        got = report.get(part)
        if not got:
            continue
        busy = report.get("gpu_busy", {}).get(part, {})
        figures = ", ".join(f"{k} {v}" for k, v in got.items() if not isinstance(v, dict | list))
        rows.append(f"| {part} | {figures} | {busy.get('busy_pct')} | {busy.get('mem_max_gib')} |")
    head = "| part | figures | GPU busy % | GPU mem max GiB |\n|---|---|---:|---:|"
    return "\n".join([head, *rows])


def main() -> None:
    # `timeout` sends SIGTERM: write what was measured, as on an error
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # read when `ray` is imported (see two_gpu_training)
    if args.tiny:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    saved = args.work / "report.json"
    report: dict[str, Any] = json.loads(saved.read_text()) if saved.is_file() else {}
    report.setdefault("calls", []).append(
        {"machine": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
         "commit": _commit(), "argv": sys.argv[1:], "gpu": _gpu_name()}
    )  # fmt: skip
    recipe = Recipe(args, report)
    try:
        with GpuBusy(args.work / "nvidia-smi.csv") as busy:
            for part in args.parts:
                if report.get(part, {}).get("done"):
                    say(f"{part}: done in an earlier call")
                    continue
                with busy.window(part):
                    getattr(recipe, part)()
                report.setdefault("gpu_busy", {}).update(busy.summary())
                _save(report, saved, args.out)
    except BaseException as err:  # what was measured so far is kept, with why it stopped
        report.setdefault("errors", []).append(f"{type(err).__name__}: {err}"[:4000])
        raise
    finally:
        _save(report, saved, args.out)
        print(table(report))


def _save(report: dict, *paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")


def _commit() -> str | None:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or None


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # the report is written whatever the machine
        return None


if __name__ == "__main__":
    main()
