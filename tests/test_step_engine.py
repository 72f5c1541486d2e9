"""The one rule of `training.driver.step_engine`: every step (curate, filter, encode, each stage) is decided by
`decide` from what it knows, and `plan` decides a chain in order, each step seeing the ones before it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from training.driver.step_engine import Action, Decision, Facts, decide, format_plan, plan, runs


def test_decide_covers_every_case_in_order():
    done = Facts("b", recorded="b", exists=True)
    assert decide("s", done) == Decision("s", Action.SKIP, "output matches fingerprint b", "b")
    assert decide("s", done, forced=True, forced_reason="forced (--from)").action == Action.RERUN
    assert decide("s", Facts("b", None, exists=False), forced=True).action == Action.RUN
    assert (
        decide("s", Facts(None, "b", exists=True, pending="step x runs first")).reason == "step x runs first"
    )
    assert decide("s", Facts("b", None, exists=False)) == Decision(
        "s", Action.RUN, "no finished output yet", "b"
    )
    changed = decide("s", Facts("b", "a", exists=True, changed=lambda: "lr 1 -> 2"))
    assert (changed.action, changed.reason) == (Action.RERUN, "fingerprint a -> b: lr 1 -> 2")
    broken = decide("s", Facts("b", "b", exists=True, problem="a shard is missing"))
    assert (broken.action, broken.reason) == (Action.RERUN, "output incomplete: a shard is missing")


def test_a_kept_output_of_exactly_the_fingerprint_is_restored_unless_forced():
    kept = Path("exports/b")
    facts = Facts("b", "a", exists=True, kept=kept)
    assert decide("s", facts) == Decision("s", Action.RESTORE, f"restore from {kept}", "b", kept)
    assert decide("s", facts, forced=True).action == Action.RERUN
    # The action is its word: in what `plan` prints, in MLflow's tags and in comparisons.
    assert Action.RESTORE == "restore" and f"{Action.NOT_SELECTED}" == "not selected"


@dataclass(frozen=True)
class Chained:
    """A step whose input is the output of `after`: it reruns when that one runs."""

    name: str
    recorded: str
    after: str | None = None

    def facts(self, earlier: Mapping[str, Decision]) -> Facts:
        pending = f"step {self.after} runs first" if runs(earlier.get(self.after)) else ""
        return Facts("fp-" + self.name, self.recorded, exists=True, pending=pending)


def test_plan_carries_each_decision_to_the_next_step():
    steps = [Chained("a", "old"), Chained("b", "fp-b", after="a"), Chained("c", "fp-c", after="b")]
    decided = plan(steps)
    assert [d.action for d in decided] == [Action.RERUN] * 3
    assert decided[2].reason == "step b runs first"
    steps[0] = Chained("a", "fp-a")
    assert [d.action for d in plan(steps)] == [Action.SKIP] * 3
    assert [d.action for d in plan(steps, forced=["b", "c"])] == [Action.SKIP, Action.RERUN, Action.RERUN]
    # --only: the others are not selected and nothing waits for them; they keep their fingerprint.
    only = plan(steps, forced=["b", "c"], only="c")
    assert [d.action for d in only] == [Action.NOT_SELECTED] * 2 + [Action.RERUN]
    assert only[0].fingerprint == "fp-a" and "not selected  --only c" in format_plan(only)
