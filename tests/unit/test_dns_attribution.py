"""Attribution over a fake procfs tree (the procfs root is a parameter)."""

from __future__ import annotations

import os
from pathlib import Path

from proscribe.agent.sensors.dns.attribution import (
    REASON_FORWARDED,
    REASON_NO_OWNER,
    REASON_NO_SOCKET,
    ProcessAttributor,
    SocketTable,
)
from proscribe.agent.sensors.dns.sender_map import Sender

UDP_HEADER = (
    "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout"
    " inode ref pointer drops\n"
)


def _line(local: str, remote: str, uid: int, inode: int) -> str:
    queues = "07 00000000:00000000 00:00000000 00000000"
    return f"  1: {local} {remote} {queues} {uid:5d} 0 {inode} 2 0 0\n"


def make_procfs(tmp_path: Path) -> Path:
    proc = tmp_path / "proc"
    (proc / "net").mkdir(parents=True)
    (proc / "net" / "udp").write_text(
        UDP_HEADER
        + _line("0100007F:9C40", "00000000:0000", 1000, 111)  # 127.0.0.1:40000
        + _line("00000000:9C41", "00000000:0000", 1000, 222)  # 0.0.0.0:40001
        + _line("3500007F:0035", "00000000:0000", 998, 333)  # 127.0.0.53:53 (resolved)
        + _line("0100007F:9C42", "00000000:0000", 998, 444)  # resolved's forwarded query
        + _line("0100007F:9C43", "00000000:0000", 0, 555)  # owner gone
    )
    (proc / "net" / "udp6").write_text(
        UDP_HEADER + _line("00000000000000000000000001000000:9C44", "0" * 32 + ":0000", 0, 666)
    )
    (proc / "net" / "tcp").write_text(UDP_HEADER)
    (proc / "net" / "tcp6").write_text(UDP_HEADER)
    processes = {
        4242: ("curl", ["curl", "https://chat.deepseek.com/"], 1000, [111, 222, 666]),
        77: ("systemd-resolve", ["/lib/systemd/systemd-resolved"], 998, [333, 444]),
    }
    for pid, (comm, argv, uid, inodes) in processes.items():
        base = proc / str(pid)
        (base / "fd").mkdir(parents=True)
        # what the agent's procfs reader reads: stat (comm, ppid, start), cmdline, exe, status
        fields = f"S 1 {pid} {pid} 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 500 0 0"
        (base / "stat").write_text(f"{pid} ({comm}) {fields}")
        (base / "comm").write_text(comm + "\n")
        (base / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        (base / "status").write_text(f"Name:\t{comm}\nPPid:\t1\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\n")
        os.symlink(f"/usr/bin/{comm}", base / "exe")
        for fd, inode in enumerate(inodes, start=3):
            os.symlink(f"socket:[{inode}]", base / "fd" / str(fd))
        os.symlink("/dev/null", base / "fd" / "0")
    return proc


def test_socket_table_exact_and_wildcard(tmp_path: Path) -> None:
    table = SocketTable(make_procfs(tmp_path))
    assert table.find("udp", "127.0.0.1", 40000) == (111, 1000)
    assert table.find("udp", "127.0.0.1", 40001) == (222, 1000)  # bound to 0.0.0.0
    assert table.find("udp", "::1", 40004) == (666, 0)
    assert table.find("udp", "127.0.0.1", 39999) is None


def test_query_is_attributed_to_its_process(tmp_path: Path) -> None:
    attributor = ProcessAttributor(make_procfs(tmp_path), use_sock_diag=False)
    found = attributor.attribute("udp", ("127.0.0.1", 40000), ("127.0.0.53", 53))
    assert found.process is not None and found.reason is None
    assert found.process["pid"] == 4242
    assert found.process["name"] == "curl"
    assert found.process["exe"] == "/usr/bin/curl"
    assert found.process["cmdline"] == ["curl", "https://chat.deepseek.com/"]
    assert found.process["uid"] == 1000


def test_inode_cache_is_revalidated_after_the_owner_exits(tmp_path: Path) -> None:
    proc = make_procfs(tmp_path)
    attributor = ProcessAttributor(proc, use_sock_diag=False)
    assert attributor.attribute("udp", ("127.0.0.1", 40001)).process is not None
    scans = attributor.scans
    assert attributor.attribute("udp", ("127.0.0.1", 40001)).process is not None
    assert attributor.scans == scans  # cache hit
    os.unlink(proc / "4242" / "fd" / "4")  # the socket is closed in its owner
    found = attributor.attribute("udp", ("127.0.0.1", 40001))
    assert found.process is None and found.reason == REASON_NO_OWNER


def test_stub_resolver_forward_is_not_attributed_to_the_stub(tmp_path: Path) -> None:
    attributor = ProcessAttributor(make_procfs(tmp_path), use_sock_diag=False)
    found = attributor.attribute("udp", ("127.0.0.1", 40002), ("10.0.0.1", 53))
    assert found.forwarded and found.process is None and found.reason == REASON_FORWARDED


def test_forwarder_pid_is_marked_forwarded(tmp_path: Path) -> None:
    attributor = ProcessAttributor(make_procfs(tmp_path), use_sock_diag=False)
    attributor.add_forwarder_pid(4242)
    assert attributor.attribute("udp", ("127.0.0.1", 40000)).forwarded


def test_reasons_when_not_found(tmp_path: Path) -> None:
    attributor = ProcessAttributor(make_procfs(tmp_path), use_sock_diag=False)
    assert attributor.attribute("udp", ("127.0.0.1", 1)).reason == REASON_NO_SOCKET
    assert attributor.attribute("udp", ("127.0.0.1", 40003)).reason == REASON_NO_OWNER
    assert attributor.attribute("udp", ("not-an-ip", 1)).process is None


def _add_process(proc: Path, pid: int, comm: str, inode: int) -> None:
    base = proc / str(pid)
    (base / "fd").mkdir(parents=True)
    fields = f"S 1 {pid} {pid} 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 500 0 0"
    (base / "stat").write_text(f"{pid} ({comm}) {fields}")
    (base / "comm").write_text(comm + "\n")
    (base / "cmdline").write_bytes(comm.encode() + b"\0")
    (base / "status").write_text(f"Name:\t{comm}\nPPid:\t1\nUid:\t1000\t1000\t1000\t1000\n")
    os.symlink(f"/usr/bin/{comm}", base / "exe")
    os.symlink(f"socket:[{inode}]", base / "fd" / "3")


def test_a_new_process_after_pid_wraparound_is_found_without_a_full_scan(
    tmp_path: Path,
) -> None:
    """Measured in the issue: once pids had wrapped, "pids newer than any seen" never matched
    and only the rate-limited full scan was left (6 of 20 dig queries at 20/s attributed)."""
    proc = make_procfs(tmp_path)
    now = [0.0]
    attributor = ProcessAttributor(
        proc, use_sock_diag=False, clock=lambda: now[0], full_scan_interval=3600
    )
    assert attributor.attribute("udp", ("127.0.0.1", 40000)).process is not None  # full scan
    # a dig started after the wrap: a smaller pid than every process seen so far
    udp = proc / "net" / "udp"
    udp.write_text(udp.read_text() + _line("0100007F:A000", "00000000:0000", 1000, 901))
    _add_process(proc, 12, "dig", 901)
    found = attributor.attribute("udp", ("127.0.0.1", 0xA000))
    assert found.process is not None and found.process["pid"] == 12, found
    # and the next one, again lower, while the full scan is still rate-limited
    udp.write_text(udp.read_text() + _line("0100007F:A001", "00000000:0000", 1000, 902))
    _add_process(proc, 9, "dig", 902)
    assert (attributor.attribute("udp", ("127.0.0.1", 0xA001)).process or {}).get("pid") == 9


class _KernelRecord:
    """Stands in for the kernel's sender map (tests/privileged/test_dns_sender_map.py loads
    the real one): (transport, ip, port) -> what the BPF program recorded."""

    def __init__(self, entries: dict[tuple[str, str, int], Sender]) -> None:
        self.entries = entries
        self.closed = False

    def lookup(self, transport: str, ip: str, port: int) -> Sender | None:
        return self.entries.get((transport, ip, port))

    def close(self) -> None:
        self.closed = True


def test_the_kernel_record_comes_first_and_outlives_its_process() -> None:
    gone = 2**22 + 17  # above pid_max's default: no such process
    kernel = _KernelRecord(
        {
            ("udp", "127.0.0.1", 40001): Sender(os.getpid(), os.getuid(), "python3"),
            ("udp", "127.0.0.1", 40002): Sender(gone, 0, "dig"),
        }
    )
    attributor = ProcessAttributor(senders=kernel)
    assert attributor.source == "ebpf"
    live = attributor.attribute("udp", ("127.0.0.1", 40001))
    assert live.process is not None and live.process["pid"] == os.getpid()
    exited = attributor.attribute("udp", ("127.0.0.1", 40002))
    assert exited.process is not None
    process = exited.process
    assert (process["pid"], process["name"], process["uid"]) == (gone, "dig", 0)
    assert attributor.kernel_hits == 2
    # not in the map: the /proc lookup answers (no such socket here)
    missing = attributor.attribute("udp", ("127.0.0.1", 40003))
    assert missing.process is None and attributor.kernel_hits == 2
    # the agent's own forwarded queries stay "forwarded", whichever source named them
    attributor.add_forwarder_pid(os.getpid())
    assert attributor.attribute("udp", ("127.0.0.1", 40001)).forwarded
    attributor.close()
    assert kernel.closed and attributor.source == "proc"
