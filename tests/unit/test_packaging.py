"""pyproject lists packages by hand (the folders are renamed): every package must be listed."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_folder_is_listed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    for import_name, folder in config["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            package = ".".join((import_name, *relative))
            assert package in listed, f"{package} ({init.parent}) is missing from pyproject's packages"


def test_test_modules_have_unique_names() -> None:
    """pytest imports test files by their base name (no packages here): two of a name collide."""
    names = [path.name for path in (ROOT / "tests").rglob("test_*.py")]
    assert not {name for name in names if names.count(name) > 1}
