"""docs/install.md's commands stay true: every installer command it shows uses only flags the
script accepts, and the lines the tests run (the scratch-root dpkg line) come from the page.

The commands themselves run in test_installer_linux.py / test_installer_ansible.py (wheelhouse,
install.sh, build-deb.sh, dpkg into a scratch root, the Ansible role); this file keeps the page
and those scripts from drifting apart.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "install.md"
SCRIPTS = {
    "install.sh": REPO / "installer/linux/install.sh",
    "uninstall.sh": REPO / "installer/linux/uninstall.sh",
    "build-deb.sh": REPO / "installer/linux/build-deb.sh",
    "build-wheelhouse.sh": REPO / "installer/linux/build-wheelhouse.sh",
}


def doc_commands(path: Path = DOC) -> list[str]:
    """The shell commands in the page's ```sh blocks, continuation lines joined."""
    text = path.read_text(encoding="utf-8")
    commands: list[str] = []
    for block in re.findall(r"^\s*```sh\n(.*?)^\s*```", text, flags=re.M | re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def doc_command(prefix: str) -> list[str]:
    """The one command of the page that starts with ``prefix``, as words."""
    found = [c for c in doc_commands() if c.startswith(prefix)]
    assert len(found) == 1, f"docs/install.md: expected one command starting {prefix!r}: {found}"
    return shlex.split(found[0])


def _script_flags(script: Path) -> set[str]:
    help_text = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z-]*|-[a-z])\b", help_text))


def _uses() -> list[tuple[str, str, list[str]]]:
    uses = []
    for command in doc_commands():
        words = shlex.split(command.replace("…", ""))
        if words and words[0] == "sudo":
            words = words[1:]
        if words and Path(words[0]).name in SCRIPTS:
            uses.append((Path(words[0]).name, command, words[1:]))
    return uses


def test_the_page_shows_each_installer_script() -> None:
    shown = {name for name, _, _ in _uses()}
    assert shown == set(SCRIPTS), shown


@pytest.mark.parametrize(("name", "command", "words"), _uses(), ids=lambda v: str(v)[:60])
def test_every_flag_the_page_uses_is_one_the_script_takes(
    name: str, command: str, words: list[str]
) -> None:
    accepted = _script_flags(SCRIPTS[name]) | {"--"}
    used = {w.split("=", 1)[0] for w in words if w.startswith("-")}
    if "--" in words:  # after "--" come pip's own options (build-wheelhouse.sh)
        after = words[words.index("--") + 1 :]
        used -= {w.split("=", 1)[0] for w in after if w.startswith("-")}
    assert used <= accepted, f"{command}: {sorted(used - accepted)} not in {name} --help"


def test_the_scratch_root_dpkg_line_has_what_a_scratch_root_needs() -> None:
    words = doc_command("dpkg --root=DIR")
    assert "--force-script-chrootless" in words and "--force-depends" in words
    assert any("systemd-analyze verify" in c for c in doc_commands())
