"""The dependency locks (requirements/*.txt, made by scripts/lock.sh) pin everything
pyproject.toml asks for, within its bounds, with hashes, and agree with one another.

test_installer_linux.py checks that a wheelhouse built from a lock holds exactly its versions.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
LOCKS = {name: REPO / "requirements" / f"{name}.txt" for name in ("agent", "collector", "test")}
EXTRAS = {"agent": (), "collector": ("collector",), "test": ("collector", "test")}


def read_lock(path: Path) -> list[tuple[str, Version, Marker | None, int]]:
    """(name, version, marker, number of hashes) for every pin of a lock."""
    pins = []
    text = path.read_text(encoding="utf-8")
    for entry in re.split(r"\n(?=[A-Za-z0-9])", text):
        head = entry.split("\\", 1)[0].strip()
        if not head or head.startswith("#"):
            continue
        spec, _, marker = head.partition(";")
        name, version = spec.strip().split("==")
        pins.append(
            (
                canonicalize_name(name),
                Version(version),
                Marker(marker.strip()) if marker.strip() else None,
                entry.count("--hash=sha256:"),
            )
        )
    return pins


def pins_here(path: Path) -> dict[str, Version]:
    """The pins that apply to this interpreter and platform."""
    return {
        name: version
        for name, version, marker, _ in read_lock(path)
        if marker is None or marker.evaluate()
    }


def _requirements(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        found += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return found


@pytest.mark.parametrize("lock", list(LOCKS))
def test_every_requirement_is_pinned_within_its_bounds(lock: str) -> None:
    pins = pins_here(LOCKS[lock])
    for requirement in _requirements(EXTRAS[lock]):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{lock}: {name} is not pinned (fix: scripts/lock.sh)"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"requirements/{lock}.txt pins {name}=={pins[name]} outside pyproject's "
            f"{requirement} (fix: scripts/lock.sh)"
        )


@pytest.mark.parametrize("lock", list(LOCKS))
def test_every_pin_is_exact_and_hashed(lock: str) -> None:
    pins = read_lock(LOCKS[lock])
    assert pins
    for name, _version, _marker, hashes in pins:
        assert hashes >= 1, f"requirements/{lock}.txt: {name} has no --hash"


def test_the_locks_agree_where_they_overlap() -> None:
    agent, collector, test = (pins_here(LOCKS[n]) for n in ("agent", "collector", "test"))
    assert set(agent) <= set(collector) <= set(test)
    for name, version in agent.items():
        assert collector[name] == version == test[name], name
    for name, version in collector.items():
        assert test[name] == version, name


def test_the_locks_say_how_they_are_made() -> None:
    for path in LOCKS.values():
        assert "scripts/lock.sh" in path.read_text().splitlines()[1], path
