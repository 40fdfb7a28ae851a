"""The package's shape, read from its source with ``ast`` (nothing is imported): no import cycle inside ``korasr``
(imports inside functions count: a lazy import is still a dependency), no function longer than a reader can hold,
and the style guide's layering: the light side (text, data, tokenizer, runtime, serve) never imports torch or NeMo at
module level, and the runtime and the service never reach up into the training side."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "korasr"
MAX_FUNCTION_LINES = 150
LIGHT = ("korasr.text", "korasr.data", "korasr.tokenizer", "korasr.runtime", "korasr.serve")
HEAVY = ("torch", "nemo", "lightning")
# what runtime and serve must never import, even lazily: the training side and the command line (the LM artifact
# reader they need lives below them, in korasr.runtime.lm_artifact)
TRAINING_SIDE = ("korasr.evaluate", "korasr.export", "korasr.train", "korasr.lm", "korasr.model", "korasr.lookahead",
                 "korasr.precision", "korasr.triton", "korasr.cli")  # fmt: skip


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` under ``root`` (a package's ``__init__`` is the package)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        name = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def is_package(name: str, mods: dict[str, Path]) -> bool:
    return mods[name].name == "__init__.py"


def imported_names(tree: ast.AST, module: str, package: bool) -> list[tuple[str, ast.stmt]]:
    """Every module name an ``import`` anywhere in ``tree`` may load (``from a import b``: ``a.b`` and ``a``),
    relative imports resolved against ``module``."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")
                anchor = parts[: len(parts) - node.level + (1 if package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            names += [(f"{base}.{alias.name}", node) for alias in node.names] + [(base, node)]
    return names


def owner(name: str, mods: dict[str, Path]) -> str | None:
    """The module of ``mods`` that ``name`` (a module or a name inside one) belongs to."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def related(a: str, b: str) -> bool:
    """A package and its own modules: a package re-exporting its children, or a child importing its package's
    face, is not a cycle (Python initializes the package first)."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        targets = {owner(n, mods) for n, _ in imported_names(tree, name, is_package(name, mods))}
        graph[name] = {t for t in targets if t and not related(name, t)}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``a -> … -> a``) per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(cycle_through(set(component), graph))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def cycle_through(component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest path from the component's first module back to itself, inside the component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for succ in sorted(graph[node] & component):
                if succ == start:
                    return paths[node] + [start]
                if succ not in paths:
                    paths[succ] = paths[node] + [succ]
                    nxt.append(succ)
        frontier = nxt
    raise AssertionError(f"no cycle through {start}")  # a component of more than one module always has one


def module_level(tree: ast.Module) -> list[ast.stmt]:
    """The statements that run when the module is imported: not function bodies, not ``if TYPE_CHECKING:``."""
    out, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
            continue
        out.append(node)
        for field in ("body", "orelse", "finalbody", "handlers"):
            todo += [n for n in getattr(node, field, []) if isinstance(n, ast.stmt | ast.ExceptHandler)]
    return out


def heavy_imports_at_module_level(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in module_level(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{path}:{node.lineno} {n}" for n in names if n.split(".")[0] in HEAVY]
    return found


def in_layer(name: str, layers: tuple[str, ...]) -> bool:
    return any(name == layer or name.startswith(layer + ".") for layer in layers)


# --- the checks ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mods() -> dict[str, Path]:
    return modules()


@pytest.fixture(scope="module")
def graph(mods) -> dict[str, set[str]]:  # type: ignore[no-untyped-def]
    return import_graph(mods)


def test_the_walker_sees_lazy_imports_and_the_cycle_finder_finds_cycles(graph):
    assert "korasr.runtime" in graph["korasr.serve.state"]  # a module-level import
    assert "korasr.tokenizer.report" in graph["korasr.train"]  # an import inside a function
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("def f():\n    from . import sibling\n")
    assert ("korasr.export.sibling", tree.body[0].body[0]) in imported_names(tree, "korasr.export.offline", False)


def test_no_import_cycle_inside_korasr(graph):
    found = [" -> ".join(c) for c in cycles(graph)]
    assert not found, "import cycles (a name two modules need lives below both):\n" + "\n".join(found)


def test_no_function_is_longer_than_a_reader_can_hold(mods):
    long = []
    for path in mods.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path}:{node.lineno} {node.name}() is {lines} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)


def test_the_light_side_never_imports_torch_or_nemo_at_module_level(mods):
    found = [hit for name, path in mods.items() if in_layer(name, LIGHT) for hit in heavy_imports_at_module_level(path)]
    assert not found, "torch/NeMo imported at module level on the light side:\n" + "\n".join(found)


def test_runtime_and_serve_never_import_the_training_side(graph):
    found = [f"{name} -> {dep}" for name, deps in sorted(graph.items())
             if in_layer(name, ("korasr.runtime", "korasr.serve"))
             for dep in sorted(deps) if in_layer(dep, TRAINING_SIDE)]  # fmt: skip
    assert not found, "runtime/serve reach up into the training side:\n" + "\n".join(found)


def test_the_lm_package_still_offers_the_reader():
    import korasr.lm
    from korasr.runtime import lm_artifact

    assert korasr.lm.read_lm is lm_artifact.read_lm and korasr.lm.LMError is lm_artifact.LMError
