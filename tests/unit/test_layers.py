"""The package's imports point one way: cli / server / worker -> engine -> storage."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[2] / "src" / "stepwise"

#: Each top-level module or package of `stepwise`, by layer; a module may import only from
#: its own layer or below.
LAYERS: dict[str, int] = {
    # plain values and helpers that know nothing of runs
    "status": 0, "errors": 0, "payloads": 0, "clock": 0, "events": 0, "expressions": 0,
    "schedules": 0, "metrics": 0, "access": 0, "admission": 0,
    "tracing": 0, "results": 0, "signing": 0,
    "storage": 1,  # backends, transactions, named queries, migrations
    "flow": 2, "definition": 2,  # what is stored about a function
    "engine": 3,  # every decision about events, runs and steps
    "app": 4, "context": 4, "execution": 4,  # the in-process executor and what users write
    "worker": 5, "server": 5, "dashboard": 5, "remote": 5,
    "testing": 6, "cli": 6, "__init__": 6, "pytest_plugin": 7,
}


def _top(module: Path) -> str:
    parts = module.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imported(module: Path, root: Path = PACKAGE) -> set[str]:
    """The top-level `stepwise` modules that `module` imports (type-only imports included)."""
    package = list(module.relative_to(root).parent.parts)
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
                names = [target] if target else [[alias.name] for alias in node.names]
            elif node.module and node.module.split(".")[0] == "stepwise":
                names = [node.module.split(".")[1:] or [a.name for a in node.names][:1]]
            else:
                continue
            found.update(name[0] for name in names if name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "stepwise" and len(parts) > 1:
                    found.add(parts[1])
    return found


def test_every_module_has_a_layer() -> None:
    tops = {_top(p) for p in PACKAGE.rglob("*.py")}
    assert tops <= set(LAYERS), f"place these modules in LAYERS: {sorted(tops - set(LAYERS))}"


def test_imports_only_point_down() -> None:
    upward = []
    for module in sorted(PACKAGE.rglob("*.py")):
        own = _top(module)
        for imported in _imported(module):
            if LAYERS.get(imported, 99) > LAYERS[own]:
                upward.append(f"{module.relative_to(PACKAGE)} imports {imported}")
    assert not upward, "imports pointing up a layer:\n" + "\n".join(upward)


def test_storage_imports_nothing_from_the_engine_or_above() -> None:
    for module in (PACKAGE / "storage").rglob("*.py"):
        assert all(LAYERS[m] <= LAYERS["storage"] for m in _imported(module)), module


def test_the_checker_sees_upward_imports(tmp_path: Path) -> None:
    """The walk above catches relative and absolute imports of a higher layer."""
    probe = tmp_path / "storage" / "probe.py"
    probe.parent.mkdir()
    probe.write_text("from ..engine import runs\nfrom stepwise.worker import Worker\n"
                     "from . import queries\nimport stepwise.server\n")
    assert _imported(probe, tmp_path) == {"engine", "worker", "storage", "server"}
