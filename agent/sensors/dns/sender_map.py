"""The kernel's record of who sent each DNS query (eBPF, cgroup hooks; Linux, root).

``kern/dns_sender.bpf.c`` (compiled object committed beside it; ``kern/build.sh --check``
rebuilds it byte for byte) runs in the sender's own context when a program sends to or
connects to port 53 (``cgroup/sendmsg4|6``, ``cgroup/connect4|6``) and records the socket's
cookie -> (pid, uid, comm); its ``cgroup_skb/egress`` program then sees each packet of that
socket with its final source port and records (family, protocol, source address, source port)
-> sender. The record is written before the packet leaves, so when the resolver or the capture
receives the query its sender is already in the map: no race with a process that exits at once.

Record-only: the programs never drop or rewrite; they are attached to the root cgroup v2 and
detached by :meth:`SenderMap.close` (and by the kernel when the agent dies: the links are
owned by its file descriptors). The /proc scan stays as the fallback for what the map lacks.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from proscribe.agent.enforce.bpf.libbpf import BpfObject, BpfUnavailable

__all__ = ["BpfUnavailable", "Sender", "SenderMap", "cgroup2_root"]

OBJECT = Path(__file__).with_name("kern") / "dns_sender.bpf.o"
PROGRAMS = ("dns_sendmsg4", "dns_sendmsg6", "dns_connect4", "dns_connect6", "dns_egress")
_PROTOCOLS = {"udp": 17, "tcp": 6}
_MNT_DETACH = 2


class _Key(ctypes.Structure):
    _fields_ = [
        ("family", ctypes.c_uint8),
        ("protocol", ctypes.c_uint8),
        ("port", ctypes.c_uint16),
        ("addr", ctypes.c_uint8 * 16),
    ]


class _Value(ctypes.Structure):
    _fields_ = [
        ("pid", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("ktime", ctypes.c_uint64),
        ("comm", ctypes.c_char * 16),
    ]


@dataclass(frozen=True, slots=True)
class Sender:
    pid: int
    uid: int
    comm: str


def cgroup2_root(mounts: Path = Path("/proc/self/mounts")) -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (``/sys/fs/cgroup`` or, on hybrid systems,
    ``/sys/fs/cgroup/unified``); ``None`` when this mount namespace shows none."""
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return Path(fields[1])
    return None


def _open_cgroup2_root() -> int:
    """A descriptor of the cgroup v2 root. In a mount namespace that hides it (``ip netns
    exec`` remounts /sys), the hierarchy is mounted on a private temporary directory, opened
    and detached at once (the descriptor keeps it reachable; nothing stays mounted)."""
    root = cgroup2_root()
    if root is not None:
        try:
            return os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as err:
            raise BpfUnavailable(f"cannot open cgroup {root}: {err.strerror}") from err
    libc = ctypes.CDLL(None, use_errno=True)
    where = tempfile.mkdtemp(prefix="proscribe-cgroup2-")
    try:
        if libc.mount(b"none", where.encode(), b"cgroup2", 0, None) != 0:
            code = ctypes.get_errno()
            raise BpfUnavailable(
                f"no cgroup v2 hierarchy is mounted and mounting one failed: "
                f"{os.strerror(code)} (fix: mount -t cgroup2 none /sys/fs/cgroup)"
            )
        try:
            return os.open(where, os.O_RDONLY | os.O_DIRECTORY)
        finally:
            libc.umount2(where.encode(), _MNT_DETACH)
    finally:
        os.rmdir(where)


class SenderMap:
    """Loads and attaches the programs; :meth:`lookup` answers (transport, ip, port) -> sender.
    Raises :class:`BpfUnavailable` (one line) when the kernel or the system cannot."""

    def __init__(self) -> None:
        try:
            data = OBJECT.read_bytes()
        except OSError as err:
            raise BpfUnavailable(f"{OBJECT}: {err.strerror}") from err
        self._obj = BpfObject(data, name="DNS sender map")
        try:
            fd = _open_cgroup2_root()
            try:
                for program in PROGRAMS:
                    self._obj.attach_cgroup(program, fd)
            finally:
                os.close(fd)
            self._senders = self._obj.map("senders")
        except BaseException:
            self._obj.close()
            raise
        self.hits = 0
        self.misses = 0

    def lookup(self, transport: str, ip: str, port: int) -> Sender | None:
        protocol = _PROTOCOLS.get(transport)
        if protocol is None:
            return None
        try:
            address = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        key = _Key(family=address.version, protocol=protocol, port=port)
        packed = address.packed
        ctypes.memmove(key.addr, packed, len(packed))
        value = _Value()
        if not self._senders.lookup(key, value):
            self.misses += 1
            return None
        self.hits += 1
        return Sender(value.pid, value.uid, value.comm.decode("utf-8", "replace"))

    def close(self) -> None:
        """Detach every program and unload (idempotent)."""
        self._obj.close()
