"""Parsing process-connector datagrams (pure bytes) and the subscription message."""

from __future__ import annotations

import struct

from proscribe.agent.sensors._netlink_linux import (
    CN_IDX_PROC,
    PROC_EVENT_COMM,
    PROC_EVENT_EXEC,
    PROC_EVENT_EXIT,
    PROC_EVENT_FORK,
    parse_messages,
    subscription_message,
)


def datagram(what: int, data: bytes, idx: int = CN_IDX_PROC) -> bytes:
    event = struct.pack("=IIQ", what, 0, 123456789) + data
    cn = struct.pack("=IIIIHH", idx, 1, 0, 0, len(event), 0)
    header = struct.pack("=IHHII", 16 + len(cn) + len(event), 3, 0, 0, 0)
    return header + cn + event


def test_exec_fork_comm_exit_are_parsed() -> None:
    exec_ = parse_messages(datagram(PROC_EVENT_EXEC, struct.pack("=II", 42, 42)))
    assert [(e.what, e.pid, e.tgid, e.timestamp_ns) for e in exec_] == [
        (PROC_EVENT_EXEC, 42, 42, 123456789)
    ]
    fork = parse_messages(datagram(PROC_EVENT_FORK, struct.pack("=IIII", 1, 1, 43, 43)))
    assert (fork[0].pid, fork[0].parent_tgid) == (43, 1)
    comm = parse_messages(
        datagram(PROC_EVENT_COMM, struct.pack("=II", 44, 44) + b"innocent".ljust(16, b"\0"))
    )
    assert comm[0].comm == "innocent"
    exit_ = parse_messages(datagram(PROC_EVENT_EXIT, struct.pack("=IIII", 45, 45, 0, 9)))
    assert exit_[0].what == PROC_EVENT_EXIT


def test_several_messages_in_one_datagram() -> None:
    one = datagram(PROC_EVENT_EXEC, struct.pack("=II", 1, 1))
    two = datagram(PROC_EVENT_EXEC, struct.pack("=II", 2, 2))
    assert [e.pid for e in parse_messages(one + two)] == [1, 2]


def test_truncated_foreign_and_garbage_input_is_skipped() -> None:
    good = datagram(PROC_EVENT_EXEC, struct.pack("=II", 7, 7))
    assert parse_messages(good[:-4]) == []  # length says more than there is
    assert parse_messages(datagram(PROC_EVENT_EXEC, struct.pack("=II", 7, 7), idx=99)) == []
    assert parse_messages(b"") == []
    assert parse_messages(b"\xff" * 100) == []
    short = datagram(PROC_EVENT_COMM, struct.pack("=II", 7, 7))  # comm without its name
    assert parse_messages(short) == []


def test_subscription_message_layout() -> None:
    msg = subscription_message(1, port=99)
    length, msg_type, _flags, _seq, port = struct.unpack_from("=IHHII", msg)
    assert (length, msg_type, port) == (len(msg), 3, 99)
    idx, val, _s, _a, size, _f = struct.unpack_from("=IIIIHH", msg, 16)
    assert (idx, val, size) == (CN_IDX_PROC, 1, 4)
    assert struct.unpack_from("=I", msg, 36) == (1,)
