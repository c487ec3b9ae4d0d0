"""Maps the source folders onto one import namespace, ``proscribe``.

``agent/`` becomes ``proscribe.agent``, ``collector/`` becomes ``proscribe.collector`` and the
policy packs in ``policies/`` ship as data in ``proscribe.policies``. Packages are listed
explicitly so that no bare ``agent`` or ``collector`` package ends up in site-packages
(``tests/unit/test_packaging.py`` builds the wheel and checks).
"""

from pathlib import Path

from setuptools import setup

ROOTS = {"proscribe.agent": "agent", "proscribe.collector": "collector"}


def _packages() -> tuple[list[str], dict[str, str]]:
    packages: list[str] = []
    dirs: dict[str, str] = {}
    for name, folder in ROOTS.items():
        for init in sorted(Path(folder).rglob("__init__.py")):
            rel = init.parent.relative_to(folder)
            dotted = ".".join((name, *rel.parts)) if rel.parts else name
            packages.append(dotted)
            dirs[dotted] = str(init.parent)
    packages.append("proscribe.policies")
    dirs["proscribe.policies"] = "policies"
    return packages, dirs


PACKAGES, PACKAGE_DIR = _packages()

setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data={
        "proscribe.policies": ["*.toml", "*.md"],
        "proscribe.collector": [
            "templates/*.html",
            "static/*",
            "migrations/*.ini",
            "migrations/*.py",
            "migrations/versions/*.py",
        ],
        "proscribe.agent": ["py.typed"],
        "proscribe.collector.web": ["templates/*.html", "static/*"],
    },
    include_package_data=False,
)
