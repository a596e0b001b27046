"""The project's promises about itself: one set of packages, clean thin notebooks, CI runs the README's command."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[_name(name)] = version
    return pins


def test_environment_yml_and_pyproject_name_the_same_packages_at_the_locked_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict))
    pinned = {_name(r): r.split("==")[1] for r in pip_section if "==" in r}
    assert set(pinned) == declared
    assert "-e ." in pip_section  # conda users get carlib itself too
    lock = _lock()
    for name, version in pinned.items():
        assert lock[name] == version, f"{name}: environment.yml {version} vs requirements.lock {lock[name]}"
    assert "tensorflow-cpu" not in lock  # one wheel for CPU and GPU; both would share one folder


def test_locked_versions_satisfy_the_stated_lower_bounds():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = _lock()
    for requirement in project["dependencies"]:
        name = _name(requirement)
        lower = re.search(r">=([\d.]+)", requirement)
        if lower:
            locked = tuple(int(p) for p in lock[name].split(".")[:3])
            bound = tuple(int(p) for p in lower.group(1).split("."))
            assert locked[: len(bound)] >= bound, f"{name}: locked {lock[name]} < {lower.group(1)}"


def _notebooks():
    return sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_are_committed_clean_and_thin():
    assert _notebooks()
    for path in _notebooks():
        notebook = json.loads(path.read_text())
        code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
        assert sum("parameters" in c.get("metadata", {}).get("tags", []) for c in code) == 1, path.name
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), path.name
        source = "\n".join("".join(c["source"]) for c in code)
        assert not re.search(r"^\s*(def|class) ", source, re.M), f"{path.name}: logic belongs in carlib"
        assert ".fit(" not in source and "compile(" not in source, f"{path.name}: training logic belongs in carlib"
        assert notebook["metadata"]["kernelspec"]["name"] == "python3"


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
