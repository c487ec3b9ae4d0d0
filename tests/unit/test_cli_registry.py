"""The CLI imports only the subcommand it runs, so the daemon never carries the collector."""

from __future__ import annotations

import subprocess
import sys

import pytest

from proscribe.cli import COMMANDS, build_parser, main


def test_every_registered_command_builds() -> None:
    parser = build_parser()
    help_text = parser.format_help()
    for name in COMMANDS:
        assert name in help_text


def test_agent_commands_do_not_import_the_collector_or_its_dependencies() -> None:
    code = (
        "import sys\n"
        "from proscribe.cli import main\n"
        "try:\n"
        "    main(['agent', 'status', '--config', '/nonexistent/agent.toml'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'sqlalchemy', 'fastapi', 'uvicorn', 'alembic'} or m.startswith('proscribe.collector'))\n"
        "print(bad)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err
