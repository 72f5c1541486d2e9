"""Training runs as tables, and what differs between runs: shared by the experiments page and `svp runs`.

Reads the MLflow store the trainer writes (`training.tracking.runs`: one experiment per pipeline, a parent run
per pipeline run, a child run per stage with tags for the stage, dataset fingerprint, thresholds hash, git
commit and init-from). No Streamlit here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import UserError

# Tag names from the writer itself, so the reader cannot drift from it.
from training.tracking.runs import (
    PARENT_TAG,
    TAG_DATASET,
    TAG_GIT,
    TAG_INIT_FROM,
    TAG_PIPELINE,
    TAG_STAGE,
    TAG_THRESHOLDS,
)

LOSS = "train/loss"
EVAL_PREFIX = "eval/"  # training.inference.evaluation.METRIC_PREFIX
LR = "train/lr"
PERF_METRICS = ("perf/samples_per_s", "perf/tokens_per_s", "perf/step_time_s", "perf/mfu")
LINEAGE = {"dataset": TAG_DATASET, "thresholds": TAG_THRESHOLDS, "git": TAG_GIT, "init_from": TAG_INIT_FROM}
TABLE_COLUMNS = [
    "pipeline",
    "pipeline_run",
    "stage",
    "run_id",
    "status",
    "steps",
    "final_loss",
    "best_loss",
    "samples_per_s",
    "mfu",
    "wall_s",
    "dataset",
    "thresholds",
    "init_from",
]


def tracking_uri_for(runs: str | os.PathLike | None, tracking_uri: str | None) -> str:
    """`--tracking-uri`, else the sqlite store of the work dir `--runs`, else MLFLOW_TRACKING_URI."""
    if tracking_uri:
        return tracking_uri
    if runs is not None:
        db = Path(runs) / "mlflow.db"
        if not db.is_file():
            raise FileNotFoundError(f"{runs} has no mlflow.db: train with --work-dir {runs} first")
        return f"sqlite:///{db.resolve()}"
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise UserError("say which runs: --runs WORK_DIR or --tracking-uri URI (or set MLFLOW_TRACKING_URI)")
    return uri


def client_for(uri: str):
    """A client on `uri`; a sqlite store that does not exist is an error (MLflow would create it)."""
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise FileNotFoundError(f"no MLflow store at {uri.removeprefix('sqlite:///')}")

    return MlflowClient(uri)


def _all_runs(client, pipeline: str | None) -> list:
    experiments = client.search_experiments()
    ids = [e.experiment_id for e in experiments if pipeline is None or e.name == pipeline]
    if pipeline is not None and not ids:
        # Experiments that hold runs: not MLflow's own empty `Default`, which no svp command writes to.
        held = [e.name for e in experiments if client.search_runs([e.experiment_id], max_results=1)]
        names = ", ".join(sorted(held)) or "none"
        raise UserError(f"no pipeline named {pipeline!r} in the store (pipelines: {names})")
    return list(client.search_runs(ids, max_results=50000)) if ids else []


def _stage_row(client, run, parents: dict) -> dict:
    tags, metrics = run.data.tags, run.data.metrics
    history = client.get_metric_history(run.info.run_id, LOSS)
    losses = [m.value for m in history]
    end = run.info.end_time or run.info.start_time
    parent = parents.get(tags.get(PARENT_TAG))
    return {
        "pipeline": tags.get(TAG_PIPELINE, ""),
        "pipeline_run": parent.info.run_id[:8] if parent else "",
        "stage": tags.get(TAG_STAGE, run.info.run_name),
        "run_id": run.info.run_id,
        "status": run.info.status,
        "steps": int(max((m.step for m in history), default=0)),
        "final_loss": metrics.get(LOSS, np.nan),
        "best_loss": min(losses) if losses else np.nan,
        "samples_per_s": metrics.get("perf/samples_per_s", np.nan),
        "mfu": metrics.get("perf/mfu", np.nan),
        "wall_s": (end - run.info.start_time) / 1000 if end and run.info.start_time else np.nan,
        "dataset": tags.get(TAG_DATASET, ""),
        "thresholds": tags.get(TAG_THRESHOLDS, ""),
        "init_from": tags.get(TAG_INIT_FROM, ""),
        **{k: v for k, v in metrics.items() if k.startswith(EVAL_PREFIX)},  # `svp eval`, a stage's `eval:`
    }


def stage_table(client, pipeline: str | None = None) -> pd.DataFrame:
    """One row per stage run (newest pipeline run first, stages in order); empty store: a clear error."""
    runs = _all_runs(client, pipeline)
    parents = {r.info.run_id: r for r in runs if r.data.tags.get(TAG_STAGE) == "-"}
    stages = [r for r in runs if r.data.tags.get(TAG_STAGE, "-") != "-"]
    if not stages:
        raise UserError("the store has no training runs yet: run `svp train` (or `svp demo`) first")
    rows = [_stage_row(client, r, parents) for r in stages]
    order = {r.info.run_id: (-r.info.start_time, r.data.tags.get("svp.stage_index", "")) for r in stages}
    rows.sort(key=lambda row: order[row["run_id"]])
    evals = sorted({k for row in rows for k in row if k.startswith(EVAL_PREFIX)})
    return pd.DataFrame(rows, columns=TABLE_COLUMNS + evals)


MIN_PREFIX = 4  # characters of a run id that may stand for it (when no other run id starts with them)


def resolve(table: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """Rows for run ids (or unique prefixes of 4+ characters) or stage names: a stage name is its newest run,
    or every run of the stage when it is the only name given (`svp runs compare video`)."""
    picked = []
    for name in names:
        by_id = table[table["run_id"].str.startswith(name)] if len(name) >= MIN_PREFIX else table.iloc[0:0]
        by_stage = table[table["stage"] == name]
        if len(by_id) > 1 and not len(by_stage):
            ids = ", ".join(rid[:8] for rid in by_id["run_id"])
            raise UserError(f"run id prefix {name!r} matches {len(by_id)} runs ({ids}): give more characters")
        if len(by_id) == 1:
            picked.append(by_id)
        elif len(by_stage):
            picked.append(by_stage if len(names) == 1 else by_stage.iloc[:1])
        else:
            stages = ", ".join(sorted(set(table["stage"])))
            raise UserError(
                f"no run or stage {name!r} in the store (a run id or its first {MIN_PREFIX}+ characters, "
                f"or a stage: {stages})"
            )
    return pd.concat(picked).drop_duplicates("run_id").reset_index(drop=True)


def _labels(rows: pd.DataFrame) -> list[str]:
    return [f"{r.stage}@{r.run_id[:8]}" for r in rows.itertuples()]


def differing_params(client, rows: pd.DataFrame) -> pd.DataFrame:
    """Params whose value differs between the runs (one column per run); unchanged params left out."""
    params = {
        label: client.get_run(rid).data.params
        for label, rid in zip(_labels(rows), rows["run_id"], strict=True)
    }
    keys = sorted(set().union(*[p.keys() for p in params.values()]))
    changed = [k for k in keys if len({p.get(k) for p in params.values()}) > 1]
    return pd.DataFrame(
        {label: [p.get(k, "—") for k in changed] for label, p in params.items()}, index=changed
    )


def differing_lineage(client, rows: pd.DataFrame) -> pd.DataFrame:
    """Lineage tags (data fingerprint, thresholds hash, git commit, init-from) that differ between runs."""
    tags = {
        label: client.get_run(rid).data.tags for label, rid in zip(_labels(rows), rows["run_id"], strict=True)
    }
    changed = [n for n, tag in LINEAGE.items() if len({t.get(tag, "") for t in tags.values()}) > 1]
    return pd.DataFrame(
        {label: [t.get(LINEAGE[n], "") for n in changed] for label, t in tags.items()}, index=changed
    )


def metric_curves(client, rows: pd.DataFrame, metric: str) -> dict[str, pd.DataFrame]:
    """Per run, its `metric` history as (step, value), sorted by step."""
    curves = {}
    for label, rid in zip(_labels(rows), rows["run_id"], strict=True):
        hist = client.get_metric_history(rid, metric)
        frame = pd.DataFrame({"step": [m.step for m in hist], "value": [m.value for m in hist]})
        curves[label] = frame.sort_values("step").drop_duplicates("step", keep="last").reset_index(drop=True)
    return curves


def smooth(values: pd.Series, weight: float) -> pd.Series:
    """Exponential moving average (TensorBoard's smoothing slider): 0 is raw."""
    return values.ewm(alpha=1.0 - weight, adjust=False).mean() if weight > 0 else values


def perf_table(client, rows: pd.DataFrame) -> pd.DataFrame:
    """Last value of each perf metric per run."""
    data = {}
    for label, rid in zip(_labels(rows), rows["run_id"], strict=True):
        metrics = client.get_run(rid).data.metrics
        data[label] = [metrics.get(k, np.nan) for k in PERF_METRICS]
    return pd.DataFrame(data, index=list(PERF_METRICS))


def eval_table(client, rows: pd.DataFrame) -> pd.DataFrame:
    """Per run (one column each), its latest `eval/*` metrics, the step they were measured at, and the dataset
    fingerprint and thresholds hash it trained on, beside them: a curation change judged by its effect.
    Empty when none of the runs was evaluated."""
    data, names = {}, set()
    for label, rid in zip(_labels(rows), rows["run_id"], strict=True):
        run = client.get_run(rid)
        metrics = {
            k.removeprefix(EVAL_PREFIX): v for k, v in run.data.metrics.items() if k.startswith(EVAL_PREFIX)
        }
        history = client.get_metric_history(rid, EVAL_PREFIX + min(metrics)) if metrics else []
        lineage = {name: run.data.tags.get(LINEAGE[name], "") for name in ("dataset", "thresholds")}
        data[label] = {"step": max((m.step for m in history), default=np.nan), **metrics, **lineage}
        names |= set(metrics)
    if not names:
        return pd.DataFrame()
    return pd.DataFrame(data).reindex(["step", *sorted(names), "dataset", "thresholds"])


def eval_videos(client, rows: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Per run, the videos of its latest evaluation (`eval/step<N>/prompt<P>-seed<S>.mp4`) by file name, as
    local paths: the same prompt and seed of every run, side by side."""
    out = {}
    for label, rid in zip(_labels(rows), rows["run_id"], strict=True):
        steps = sorted(f.path for f in client.list_artifacts(rid, "eval") if f.is_dir)
        files = [f.path for f in client.list_artifacts(rid, steps[-1])] if steps else []
        out[label] = {Path(p).name: client.download_artifacts(rid, p) for p in files if p.endswith(".mp4")}
    return out


def sample_videos(client, rows: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Per run, its sample videos by file name (`stepNNNNNNNN.mp4`) as local paths (downloaded if remote)."""
    out = {}
    for label, rid in zip(_labels(rows), rows["run_id"], strict=True):
        files = [f.path for f in client.list_artifacts(rid, "samples") if f.path.endswith(".mp4")]
        out[label] = {Path(p).name: client.download_artifacts(rid, p) for p in files}
    return out


def curves_figure(curves: dict[str, pd.DataFrame], metric: str, weight: float = 0.0):
    """The runs' `metric` curves overlaid on one step axis (a matplotlib figure; no display needed)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.5), dpi=100)
    ax = fig.subplots()
    for label, frame in curves.items():
        ax.plot(frame["step"], smooth(frame["value"], weight), marker=".", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    if curves:
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_curves(
    curves: dict[str, pd.DataFrame], metric: str, path: str | os.PathLike, weight: float = 0.0
) -> Path:
    """`curves_figure` saved as a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    curves_figure(curves, metric, weight).savefig(path)
    return path
