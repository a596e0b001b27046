"""The house: carlib's packages are layers, each importing only from below, without cycles, imports at the top.

The layers, bottom to top (docs/architecture.md says what each does); units in one layer may not
import each other. A module may import its own package and any lower layer, in any form: absolute or
relative import statements, ``importlib.import_module`` and ``__import__`` of a literal name.
``carlib/__init__.py`` is the public facade: it loads the API lazily and is exempt from the layers. An import inside a function is allowed
only to defer a heavy library (TensorFlow, albumentations, ...), and says so: a ``# deferred: why``
comment on the line or on the comment line heading its block of imports.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "carlib"
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("base",),
    ("models", "data", "plots"),
    ("config",),
    ("records",),
    ("evaluate",),
    ("train",),
    ("studies",),
    ("bench",),
    ("cli",),
    ("__main__",),
]
LAYER_OF = {unit: index for index, units in enumerate(LAYERS) for unit in units}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _unit(module: str) -> str:
    """The layer unit of ``carlib.x.y``: ``x``."""
    return module.split(".")[1]


def _imports(module: str) -> list[tuple[str, int, bool]]:
    """(imported carlib module, line, inside a function) for every import of a carlib module in ``module``."""
    path = MODULES[module]
    return _imports_in_source(path.read_text(), module, is_package=path.name == "__init__.py")


def _imports_in_source(source: str, module: str, *, is_package: bool = False) -> list[tuple[str, int, bool]]:
    """The carlib imports of ``source``, the text of ``module``, in every form a module can import another.

    ``import carlib.x``, ``from carlib.x import y``, relative ``from . import y`` / ``from ..x import y``
    (resolved against ``module``'s package), and ``importlib.import_module("carlib.x")`` or
    ``__import__("carlib.x")`` with a literal name (``import_module(".x", "carlib.y")`` too).
    """
    package = module if is_package else module.rpartition(".")[0]
    tree = ast.parse(source)
    in_function = {id(sub) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for sub in ast.walk(node) if sub is not node}
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            # `from . import y` and `from ..x import y` name modules relative to this module's package
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level \
                else node.module
            # `from carlib.x import y` imports carlib.x.y when y is a module, else carlib.x
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
            targets = [_dynamic_import_target(node, package)]
        found += [(t, node.lineno, id(node) in in_function) for t in targets
                  if t and (t == "carlib" or t.startswith("carlib."))]
    return found


def _is_dynamic_import(func: ast.expr) -> bool:
    """``importlib.import_module``, ``import_module`` or ``__import__`` (however importlib was imported)."""
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    return name in ("import_module", "__import__")


def _dynamic_import_target(call: ast.Call, package: str) -> str | None:
    """The module a dynamic import names with string literals (``None`` when the name is computed)."""
    literals = [a.value if isinstance(a, ast.Constant) and isinstance(a.value, str) else None for a in call.args]
    name = literals[0] if literals else None
    if name is None or not name.startswith("."):
        return name
    anchor = next((k.value.value for k in call.keywords if k.arg == "package" and isinstance(k.value, ast.Constant)),
                  literals[1] if len(literals) > 1 else package)
    return importlib.util.resolve_name(name, anchor) if anchor else None


def _function_imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, text, says why) for every import inside a function: a statement, or a call of ``import_module``."""
    source = path.read_text().split("\n")
    tree = ast.parse("\n".join(source))
    result = []
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if isinstance(node, (ast.Import, ast.ImportFrom)) or (isinstance(node, ast.Call) and
                                                                  _is_dynamic_import(node.func)):
                result.append((node.lineno, source[node.lineno - 1].strip(), _says_why(source, node.lineno)))
    return sorted(set(result))


def _says_why(source: list[str], lineno: int) -> bool:
    """The import on ``lineno`` (1-based), or the block of imports it belongs to, carries ``# deferred:``.

    A block is the import lines (and blank and comment lines) above it, up to the first other statement;
    the line itself may be any statement (``module = importlib.import_module(...)``).
    """
    index = lineno - 1
    while index >= 0:
        line = source[index].strip()
        if "# deferred:" in line:
            return True
        if index < lineno - 1 and line and not line.startswith(("import ", "from ", "#")):  # blank lines may
            return False  # separate groups of a block
        index -= 1
    return False


def test_the_packages_are_the_layers():
    units = {_unit(m) for m in MODULES if m != "carlib"}
    assert units == set(LAYER_OF), f"a module outside the layers, or a layer without modules: {units ^ set(LAYER_OF)}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "carlib"))
def test_no_module_imports_from_a_layer_above_or_beside_it(module):
    wrong = _layer_violations(module, _imports(module))
    assert not wrong, f"{module} imports from a layer above or beside it: " + "; ".join(wrong)


def _layer_violations(module: str, imports: list[tuple[str, int, bool]]) -> list[str]:
    """What ``module`` imports from the facade, or from a layer above or beside its own."""
    own = _unit(module)
    wrong = []
    for target, line, _ in imports:
        if target == "carlib":
            wrong.append(f"line {line}: imports the facade carlib/__init__.py (import the module that defines it)")
            continue
        unit = _unit(target)
        if unit != own and LAYER_OF[unit] >= LAYER_OF[own]:
            wrong.append(f"line {line}: {target} ({'same layer' if LAYER_OF[unit] == LAYER_OF[own] else 'above'})")
    return wrong


@pytest.mark.parametrize("source, imported", [
    ("from carlib.train import stages", "carlib.train.stages"),
    ("from ..train import stages", "carlib.train.stages"),
    ("from ..train.stages import enter_stage", "carlib.train.stages"),
    ("from .. import config", "carlib.config"),
    ("from ...carlib.records import store", None),  # beyond the top package: Python refuses it, so does the check
    ("import importlib\nimportlib.import_module('carlib.evaluate.predict')", "carlib.evaluate.predict"),
    ("from importlib import import_module\ndef f():\n    return import_module('carlib.records')", "carlib.records"),
    ("import importlib\nimportlib.import_module('.setup', package='carlib.train')", "carlib.train.setup"),
    ("import importlib\nimportlib.import_module('..setup', 'carlib.train.stages')", "carlib.train.setup"),
    ("__import__('carlib.studies.run')", "carlib.studies.run"),
    ("import carlib", "carlib"),
])
def test_the_layer_check_sees_every_form_of_import(source, imported):
    module = "carlib.models.synthetic"  # a models module may import neither config, records, nor anything above
    if imported is None:
        with pytest.raises(ImportError):
            _imports_in_source(source, module)
        return
    found = _imports_in_source(source, module)
    assert [target for target, _, _ in found] == [imported]
    assert _layer_violations(module, found), f"{source!r} should break the layers"


def test_relative_imports_within_the_package_and_below_pass():
    source = "from . import registry\nfrom .spec import BackboneSpec\nfrom ..base import files\nfrom .. import errors"
    found = _imports_in_source(source, "carlib.models.synthetic")
    assert [t for t, _, _ in found] == ["carlib.models.registry", "carlib.models.spec", "carlib.base.files",
                                        "carlib.errors"]
    assert not _layer_violations("carlib.models.synthetic", found)
    assert [t for t, _, _ in _imports_in_source("from . import spec", "carlib.models", is_package=True)] == \
        ["carlib.models.spec"]
    assert _imports_in_source("import importlib\nimportlib.import_module(name)", "carlib.models.synthetic") == []


def test_no_import_cycles():
    graph = {m: {t for t, _, _ in _imports(m) if t in MODULES and t != m} for m in MODULES if m != "carlib"}
    state: dict[str, int] = {}  # 1: on the path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt == "carlib" or nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_imports_are_at_the_top_unless_they_defer_a_heavy_library_and_say_so():
    silent = [f"{path.relative_to(PACKAGE.parent)}:{line}: {text}" for path in MODULES.values()
              for line, text, says_why in _function_imports(path) if not says_why]
    assert not silent, "imports inside functions without a '# deferred: why' comment:\n" + "\n".join(silent)


def test_the_checks_above_can_fail(tmp_path):
    lines = ["def f():", "    import json", "    return json"]
    path = tmp_path / "m.py"
    path.write_text("\n".join(lines))
    assert _function_imports(path) == [(2, "import json", False)]
    path.write_text("\n".join([lines[0], "    # deferred: a reason", *lines[1:]]))
    assert _function_imports(path) == [(3, "import json", True)]
    path.write_text("import importlib\ndef f():\n    x = 1\n    return importlib.import_module('json')")
    assert _function_imports(path) == [(4, "return importlib.import_module('json')", False)]


@pytest.mark.parametrize("entry", [
    "carlib.records.store", "carlib.records.table", "carlib.config", "carlib.studies.stats", "carlib.studies.specs",
    "carlib.cli",
])
def test_reading_results_never_imports_tensorflow_or_albumentations(entry):
    code = (f"import sys, {entry}; heavy = [m for m in ('tensorflow', 'keras', 'albumentations') if m in sys.modules]; "
            "print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"importing {entry} loaded {result.stdout.strip()}"


def test_carlib_results_runs_without_tensorflow(tmp_path):
    code = ("import sys; from carlib.cli import main; code = main(['results', '--results-dir', sys.argv[1]]); "
            "assert 'tensorflow' not in sys.modules and 'albumentations' not in sys.modules, 'heavy import'; "
            "sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "no runs" in result.stdout
