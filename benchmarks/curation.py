"""CPU cost of curation per hour of input video: decode once vs. the usual one-decode-per-filter chain.

    python -m benchmarks.curation [--videos 3] [--seconds 20] [--width 1280 --height 720] [--work DIR]

Measures, on a synthetic corpus (real H.264 mp4, cuts and known motion), in one process with one decoder
thread and one OpenCV thread, CPU seconds (`time.process_time`) per hour of video for:

  (a) plain decode       — PyAV decodes every frame, nothing else;
  (b) this pipeline      — fingerprint + probe + the decode-once pass (`curation.decode.SourceDecoder`):
                           cut detection, motion pairs and the scorers' frames, clips cut;
  (c) the usual way      — probe, then PySceneDetect's own `detect()` (a decode), then per clip one decode for
                           the motion score and one for the scorers' frames (seeking to the clip);
  (d) transcoding        — the shard writer's transcode of every clip (`curation.transcode`).

Target: (b) ≤ 1.3 × (a). Prints a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import av
import cv2
import scenedetect

from curation.config import CurationConfig
from curation.decode import SourceDecoder
from curation.motion import analysis_size, pair_gap_frames, pair_motion, to_analysis_gray
from curation.probe import probe_source
from curation.scenes import ClipPlan, make_detector
from curation.shards import ShardConfig
from curation.sources import fingerprint
from curation.synth import VIDEOS_DIR, make_corpus
from curation.transcode import ClipSpec, transcode_clips


def _cpu(fn) -> tuple[float, float, object]:
    c0, w0 = time.process_time(), time.perf_counter()
    result = fn()
    return time.process_time() - c0, time.perf_counter() - w0, result


def plain_decode(paths: list[Path]) -> int:
    n = 0
    for p in paths:
        with av.open(str(p)) as c:
            s = c.streams.video[0]
            s.codec_context.thread_count = 1
            for _ in c.decode(s):
                n += 1
    return n


def pipeline_chain(paths: list[Path], cfg: CurationConfig) -> dict[str, list[tuple[int, int, float, float]]]:
    spans = {}
    for p in paths:
        size = p.stat().st_size
        with open(p, "rb") as f:
            fingerprint(f, size)
        probe = probe_source(str(p), size, cfg.probe, cfg.min_duration_s)
        clips = SourceDecoder(str(p), probe, cfg).clips()
        spans[str(p)] = [(c.start_frame, c.end_frame, c.start_s, c.end_s) for c in clips]
    return spans


def _decode_range(path: Path, start_s: float, end_s: float):
    """Frames of [start_s, end_s) after a seek to the keyframe before start (as a per-clip filter does)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        s.codec_context.thread_count = 1
        c.seek(int(start_s / s.time_base), stream=s, backward=True)
        for frame in c.decode(s):
            t = float(frame.time)
            if t >= end_s - 1e-6:
                break
            if t >= start_s - 1e-6:
                yield frame


def usual_chain(paths: list[Path], cfg: CurationConfig) -> int:
    """Probe; scene detection with its own decode; per clip, a decode for motion and one for frames."""
    clips = 0
    for p in paths:
        probe = probe_source(str(p), p.stat().st_size, cfg.probe, cfg.min_duration_s)
        fps = probe.fps
        detector = make_detector(cfg.scenes.detectors[0], fps)
        scenes = scenedetect.detect(str(p), detector, start_in_scene=True)
        plan = ClipPlan.for_fps(cfg.scenes, fps)
        n_frames = probe.num_frames
        for start, end in scenes:
            for a, b in plan.clips(start.frame_num, end.frame_num, video_end=end.frame_num >= n_frames):
                clips += 1
                a_s, b_s = a / fps, b / fps
                # Motion: decode the clip again, flow on the same pairs the pipeline samples.
                size = analysis_size(probe.width, probe.height, cfg.motion.short_side)
                gap = pair_gap_frames(fps, cfg.motion.pair_gap_s)
                every = max(1, int(round(fps / cfg.motion.pairs_per_s)))
                grays = {}
                for k, frame in enumerate(_decode_range(p, a_s, b_s)):
                    if k % every == 0 or (k - gap) % every == 0:
                        grays[k] = to_analysis_gray(frame.to_ndarray(format="gray"), size)
                for k in sorted(grays):
                    if k % every == 0 and k + gap in grays:
                        pair_motion(grays[k], grays[k + gap], fps, gap)
                # Scorer frames: decode the clip once more, keep K frames at the short side.
                want = {int(j * (b - a) / cfg.frames_per_clip) for j in range(cfg.frames_per_clip)}
                scale = cfg.scorer_short_side / min(probe.width, probe.height)
                w, h = int(probe.width * scale) // 2 * 2, int(probe.height * scale) // 2 * 2
                for k, frame in enumerate(_decode_range(p, a_s, b_s)):
                    if k in want:
                        frame.to_ndarray(width=w, height=h, format="rgb24")
    return clips


def transcode_all(spans: dict[str, list[tuple[int, int, float, float]]], shard: ShardConfig) -> int:
    n = 0
    for uri, clips in spans.items():
        specs = [ClipSpec(f"c{i:04d}", s, e) for i, (_, _, s, e) in enumerate(clips)]
        n += len(transcode_clips(uri, specs, shard.transcode_settings()))
    return n


def _corpus(args: argparse.Namespace) -> tuple[list[Path], float, int]:
    """The synthetic corpus (made once per size and reused): its mp4 paths, hours of video and bits."""
    work = (
        args.work
        or Path(tempfile.gettempdir())
        / f"svp-bench-curation-{args.width}x{args.height}-{args.videos}-g{args.grain:g}"
    )
    if not (work / "ground_truth.json").is_file():
        shots = max(1, round(args.seconds / 5))
        make_corpus(
            work, args.videos, seed=0, fps=args.fps, width=args.width, height=args.height,
            shot_seconds=(args.seconds / shots * 0.8, args.seconds / shots * 1.2),
            shots_per_video=(shots, shots), broken=False, grain=args.grain,
        )  # fmt: skip
    paths = sorted((work / VIDEOS_DIR).glob("*.mp4"))
    hours = 0.0
    bits = sum(p.stat().st_size for p in paths) * 8
    for p in paths:
        with av.open(str(p)) as c:
            s = c.streams.video[0]
            hours += float(s.duration * s.time_base) / 3600.0
    return paths, hours, bits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=20.0, help="approximate length of each video")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=720)
    ap.add_argument("--fps", type=float, default=24.0)
    ap.add_argument("--grain", type=float, default=6.0, help="film grain (noise std) for a realistic bitrate")
    ap.add_argument("--work", type=Path, default=None, help="corpus folder (kept and reused)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args()
    cv2.setNumThreads(1)

    paths, hours, bits = _corpus(args)
    cfg = CurationConfig()

    rows = {}
    cpu, wall, frames = _cpu(lambda: plain_decode(paths))
    rows["(a) plain decode"] = (cpu, wall, f"{frames} frames")
    cpu, wall, spans = _cpu(lambda: pipeline_chain(paths, cfg))
    n_clips = sum(len(v) for v in spans.values())
    rows["(b) this pipeline: probe + decode once + cuts + motion + frames"] = (cpu, wall, f"{n_clips} clips")
    cpu, wall, n = _cpu(lambda: usual_chain(paths, cfg))
    rows["(c) usual: probe + detect() + per-clip decode for motion and for frames"] = (
        cpu,
        wall,
        f"{n} clips",
    )
    cpu, wall, n = _cpu(lambda: transcode_all(spans, ShardConfig()))
    rows["(d) transcode kept clips (256 px short side, 16 fps, x264 veryfast)"] = (cpu, wall, f"{n} clips")

    base = rows["(a) plain decode"][0]
    print(
        f"corpus: {len(paths)} videos, {args.width}x{args.height} @ {args.fps:g} fps, {hours * 3600:.0f} s of video, "
        f"H.264 {bits / (hours * 3600) / 1e6:.1f} Mb/s (grain {args.grain:g}); "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}"
    )
    print("\n| step | CPU s per hour of video | × plain decode | wall s | work |")
    print("|---|---:|---:|---:|---|")
    for name, (cpu, wall, what) in rows.items():
        print(f"| {name} | {cpu / hours:,.0f} | {cpu / base:.2f} | {wall:.1f} | {what} |")
    if args.json:
        print(
            json.dumps({k: {"cpu_s_per_hour": v[0] / hours, "ratio": v[0] / base} for k, v in rows.items()})
        )


if __name__ == "__main__":
    main()
