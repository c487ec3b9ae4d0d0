"""``ld.so [OPTION]... FILE``: the program a dynamic loader run as a command loads."""

from __future__ import annotations

from proscribe.agent.sensors.enrich import is_loader, loaded_program


def test_loaders_are_recognised_by_name() -> None:
    for exe in (
        "/lib64/ld-linux-x86-64.so.2",
        "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        "/lib/ld-linux-aarch64.so.1",
        "/lib/ld-musl-x86_64.so.1",
    ):
        assert is_loader(exe), exe
    for exe in ("/usr/bin/ldd", "/usr/bin/ld", "/usr/lib/libld-linux.so.2x", "/bin/ld.so-notes"):
        assert not is_loader(exe), exe


def test_file_is_found_after_the_options() -> None:
    ld = "/lib64/ld-linux-x86-64.so.2"
    assert loaded_program((ld, "/opt/x/deepseek", "--model", "r1"), "/") == "/opt/x/deepseek"
    argv = (ld, "--argv0", "vim", "--library-path", "/l", "--inhibit-cache", "./ds", "a")
    assert loaded_program(argv, "/home/u") == "/home/u/ds"
    assert loaded_program((ld, "--list", "/bin/ls"), "/") is None
    assert loaded_program((ld, "--argv0", "x"), "/") is None
