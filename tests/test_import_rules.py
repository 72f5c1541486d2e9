"""The import rules of docs/architecture.md, as the code must follow them: core <- model <- curation <-
training (which may import only the shard contract of curation, `curation.format` and `curation.shard_tar`,
and the scorers of generated videos, `curation.video_eval`) <- orchestration, and no Ray, DeepSpeed or
MLflow in `core/` or `model/`. `core/` (errors, dotted keys, config paths, atomic writes, YAML loading, the
digest) imports nothing of svp. Every import counts, the lazy ones inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "model", "curation", "training", "orchestration")
ALLOWED = {
    "core": set(),
    "model": {"core"},
    "curation": {"core", "model"},
    "training": {"core", "model", "curation.format", "curation.shard_tar", "curation.video_eval"},
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


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _own_imports(path: Path, modules: set[str]) -> set[str]:
    """The modules of the same package that `path` imports, the lazy and TYPE_CHECKING ones included.
    `from pkg import name` is an import of `pkg.name` when that is a module, else of `pkg` itself."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return found & modules


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_no_package_has_an_import_cycle_among_its_own_modules():
    found = []
    for package in PACKAGES:
        paths = {_module_name(path): path for path in sorted((ROOT / package).rglob("*.py"))}
        graph = {name: _own_imports(path, set(paths)) - {name} for name, path in paths.items()}
        found += [" <-> ".join(cycle) for cycle in _cycles(graph)]
    assert not found, (
        "import cycles (move the shared code down; a lazy import is still a cycle):\n" + "\n".join(found)
    )
