"""benchmarks/training_kernels.py (the lead's H200 command) at toy sizes on the CPU: the Triton kernels under
the interpreter, two step variants inside DeepSpeed, the profile; run with Ray and MLflow made unimportable,
as on the GPU machine, which has neither."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

# Runs the benchmark's main with `ray` and `mlflow` missing (DeepSpeed's optional mlflow import then falls back).
_WITHOUT_RAY_AND_MLFLOW = textwrap.dedent(
    """
    import runpy, sys

    class Missing:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("ray", "mlflow"):
                raise ModuleNotFoundError(f"No module named {name!r}")

    sys.meta_path.insert(0, Missing())
    sys.argv = ["training_kernels", *sys.argv[1:]]
    runpy.run_module("benchmarks.training_kernels", run_name="__main__")
    """
)


def test_training_kernels_benchmark_runs_at_toy_sizes(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.getcwd(), "DS_ACCELERATOR": "cpu"}
    args = ["--out", str(tmp_path), "--toy", "--cpu", "--variants", "0", "4", "--warmup", "0", "--steps", "1"]
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_RAY_AND_MLFLOW, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    results = json.loads((tmp_path / "results.json").read_text())
    checks = results["checks"]
    assert {row["check"] for row in checks} == {"forward", "gradients"} and all(row["pass"] for row in checks)
    assert {(row["path"], row["mode"]) for row in results["attention"]} == {
        (path, mode) for path in ("pytorch", "triton") for mode in ("bidirectional", "block-causal")
    }
    today, causal = results["step"]
    assert not today["fused_attention"] and today["chunk_sizes"] is None
    assert causal["fused_attention"] and causal["fused_adamw"] and causal["chunk_sizes"] == [1, 4]
    assert all(row["step_s_median"] > 0 and row["mfu"] > 0 for row in results["step"])
    assert "Self CPU" in (tmp_path / "profile.txt").read_text()
    assert "| both, block-causal |" in (tmp_path / "summary.md").read_text()
