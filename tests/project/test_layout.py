"""The library's layout: shared/ is grouped by phase into layered packages, and its import
graph (module-level and function-level imports alike) follows the layer order

    io < data < config < vision < evaluate < distill < train < export < manifest

A module may import from its own package and from packages to its left, never to its right;
shared/artifact_keys.py (constants) may be imported by every layer, and shared/run_console.py
(the local run's console, used by pipeline.py) may import anything. No two modules import
each other, directly or around a loop. A function longer than MAX_FUNCTION_LINES says why in
its docstring, on a line starting with "Long:"."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / "shared"
LAYERS = ("io", "data", "config", "vision", "evaluate", "distill", "train", "export", "manifest", "release")
FOR_EVERY_LAYER = {"shared.artifact_keys"}  # constants: importable from any layer
TOP_LEVEL = {"shared", "shared.artifact_keys", "shared.run_console"}  # modules outside the layers
IMPORTS_ANYTHING = {"shared.run_console"}
MAX_FUNCTION_LINES = 80


def module_files() -> dict[str, Path]:
    """Dotted name -> file of every module of shared/ (packages by their __init__.py)."""
    out = {}
    for p in sorted(SHARED.rglob("*.py")):
        if "node_modules" in p.parts:
            continue
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


MODULES = module_files()


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in LAYERS else None


def imported_modules(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, module of shared/) of every import anywhere in the file, functions included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # shared.io.atomic.write_json -> shared.io.atomic
                name = name.rpartition(".")[0]
            if name and name != module and name != "shared" and (node.lineno, name) not in found:
                found.append((node.lineno, name))
    return found


GRAPH = {m: imported_modules(m, p) for m, p in MODULES.items()}


def test_every_module_belongs_to_a_layer():
    stray = sorted(m for m in MODULES if m not in TOP_LEVEL and layer(m) is None and m[len("shared.") :] not in LAYERS)
    assert not stray, (
        f"{stray} are outside the layer packages {LAYERS}: put each in the package of its "
        "phase (see README's layout table)"
    )
    assert {p.name for p in SHARED.iterdir() if p.is_dir() and (p / "__init__.py").is_file()} == set(LAYERS)


def test_the_import_graph_follows_the_layer_order():
    against = []
    for module, edges in GRAPH.items():
        if module in IMPORTS_ANYTHING:
            continue
        for line, target in edges:
            if target in FOR_EVERY_LAYER:
                continue
            src, dst = layer(module), layer(target)
            if dst is None or src is None or LAYERS.index(dst) > LAYERS.index(src):
                against.append(
                    f"{MODULES[module].relative_to(ROOT)}:{line} ({src or 'top level'}) imports "
                    f"{target} ({dst or 'top level'})"
                )
    assert not against, (
        "imports against the layer order " + " < ".join(LAYERS) + " (move the function "
        "to the layer where it belongs rather than importing upwards):\n  " + "\n  ".join(against)
    )


def cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle():
    graph = {m: sorted({t for _, t in edges}) for m, edges in GRAPH.items()}
    assert not cycles(graph), f"modules importing each other (directly or around a loop): {cycles(graph)}"


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert cycles({"a": ["b"], "b": []}) == []


def long_functions() -> list[str]:
    out = []
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                doc = ast.get_docstring(node) or ""
                if lines > MAX_FUNCTION_LINES and not any(s.strip().startswith("Long:") for s in doc.splitlines()):
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    return out


def test_long_functions_say_why():
    long = long_functions()
    assert not long, (
        f"functions longer than {MAX_FUNCTION_LINES} lines: split them, or give the reason in "
        "the docstring on a line starting with 'Long:':\n  " + "\n  ".join(long)
    )


@pytest.mark.parametrize("package", LAYERS)
def test_each_layer_package_says_what_it_holds(package):
    init = SHARED / package / "__init__.py"
    assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), f"{init}: add a one-line docstring"
