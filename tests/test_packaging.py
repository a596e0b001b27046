"""The project's promises about itself: one set of packages, clean thin notebooks that open in Colab, a wheel that
carries the command and the notebooks, CI runs the README's command."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
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
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    declared = {_name(r) for r in project["dependencies"] + extras}
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
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    for requirement in project["dependencies"] + extras:
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


def _repository() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


def test_every_notebook_opens_in_colab_and_installs_carlib_only_where_it_is_missing():
    repository = _repository()
    owner_repo = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+)", repository).group(1)
    for path in _notebooks():
        cells = json.loads(path.read_text())["cells"]
        badge = f"(https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/{path.name})"
        assert cells[0]["cell_type"] == "markdown" and badge in "".join(cells[0]["source"]), path.name
        assert "colab-badge.svg" in "".join(cells[0]["source"]), path.name
        code = [c for c in cells if c["cell_type"] == "code"]
        setup, parameters = "".join(code[0]["source"]), code[1]
        # The setup cell comes first, before the parameters cell (papermill injects right after that one).
        assert "parameters" in parameters["metadata"].get("tags", []), f"{path.name}: setup, then parameters"
        assert re.search(r'^if importlib\.util\.find_spec\("carlib"\) is None:\n    %pip install .*'
                         + re.escape(f"git+{repository}"), setup, re.M), path.name
        assert "drive.mount" in setup and "data_dir" in setup, f"{path.name}: the setup cell says where data goes"
    # The tool a fork runs after changing the URL agrees with the committed notebooks.
    check = subprocess.run([sys.executable, str(ROOT / "tools" / "colab_links.py"), "--check"], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stderr


# What a wheel is built from (MANIFEST.in adds the same to an sdist); the copy keeps build/ and *.egg-info out of ROOT.
_SOURCES = ("carlib", "notebooks", "params", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """carlib's wheel, built offline from a copy of the sources with this environment's setuptools."""
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this environment")
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in _SOURCES:
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy2
        copy(ROOT / name, source / name, **({"ignore": shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints")}
                                            if (ROOT / name).is_dir() else {}))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                            str(source), "-w", str(out)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    return next(out.glob("carlib-*.whl"))


def test_the_wheel_carries_the_command_every_module_and_the_notebooks_and_parameter_files(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "carlib").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules <= names, f"missing from the wheel: {sorted(modules - names)}"
    assert "carlib/__main__.py" in names  # python -m carlib
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/entry_points.txt")))
    assert "carlib = carlib.cli:main" in entry_points.decode()
    bundled = {f"carlib/_bundled/{p.relative_to(ROOT).as_posix()}"
               for p in [*_notebooks(), *(ROOT / "params").glob("*/*.yaml")]}
    assert bundled <= names, f"missing from the wheel: {sorted(bundled - names)}"


def test_an_installed_wheel_finds_its_own_sweep_files_and_notebooks_from_any_folder(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # -S: no site-packages, so this imports the wheel's carlib, not the editable one (project_files needs only stdlib).
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); from carlib.base import project_files as p; "
             "print(p.checkout_root()); print(p.resolve_project_file('params/lr_study/sweep-quick.yaml')); "
             "print(p.resolve_project_file('notebooks/lr_study.ipynb')); print(p.resolve_project_file('params/nope.yaml'))")
    run = subprocess.run([sys.executable, "-S", "-c", probe, str(site)], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["None", str(site / "carlib/_bundled/params/lr_study/sweep-quick.yaml"),
                                       str(site / "carlib/_bundled/notebooks/lr_study.ipynb"), "params/nope.yaml"]


def test_pre_commit_lints_and_strips_the_notebooks_outputs():
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hooks = {hook["id"]: hook for repo in config["repos"] for hook in repo["hooks"]}
    assert hooks["ruff"]["entry"].startswith("ruff check")  # its rules come from pyproject.toml [tool.ruff]
    assert hooks["nbstripout"]["entry"].startswith("nbstripout") and re.match(hooks["nbstripout"]["files"],
                                                                               "notebooks/lr_study.ipynb")


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
