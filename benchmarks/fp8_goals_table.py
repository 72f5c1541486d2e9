"""Issue 23's goals table from one `benchmarks/fp8_goals.sh WORK` run, as markdown for docs/benchmarks.md.

    python -m benchmarks.fp8_goals_table WORK

Reads WORK/inference.json, train_off.json, train_rowwise.json and loss_gap.json (whichever exist: a part that
did not run says "not run"), and prints one row per goal (measured, goal, met) and then the side-by-side rows
behind them: bf16 and float8 against diffusers compiled, and the bf16 and float8 training steps.
"""

from __future__ import annotations

import json
import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Rows = dict[str, list[dict]]  # file stem -> its rows


@dataclass(frozen=True)
class Goal:
    what: str
    before: str  # the "now" (one H200, docs/benchmarks.md)
    target: float
    better: Callable[[float, float], bool]  # operator.le or operator.ge
    unit: str
    read: Callable[[Rows], float | None]


def loop_times(rows: list[dict]) -> dict[str, float]:
    """{variant: 50-step loop seconds} of the transformer rows that have one (a failed variant has none)."""
    return {r["variant"]: r["loop_s"] for r in rows if r.get("section") == "transformer" and "loop_s" in r}


def _row(rows: Rows, stem: str, section: str, **match: object) -> dict:
    found = [r for r in rows.get(stem, []) if r.get("section") == section]
    found = [r for r in found if all(r.get(k) == v for k, v in match.items())]
    return found[-1] if found else {}


def _goal(rows: Rows, precision: str, key: str) -> float | None:
    return _row(rows, "inference", "goals", precision=precision).get(key)


def _mfu(rows: Rows, stem: str) -> float | None:
    mfu = _row(rows, stem, "train").get("mfu")
    return None if mfu is None else round(100 * mfu, 1)


def _loss_gap(rows: Rows) -> float | None:
    gap = _row(rows, "loss_gap", "loss_gap").get("gap_last")
    return None if gap is None else round(100 * abs(gap), 2)


GOALS = [
    Goal("training MFU, 2B 480p, bf16", "35.6%", 40, operator.ge, "%", lambda r: _mfu(r, "train_off")),
    Goal("training MFU, 2B 480p, float8", "—", 45, operator.ge, "%", lambda r: _mfu(r, "train_rowwise")),
    Goal(
        "50-step CFG loop, float8",
        "22.68 s hand-written",
        12,
        operator.le,
        " s",
        lambda r: _goal(r, "fp8", "loop_s"),
    ),
    Goal(
        "× diffusers compiled, float8", "—", 2.4, operator.ge, "×", lambda r: _goal(r, "fp8", "vs_diffusers")
    ),
    Goal(
        "end to end with decode, float8",
        "28.27 s bf16",
        14,
        operator.le,
        " s",
        lambda r: _goal(r, "fp8", "end_to_end_s"),
    ),
    Goal(
        "final latent rel-L2, float8",
        "0.061",
        0.06,
        operator.le,
        "",
        lambda r: _goal(r, "fp8", "final_latent_rel_l2"),
    ),
    Goal("bf16 vs float8 loss gap, last third", "—", 1, operator.le, "%", _loss_gap),
]


def load(work: Path) -> Rows:
    stems = ("inference", "train_off", "train_rowwise", "loss_gap")
    return {s: json.loads((work / f"{s}.json").read_text()) for s in stems if (work / f"{s}.json").is_file()}


def goal_lines(rows: Rows) -> list[str]:
    lines = ["| what | before | goal | measured | met |", "|---|---|---|---|---|"]
    for goal in GOALS:
        value = goal.read(rows)
        sign = "≥" if goal.better is operator.ge else "≤"
        measured = "not run" if value is None else f"{value}{goal.unit}"
        met = "" if value is None else ("yes" if goal.better(value, goal.target) else "**no**")
        lines.append(
            f"| {goal.what} | {goal.before} | {sign} {goal.target}{goal.unit} | {measured} | {met} |"
        )
    return lines


def side_by_side_lines(rows: Rows) -> list[str]:
    """The pairs behind the goals, each pair measured in the same process (training: the two runs)."""
    loops = loop_times(rows.get("inference", []))
    mode = "compiled" if any(v.startswith("compiled") for v in loops) else "eager"  # eager on a CPU
    theirs = f"diffusers {mode}"
    lines = ["| side by side | A | B |", "|---|---|---|"]
    for precision in ("native", "fp8"):
        ours = f"{mode}, {precision}"
        if ours in loops and theirs in loops:
            lines.append(
                f"| 50-step loop: ours {precision} vs {theirs} | {loops[ours]} s | {loops[theirs]} s |"
            )
    off, fp8 = _row(rows, "train_off", "train"), _row(rows, "train_rowwise", "train")
    if "step_s_median" in off and "step_s_median" in fp8:
        a, b = round(off["step_s_median"], 4), round(fp8["step_s_median"], 4)
        lines.append(f"| training step: bf16 vs float8 | {a} s | {b} s |")
    return lines


def main(argv: list[str] | None = None) -> str:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        raise SystemExit("usage: python -m benchmarks.fp8_goals_table WORK (the folder fp8_goals.sh wrote)")
    work = Path(argv[0])
    rows = load(work)
    machine = (work / "machine.txt").read_text().splitlines()[:2] if (work / "machine.txt").is_file() else []
    text = "\n".join([*machine, "", *goal_lines(rows), "", *side_by_side_lines(rows)])
    print(text)
    return text


if __name__ == "__main__":
    main()
