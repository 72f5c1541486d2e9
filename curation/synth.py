"""A synthetic video corpus with known ground truth, for tests, benchmarks and the demo.

Every video is a sequence of shots. A shot shows a smooth random texture in its own colour palette (so the
content changes completely at a cut) that is either static or translates by a whole number of pixels per
frame (so its motion is known exactly). With `scene="shapes"` a shot is instead a flat background with one
coloured square or disc translating the same way (wrapping round the edges): pictures a tiny model can learn
in a few hundred steps, which is what `svp demo` trains on; every shot of a shapes video shows the same shape,
colours and motion (a cut moves the shape and changes the background's shade), so the video's caption is
true of each of its clips. Captions are written as sidecar `.txt` or `.json` files (for shapes they describe
the shape, its colours and its motion). A set of
broken files covers every rejection reason the probe knows. Everything is deterministic from the seed.

`OUT/videos/` holds the inputs; `OUT/ground_truth.json` holds cut frames, per-shot motion and the reason
each broken file must be rejected with.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from model.video_io import encode_mp4, write_mp4

VIDEOS_DIR = "videos"
GROUND_TRUTH_FILE = "ground_truth.json"

# Motion levels in source pixels per frame along x; 0 is a static shot.
MOTION_LEVELS = (0, 1, 2, 4)

_SUBJECTS = ("a red kite", "waves on a lake", "a busy street", "a forest path", "clouds", "a city skyline")
_ACTIONS = ("drifting slowly", "seen from a moving car", "in soft morning light", "under a grey sky")
SCENES = ("texture", "shapes")
# Hue (0-1) → colour word, for the captions of shape shots.
_HUE_NAMES = (
    (0.04, "red"),
    (0.11, "orange"),
    (0.19, "yellow"),
    (0.45, "green"),
    (0.55, "cyan"),
    (0.72, "blue"),
)
_HUE_NAMES += ((0.9, "purple"), (1.01, "red"))
# Background values (HSV) of shape shots: a cut within a shapes video switches between them.
SHAPE_SHADES = (0.35, 0.55)


@dataclass
class Shot:
    start: int  # first frame of the shot
    end: int  # one past its last frame
    motion_px_per_frame: int  # horizontal translation of the texture, source pixels per frame


@dataclass
class VideoTruth:
    file: str
    num_frames: int
    fps: float
    width: int
    height: int
    cuts: list[int]  # frame indices where a new shot starts (0 excluded)
    shots: list[Shot]
    caption: str
    caption_sidecar: str  # "txt" | "json"


@dataclass
class GroundTruth:
    seed: int
    videos: list[VideoTruth] = field(default_factory=list)
    # broken file name -> the words its rejection reason must contain
    broken: dict[str, str] = field(default_factory=dict)


def smooth_texture(rng: np.random.Generator, height: int, width: int, palette_hue: float) -> np.ndarray:
    """A smooth colour texture (H, W, 3) uint8: low-frequency noise, upsampled, tinted by `palette_hue`.

    Smoothness keeps frame-to-frame differences of a translating texture small, so that motion does not
    look like a cut; the palette keeps two shots far apart in colour, so that a cut does.
    """
    coarse = rng.random((max(2, height // 8), max(2, width // 8)), dtype=np.float32)
    value = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    value = np.clip(0.35 + 0.6 * value, 0.0, 1.0)
    hsv = np.empty((height, width, 3), np.float32)
    hsv[..., 0] = (palette_hue * 360.0 + 40.0 * value) % 360.0
    hsv[..., 1] = 0.75
    hsv[..., 2] = value
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def translating_frames(
    texture: np.ndarray, height: int, width: int, num_frames: int, px_per_frame: int
) -> list[np.ndarray]:
    """Crops of `texture` moving right-to-left by `px_per_frame` source pixels per frame."""
    need = width + px_per_frame * max(0, num_frames - 1)
    if texture.shape[0] < height or texture.shape[1] < need:
        raise ValueError(
            f"texture {texture.shape[:2]} too small for {num_frames} frames at {px_per_frame} px/frame"
        )
    return [texture[:height, i * px_per_frame : i * px_per_frame + width] for i in range(num_frames)]


def render_shot(
    seed: int, height: int, width: int, num_frames: int, px_per_frame: int, palette_hue: float, scale: int = 1
) -> list[np.ndarray]:
    """One shot. `scale` renders the same scene at `scale`× the resolution (the texture is resized, the
    motion in pixels scales with it), which is how tests check that motion scores do not depend on size."""
    rng = np.random.default_rng(seed)
    base = smooth_texture(rng, height, width + px_per_frame * max(0, num_frames - 1), palette_hue)
    if scale != 1:
        base = cv2.resize(base, (base.shape[1] * scale, base.shape[0] * scale), interpolation=cv2.INTER_CUBIC)
    return translating_frames(base, height * scale, width * scale, num_frames, px_per_frame * scale)


def _hsv_colour(hue: float, saturation: float, value: float) -> tuple[int, int, int]:
    hsv = np.array([[[hue % 1.0 * 360.0, saturation, value]]], np.float32)
    return tuple(int(c * 255.0 + 0.5) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def hue_name(hue: float) -> str:
    return next(name for limit, name in _HUE_NAMES if hue % 1.0 < limit)


def render_shape_shot(
    seed: int,
    height: int,
    width: int,
    num_frames: int,
    px_per_frame: int,
    palette_hue: float,
    *,
    disc: bool | None = None,
    shade: float = SHAPE_SHADES[0],
) -> tuple[list[np.ndarray], str]:
    """A flat dark background of hue `palette_hue` (value `shade`) with one bright square or disc (`disc`;
    drawn from `seed` when None) of the opposite hue, moving right by `px_per_frame` pixels per frame and
    wrapping round (a pure translation on a torus, like the textures). Returns the frames and a caption that
    names the shape, its colour and its motion."""
    rng = np.random.default_rng(seed)
    shape_hue = (palette_hue + 0.5) % 1.0
    background = _hsv_colour(palette_hue, 0.6, shade)
    colour = _hsv_colour(shape_hue, 0.8, 0.95)
    size = height // 3
    drawn_disc = bool(rng.integers(2))  # drawn either way: the position below comes from the same stream
    disc = drawn_disc if disc is None else disc
    top = int(rng.integers(0, height - size))
    left = int(rng.integers(0, width))
    # The shape drawn once on a canvas of one frame's width; each frame rolls the canvas along x.
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = background
    if disc:
        cv2.circle(
            canvas, (size // 2, top + size // 2), size // 2, colour, thickness=-1, lineType=cv2.LINE_AA
        )
    else:
        canvas[top : top + size, :size] = colour
    frames = [np.roll(canvas, left + i * px_per_frame, axis=1) for i in range(num_frames)]
    motion = "still" if px_per_frame == 0 else "moving right"
    kind = "disc" if disc else "square"
    caption = f"a {hue_name(shape_hue)} {kind} {motion} on {hue_name(palette_hue)}"
    return frames, caption


# x264 at its default quality (crf 23) smooths grain of sigma 6 away: 0.64 Mb/s at 720p in the H100 run's
# corpus (0.77 on a 4 s texture shot here), where a camera's 720p is ~5-10 Mb/s. crf 18 keeps it: 9.5 Mb/s.
GRAIN_CRF = 18


def _add_grain(frame: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    noise = rng.normal(0.0, sigma, frame.shape).astype(np.float32)
    return np.clip(frame.astype(np.float32) + noise, 0, 255).astype(np.uint8)


def _caption(rng: np.random.Generator) -> str:
    return f"{_SUBJECTS[rng.integers(len(_SUBJECTS))]} {_ACTIONS[rng.integers(len(_ACTIONS))]}"


def _write_sidecar(video: Path, caption: str, kind: str) -> None:
    if kind == "txt":
        video.with_suffix(".txt").write_text(caption + "\n")
    else:
        video.with_suffix(".json").write_text(json.dumps({"caption": caption}))


def _audio_only_mp4(seconds: float = 1.0, rate: int = 16000) -> bytes:
    """An mp4 with one AAC audio stream and no video stream."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        samples = int(seconds * rate)
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(samples) / rate)).astype(np.float32)
        for start in range(0, samples, 1024):
            chunk = tone[None, start : start + 1024]
            frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def write_phone_clip(path: str | os.PathLike, rotation: int = 90, frames: int = 48) -> Path:
    """A phone-style mp4: 160x96 coded, a display rotation, and a variable frame rate (30 and 55 ms frame
    durations alternate). Written directly with PyAV because `encode_mp4` makes constant-rate, upright files."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 160, 96, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.codec_context.thread_count = 1
        stream.set_display_rotation(rotation)
        pts = 0
        for i in range(frames):
            picture = np.full((96, 160, 3), (i * 5) % 256, np.uint8)
            picture[:16, :16] = (255, 0, 0)  # a marker in the coded top-left corner
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            pts += 30 if i % 2 else 55
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    path = Path(path)
    path.write_bytes(buf.getvalue())
    return path


def _write_broken(
    videos: Path, rng: np.random.Generator, fps: float, height: int, width: int
) -> dict[str, str]:
    """Files every curation run must reject, with the words their reason must contain."""
    broken: dict[str, str] = {}
    (videos / "broken_empty.mp4").write_bytes(b"")
    broken["broken_empty.mp4"] = "empty file"
    (videos / "broken_text.mp4").write_text("this is a text file, not a video\n" * 20)
    broken["broken_text.mp4"] = "not a video"
    # mp4 files from the encoder keep their index (moov) at the end: cutting the tail loses it.
    whole = encode_mp4(render_shot(int(rng.integers(1 << 31)), height, width, int(fps * 2), 1, 0.5), fps)
    (videos / "broken_truncated.mp4").write_bytes(whole[: len(whole) // 2])
    broken["broken_truncated.mp4"] = "truncated"
    (videos / "broken_audio_only.mp4").write_bytes(_audio_only_mp4())
    broken["broken_audio_only.mp4"] = "no video stream"
    short = render_shot(int(rng.integers(1 << 31)), height, width, max(2, int(fps * 0.25)), 0, 0.1)
    write_mp4(short, videos / "broken_too_short.mp4", fps)
    broken["broken_too_short.mp4"] = "too short"
    # A real, decodable stream whose frame size no training pipeline wants (a 1-pixel-high-ish ribbon).
    absurd = [np.full((16, 8208, 3), 128, np.uint8)] * int(fps)
    write_mp4(absurd, videos / "broken_absurd_size.mp4", fps)
    broken["broken_absurd_size.mp4"] = "absurd frame size"
    return broken


def make_corpus(
    out: str | os.PathLike,
    num_videos: int = 6,
    *,
    seed: int = 0,
    fps: float = 24.0,
    width: int = 160,
    height: int = 96,
    shot_seconds: tuple[float, float] = (1.5, 3.0),
    shots_per_video: tuple[int, int] = (1, 3),
    broken: bool = True,
    grain: float = 0.0,
    scene: str = "texture",
) -> GroundTruth:
    """Write `num_videos` videos (+ broken files) under `out/videos` and the truth to `out/ground_truth.json`.

    `grain` adds Gaussian noise of that standard deviation (in 8-bit levels) to every frame: smooth synthetic
    pictures compress to almost nothing and decode unrealistically fast; grain brings the bitrate and the
    decode cost to those of camera footage (used by the benchmark), written at `GRAIN_CRF`. `scene` is "texture" (smooth random
    textures) or "shapes" (a moving shape on a flat background, captioned with what it shows)."""
    _check_corpus_args(num_videos, width, height, scene)
    out = Path(out)
    videos = out / VIDEOS_DIR
    videos.mkdir(parents=True, exist_ok=True)
    # One generator for everything, drawn in a fixed order: the corpus is a function of the seed alone.
    rng = np.random.default_rng(seed)
    truth = GroundTruth(seed=seed)
    spec = _VideoSpec(fps, width, height, shot_seconds, shots_per_video, grain, scene)
    for v in range(num_videos):
        frames, shots, caption = _render_video(rng, spec)
        name = f"video_{v:03d}.mp4"
        write_mp4(frames, videos / name, fps, **({"crf": GRAIN_CRF} if grain > 0 else {}))
        caption = caption or _caption(rng)
        sidecar = "txt" if v % 2 == 0 else "json"
        _write_sidecar(videos / name, caption, sidecar)
        cuts = [s.start for s in shots[1:]]
        truth.videos.append(VideoTruth(name, len(frames), fps, width, height, cuts, shots, caption, sidecar))
    if broken:
        truth.broken = _write_broken(videos, rng, fps, height, width)
    tmp = out / f".{GROUND_TRUTH_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(truth), indent=2))
    os.replace(tmp, out / GROUND_TRUTH_FILE)
    return truth


@dataclass(frozen=True)
class _VideoSpec:
    """What every video of a corpus shares (`make_corpus`'s arguments)."""

    fps: float
    width: int
    height: int
    shot_seconds: tuple[float, float]
    shots_per_video: tuple[int, int]
    grain: float
    scene: str


def _check_corpus_args(num_videos: int, width: int, height: int, scene: str) -> None:
    if scene not in SCENES:
        raise ValueError(f"scene must be one of {', '.join(SCENES)}, got {scene!r}")
    if num_videos < 0:
        raise ValueError(f"--videos must be >= 0, got {num_videos}")
    if width % 2 or height % 2:
        raise ValueError(f"synthetic frame size must be even, got {width}x{height}")


def _render_video(
    rng: np.random.Generator, spec: _VideoSpec
) -> tuple[list[np.ndarray], list[Shot], str | None]:
    """One video's frames and shots, and for shapes the caption of its shots (one for all); None for
    textures, which get a random caption."""
    n_shots = int(rng.integers(spec.shots_per_video[0], spec.shots_per_video[1] + 1))
    hue = float(rng.random())
    frames: list[np.ndarray] = []
    shots: list[Shot] = []
    caption = None
    # A shapes video shows one shape, one palette and one motion in every shot, so that its sidecar caption
    # (the whole video's) is true of every clip cut from it; a cut moves the shape and switches the background
    # between two shades of its hue. Textures change palette at every cut.
    disc = bool(rng.integers(2)) if spec.scene == "shapes" else None
    for index in range(n_shots):
        length = int(round(spec.fps * rng.uniform(*spec.shot_seconds)))
        motion = int(MOTION_LEVELS[rng.integers(len(MOTION_LEVELS))])
        shot_seed = int(rng.integers(1 << 31))
        if spec.scene == "shapes":
            motion = shots[0].motion_px_per_frame if shots else motion
            shade = SHAPE_SHADES[index % len(SHAPE_SHADES)]
            shot, caption = render_shape_shot(
                shot_seed, spec.height, spec.width, length, motion, hue, disc=disc, shade=shade
            )
        else:
            shot = render_shot(shot_seed, spec.height, spec.width, length, motion, hue)
        if spec.grain > 0:
            shot = [_add_grain(f, rng, spec.grain) for f in shot]
        shots.append(Shot(len(frames), len(frames) + len(shot), motion))
        frames += shot
        if spec.scene != "shapes":
            # Palettes a third of the hue circle apart from the previous shot: every cut is a real content change.
            hue = (hue + 0.33 + 0.1 * float(rng.random())) % 1.0
    return frames, shots, caption


def load_ground_truth(out: str | os.PathLike) -> GroundTruth:
    raw = json.loads((Path(out) / GROUND_TRUTH_FILE).read_text())
    videos = [VideoTruth(**{**v, "shots": [Shot(**s) for s in v["shots"]]}) for v in raw["videos"]]
    return GroundTruth(seed=raw["seed"], videos=videos, broken=raw["broken"])
