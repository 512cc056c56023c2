"""The layering rules of DESIGN §1, read from every module's imports with `ast` (nothing is
imported): data imports nothing above it; stages never import launch; config imports neither the
registry nor any stage; no import circles (imports inside functions count); an import inside a
function only for a heavy module (torch & co., or a project module that imports one at its top),
so torch/transformers/trl stay off the login node; launch, config and the CLI import none of them
at module level."""
from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "empo"
# third-party modules worth a lazy import: seconds of import time or a GPU stack
HEAVY = {"torch", "transformers", "trl", "peft", "datasets", "submitit", "deepspeed", "lm_eval",
         "bert_score", "vllm", "matplotlib", "accelerate", "safetensors", "numpy", "scipy",
         "huggingface_hub", "pyarrow", "tokenizers", "tensorboard", "bitsandbytes", "kernels",
         "liger_kernel", "wandb", "tqdm", "rich"}
NOT_ON_LOGIN_NODE = {"torch", "transformers", "trl", "peft", "datasets", "deepspeed", "vllm"}
# the ground floor and the run store: what data may import besides itself (DESIGN §1)
BELOW_DATA = {"empo", "empo.errors", "empo.config", "empo.validate", "empo.options",
              "empo.trainer_fields", "empo.executors", "empo.metrics", "empo.quoting",
              "empo.reader", "empo.processes", "empo.store"}
STAGE_PACKAGES = ("empo.train", "empo.evaluate", "empo.results")  # modules that run stages


def in_stage_package(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in STAGE_PACKAGES)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from . import x
        package = module.split(".")
        if MODULES[module].name != "__init__.py":
            package = package[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


@cache
def imports(module: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(module-level imports, imports inside functions), TYPE_CHECKING blocks left out."""
    top: list[str] = []
    lazy: list[str] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (lazy if in_function else top).extend(_imported(module, child))
            visit(child, in_function or isinstance(child, (ast.FunctionDef,
                                                           ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(MODULES[module].read_text()), False)
    return tuple(top), tuple(lazy)


def project(name: str) -> str | None:
    """The project module an import names (its longest existing prefix), None if third-party."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def closure(module: str) -> set[str]:
    """Every name imported at module level, following project modules (package parents too)."""
    seen, todo, names = {module}, [module], set()
    while todo:
        current = todo.pop()
        parents = [".".join(current.split(".")[:i]) for i in range(1, current.count(".") + 1)]
        for name in [*imports(current)[0], *parents]:
            names.add(name)
            found = project(name)
            if found and found not in seen:
                seen.add(found)
                todo.append(found)
    return names


def heavy(name: str) -> bool:
    """A third-party heavy module, or a project module importing one at its top."""
    if name.split(".")[0] in HEAVY:
        return True
    found = project(name)
    return found is not None and any(n.split(".")[0] in HEAVY for n in closure(found))


def edges(module: str) -> set[str]:
    return {p for name in [*imports(module)[0], *imports(module)[1]]
            if (p := project(name)) and p != module}


def test_data_imports_nothing_above_it():
    data = [m for m in MODULES if m == "empo.data" or m.startswith("empo.data.")]
    found = [(m, n) for m in data for name in sum(imports(m), ())
             if (n := project(name)) and n not in data and n not in BELOW_DATA]
    assert found == []


def test_stages_never_import_launch():
    stages = [m for m in MODULES if m == "empo.stages" or in_stage_package(m)]
    found = [(m, name) for m in stages for name in sum(imports(m), ())
             if name == "empo.launch" or name.startswith("empo.launch.")]
    assert found == []


def test_config_imports_neither_the_registry_nor_any_stage():
    reached = {project(name) for name in closure("empo.config")} - {None}
    above = {"empo.stages", "empo.pipeline", *filter(in_stage_package, MODULES)}
    assert reached & above == set()


def test_no_import_circles():
    """Strongly connected components of the import graph (lazy imports included)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges(v):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in MODULES:
        if module not in index:
            strong(module)
    assert circles == []


def test_imports_inside_functions_are_only_for_heavy_modules():
    light = sorted({(m, name) for m in MODULES for name in imports(m)[1] if not heavy(name)})
    assert light == [], "move these to the top of their module"


@pytest.mark.parametrize("module", ["empo.cli", "empo.config",
                                    *(m for m in MODULES if m.startswith("empo.launch"))])
def test_the_login_node_side_imports_no_training_stack_at_module_level(module):
    assert {n.split(".")[0] for n in closure(module)} & NOT_ON_LOGIN_NODE == set()
