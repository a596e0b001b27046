"""Build hook only: the project's metadata is in pyproject.toml.

A wheel carries copies of ``notebooks/*.ipynb`` and ``params/<study>/*.yaml`` inside the package
(``carlib/_bundled/``), so that after ``pip install .`` or ``pip install git+<repository>`` (Colab)
``carlib sweep params/lr_study/sweep-quick.yaml`` works from any folder (carlib/project_files.py).
An editable install reads the clone's own folders instead.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
BUNDLED = {"notebooks": "*.ipynb", "params": "*/*.yaml"}


class BuildPyWithProjectFiles(build_py):
    """``build_py`` that also copies the notebooks and parameter files into ``carlib/_bundled/``."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for folder, pattern in BUNDLED.items():
            for source in sorted((ROOT / folder).glob(pattern)):
                target = Path(self.build_lib, "carlib", "_bundled", source.relative_to(ROOT))
                self.mkpath(str(target.parent))
                self.copy_file(str(source), str(target))


setup(cmdclass={"build_py": BuildPyWithProjectFiles})
