"""Restore a kept export instead of retraining (the step engine's RESTORE, as DVC's run cache does).

A stage whose inputs go back to a fingerprint it was trained under (an lr changed and changed back) finds
the export of exactly that fingerprint under `<stage>/exports/<fingerprint>/`, where a retrain moved it.
Restoring moves the current export aside the same way and renames the kept one into `<stage>/export`:
two renames, seconds whatever the size. In MLflow the restored stage points to the run that trained it
(the parent run's `svp.step.<stage>.run_id`, the run's export URI), and the run whose export was moved
aside points to where its export now is.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from training.driver.fingerprints import supersede_export
from training.tracking.runs import TAG_EXPORT, TAG_STAGE, TAG_STAGE_FINGERPRINT, Tracker

log = logging.getLogger("svp.training")


def restore_export(export_dir: Path, kept: Path) -> Path | None:
    """Put `kept` back as `export_dir`; returns where the export it replaces went (None: there was none)."""
    export_dir = Path(export_dir)
    superseded = supersede_export(export_dir.parent)
    os.replace(kept, export_dir)
    log.info(f"stage {export_dir.parent.name}: restored the export of {kept.name} from {kept}")
    return superseded


def trained_by(tracker: Tracker, stage: str, fingerprint: str) -> str | None:
    """The newest finished MLflow run of `stage` that trained `fingerprint` (None: not tracked here)."""
    clause = (
        f"tags.`{TAG_STAGE}` = '{stage}' and tags.`{TAG_STAGE_FINGERPRINT}` = '{fingerprint}' "
        "and attributes.status = 'FINISHED'"
    )
    runs = tracker.client.search_runs(
        [tracker.experiment_id], filter_string=clause, order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0].info.run_id if runs else None


def restore_lineage(
    tracker: Tracker, parent_run_id: str, stage: str, export_dir: Path, superseded: Path | None
) -> str | None:
    """Point MLflow at the restored export's training run and the moved-aside export's new place; returns
    the run that trained the restored export."""
    fingerprint = _fingerprint_of(export_dir)
    run_id = trained_by(tracker, stage, fingerprint)
    if run_id is not None:
        tracker.client.set_tag(run_id, TAG_EXPORT, Path(export_dir).resolve().as_uri())
        tracker.client.set_tag(parent_run_id, f"svp.step.{stage}.run_id", run_id)
    if superseded is not None:
        moved = trained_by(tracker, stage, _fingerprint_of(superseded))
        if moved is not None:
            tracker.client.set_tag(moved, TAG_EXPORT, superseded.resolve().as_uri())
    return run_id


def _fingerprint_of(export_dir: Path) -> str:
    from training.driver.fingerprints import export_record

    record, _ = export_record(export_dir)
    return record["fingerprint"] if record is not None else ""
