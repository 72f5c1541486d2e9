"""What a finished curation step left on disk, and the check that it is still all there.

A step record (`OUT/.svp-steps/<step>.json`) says what the step's output was when it finished: the record is
trusted only while the files match it, so a step is skipped only when its output is verifiably complete.

- curate: `sources.parquet` and `clips.parquet` exist, `sources.parquet` is the file the step wrote (its
  sha256), and no source is `failed`: a failed source (a worker killed on every attempt, e.g. by a lost
  node; a transient read error) is not finished, `svp curate` retries it, and so does the pipeline.
- filter: `shards/index.parquet` reads, has as many rows as `clips.parquet` keeps (an index written empty, or
  by another run, does not), names exactly the shards recorded, each present with its recorded size, and
  `OUT/thresholds.yaml` is the step's thresholds (curation rewrites the shards with its own thresholds).
- encode: each latents folder it wrote still has the `encoding.json` it wrote (`svp encode` writes it last).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from orchestration.pipeline.spec import STEP_CURATE, STEP_ENCODE, STEP_FILTER


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def describe_output(out: Path, step: str) -> dict[str, Any]:
    """The summary of a step's output that its record keeps (read back by `output_problem`)."""
    import pandas as pd

    from curation.format import INDEX_FILE, SHARDS_DIR
    from curation.tables import SOURCES_FILE

    if step == STEP_CURATE:
        return {"sources_sha256": file_sha256(out / SOURCES_FILE)}
    shards = out / SHARDS_DIR
    index = pd.read_parquet(shards / INDEX_FILE, columns=["shard"])
    names = sorted(set(index["shard"]))
    return {"rows": len(index), "shards": {name: (shards / name).stat().st_size for name in names}}


def output_problem(out: Path, step: str, record: dict[str, Any]) -> str | None:
    """Why the output of `step` in `out` is not the complete output its `record` describes; None if it is."""
    from curation.format import INDEX_FILE, SHARDS_DIR
    from curation.tables import CLIPS_FILE, SOURCES_FILE

    needed = [out / SOURCES_FILE, out / CLIPS_FILE]
    if step == STEP_FILTER:
        needed.append(out / SHARDS_DIR / INDEX_FILE)
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        return f"its output lacks {', '.join(missing)}"
    expected = record.get("output")
    if not isinstance(expected, dict):
        return "its record has no output summary (written by an older svp or cut short)"
    try:
        if step == STEP_ENCODE:
            return _encode_problem(out, expected)
        return (
            _curate_problem(out, expected) if step == STEP_CURATE else _filter_problem(out, expected, record)
        )
    except (OSError, ValueError, KeyError, TypeError) as err:  # a torn or foreign file: not ours
        return f"its output does not read back: {type(err).__name__}: {err}"


def _curate_problem(out: Path, expected: dict[str, Any]) -> str | None:
    from curation.tables import SOURCES_FILE, read_table

    if file_sha256(out / SOURCES_FILE) != expected["sources_sha256"]:
        return f"{SOURCES_FILE} was rewritten since the step finished"
    sources = read_table(out / SOURCES_FILE)
    failed = sources[sources["status"] == "failed"]
    if len(failed):
        first = failed.iloc[0]
        return (
            f"{len(failed)} of {len(sources)} sources failed in the run that wrote it (first: "
            f"{first['uri']}: {first['reason']}); they are retried"
        )
    return None


def _filter_problem(out: Path, expected: dict[str, Any], record: dict[str, Any]) -> str | None:
    import pandas as pd

    from curation.format import INDEX_FILE, SHARDS_DIR, THRESHOLDS_FILE
    from curation.tables import CLIPS_FILE
    from curation.thresholds import load_thresholds, thresholds_hash

    shards = out / SHARDS_DIR
    index = pd.read_parquet(shards / INDEX_FILE, columns=["shard"])
    kept = int(pd.read_parquet(out / CLIPS_FILE, columns=["kept"])["kept"].sum())
    if len(index) != expected["rows"] or len(index) != kept:
        return (
            f"{SHARDS_DIR}/{INDEX_FILE} has {len(index)} rows, the step wrote {expected['rows']} and "
            f"{CLIPS_FILE} keeps {kept}"
        )
    recorded: dict[str, int] = expected["shards"]
    if sorted(set(index["shard"])) != sorted(recorded):
        return f"{SHARDS_DIR}/{INDEX_FILE} names other shards than the step wrote"
    for name, size in sorted(recorded.items()):
        path = shards / name
        if not path.is_file() or path.stat().st_size != size:
            return f"shard {name} is missing or not the size the step wrote ({size} bytes)"
    applied = thresholds_hash(load_thresholds(out / THRESHOLDS_FILE))
    if applied != record.get("inputs", {}).get("thresholds"):
        return f"the shards were rewritten with other thresholds ({THRESHOLDS_FILE}: {applied})"
    return None


def _encode_problem(out: Path, expected: dict[str, Any]) -> str | None:
    from training.data.latent_store import ENCODING_FILE

    for name, sha in sorted(expected["encodings"].items()):
        path = out / name / ENCODING_FILE  # relative to OUT, or absolute (an absolute `name` wins)
        if not path.is_file():
            return f"latents folder {name} has no {ENCODING_FILE}"
        if file_sha256(path) != sha:
            return f"latents folder {name} was encoded again since the step finished"
    return None
