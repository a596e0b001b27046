"""The documentation matches the code: docstrings on the public API, README's commands and results-table columns."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import carlib
from carlib.config import PARAMETER_NAMES

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _public_objects():
    """(where, name, object) for carlib's exports and every public function, class and method of its modules."""
    for name in carlib.__all__:
        if name != "__version__":
            yield "carlib", name, getattr(carlib, name)
    for info in pkgutil.walk_packages(carlib.__path__, "carlib."):
        if info.name.endswith("__main__"):  # importing it runs the command
            continue
        module = importlib.import_module(info.name)
        yield info.name, "<module>", module
        for name, value in vars(module).items():
            if name.startswith("_") or getattr(value, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(value) or inspect.isclass(value):
                yield info.name, name, value
            if inspect.isclass(value):
                for method, member in vars(value).items():
                    if not method.startswith("_") and inspect.isfunction(member) and not _overrides_a_framework_hook(
                            value, method):
                        yield info.name, f"{name}.{method}", getattr(value, method)


def _overrides_a_framework_hook(cls, method: str) -> bool:
    """Keras' hooks (call, build, get_config, on_epoch_end, …) are documented by Keras, not again by each override."""
    return any(method in vars(base) for base in cls.__mro__[1:] if not base.__module__.startswith("carlib"))


def test_every_public_module_function_class_and_method_has_a_docstring():
    missing = [f"{where}.{name}" for where, name, value in _public_objects()
               if (inspect.ismodule(value) or inspect.isfunction(value) or inspect.isclass(value)
                   or inspect.ismethod(value)) and not (inspect.getdoc(value) or "").strip()]
    assert not missing, "add a docstring to: " + ", ".join(missing)


def test_every_carlib_subcommand_the_readme_names_exists():
    from carlib.cli import _parser

    commands = set(next(a for a in _parser()._actions if a.dest == "command").choices)
    fenced = re.findall(r"^```[a-z]*\n(.*?)^```", README, re.M | re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"^```.*?^```", "", README, flags=re.M | re.S))
    named = {m for code in fenced + inline for m in re.findall(r"(?:^|[\s(])carlib ([a-z]+)\b", code, re.M)}
    assert named, "the README names no carlib command"
    assert named <= commands, f"README names unknown commands: {sorted(named - commands)}"


def test_every_make_target_the_readme_names_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z-]+):", makefile, re.M))
    named = set(re.findall(r"\bmake ([a-z-]+)\b", README))
    assert {"test", "demo"} <= named and named <= targets, sorted(named - targets)


def test_the_readme_documents_exactly_the_results_table_columns(fast_config):
    """A real run (with TTA, so every metric is there): the README's column list matches the table's columns."""
    from carlib.experiment import run_experiment
    from carlib.results import load_results

    run_experiment(**fast_config, tta_passes=2)
    columns = set(load_results(fast_config["results_dir"]).columns) - set(PARAMETER_NAMES)
    section = README.split("### Results-table columns", 1)[1].split("\n#", 1)[0]
    # Each bullet names its columns before the first ": " (- `n_train`, `n_val`: …).
    heads = [line.split(": ", 1)[0] for line in section.splitlines() if line.startswith("- ")]
    documented = set(re.findall(r"`([a-z0-9_]+)`", " ".join(heads))) - set(PARAMETER_NAMES)
    assert columns - documented == set(), f"document these columns in README: {sorted(columns - documented)}"
    assert documented - columns == set(), f"README documents columns the table lacks: {sorted(documented - columns)}"
