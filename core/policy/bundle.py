"""A signed policy as the agent receives it, and the store of the last good one.

:func:`verify_policy_bytes` is the one way untrusted policy bytes become a
:class:`~proscribe.core.policy.model.Policy`: size cap, signature envelope, threshold of
distinct trusted keys, and only then the TOML parser, on the very buffer that was verified.

:class:`PolicyStore` adds memory: it keeps the last accepted policy and its signature under the
state directory and applies the anti-rollback rules of :mod:`~proscribe.core.policy.state`.
Layout of ``state_dir``::

    state.json                 last accepted id/serial/sha256, max time seen (the commit point)
    policy/<sha256>.toml       the accepted policy's exact bytes
    policy/<sha256>.toml.sig   its signature envelope

The policy pair is written first, ``state.json`` last and atomically, so a crash at any point
leaves the old policy in force or the new one, never a policy without its signature.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal

from proscribe.core.errors import (
    PolicyError,
    PolicyRejected,
    ProscribeError,
    SignatureError,
    VerificationFailed,
)
from proscribe.core.fs import atomic_write, remove_stale_temp_files
from proscribe.core.policy.envelope import POLICY_PAYLOAD_TYPE, parse_envelope, verify_envelope
from proscribe.core.policy.loader import load_policy
from proscribe.core.policy.model import MAX_POLICY_BYTES, Policy
from proscribe.core.policy.state import (
    PolicyState,
    advance,
    clock_went_back,
    judge_offer,
    load_state,
    save_state,
)
from proscribe.core.policy.trustchain import TrustConfig

__all__ = [
    "MAX_POLICY_BYTES",
    "Offer",
    "PolicyStore",
    "TrustConfig",
    "read_capped",
    "read_stream_capped",
    "verify_policy_bytes",
]

log = logging.getLogger(__name__)

_CHUNK = 64 * 1024
# Persisting max_time_seen on every heartbeat would wear flash for nothing; the tolerance for a
# clock going back is an hour, so recording progress every few minutes is plenty.
_TIME_PERSIST_STEP_SECONDS = 300


def _too_large(source: str, limit: int) -> PolicyRejected:
    return PolicyRejected(
        f"{source}: larger than {limit} bytes; reading stopped at the cap "
        "(fix: policies must stay under 1 MiB)"
    )


def read_capped(path: Path, limit: int = MAX_POLICY_BYTES) -> bytes:
    """Read at most ``limit`` bytes of ``path``; more (or an endless FIFO/device) is refused."""
    try:
        with Path(path).open("rb") as fh:
            return read_stream_capped(fh, limit, str(path))
    except FileNotFoundError as err:
        raise PolicyRejected(f"{path}: not found (fix: check the path)") from err
    except IsADirectoryError as err:
        raise PolicyRejected(f"{path}: is a directory, not a file") from err
    except PermissionError as err:
        raise PolicyRejected(
            f"{path}: permission denied (fix: run as a user who may read it)"
        ) from err
    except OSError as err:
        raise PolicyRejected(f"{path}: cannot read: {err.strerror}") from err


def read_stream_capped(
    stream: BinaryIO | Iterable[bytes], limit: int = MAX_POLICY_BYTES, source: str = "<stream>"
) -> bytes:
    """Collect a file object or an iterator of chunks (e.g. an HTTP body) up to ``limit``."""
    parts: list[bytes] = []
    total = 0
    read = getattr(stream, "read", None)
    chunks: Iterable[bytes] = _read_chunks(read, limit) if read is not None else stream
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise _too_large(source, limit)
        parts.append(chunk)
    return b"".join(parts)


def _read_chunks(read: Any, limit: int) -> Iterable[bytes]:
    # Never ask for more than one byte past the cap: that byte is the proof of "too large".
    remaining = limit + 1
    while remaining > 0:
        chunk: bytes = read(min(_CHUNK, remaining))
        if not chunk:
            return
        remaining -= len(chunk)
        yield chunk


def verify_policy_bytes(
    data: bytes, sig: bytes, trust: TrustConfig, source: str = "<policy>"
) -> Policy:
    """Verify ``sig`` over ``data`` against ``trust``, then parse the verified buffer."""
    if len(data) > MAX_POLICY_BYTES:
        raise _too_large(source, MAX_POLICY_BYTES)
    envelope = parse_envelope(sig, f"{source}.sig")
    result = verify_envelope(data, envelope, trust.keys, trust.threshold, POLICY_PAYLOAD_TYPE)
    if not result.ok:
        raise VerificationFailed(f"{source}: signature check failed: {result.reason}")
    return load_policy(data, source)


@dataclass(frozen=True, slots=True)
class Offer:
    """The outcome of offering a policy to the store."""

    status: Literal["accepted", "unchanged", "rejected"]
    kind: str  # first, new, same, oversized, bad_signature, malformed_signature, invalid_policy,
    #            rollback, conflicting_hash, expired
    reason: str
    policy: Policy | None = None  # the offered policy when it verified and parsed
    origin: str = ""

    @property
    def accepted(self) -> bool:
        return self.status == "accepted"

    @property
    def rejected(self) -> bool:
        return self.status == "rejected"


class PolicyStore:
    """The last known good policy, kept on disk, and the rules for replacing it."""

    def __init__(self, state_dir: Path, trust: TrustConfig) -> None:
        self._dir = Path(state_dir)
        self._policy_dir = self._dir / "policy"
        self._state_path = self._dir / "state.json"
        self._trust = trust
        self._policy_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        remove_stale_temp_files(self._dir)
        remove_stale_temp_files(self._policy_dir)
        self._state = load_state(self._state_path)
        if self._state is None:
            self._state = self._recover_state()
        self._current = self._load_current()
        self._persisted_time = self._state.max_time_seen if self._state else None

    @property
    def trust(self) -> TrustConfig:
        return self._trust

    def current(self) -> Policy | None:
        return self._current

    def state(self) -> PolicyState | None:
        return self._state

    def _paths(self, sha256: str) -> tuple[Path, Path]:
        return self._policy_dir / f"{sha256}.toml", self._policy_dir / f"{sha256}.toml.sig"

    def _recover_state(self) -> PolicyState | None:
        """Rebuild the anti-rollback record from kept policies when state.json is gone.

        Without this, deleting or corrupting state.json would reopen the door to rollback.
        """
        best: Policy | None = None
        for toml_path in sorted(self._policy_dir.glob("*.toml")):
            try:
                data = read_capped(toml_path)
                sig = read_capped(Path(f"{toml_path}.sig"))
                policy = verify_policy_bytes(data, sig, self._trust, str(toml_path))
            except ProscribeError as err:
                log.warning("%s: ignored while recovering policy state: %s", toml_path, err)
                continue
            if best is None or policy.meta.serial > best.meta.serial:
                best = policy
        if best is None:
            return None
        state = PolicyState(
            policy_id=best.meta.id,
            serial=best.meta.serial,
            sha256=best.sha256,
            max_time_seen=best.meta.issued,
            issued=best.meta.issued,
            expires=best.meta.expires,
            origin="recovered",
        )
        log.warning("policy state rebuilt from %s serial %s", best.meta.id, best.meta.serial)
        save_state(self._state_path, state)
        return state

    def _load_current(self) -> Policy | None:
        if self._state is None:
            return None
        toml_path, sig_path = self._paths(self._state.sha256)
        try:
            data = read_capped(toml_path)
            sig = read_capped(sig_path)
            policy = verify_policy_bytes(data, sig, self._trust, str(toml_path))
        except ProscribeError as err:
            # The anti-rollback record stays; only a higher serial can now be accepted.
            log.warning("last good policy cannot be restored: %s", err)
            return None
        if policy.sha256 != self._state.sha256:
            log.warning("%s: content does not match the recorded sha256", toml_path)
            return None
        return policy

    def offer(self, data: bytes, sig: bytes, now: datetime, origin: str = "") -> Offer:
        """Verify, judge and (if accepted) persist a policy. Never raises for bad input."""
        source = origin or "<offered policy>"
        try:
            policy = verify_policy_bytes(data, sig, self._trust, source)
        except PolicyRejected as err:
            return Offer("rejected", "oversized", str(err), origin=origin)
        except VerificationFailed as err:
            return Offer("rejected", "bad_signature", str(err), origin=origin)
        except SignatureError as err:
            return Offer("rejected", "malformed_signature", str(err), origin=origin)
        except PolicyError as err:
            return Offer("rejected", "invalid_policy", str(err), origin=origin)
        verdict = judge_offer(
            self._state,
            policy_id=policy.meta.id,
            serial=policy.meta.serial,
            sha256=policy.sha256,
            expires=policy.meta.expires,
            now=now,
        )
        if verdict.outcome == "reject":
            log.warning("%s: policy rejected: %s", source, verdict.reason)
            return Offer("rejected", verdict.kind, f"{source}: {verdict.reason}", policy, origin)
        if verdict.outcome == "unchanged":
            self.note_time(now)
            return Offer("unchanged", verdict.kind, verdict.reason, policy, origin)
        self._commit(policy, data, sig, now, origin)
        log.info("policy %s serial %s accepted from %s", policy.meta.id, policy.meta.serial, source)
        return Offer("accepted", verdict.kind, verdict.reason, policy, origin)

    def _commit(self, policy: Policy, data: bytes, sig: bytes, now: datetime, origin: str) -> None:
        old = self._state
        toml_path, sig_path = self._paths(policy.sha256)
        atomic_write(toml_path, data, 0o644)
        atomic_write(sig_path, sig, 0o644)
        seen = [now, policy.meta.issued]
        if old is not None:
            seen.append(old.max_time_seen)
        new_state = PolicyState(
            policy_id=policy.meta.id,
            serial=policy.meta.serial,
            sha256=policy.sha256,
            max_time_seen=max(seen),
            issued=policy.meta.issued,
            expires=policy.meta.expires,
            accepted_at=now,
            origin=origin,
        )
        save_state(self._state_path, new_state)  # the commit point
        self._state = new_state
        self._persisted_time = new_state.max_time_seen
        self._current = policy
        if old is not None and old.sha256 != policy.sha256:
            for path in self._paths(old.sha256):
                path.unlink(missing_ok=True)

    def note_time(self, now: datetime) -> None:
        """Record that ``now`` was seen (persisted every few minutes of progress)."""
        if self._state is None:
            return
        self._state = advance(self._state, now)
        persisted = self._persisted_time
        if (
            persisted is None
            or (self._state.max_time_seen - persisted).total_seconds() >= _TIME_PERSIST_STEP_SECONDS
        ):
            save_state(self._state_path, self._state)
            self._persisted_time = self._state.max_time_seen

    def effective_time(self, now: datetime) -> datetime:
        """``now``, but never earlier than the latest time seen: pass this to the matchers so
        that setting the clock back cannot bring expired exemptions back to life."""
        if self._state is None:
            return now
        return max(now, self._state.max_time_seen)

    def status(self, now: datetime) -> dict[str, Any]:
        """What the heartbeat and ``agent status`` report about the policy in force."""
        policy = self._current
        if policy is None:
            return {
                "id": None,
                "serial": None,
                "sha256": None,
                "issued": None,
                "expires": None,
                "stale": True,
                "stale_reason": "no verified policy in force",
            }
        stale_reason: str | None = None
        expires = policy.meta.expires
        if clock_went_back(self._state, now):
            assert self._state is not None
            stale_reason = (
                f"clock is behind the latest time seen ({self._state.max_time_seen.isoformat()}) "
                "by more than an hour"
            )
        elif expires is not None and expires <= self.effective_time(now):
            stale_reason = f"policy expired at {expires.isoformat()}"
        return {
            "id": policy.meta.id,
            "serial": policy.meta.serial,
            "sha256": policy.sha256,
            "issued": policy.meta.issued.isoformat(),
            "expires": expires.isoformat() if expires else None,
            "stale": stale_reason is not None,
            "stale_reason": stale_reason,
        }
