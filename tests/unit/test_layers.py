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
    "processes": 0, "threads": 0, "durations": 0,
    "storage": 1,  # backends, transactions, named queries, migrations
    "flow": 2, "definition": 2,  # what is stored about a function
    "engine": 3,  # every decision about events, runs and steps
    "app": 4, "context": 4, "execution": 4, "executor": 4,  # executors and what users write
    "worker": 5, "server": 5, "dashboard": 5, "remote": 5, "pruner": 5,
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


# --- per module: no cycles anywhere, and the engine's own order ---------------------------

#: The engine's modules, lowest first: a module may import only modules of a lower rank (the
#: transitions below the operations that use them; `__init__` runs them all).
ENGINE_ORDER: dict[str, int] = {
    "outcomes": 0, "retries": 0, "definitions": 0, "workers": 0, "sessions": 0, "audit": 0,
    "sdk_events": 1,  # an SDK run's end events, built (not ingested)
    "lifecycle": 2,  # fencing and every status transition
    "waits": 3,
    "flow_control": 4,
    "ingest": 5,  # ingests what run ends announce: above the transitions
    "runs": 6,
    "leasing": 7, "admin": 7, "retention": 7, "stats": 7,
    "search": 0,  # reads runs by the search index (below admin, which uses it)
    "__init__": 8,
}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["stepwise", *parts])


def _module_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Each `stepwise` module and the `stepwise` modules it imports (function-local and
    type-only imports included): `from . import x` names module `x` when it is one."""
    modules = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name.split(".") if is_package else name.split(".")[:-1]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                module = [*base, *(node.module.split(".") if node.module else [])]
                if not module or module[0] != "stepwise":
                    continue
                for alias in node.names:  # `from pkg import module` imports the module
                    child = ".".join([*module, alias.name])
                    targets.append(child if child in modules else ".".join(module))
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "stepwise"]
            found.update(t for t in targets if t in modules and t != name)
        graph[name] = found
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph without a package's imports of its own modules (an `__init__` that gathers
    its package's names is above them, not part of a cycle with them)."""
    return {name: {t for t in targets if not t.startswith(name + ".")}
            for name, targets in graph.items()}


def test_no_module_imports_form_a_cycle() -> None:
    cycles = _cycles(_package_inits(_module_graph()))
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_engine_modules_import_only_lower_ones() -> None:
    graph = _module_graph()
    engine = {n.removeprefix("stepwise.engine").lstrip(".") or "__init__": targets
              for n, targets in graph.items() if n == "stepwise.engine"
              or n.startswith("stepwise.engine.")}
    assert set(engine) == set(ENGINE_ORDER), "place these in ENGINE_ORDER: " + \
        str(sorted(set(engine) ^ set(ENGINE_ORDER)))
    upward = [f"engine.{own} imports engine.{target.rsplit('.', 1)[-1]}"
              for own, targets in engine.items() for target in targets
              if target.startswith("stepwise.engine.")
              and ENGINE_ORDER[target.rsplit(".", 1)[-1]] >= ENGINE_ORDER[own]
              and own != "__init__"]
    assert not upward, "engine imports not pointing down:\n" + "\n".join(upward)


def test_the_cycle_check_finds_a_cycle(tmp_path: Path) -> None:
    """A function-local import that closes a loop is a cycle too."""
    (tmp_path / "a.py").write_text("from . import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from .c import g\n")
    (tmp_path / "c.py").write_text("from .a import x\n")
    (tmp_path / "d.py").write_text("from . import a\n")
    graph = _module_graph(tmp_path)
    assert graph["stepwise.b"] == {"stepwise.c"}
    assert _cycles(graph) == [["stepwise.a", "stepwise.b", "stepwise.c"]]
