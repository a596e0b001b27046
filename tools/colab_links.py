"""Point every notebook's "Open in Colab" badge and setup cell at the repository named in pyproject.toml.

    python tools/colab_links.py          # rewrite notebooks/*.ipynb (a fork runs this after changing the URL)
    python tools/colab_links.py --check  # exit 1, naming the notebooks that disagree (tests/test_packaging.py)

The badge sits under the title of the first (markdown) cell; the setup cell is the first code cell,
right before the cell tagged ``parameters``. Everything else in a notebook is left as it is.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SETUP_CELL_ID = "colab-setup"
_BADGE = re.compile(r"^\[!\[Open In Colab\]\(\S+\)\]\(\S+\)$", re.M)


def repository() -> str:
    """The repository URL of pyproject.toml's [project.urls] (``https://github.com/<owner>/<repo>``)."""
    url = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        raise SystemExit(f"pyproject.toml [project.urls] Repository = {url!r}: expected https://github.com/OWNER/REPO "
                         "(Colab opens notebooks from GitHub).")
    return url


def badge(url: str, notebook: str) -> str:
    """The Markdown of the badge that opens ``notebooks/<notebook>`` of the main branch in Colab."""
    owner_repo = url.removeprefix("https://github.com/")
    return ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"(https://colab.research.google.com/github/{owner_repo}/blob/main/notebooks/{notebook})")


def setup_source(url: str) -> str:
    """The setup cell: install carlib only where it cannot be imported, then say where the data goes."""
    return f'''# Setup. In Colab (or any Jupyter without carlib) this installs carlib from its repository; where carlib is
# importable (the project's environment, papermill, nbval) it does nothing.
import importlib.util

if importlib.util.find_spec("carlib") is None:
    %pip install --quiet "carlib @ git+{url}"
    # If pip then asks to restart the session (it upgraded a package Colab had loaded), restart and run again.

# Your data: data_dir = None (parameters below) trains on carlib's embedded synthetic dataset. For the competition,
# set data_dir to a folder holding train.zip and test.zip (or their extracted folders), for example:
#   Google Drive:   from google.colab import drive; drive.mount("/content/drive")
#                   data_dir = "/content/drive/MyDrive/sf-dl-car-classification"
#   Kaggle archive: upload sf-dl-car-classification.zip (Files pane, or google.colab.files.upload()), then
#                   !unzip -q -o sf-dl-car-classification.zip -d /content/data
#                   data_dir = "/content/data"'''


def linked(notebook: nbformat.NotebookNode, name: str, url: str) -> nbformat.NotebookNode:
    """``notebook`` with its badge and setup cell for ``url`` (changed in place and returned)."""
    title = notebook.cells[0]
    if title.cell_type != "markdown" or not title.source.startswith("# "):
        raise SystemExit(f"{name}: the first cell must be the markdown title ('# ...') that carries the badge.")
    if _BADGE.search(title.source):
        title.source = _BADGE.sub(lambda _: badge(url, name), title.source, count=1)
    else:
        heading, _, rest = title.source.partition("\n")
        title.source = f"{heading}\n\n{badge(url, name)}\n{rest}"
    setup = next((c for c in notebook.cells if c.get("id") == SETUP_CELL_ID), None)
    if setup is None:
        setup = nbformat.v4.new_code_cell(setup_source(url))
        setup.id = SETUP_CELL_ID
        parameters = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", []))
        notebook.cells.insert(parameters, setup)
    setup.source = setup_source(url)
    return notebook


def main(argv: list[str] | None = None) -> int:
    """Rewrite (or with --check, compare) every notebook under notebooks/."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a notebook disagrees")
    args = parser.parse_args(argv)
    url = repository()
    stale = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        before = path.read_text()
        notebook = linked(nbformat.reads(before, as_version=4), path.name, url)
        nbformat.validate(notebook)
        after = nbformat.writes(notebook) + "\n"
        if after != before:
            stale.append(path.name)
            if not args.check:
                path.write_text(after)
    if args.check and stale:
        print(f"notebooks whose badge or setup cell do not point at {url}: {', '.join(stale)}. "
              "Run: python tools/colab_links.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
