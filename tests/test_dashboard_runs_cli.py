"""`svp runs list` and `svp runs compare` on two real tiny training runs (learning rates differ)."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import pandas as pd
import pytest
from dashboard_fixtures import LRS, two_runs
from mlflow.tracking import MlflowClient

from core.errors import UserError
from orchestration.cli import main
from orchestration.dashboard.run_table import resolve


def test_runs_list_and_compare_print_tables_and_plot_both_curves(
    ray_session, tmp_path_factory, tmp_path, capsys
):
    store = two_runs(tmp_path_factory.getbasetemp() / "dashboard")
    capsys.readouterr()  # the training runs' own output
    assert main(["runs", "list", "--runs", str(store), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and {r["stage"] for r in rows} == {"image"}
    assert all(r["steps"] == 2 and r["final_loss"] > 0 for r in rows)
    assert main(["runs", "list", "--work-dir", str(store), "--json"]) == 0  # svp train's name for the folder
    assert json.loads(capsys.readouterr().out) == rows

    ids = [r["run_id"] for r in rows]
    plot = tmp_path / "loss.png"
    assert main(["runs", "compare", *ids, "--runs", str(store), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "params that differ" in out and "lr" in out and "seed" not in out
    image = mpimg.imread(plot)
    assert image.shape[0] > 100 and image.std() > 0

    assert main(["runs", "compare", ids[0][:8], ids[1], "--runs", str(store), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    curves = payload["train/loss"]
    assert len(curves) == 2 and all(len(c["step"]) == 2 for c in curves.values())
    lr_rows = [k for k in payload["params"] if "lr" in k]
    assert lr_rows and {float(v) for v in payload["params"][lr_rows[0]].values()} == set(LRS)

    # Four characters of a run id are enough when no other id starts with them.
    assert main(["runs", "compare", ids[0][:4], ids[1][:4], "--runs", str(store), "--json"]) == 0
    assert {r["run_id"] for r in json.loads(capsys.readouterr().out)["runs"]} == set(ids)
    # A stage name alone compares every run of that stage.
    assert main(["runs", "compare", "image", "--runs", str(store), "--json"]) == 0
    assert {r["run_id"] for r in json.loads(capsys.readouterr().out)["runs"]} == set(ids)
    assert main(["runs", "compare", ids[0][:3], "image", "--runs", str(store)]) == 2
    err = capsys.readouterr().err
    assert f"no run or stage '{ids[0][:3]}'" in err and "first 4+ characters" in err, err

    # The pipelines the store holds are the trainer's: not MLflow's own empty `Default` experiment.
    assert main(["runs", "list", "--runs", str(store), "--pipeline", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "svp: error: no pipeline named 'nope' in the store (pipelines: tiny)", err


def test_an_ambiguous_run_id_prefix_says_so():
    """Two runs whose ids start alike: their common prefix names both, which is said (with both ids)."""
    table = pd.DataFrame({"run_id": ["1c68aaaa11", "1c68bbbb22", "07a6cccc33"], "stage": ["video"] * 3})
    with pytest.raises(UserError, match=r"prefix '1c68' matches 2 runs \(1c68aaaa, 1c68bbbb\): give more"):
        resolve(table, ["1c68", "07a6"])
    assert list(resolve(table, ["1c68b", "07a6"])["run_id"]) == ["1c68bbbb22", "07a6cccc33"]
    assert len(resolve(table, ["video"])) == 3 and len(resolve(table, ["video", "07a6"])) == 2


def test_runs_bad_input_is_one_line(tmp_path, capsys):
    assert main(["runs", "list", "--runs", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().startswith("svp: error:")
    assert main(["runs", "list", "--tracking-uri", f"sqlite:///{tmp_path}/none.db"]) == 2
    assert "no MLflow store" in capsys.readouterr().err and not (tmp_path / "none.db").exists()
    empty = f"sqlite:///{tmp_path}/empty.db"
    MlflowClient(empty).search_experiments()  # a store with its tables and no runs
    capsys.readouterr()
    assert main(["runs", "list", "--tracking-uri", empty]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("svp:")] == [
        "svp: error: the store has no training runs yet: run `svp train` (or `svp demo`) first"
    ]


def test_dashboard_command_refuses_what_it_cannot_show(tmp_path, capsys):
    assert main(["dashboard", "--curation", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("svp: error:") and "not a curation output folder" in err and err.count("\n") == 1
    assert main(["dashboard", "--runs", str(tmp_path)]) == 2
    assert "no mlflow.db" in capsys.readouterr().err
