"""The import rules of docs/architecture.md, as the code must follow them: core <- model <- curation <-
training (which may import only the shard contract of curation: `curation.format` and `curation.shard_tar`)
<- orchestration, and no Ray, DeepSpeed or MLflow in `core/` or `model/`. `core/` (errors, dotted keys, config
paths, atomic writes, YAML loading, the digest) imports nothing of svp. Every import counts, the lazy ones
inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "model", "curation", "training", "orchestration")
ALLOWED = {
    "core": set(),
    "model": {"core"},
    "curation": {"core", "model"},
    "training": {"core", "model", "curation.format", "curation.shard_tar"},
    "orchestration": {"core", "model", "curation", "training"},
}
FORBIDDEN_THIRD_PARTY = {
    "core": {"ray", "deepspeed", "mlflow", "torch"},
    "model": {"ray", "deepspeed", "mlflow"},
    "curation": {"deepspeed", "mlflow"},
}


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
