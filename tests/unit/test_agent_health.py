"""The heartbeat's health section and the agent's machine identity (issue 13), pure parts."""

from __future__ import annotations

from pathlib import Path

from proscribe.agent.heartbeat import active_guard, health_section
from proscribe.agent.reporter.identity import machine_identity

PROCESS = {"state": "running", "backend": "netlink", "drops": {"queue_full": 3}}


def _health(exec_deny: dict[str, object] | None, **over: object) -> dict[str, object]:
    args: dict[str, object] = {
        "guard": "netlink",
        "process": PROCESS,
        "process_alive": True,
        "dns": {"state": "off"},
        "exec_deny": exec_deny,
        "spool_dropped": {"full": 2, "folded": 9},
        "policy": {"rejections": 1, "last_rejection": {"kind": "rollback", "reason": "serial 3"}},
    }
    args.update(over)
    return health_section(**args)  # type: ignore[arg-type]


def test_the_strongest_guard_is_named_by_the_one_rule() -> None:
    def guard(**over: object) -> str:
        args: dict[str, object] = {
            "mode": "enforce",
            "kernel_active": False,
            "exec_guard": False,
            "process_backend": "netlink",
        }
        args.update(over)
        return active_guard(**args)  # type: ignore[arg-type]

    assert guard() == "netlink"
    assert guard(process_backend="poll") == "poll"
    assert guard(exec_guard=True) == "fanotify"
    assert guard(exec_guard=True, kernel_active=True) == "bpf"
    assert guard(mode="monitor", kernel_active=True) == "monitor"
    assert guard(process_backend=None) == "off"
    assert _health(None)["guard"] == "netlink"  # the section carries what it was given


def test_drops_fail_open_liveness_and_rejection_are_reported() -> None:
    fan = {"running": True, "timeouts": 4, "overloads": 1, "reports_dropped": 2}
    health = _health(fan, process_alive=False, dns={"state": "off", "drops": {"queue_full": 5}})
    assert health["drops"] == {
        "process_sensor.queue_full": 3,
        "dns.queue_full": 5,
        "spool.full": 2,
        "spool.folded": 9,
        "exec_deny.reports_dropped": 2,
    }
    assert health["fail_open"] == {"timeouts": 4, "overloads": 1}
    sensors = health["sensors"]
    assert sensors["process"] == {"state": "running", "alive": False}  # type: ignore[index]
    assert sensors["dns"] == {"state": "off", "alive": False}  # type: ignore[index]
    assert sensors["exec_deny"] == {"state": "running", "alive": True}  # type: ignore[index]
    assert health["last_policy_rejection"] == "rollback: serial 3"


def test_machine_identity_prefers_the_system_id_else_keeps_its_own(tmp_path: Path) -> None:
    system = tmp_path / "machine-id"
    system.write_text("0123456789abcdef0123456789abcdef\n")
    state = tmp_path / "state"
    assert machine_identity(state, (system,)) == "0123456789abcdef0123456789abcdef"
    assert not (state / "machine_id").exists()
    missing = (tmp_path / "absent",)
    first = machine_identity(state, missing)
    assert len(first) == 32 and (state / "machine_id").exists()
    assert machine_identity(state, missing) == first  # kept across restarts
    system.write_text("not an id!\n")  # garbage is not an identity
    assert machine_identity(state, (system,)) == first
