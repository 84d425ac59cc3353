"""Lists the packages for setuptools: every folder with an `__init__.py` under migrate/ and rules/.

pyproject.toml maps the import names onto the folders (`tf_migrate` = migrate/, `tf_migrate.rules`
= rules/); listing the subpackages here means a new rule package needs no edit to any build file.
"""

from pathlib import Path

from setuptools import setup

_ROOTS = {"tf_migrate": Path("migrate"), "tf_migrate.rules": Path("rules")}


def _packages() -> list[str]:
    found = []
    for name, folder in _ROOTS.items():
        for init in sorted(folder.rglob("__init__.py")):
            parts = init.parent.relative_to(folder).parts
            if "__pycache__" not in parts:
                found.append(".".join((name, *parts)))
    return found


setup(packages=_packages())
