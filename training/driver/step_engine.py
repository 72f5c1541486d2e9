"""The one rule that decides every step of the platform — curate, filter, encode, each training stage —
and the plan of a chain of steps.

A step is anything with a name, an inputs fingerprint and a record of the output it finished under some
fingerprint (`Step`): a curation step's record is `OUT/.svp-steps/<step>.json`, a training stage's is
`<stage>/export/fingerprint.json`. `decide` turns what a step knows about itself (`Facts`) into an `Action`
and the reason, the same way for all of them:

- forced (`--force`/`--from`) → run (nothing there yet) or rerun, whatever the fingerprints say;
- an input not known yet (a step upstream runs first and rewrites it) → run / rerun;
- no finished output, or one of another fingerprint → restore when a kept output of exactly this
  fingerprint exists (a stage's `exports/<fingerprint>/`), else run / rerun, saying which input changed;
- the finished output matches but does not read back complete → rerun;
- else skip.

`plan` decides a chain in order, each step seeing the decisions before it (a stage's `init_from` is the
fingerprint its upstream stage will have; a training stage's data waits for the filter step), so
`svp pipeline plan` prints what `svp pipeline run` then executes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Protocol


class Action(StrEnum):
    """What happens to a step. A `StrEnum`: it prints, records (MLflow tags) and compares as its word."""

    SKIP = "skip"
    RUN = "run"
    RERUN = "rerun"
    RESTORE = "restore"
    NOT_SELECTED = "not selected"


@dataclass(frozen=True)
class Facts:
    """What a step knows before deciding.

    fingerprint: of its current inputs; None while an input is decided by a step that runs first (`pending`
    says which). recorded: the fingerprint its finished output was recorded under (None: no finished output,
    `problem` says why). exists: something of an output is there (a rerun replaces it, a run starts fresh).
    problem: why the recorded output does not read back complete. changed: which inputs differ from the
    record's (called only when they do). kept: a kept output of exactly `fingerprint`, to restore.
    """

    fingerprint: str | None
    recorded: str | None
    exists: bool
    problem: str = ""
    pending: str = ""
    changed: Callable[[], str] = lambda: ""
    kept: Path | None = None
    matches: str = "output"  # what matched, in the skip reason: "output", "export"


@dataclass(frozen=True)
class Decision:
    step: str
    action: Action
    reason: str
    fingerprint: str | None
    kept: Path | None = None  # RESTORE: the output restored


def decide(step: str, facts: Facts, *, forced: bool = False, forced_reason: str = "forced") -> Decision:
    """The rule of the module docstring."""
    fresh = Action.RERUN if facts.exists else Action.RUN
    fingerprint = facts.fingerprint
    if forced:
        return Decision(step, fresh, forced_reason, fingerprint)
    if fingerprint is None or facts.pending:
        return Decision(step, fresh, facts.pending, fingerprint)
    if facts.recorded != fingerprint and facts.kept is not None:
        return Decision(step, Action.RESTORE, f"restore from {facts.kept}", fingerprint, facts.kept)
    if facts.recorded is None:
        return Decision(step, fresh, facts.problem or "no finished output yet", fingerprint)
    if facts.recorded != fingerprint:
        return Decision(
            step,
            Action.RERUN,
            f"fingerprint {facts.recorded} -> {fingerprint}: {facts.changed()}",
            fingerprint,
        )
    if facts.problem:
        return Decision(step, Action.RERUN, f"output incomplete: {facts.problem}", fingerprint)
    return Decision(step, Action.SKIP, f"{facts.matches} matches fingerprint {fingerprint}", fingerprint)


class Step(Protocol):
    """One step of a chain: its name, and what it knows given the decisions of the steps before it (its
    inputs fingerprint and its record: `Facts`)."""

    @property
    def name(self) -> str: ...

    def facts(self, earlier: Mapping[str, Decision]) -> Facts: ...


def plan(
    steps: Iterable[Step],
    *,
    forced: Iterable[str] = (),
    only: str | None = None,
    forced_reason: str = "forced (--from)",
) -> list[Decision]:
    """Decide each step in order; a step not `only` is not selected (it keeps its fingerprint, which a later
    step's inputs may name, but does not run, so nothing after it waits for it)."""
    forced = set(forced)
    decisions: dict[str, Decision] = {}
    for step in steps:
        decision = decide(
            step.name, step.facts(decisions), forced=step.name in forced, forced_reason=forced_reason
        )
        if only is not None and step.name != only:
            decision = replace(decision, action=Action.NOT_SELECTED, reason="--only " + only, kept=None)
        decisions[step.name] = decision
    return list(decisions.values())


def runs(decision: Decision | None) -> bool:
    """Whether a decided step will (re)write its output: not skipped, not left out."""
    return decision is not None and decision.action not in (Action.SKIP, Action.NOT_SELECTED)


def format_plan(decisions: list[Decision]) -> str:
    width = max(len(d.step) for d in decisions)
    return "\n".join(f"{d.step:<{width}}  {d.action:<12}  {d.reason}" for d in decisions)
