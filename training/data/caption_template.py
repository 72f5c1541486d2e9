"""The caption template a stage trained with: recorded in its export, applied to the prompt by `svp generate`.

SANA-Video's captions end in the clip's motion score (" motion score: N.", written into the shards by curation
when `shards.motion_caption` is on). A model trained on such captions conditions on that suffix: a prompt
without it is a caption the model never saw (the demo's export drew a uniform green field from "a yellow disc
moving right on blue"). So the export records, in `stage.json` under `caption`, the template of the captions
its stage read and the median motion score of its clips; `svp generate` appends the suffix (the score of
`--motion-score`, by default that median) unless the prompt already ends in one, and its `.json` record says
which prompt the model got and why.

The template is read from the training captions themselves (up to `CAPTIONS_READ` samples spread evenly over the
stage's index: one ranged read each), so it is what the model saw, whatever curation config wrote the shards.
"""

from __future__ import annotations

import logging
import statistics
import tarfile

import numpy as np

from core.errors import UserError
from curation.format import CAPTION_MEMBER, MOTION_CAPTION_TEMPLATE, split_motion_score, with_motion_score
from training.data.shard_reader import ShardReader, find_shard_folder, join_uri, read_index

log = logging.getLogger(__name__)

CAPTIONS_READ = 256
PLAIN_TEMPLATE = "{caption}"


def _read_captions(data: list[str], limit: int) -> list[str]:
    """The captions of up to `limit` samples spread evenly over the indexes of `data` (unreadable ones left out)."""
    where = []
    for entry in data:
        folder = find_shard_folder(entry)
        table = read_index(folder)
        where += [(join_uri(folder, r.shard), r.key, (r.offset, r.length)) for r in table.itertuples()]
    picked = np.unique(np.linspace(0, len(where) - 1, min(limit, len(where))).round().astype(int))
    reader, captions = ShardReader(), []
    try:
        for i in picked if where else []:
            shard, key, (offset, length) = where[i]
            try:
                members = reader.read_sample(shard, key, (offset, length) if offset >= 0 else None)
            except (OSError, tarfile.TarError):
                continue
            if CAPTION_MEMBER in members:
                captions.append(members[CAPTION_MEMBER].decode("utf-8", errors="replace"))
    finally:
        reader.close()
    return captions


def caption_conditioning(data: list[str], limit: int = CAPTIONS_READ) -> dict | None:
    """What the export records under `caption`: the template of the stage's captions, the median motion score
    of the clips read (None without the suffix) and how many captions it was read from. None when no caption
    could be read (then `svp generate` passes prompts through as they are)."""
    try:
        captions = _read_captions(list(data), limit)
    except (OSError, ValueError) as err:
        log.warning("the export records no caption template: reading the training captions failed: %s", err)
        return None
    if not captions:
        return None
    scores = [score for score in (split_motion_score(c)[1] for c in captions) if score is not None]
    with_suffix = 2 * len(scores) > len(captions)  # what most captions looked like is what the model learned
    return {
        "template": MOTION_CAPTION_TEMPLATE if with_suffix else PLAIN_TEMPLATE,
        "motion_score": int(round(statistics.median(scores))) if with_suffix else None,
        "captions_read": len(captions),
    }


def condition_prompt(prompt: str, caption: dict | None, motion_score: int | None) -> tuple[str, dict]:
    """(the prompt the model gets, what the `.json` record says about it): `prompt` put in the stage's caption
    template (`caption`, from the export's stage.json; None for an export that predates it)."""
    _, own_score = split_motion_score(prompt)
    template = None if caption is None else caption.get("template")
    record: dict = {"caption_template": template, "motion_score": None, "motion_score_from": None}
    if own_score is not None:
        if motion_score is not None:
            raise UserError(
                f"the prompt already ends in 'motion score: {own_score}.': leave out --motion-score or the suffix"
            )
        return prompt, record | {
            "motion_score": own_score,
            "motion_score_from": "prompt",
            "model_prompt": prompt,
        }
    if template == PLAIN_TEMPLATE and motion_score is not None:
        raise UserError("--motion-score: this export's stage trained on captions without a motion score")
    if motion_score is not None:
        source = "--motion-score"
    elif template == MOTION_CAPTION_TEMPLATE:
        motion_score, source = caption["motion_score"], "median of the training clips"
    else:
        return prompt, record | {"model_prompt": prompt}
    conditioned = with_motion_score(prompt, motion_score)
    return conditioned, record | {
        "motion_score": motion_score,
        "motion_score_from": source,
        "model_prompt": conditioned,
    }
