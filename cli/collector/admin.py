"""Admin verbs: ``enroll-secret``, ``agent``, ``user``, ``purge``, ``recount``, ``audit``.
Writes are audited."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

from proscribe.cli.collector.common import (
    add_config_argument,
    cli_actor,
    open_migrated,
    settings_from_args,
)
from proscribe.core.errors import UsageError

ROLES = ("viewer", "admin")  # as proscribe.collector.storage.users.ROLES, without importing it


def register(verbs: Any) -> None:
    secret = verbs.add_parser("enroll-secret", help="create, list or revoke enroll secrets")
    secret_verbs = secret.add_subparsers(dest="action", metavar="ACTION")
    create = secret_verbs.add_parser("create", help="create a secret (printed once)")
    create.add_argument("--label", default="", help="a note for yourself, e.g. 'laptops 2025'")
    create.add_argument("--max-uses", type=int, default=None, help="enrollments it allows")
    create.add_argument(
        "--expires", default=None, help="when it stops working: 30d (from now) or RFC 3339"
    )
    create.add_argument(
        "--host-pattern", default=None, help="hostnames it enrolls (a glob, any case): 'ws-*'"
    )
    add_config_argument(create)
    create.set_defaults(func=secret_create)
    listing = secret_verbs.add_parser("list", help="list secrets (ids and labels)")
    listing.add_argument("--json", action="store_true")
    add_config_argument(listing)
    listing.set_defaults(func=secret_list)
    revoke = secret_verbs.add_parser("revoke", help="revoke a secret by id")
    revoke.add_argument("secret_id")
    add_config_argument(revoke)
    revoke.set_defaults(func=secret_revoke)
    secret.set_defaults(func=_usage(secret))

    agent = verbs.add_parser("agent", help="list or revoke enrolled agents")
    agent_verbs = agent.add_subparsers(dest="action", metavar="ACTION")
    alist = agent_verbs.add_parser("list", help="list enrolled agents")
    alist.add_argument("--json", action="store_true")
    add_config_argument(alist)
    alist.set_defaults(func=agent_list)
    arevoke = agent_verbs.add_parser(
        "revoke", help="revoke an agent: its key is refused for ever, its machine banned"
    )
    arevoke.add_argument("agent_id")
    add_config_argument(arevoke)
    arevoke.set_defaults(func=agent_revoke)
    abans = agent_verbs.add_parser("bans", help="list machine bans (active and lifted)")
    abans.add_argument("--json", action="store_true")
    add_config_argument(abans)
    abans.set_defaults(func=agent_bans)
    aunban = agent_verbs.add_parser("unban", help="let a banned machine enroll again")
    aunban.add_argument("machine_id")
    add_config_argument(aunban)
    aunban.set_defaults(func=agent_unban)
    agent.set_defaults(func=_usage(agent))

    user = verbs.add_parser("user", help="manage people's accounts")
    user_verbs = user.add_subparsers(dest="action", metavar="ACTION")
    uadd = user_verbs.add_parser("add", help="add a user; prints a password and API token once")
    uadd.add_argument("name")
    uadd.add_argument("--role", required=True, choices=ROLES)
    add_config_argument(uadd)
    uadd.set_defaults(func=user_add)
    ulist = user_verbs.add_parser("list", help="list users, their roles and whether disabled")
    ulist.add_argument("--json", action="store_true")
    add_config_argument(ulist)
    ulist.set_defaults(func=user_list)
    udisable = user_verbs.add_parser(
        "disable", help="disable a user: password, tokens and sessions stop working"
    )
    udisable.add_argument("name")
    add_config_argument(udisable)
    udisable.set_defaults(func=user_disable)
    ureset = user_verbs.add_parser(
        "reset", help="new password and API token for a user (old tokens revoked); shown once"
    )
    ureset.add_argument("name")
    add_config_argument(ureset)
    ureset.set_defaults(func=user_reset)
    user.set_defaults(func=_usage(user))

    purge = verbs.add_parser(
        "purge", help="retention: delete events and host history older than a cutoff"
    )
    purge.add_argument(
        "--older-than",
        required=True,
        metavar="AGE",
        help="e.g. 400d or 60w (at least 1d), or an RFC 3339 time",
    )
    purge.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    add_config_argument(purge)
    purge.set_defaults(func=events_purge)

    recount = verbs.add_parser(
        "recount",
        help="rebuild the violation counts from the stored events (after a mixed-version upgrade)",
    )
    add_config_argument(recount)
    recount.set_defaults(func=counts_recount)

    aud = verbs.add_parser("audit", help="check the admin audit log's hash chain")
    aud_verbs = aud.add_subparsers(dest="action", metavar="ACTION")
    verify = aud_verbs.add_parser("verify", help="verify the hash chain (exit 1 if broken)")
    add_config_argument(verify)
    verify.set_defaults(func=audit_verify)
    aud.set_defaults(func=_usage(aud))


def _usage(parser: argparse.ArgumentParser) -> Any:
    def run(_args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return run


def _when(us: int | None) -> str:
    if us is None:
        return "-"
    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def secret_create(args: argparse.Namespace) -> int:
    from proscribe.collector.storage import admin_actions, to_us
    from proscribe.collector.storage.agents import SecretLimits

    now = time.time()
    limits = SecretLimits(
        max_uses=_max_uses(args.max_uses),
        expires_us=None if args.expires is None else to_us(_future(args.expires, now)),
        host_pattern=_host_pattern(args.host_pattern),
    )
    db = open_migrated(settings_from_args(args))
    now_us = to_us(now)
    with db.write() as conn:
        secret_id, secret = admin_actions.create_enroll_secret(
            conn, args.label, actor=cli_actor(), via="cli", now_us=now_us, limits=limits
        )
    db.dispose()
    print(secret)
    print(
        f"(secret id {secret_id}; shown once — store it in the agents' enroll_secret_file)",
        file=sys.stderr,
    )
    return 0


def _max_uses(value: int | None) -> int | None:
    if value is not None and not 1 <= value <= 1_000_000:
        raise UsageError(f"--max-uses {value}: must be 1 to 1000000")
    return value


def _host_pattern(value: str | None) -> str | None:
    if value is not None and (not value or len(value) > 256 or "\x00" in value):
        raise UsageError("--host-pattern: a glob of 1 to 256 characters, e.g. 'ws-*'")
    return value


def _future(text: str, now: float) -> float:
    """``30d`` from now, or an RFC 3339 moment, which must be in the future."""
    from proscribe.collector.timespec import FORMS, RELATIVE_PATTERN, parse_moment

    try:
        moment = parse_moment(text, now)
    except ValueError as err:
        raise UsageError(f"--expires: {err}") from err
    if re.match(RELATIVE_PATTERN, text.strip()):
        moment = now + (now - moment)
    if moment <= now:
        raise UsageError(f"--expires {text!r} is in the past ({FORMS}, in the future)")
    return moment


def secret_list(args: argparse.Namespace) -> int:
    from proscribe.collector.storage import agents as agent_store

    db = open_migrated(settings_from_args(args))
    with db.read() as conn:
        rows = agent_store.list_enroll_secrets(conn)
    db.dispose()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "id": r.secret_id,
                        "label": r.label,
                        "created_us": r.created_us,
                        "revoked_us": r.revoked_us,
                        "max_uses": r.max_uses,
                        "uses": r.uses,
                        "expires_us": r.expires_us,
                        "host_pattern": r.host_pattern,
                    }
                    for r in rows
                ]
            )
        )
        return 0
    print(f"{'ID':14} {'CREATED':22} {'STATUS':8} {'USES':9} {'EXPIRES':22} {'HOSTS':12} LABEL")
    now_us = int(time.time() * 1e6)
    for r in rows:
        expired = r.expires_us is not None and r.expires_us <= now_us
        used_up = r.max_uses is not None and r.uses >= r.max_uses
        status = (
            "revoked" if r.revoked_us else "expired" if expired else "used" if used_up else "active"
        )
        uses = f"{r.uses}/{r.max_uses}" if r.max_uses is not None else str(r.uses)
        print(
            f"{r.secret_id:14} {_when(r.created_us):22} {status:8} {uses:9} "
            f"{_when(r.expires_us):22} {(r.host_pattern or '*'):12} {r.label!r}"
        )
    return 0


def secret_revoke(args: argparse.Namespace) -> int:
    from proscribe.collector.storage import admin_actions, to_us

    db = open_migrated(settings_from_args(args))
    now_us = to_us(time.time())
    with db.write() as conn:
        done = admin_actions.revoke_enroll_secret(
            conn, args.secret_id, actor=cli_actor(), via="cli", now_us=now_us
        )
    db.dispose()
    if not done:
        raise UsageError(
            f"enroll secret {args.secret_id!r}: no active secret with that id "
            "(fix: see 'proscribe collector enroll-secret list')"
        )
    print(f"revoked enroll secret {args.secret_id}")
    return 0


def agent_list(args: argparse.Namespace) -> int:
    from proscribe.collector.storage import agents as agent_store

    db = open_migrated(settings_from_args(args))
    with db.read() as conn:
        rows = agent_store.list_agents(conn)
    db.dispose()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "agent_id": r.agent_id,
                        "hostname": r.hostname,
                        "os": r.os,
                        "agent_version": r.agent_version,
                        "enrolled_us": r.enrolled_us,
                        "revoked_us": r.revoked_us,
                    }
                    for r in rows
                ]
            )
        )
        return 0
    print(f"{'AGENT ID':34} {'ENROLLED':22} {'STATUS':8} HOSTNAME")
    for r in rows:
        status = "revoked" if r.revoked_us else "active"
        print(f"{r.agent_id:34} {_when(r.enrolled_us):22} {status:8} {r.hostname!r}")
    return 0


def agent_revoke(args: argparse.Namespace) -> int:
    from proscribe.collector.storage import admin_actions, to_us

    db = open_migrated(settings_from_args(args))
    now_us = to_us(time.time())
    with db.write() as conn:
        done = admin_actions.revoke_agent(
            conn, args.agent_id, actor=cli_actor(), via="cli", now_us=now_us
        )
    db.dispose()
    if not done:
        raise UsageError(
            f"agent {args.agent_id!r}: no active agent with that id "
            "(fix: see 'proscribe collector agent list')"
        )
    print(
        f"revoked agent {args.agent_id}: its key is refused from now on and its machine may "
        "not enroll again until 'proscribe collector agent unban MACHINE_ID'"
    )
    return 0


def agent_bans(args: argparse.Namespace) -> int:
    from proscribe.collector.storage import agents as agent_store

    db = open_migrated(settings_from_args(args))
    with db.read() as conn:
        rows = agent_store.list_bans(conn)
    db.dispose()
    if args.json:
        print(json.dumps([dataclasses.asdict(b) for b in rows]))
        return 0
    print(f"{'MACHINE ID':34} {'BANNED':22} {'LIFTED':22} REASON")
    for b in rows:
        print(f"{b.machine_id:34} {_when(b.banned_us):22} {_when(b.lifted_us):22} {b.reason!r}")
    return 0


def agent_unban(args: argparse.Namespace) -> int:
    from proscribe.collector.storage import admin_actions, to_us

    db = open_migrated(settings_from_args(args))
    with db.write() as conn:
        done = admin_actions.lift_ban(
            conn, args.machine_id, actor=cli_actor(), via="cli", now_us=to_us(time.time())
        )
    db.dispose()
    if not done:
        raise UsageError(
            f"machine {args.machine_id!r}: no active ban "
            "(fix: see 'proscribe collector agent bans')"
        )
    print(f"lifted the ban on machine {args.machine_id}; it may enroll again with a new key")
    return 0


def user_add(args: argparse.Namespace) -> int:
    from proscribe.collector.storage import admin_actions, to_us
    from proscribe.collector.storage.users import USER_NAME_RE, UserExists

    if not USER_NAME_RE.match(args.name):
        raise UsageError(
            f"user name {args.name!r}: use letters, digits, '.', '_', '@' or '-' (max 128)"
        )
    db = open_migrated(settings_from_args(args))
    try:
        with db.write() as conn:
            password, token = admin_actions.add_user(
                conn, args.name, args.role, actor=cli_actor(), via="cli", now_us=to_us(time.time())
            )
    except UserExists as err:
        raise UsageError(f"user {args.name!r} already exists (fix: choose another name)") from err
    finally:
        db.dispose()
    print(f"user:      {args.name} ({args.role})")
    print(f"password:  {password}")
    print(f"api token: {token}")
    print("(shown once; only hashes are stored)", file=sys.stderr)
    return 0


def user_list(args: argparse.Namespace) -> int:
    from proscribe.collector.storage.users import list_users

    db = open_migrated(settings_from_args(args))
    with db.read() as conn:
        rows = list_users(conn)
    db.dispose()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": r.name,
                        "role": r.role,
                        "created_us": r.created_us,
                        "disabled_us": r.disabled_us,
                        "active_tokens": r.active_tokens,
                    }
                    for r in rows
                ],
                indent=2,
            )
        )
        return 0
    if not rows:
        print("no users (add one: proscribe collector user add NAME --role viewer|admin)")
        return 0
    print(f"{'NAME':24} {'ROLE':7} {'CREATED':21} {'DISABLED':21} TOKENS")
    for r in rows:
        print(
            f"{r.name:24} {r.role:7} {_when(r.created_us):21} {_when(r.disabled_us):21} "
            f"{r.active_tokens}"
        )
    return 0


def _user_change(args: argparse.Namespace, action: str) -> tuple[str, str] | int:
    from proscribe.collector.storage import admin_actions, to_us
    from proscribe.collector.storage.users import NoSuchUser

    db = open_migrated(settings_from_args(args))
    try:
        with db.write() as conn:
            change = admin_actions.disable_user if action == "disable" else admin_actions.reset_user
            result: tuple[str, str] | int = change(
                conn, args.name, actor=cli_actor(), via="cli", now_us=to_us(time.time())
            )
    except NoSuchUser as err:
        raise UsageError(
            f"user {args.name!r}: no active user of that name "
            "(fix: see 'proscribe collector user list')"
        ) from err
    finally:
        db.dispose()
    return result


def user_disable(args: argparse.Namespace) -> int:
    revoked = _user_change(args, "disable")
    print(f"disabled user {args.name}; {revoked} API token(s) revoked, sessions end now")
    return 0


def user_reset(args: argparse.Namespace) -> int:
    result = _user_change(args, "reset")
    assert isinstance(result, tuple)
    password, token = result
    print(f"user:      {args.name}")
    print(f"password:  {password}")
    print(f"api token: {token}")
    print("(shown once; only hashes are stored; older tokens are revoked)", file=sys.stderr)
    return 0


MIN_RETENTION_S = 86_400


def events_purge(args: argparse.Namespace) -> int:
    from proscribe.collector.storage import audit, to_us
    from proscribe.collector.storage.events import count_older, purge_chunk
    from proscribe.collector.timespec import parse_moment

    now = time.time()
    try:
        cutoff = parse_moment(args.older_than, now)
    except ValueError as err:
        raise UsageError(f"--older-than: {err}") from err
    if now - cutoff < MIN_RETENTION_S:
        raise UsageError(
            f"--older-than {args.older_than!r} would delete events from the last day "
            "(fix: give at least 1d; 'm' means minutes, write months as days, e.g. 400d)"
        )
    cutoff_us = to_us(cutoff)
    db = open_migrated(settings_from_args(args))
    try:
        when = _when(cutoff_us)
        if args.dry_run:  # counting is a full scan of old rows: only when asked for
            with db.read() as conn:
                n_events, n_history = count_older(conn, cutoff_us)
            print(f"would delete {n_events} events and {n_history} host history rows before {when}")
            return 0
        deleted = [0, 0]
        while True:
            with db.write() as conn:  # one short transaction per chunk
                gone = purge_chunk(conn, cutoff_us)
            deleted[0] += gone[0]
            deleted[1] += gone[1]
            if gone == (0, 0):
                break
        with db.write() as conn:
            audit.append_audit(
                conn,
                actor=cli_actor(),
                action="events.purge",
                target=when,
                detail={"events": deleted[0], "host_history": deleted[1]},
                now_us=to_us(time.time()),
            )
    finally:
        db.dispose()
    print(f"deleted {deleted[0]} events and {deleted[1]} host history rows before {when}")
    return 0


def counts_recount(args: argparse.Namespace) -> int:
    """Rebuild ``violation_counts`` and its blocks from the events, in one transaction that
    holds off other writers of the counts (ingest waits, then adds its own): what the overview
    and the report's totals read, made exact again after something wrote events without
    counting them (a collector older than the counts still running after the upgrade)."""
    from proscribe.collector.storage import audit, counts, to_us

    db = open_migrated(settings_from_args(args))
    try:
        with db.write() as conn:
            before = counts.total(conn)
            after = counts.recount(conn)
            audit.append_audit(
                conn,
                actor=cli_actor(),
                action="counts.recount",
                target="violation_counts",
                detail={"before": before, "after": after},
                now_us=to_us(time.time()),
            )
    finally:
        db.dispose()
    print(f"counted {after} violations from the stored events (the counts said {before})")
    return 0


def audit_verify(args: argparse.Namespace) -> int:
    from proscribe.collector.storage import audit

    db = open_migrated(settings_from_args(args))
    with db.read() as conn:
        verdict = audit.verify_chain(conn)
    db.dispose()
    if verdict.ok:
        print(f"audit log OK: {verdict.rows} entries, head {verdict.head}")
        return 0
    print(f"audit log BROKEN at entry {verdict.broken_at}: {verdict.reason}", file=sys.stderr)
    return 1
