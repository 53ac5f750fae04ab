"""Code rules: ruff's lint settings (pyproject.toml) hold for the whole project, and KFP
components keep their module scope light.

Which modules the component rules cover:
- every components/*.py that defines a KFP component (a function decorated with
  dsl.component / dsl.container_component), found by parsing, so a new one is covered
  without being listed: at module scope it imports only the standard library, kfp and
  components.images. Anything else (shared, torch, numpy, yaml, ...) is imported inside the
  component function, which is the only code KFP ships to the container: the executor runs
  the function's source after `import kfp; from kfp import dsl; from kfp.dsl import *;
  from typing import *`, so a module-level import is not there at run time, and importing
  heavy libraries at module scope would also load them wherever the pipeline is compiled.
  The function may use no name from its module other than what that preamble gives;
- components/images.py, imported at module scope by every component module: the standard
  library only;
- not components/platform.py (Kubernetes settings applied while the pipeline is built;
  it reads shared.config.cluster) nor components/submission.py (the client that submits
  runs): neither defines a component or runs in a pod.
"""

import ast
import builtins
import importlib.util
import subprocess
import sys
import typing
from pathlib import Path

import kfp
import kfp.dsl
import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPONENTS = ROOT / "components"
STDLIB = set(sys.stdlib_module_names) | {"__future__"}
ALLOWED_IN_COMPONENT_MODULES = ("kfp", "components.images")
COMPONENT_DECORATORS = {"component", "container_component"}
# What the KFP executor defines before the component's source (component_factory, kfp 2.17).
EXECUTOR_PREAMBLE = {"kfp", "dsl"} | set(getattr(kfp.dsl, "__all__", dir(kfp.dsl))) | set(typing.__all__)


def test_ruff_check_passes():
    if importlib.util.find_spec("ruff") is None:
        pytest.fail("ruff is not installed in this environment: run `make setup` (requirements.lock pins it)")
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, (
        f"ruff check reports problems (settings: pyproject.toml [tool.ruff]; many are fixed by "
        f"`ruff check --fix`):\n{proc.stdout}{proc.stderr}"
    )


def test_ruff_format_is_applied():
    if importlib.util.find_spec("ruff") is None:
        pytest.fail("ruff is not installed in this environment: run `make setup` (requirements.lock pins it)")
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--check", "--no-cache", "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"files not formatted (run `.venv/bin/ruff format .`):\n{proc.stdout}{proc.stderr}"


def _is_component_decorator(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
    return name in COMPONENT_DECORATORS


def component_functions(tree: ast.Module) -> list[ast.FunctionDef]:
    return [
        n
        for n in tree.body
        if isinstance(n, ast.FunctionDef) and any(_is_component_decorator(d) for d in n.decorator_list)
    ]


def module_scope_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module) of every import outside function and class bodies (also under if/try)."""
    found = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Import):
                found.extend((child.lineno, a.name) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                found.append((child.lineno, "." * child.level + (child.module or "")))
            visit(child)

    visit(tree)
    return found


def _allowed(module: str, extra: tuple[str, ...]) -> bool:
    top = module.split(".")[0]
    return bool(top) and (top in STDLIB or any(module == m or module.startswith(m + ".") for m in extra))


def component_modules() -> dict[str, ast.Module]:
    trees = {p.name: ast.parse(p.read_text(), filename=str(p)) for p in sorted(COMPONENTS.glob("*.py"))}
    return {name: tree for name, tree in trees.items() if component_functions(tree)}


def test_the_rules_cover_every_component_module_and_only_those():
    covered = set(component_modules())
    assert {"ingest.py", "split.py", "train_teacher.py", "training_manifest.py"} <= covered
    assert not covered & {"images.py", "platform.py", "submission.py", "__init__.py"}


@pytest.mark.parametrize("name", sorted(component_modules()))
def test_component_modules_import_only_kfp_and_the_standard_library_at_module_scope(name):
    tree = component_modules()[name]
    bad = [
        f"line {line}: {mod}"
        for line, mod in module_scope_imports(tree)
        if not _allowed(mod, ALLOWED_IN_COMPONENT_MODULES)
    ]
    assert not bad, (
        f"components/{name} imports {bad} at module scope; import them inside the component "
        f"function (only its source runs in the container)"
    )


def test_images_module_imports_only_the_standard_library():
    tree = ast.parse((COMPONENTS / "images.py").read_text())
    bad = [f"line {line}: {mod}" for line, mod in module_scope_imports(tree) if not _allowed(mod, ())]
    assert not bad, f"components/images.py is imported by every component module: stdlib only, got {bad}"


def free_names(func: ast.FunctionDef) -> set[str]:
    """Names the function's signature and body read but never bind themselves."""
    parts = [
        *func.args.defaults,
        *func.args.kw_defaults,
        func.returns,
        *(a.annotation for a in [*func.args.args, *func.args.kwonlyargs]),
        *func.body,
    ]
    bound = {a.arg for a in [*func.args.posonlyargs, *func.args.args, *func.args.kwonlyargs]}
    bound |= {a.arg for a in (func.args.vararg, func.args.kwarg) if a is not None}
    used = set()
    for part in filter(None, parts):
        for node in ast.walk(part):
            if isinstance(node, ast.Name):
                (bound if isinstance(node.ctx, (ast.Store, ast.Del)) else used).add(node.id)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound.add(node.name)
            elif isinstance(node, ast.arg):
                bound.add(node.arg)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                bound.add(node.name)
    return used - bound - set(dir(builtins))


@pytest.mark.parametrize("name", sorted(component_modules()))
def test_component_functions_use_nothing_from_their_module(name):
    unavailable = {
        f.name: sorted(free_names(f) - EXECUTOR_PREAMBLE)
        for f in component_modules()[name].body
        if isinstance(f, ast.FunctionDef) and f in component_functions(component_modules()[name])
    }
    unavailable = {k: v for k, v in unavailable.items() if v}
    assert not unavailable, (
        f"components/{name}: {unavailable} are not defined in the container (KFP runs only "
        f"the function's source); import or define them inside the function"
    )
