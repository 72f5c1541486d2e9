"""The import rules of docs/architecture.md, as the code must follow them: model <- curation <- training
(which may import only `curation.format` and
`curation.video_eval` of curation) <- orchestration, and no Ray, DeepSpeed or MLflow in
`model/`. Every import counts, the lazy ones inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "curation", "training", "orchestration")
ALLOWED = {
    "model": set(),
    "curation": {"model"},
    "training": {"model", "curation.format", "curation.video_eval"},
    "orchestration": {"model", "curation", "training"},
}
FORBIDDEN_THIRD_PARTY = {"model": {"ray", "deepspeed", "mlflow"}, "curation": {"deepspeed", "mlflow"}}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def _allowed(name: str, rules: set[str]) -> bool:
    return any(name == rule or name.startswith(rule + ".") for rule in rules)


def test_packages_import_only_downwards():
    broken = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in _imports(path):
                top = name.split(".")[0]
                if top in PACKAGES and top != package and not _allowed(name, ALLOWED[package]):
                    broken.append(f"{path.relative_to(ROOT)} imports {name}")
                if top in FORBIDDEN_THIRD_PARTY.get(package, set()):
                    broken.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not broken, "\n".join(broken)
