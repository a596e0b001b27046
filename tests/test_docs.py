"""The documentation matches the code: docstrings on the public API; the commands, make targets, module names,
links and results-table columns of README.md and docs/."""

from __future__ import annotations

import importlib
import inspect
import io
import json
import pkgutil
import re
import tokenize
from pathlib import Path

import carlib
from carlib.config import PARAMETER_NAMES

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
# The front door and every page under docs/ (GitHub renders them; mkdocs.yml builds them into a site).
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


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


def _code(text: str) -> list[str]:
    """The fenced code blocks and inline code spans of a markdown text."""
    fenced = re.findall(r"^```[a-z]*\n(.*?)^```", text, re.M | re.S)
    inline = re.findall(r"`([^`]+)`", re.sub(r"^```.*?^```", "", text, flags=re.M | re.S))  # a span may wrap
    return fenced + inline


def test_every_carlib_subcommand_the_docs_name_exists():
    from carlib.cli import _parser

    commands = set(next(a for a in _parser()._actions if a.dest == "command").choices)
    named = {}
    for page in PAGES:
        for code in _code(page.read_text()):
            for command in re.findall(r"(?:^|[\s(])carlib ([a-z]+)\b", code, re.M):
                named.setdefault(command, page.relative_to(ROOT).as_posix())
    assert named, "the docs name no carlib command"
    unknown = {command: page for command, page in named.items() if command not in commands}
    assert not unknown, f"the docs name unknown commands (command: page): {unknown}"


def test_every_make_target_the_docs_name_exists():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z-]+):", makefile, re.M))
    named = {page.relative_to(ROOT).as_posix(): {t for code in _code(page.read_text())
                                                 for t in re.findall(r"\bmake ([a-z-]+)\b", code)} for page in PAGES}
    assert {"test", "demo"} <= named["README.md"]
    unknown = {page: sorted(found - targets) for page, found in named.items() if found - targets}
    assert not unknown, f"the docs name unknown make targets: {unknown}"


def test_the_docs_document_exactly_the_results_table_columns(fast_config):
    """A real run (with TTA, so every metric is there): docs/results.md's column list matches the table's columns."""
    from carlib.records.store import load_results
    from carlib.train.experiment import run_experiment

    run_experiment(**fast_config, tta_passes=2)
    columns = set(load_results(fast_config["results_dir"]).columns) - set(PARAMETER_NAMES)
    section = (ROOT / "docs" / "results.md").read_text().split("### Results-table columns", 1)[1].split("\n#", 1)[0]
    # Each bullet names its columns before the first ": " (- `n_train`, `n_val`: …).
    heads = [line.split(": ", 1)[0] for line in section.splitlines() if line.startswith("- ")]
    documented = set(re.findall(r"`([a-z0-9_]+)`", " ".join(heads))) - set(PARAMETER_NAMES)
    assert columns - documented == set(), f"document these columns in docs/results.md: {sorted(columns - documented)}"
    assert documented - columns == set(), f"docs/results.md documents missing columns: {sorted(documented - columns)}"


def test_the_readme_is_a_front_door_of_at_most_200_lines():
    lines = len(README.splitlines())
    assert lines <= 200, f"README.md has {lines} lines: move detail into a page under docs/ and link to it"


# --- Links: every relative link of README.md and docs/ leads somewhere, on GitHub and in the mkdocs site. ---

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'][^)]*[\"'])?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+[\"'].*[\"'])?\s*$", re.M)


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code spans (a link written inside code is not a link)."""
    return re.sub(r"(`+)(?:(?!\1).)+?\1", "", _FENCE.sub("", text), flags=re.S)


def github_slug(heading: str) -> str:
    """GitHub's anchor of a heading: its rendered text lowercased, stripped, every character but letters, digits,
    spaces, hyphens and underscores removed, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading renders as its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """The anchors of a markdown text's ATX headings; a repeated heading gets -1, -2, … as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^ {0,3}#{1,6}[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$", _FENCE.sub("", markdown), re.M):
        slug = github_slug(heading)
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def broken_links(page: Path) -> list[str]:
    """Each relative link of a markdown file whose target file, or heading anchor, does not exist."""
    prose = _prose(page.read_text())
    broken = []
    for target in _LINK.findall(prose) + _REFERENCE.findall(prose):
        if not target or re.match(r"[a-zA-Z][a-zA-Z0-9+.-]*:", target):  # http(s):, mailto:, …: not checked here
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
            broken.append(f"{target}: no heading with the anchor #{anchor} in {linked.name}")
    return broken


def test_the_link_checker_finds_broken_links_and_accepts_good_ones(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Speed: `carlib bench`\n\n## Speed: `carlib bench`\n")
    (tmp_path / "data.yaml").write_text("a: 1\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n## Reading it (R5), twice\n\n"
        "[good](other.md) [good](other.md#speed-carlib-bench) [good](other.md#speed-carlib-bench-1) "
        "[good](#reading-it-r5-twice) [good](data.yaml) [good](https://example.com/x#y) [good](mailto:a@b.c)\n"
        "`[in code](missing.md)`\n\n```\n[in a fence](missing.md)\n```\n"
        "[bad](missing.md) [bad](other.md#speed-carlib-bench-2) [bad](#reading-it) [bad](../nowhere/data.yaml)\n\n"
        "[ref]: missing-too.md\n")
    assert broken_links(page) == [
        "missing.md: no such file",
        "other.md#speed-carlib-bench-2: no heading with the anchor #speed-carlib-bench-2 in other.md",
        "#reading-it: no heading with the anchor #reading-it in page.md",
        "../nowhere/data.yaml: no such file",
        "missing-too.md: no such file",
    ]


def test_every_relative_link_of_the_readme_and_the_docs_resolves():
    broken = {page.relative_to(ROOT).as_posix(): found for page in PAGES if (found := broken_links(page))}
    assert not broken, f"broken links: {broken}"


def test_mkdocs_nav_lists_every_page_of_docs():
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["docs_dir"] == "docs"

    def pages(nav):
        for entry in nav:
            value = next(iter(entry.values())) if isinstance(entry, dict) else entry
            yield from pages(value) if isinstance(value, list) else [value]

    listed = set(pages(config["nav"]))
    present = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert listed == present, f"unlisted: {sorted(present - listed)}; listed, no such page: {sorted(listed - present)}"


# --- Module names: every carlib.x.y the docs, notebooks, parameter files and carlib's own text name exists. ---

_REFERENCE_NAME = re.compile(r"\bcarlib(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_PATH = re.compile(r"\bcarlib/[A-Za-z0-9_/]+\.py\b")


def resolves(reference: str) -> bool:
    """Whether ``carlib.a.b.c`` names something: the longest importable module prefix, then attributes."""
    parts = reference.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        try:
            value = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name and not name.startswith(error.name) and not error.name.startswith(name):
                raise  # carlib's module exists but needs a package that is not installed
            continue
        for attribute in parts[end:]:
            if not hasattr(value, attribute):
                return False
            value = getattr(value, attribute)
        return True
    return False


def _texts():
    """(where, text) of the README, docs/, the notebooks' cells, the parameter files, and carlib's comments and
    strings (its docstrings and messages)."""
    for page in PAGES:
        yield page.relative_to(ROOT).as_posix(), page.read_text()
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(notebook.read_text())["cells"]
        yield notebook.relative_to(ROOT).as_posix(), "\n".join("".join(cell["source"]) for cell in cells)
    for params in sorted((ROOT / "params").rglob("*.yaml")):
        yield params.relative_to(ROOT).as_posix(), params.read_text()
    for module in sorted((ROOT / "carlib").rglob("*.py")):
        tokens = tokenize.generate_tokens(io.StringIO(module.read_text()).readline)
        kinds = {tokenize.COMMENT, tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
        yield module.relative_to(ROOT).as_posix(), "\n".join(t.string for t in tokens if t.type in kinds)


def test_the_resolver_tells_old_module_paths_from_current_ones():
    assert resolves("carlib.run_study") and resolves("carlib.evaluate.predict.load_model")
    assert resolves("carlib.evaluate.tta.TTAResult.pass_images")
    assert not resolves("carlib.backbones.register_backbone") and not resolves("carlib.recipe_bench")
    assert not resolves("carlib.models.build.no_such_function")


def test_every_carlib_module_path_the_docs_notebooks_params_and_code_name_exists():
    unknown, missing_files = {}, {}
    for where, text in _texts():
        for reference in set(_REFERENCE_NAME.findall(text)):
            if not reference.endswith(".egg") and not resolves(reference):  # carlib.egg-info is a folder
                unknown.setdefault(where, []).append(reference)
        for path in set(_PATH.findall(text)):
            if not (ROOT / path).is_file():
                missing_files.setdefault(where, []).append(path)
    assert not unknown, f"names that do not exist (old module paths?): {unknown}"
    assert not missing_files, f"files that do not exist (old module paths?): {missing_files}"
