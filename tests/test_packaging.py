"""What a user installs: the wheel holds every module of the package (the suite itself runs from an
editable install, which would never notice one missing)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_the_wheel_holds_every_module_and_the_typing_marker(tmp_path):
    source = tmp_path / "source"  # a copy: a build in the tree leaves build/, which the next build would reuse
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "build", "*.egg-info", "__pycache__", "tests"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    [wheel] = tmp_path.glob("pytest_buildenv-*.whl")
    packed = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "pytest_buildenv"
    modules = {path.relative_to(ROOT).as_posix() for path in package.rglob("*.py")}
    assert modules - packed == set(), "left out of the wheel"
    assert "pytest_buildenv/py.typed" in packed
