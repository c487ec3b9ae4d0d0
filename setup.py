"""One rule maps the source tree onto the ``proscribe`` import namespace: folder ``X/`` is
``proscribe.X`` (``package_dir={"proscribe": "."}``), for every part listed in ``PARTS``.

::

    core/       proscribe.core       policy format, signatures, matchers, events, wire, errors
    agent/      proscribe.agent      the endpoint daemon                        (imports core)
    collector/  proscribe.collector  the service and dashboard, ``[collector]``  (imports core)
    cli/        proscribe.cli        the ``proscribe`` command            (imports all three)
    policies/   proscribe.policies   policy packs, shipped as data

``proscribe`` itself is a namespace package (there is no ``__init__.py`` at the top), so
nothing else at the top of the repository (tests, bench, scripts) is ever packaged. The package
list is computed here so that a new sub-package cannot be forgotten;
``tests/integration/test_packaging.py`` builds the wheel and checks its file list.
"""

from pathlib import Path

from setuptools import setup

PARTS = ("core", "agent", "collector", "cli")


def _packages() -> list[str]:
    found = [
        ".".join(("proscribe", *init.parent.parts))
        for part in PARTS
        for init in sorted(Path(part).rglob("__init__.py"))
    ]
    return [*found, "proscribe.policies"]


setup(
    packages=_packages(),
    package_dir={"proscribe": "."},
    package_data={
        "proscribe.policies": ["*.toml", "*.md"],
        "proscribe.collector": [
            "py.typed",
            "migrations/*.ini",
            "migrations/*.py",
            "migrations/versions/*.py",
        ],
        "proscribe.collector.web": ["templates/*.html", "static/*"],
        # the kernel exec guard's compiled BPF object (built by its build.sh, checked in CI)
        "proscribe.agent.enforce.bpf": ["*.bpf.o"],
        # the DNS sender map's compiled BPF object (kern/build.sh, checked in CI)
        "proscribe.agent.sensors.dns": ["kern/*.bpf.o"],
        **{f"proscribe.{part}": ["py.typed"] for part in ("core", "agent", "cli")},
    },
    include_package_data=False,
)
