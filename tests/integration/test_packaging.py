"""The wheel carries exactly the runtime packages, and an agent-only install works without the
collector extra.

The wheel is built from this tree with ``pip wheel`` (as ``installer/linux/build-wheelhouse.sh``
does); its file list is compared with the tree under the one mapping rule (``X/`` is
``proscribe.X``, setup.py). The agent-only install is a fresh virtual environment holding the
wheel and the agent's own dependencies, nothing of the ``collector`` extra.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PARTS = ("core", "agent", "collector", "cli")

pytestmark = pytest.mark.slow


def _build_wheel(tree: Path, out: Path) -> Path:
    """The wheel as installer/linux/build-wheelhouse.sh builds it (wheelhouse and .deb)."""
    result = subprocess.run(
        [str(tree / "installer/linux/build-wheelhouse.sh"), "--wheel-only", "-o", str(out),
         "--python", sys.executable],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_wheel(REPO, tmp_path_factory.mktemp("wheel"))


def _runtime_files() -> set[str]:
    """Every file the wheel must carry, read from the tree by the mapping rule."""
    expected: set[str] = set()
    for part in PARTS:
        for path in (REPO / part).rglob("*"):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            rel = path.relative_to(REPO)
            shipped = path.suffix in {".py", ".typed", ".html", ".css", ".svg", ".ini"}
            if shipped or path.name.endswith(".bpf.o"):  # the kernel guard compiled, not its C
                expected.add(f"proscribe/{rel.as_posix()}")
    for path in (REPO / "policies").iterdir():
        if path.suffix in {".toml", ".md", ".py"}:
            expected.add(f"proscribe/policies/{path.name}")
    return expected


def test_the_wheel_holds_the_runtime_packages_and_nothing_else(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = {n for n in archive.namelist() if ".dist-info/" not in n}
    assert names == _runtime_files()
    # Spelled out, the things that must never ship and the things that must.
    assert "proscribe/__init__.py" not in names  # a namespace: nothing else at the top is packaged
    assert not {n for n in names if n.split("/")[1] in {"tests", "bench", "scripts", "installer"}}
    for fixture in ("devserver", "simulate", "sample"):
        assert not [n for n in names if n.endswith(f"/{fixture}.py")], fixture
    assert "proscribe/collector/migrations/versions/0001_initial.py" in names
    assert "proscribe/agent/enforce/bpf/exec_guard.bpf.o" in names
    assert "proscribe/agent/sensors/dns/kern/dns_sender.bpf.o" in names
    assert "proscribe/policies/us-navy-deepseek-2025.toml" in names


def test_a_module_deleted_from_the_tree_never_ships(tmp_path: Path) -> None:
    """setuptools reuses build/lib: a wheel built in place would carry modules deleted since the
    last build. build-wheelhouse.sh builds from a copy without build/."""
    tree = tmp_path / "tree"
    files = (
        subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, files):
        if (REPO / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tree / name)
    stale = tree / "build/lib/proscribe/agent/deleted_long_ago.py"
    stale.parent.mkdir(parents=True)
    stale.write_text("raise SystemExit('stale')\n")
    built = _build_wheel(tree, tmp_path / "out")
    with zipfile.ZipFile(built) as archive:
        assert "proscribe/agent/deleted_long_ago.py" not in archive.namelist()
        assert "proscribe/agent/daemon.py" in archive.namelist()


@pytest.fixture(scope="module")
def agent_only(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    """A virtual environment with the wheel and the agent's dependencies only."""
    env = tmp_path_factory.mktemp("agent-only") / "venv"
    # No pip of its own (bootstrapping one is 4 s): this test run's pip installs into it.
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--disable-pip-version-check",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return env / "bin" / "proscribe"


def test_agent_only_install_has_no_collector_dependencies(agent_only: Path) -> None:
    python = agent_only.parent / "python"
    probe = "import importlib.util as u; print([m for m in ('fastapi', 'sqlalchemy', 'pydantic', 'uvicorn') if u.find_spec(m)])"  # noqa: E501
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "words",
    [
        ["collector", "serve", "--config", "/nonexistent/collector.toml"],
        ["collector", "report", "--since", "30d"],
        ["collector"],
        ["demo", "--once"],
    ],
)
def test_a_collector_verb_without_the_extra_is_one_line_naming_it(
    agent_only: Path, words: list[str]
) -> None:
    result = subprocess.run(
        [str(agent_only), *words], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "pip install 'proscribe[collector]'" in lines[0]
    assert "Traceback" not in result.stderr


def test_agent_verbs_work_without_the_extra(agent_only: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(agent_only), "keygen", str(tmp_path / "alice")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lint = subprocess.run(
        [str(agent_only), "policy", "lint", str(REPO / "policies" / "us-navy-deepseek-2025.toml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert lint.returncode == 0, lint.stderr
