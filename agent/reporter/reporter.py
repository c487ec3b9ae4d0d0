"""The reporter thread: spool → collector, heartbeats, policy polls, enrollment.

One loop, one thread. Each turn it enrolls if needed, sends the oldest pending batch, sends a
heartbeat when due and polls the policy when due, then sleeps until the next thing is due or
``notify()`` wakes it (a new violation goes out within a second).

Delivery rules (see docs/delivery.md):

- per-event results: ``stored``/``duplicate`` → ``Spool.ack``; ``rejected`` → ``dead_letter``;
- 413 → the batch is halved and retried at once (down to one event; one event that still gets
  413 is dead-lettered);
- a 4xx for the batch (other than 401/408/413/429), or a 500-class error (not 502/503/504) that
  repeats for the same batch → the poison event(s) are isolated by halving and dead-lettered,
  the rest delivered (``isolation.py``; a collector that fails for everything is backed off
  from, never dead-lettered into);
- 429/503 → nothing is sent until ``Retry-After`` has passed (parsed and clamped);
- 401 ``unknown_agent``/``revoked_agent`` → enroll again (the spool is untouched);
  ``stale_request`` (this machine's clock is over 300 s off) → sign with the collector's time
  from then on (its ``Date`` header; the TLS channel is pinned) and retry at once; other 401s
  (replay) → backoff;
- 502/503/504, 408, connection, TLS and timeout errors → exponential backoff with full jitter
  (cap 15 min), reset on success, and the same rows are sent again.

Rows leave the spool only through ``ack`` or ``dead_letter``. A lost acknowledgement means a
resend, which the collector answers ``duplicate`` (stored once: the event id is its key).
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from proscribe.agent.config import AgentConfig, CollectorSection
from proscribe.agent.spool import Spool, SpooledEvent
from proscribe.core.errors import ConfigError
from proscribe.core.events import MAX_BATCH_BYTES, MAX_EVENTS_PER_BATCH, utc_now_iso
from proscribe.core.fs import atomic_write
from proscribe.core.wire import MAX_HEARTBEAT_INTERVAL, MIN_HEARTBEAT_INTERVAL

from .backoff import BACKOFF_BASE_SECONDS, BACKOFF_CAP_SECONDS, Backoff, parse_retry_after
from .identity import (
    IdentityStore,
    check_secret_file_private,
    default_host_facts,
    machine_identity,
)
from .isolation import Isolation, fault_kind
from .transport import Reply, Transport, TransportError

log = logging.getLogger(__name__)

EVENTS_PATH = "/api/v1/events"
HEARTBEAT_PATH = "/api/v1/heartbeat"
POLICY_PATH = "/api/v1/policy"
ENROLL_PATH = "/api/v1/enroll"
MAX_POLICY_BYTES = 1024 * 1024 + 64 * 1024  # the policy cap plus room for signatures

CLOCK_SLACK_SECONDS = 2.0  # offsets closer than this to the current one change nothing

HeartbeatSource = Callable[[], dict[str, Any]]
PolicySink = Callable[[bytes, bytes], object]


@dataclass(frozen=True)
class ReporterConfig:
    """Tunables; the defaults are the product's. Tests shorten the intervals."""

    batch_events: int = MAX_EVENTS_PER_BATCH
    batch_bytes: int = MAX_BATCH_BYTES
    # Until the collector names its own (``heartbeat_interval`` in a heartbeat's answer, from
    # its ``[server] heartbeat_interval``): one fleet-wide setting, not one per agent.toml.
    heartbeat_interval: float = 60.0
    heartbeat_jitter: float = 0.1  # a fraction of the interval, either way
    # A fallback only: every heartbeat's answer names the current policy's hash, and a new
    # one is fetched at once. Polling every minute as well doubled the fleet's requests.
    policy_interval: float = 900.0
    idle_check: float = 5.0  # look at the spool this often even without notify()
    compress: bool = True
    backoff_base: float = BACKOFF_BASE_SECONDS
    backoff_cap: float = BACKOFF_CAP_SECONDS
    status_file: Path | None = None
    suspect_retry: float = 60.0  # an event refused alone, nothing else pending: retried this often


def server_time(reply: Reply) -> float | None:
    """The collector's clock from an answer's ``Date`` header (RFC 9110), or None."""
    value = reply.header("Date")
    if not value:
        return None
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        return None
    return moment.timestamp()


def _iso(moment: float | None) -> str | None:
    return None if moment is None else utc_now_iso(datetime.fromtimestamp(moment, UTC))


class Reporter:
    """Delivers spooled events to the collector from a background thread."""

    def __init__(
        self,
        spool: Spool,
        transport: Transport,
        identity: IdentityStore,
        config: ReporterConfig | None = None,
        clock: Callable[[], float] = time.time,
        *,
        heartbeat_source: HeartbeatSource | None = None,
        on_policy: PolicySink | None = None,
        rng: random.Random | None = None,
        wake: threading.Event | None = None,
    ) -> None:
        self.spool = spool
        self.transport = transport
        self.identity = identity
        self.config = config or ReporterConfig()
        self._clock = clock
        self._rng = rng or random.Random()
        self._heartbeat_source = heartbeat_source
        self._on_policy = on_policy
        self._backoff = Backoff(self._rng, self.config.backoff_base, self.config.backoff_cap)
        # Set by notify() or by whoever was given the same event (the agent's doorbell, rung
        # when an event is committed): the loop goes round at once.
        self._wake = wake if wake is not None else threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._batch_limit = self.config.batch_events
        self._blocked_until = 0.0
        self._next_heartbeat = 0.0
        self._heartbeat_interval = self.config.heartbeat_interval
        self._next_policy = 0.0
        self._policy_etag: str | None = None
        self.last_upload: float | None = None
        self.last_heartbeat: float | None = None
        self.last_error: str | None = None
        self.last_error_time: float | None = None
        self.enrollments = 0
        self.signer_names: dict[str, str] = {}  # key id → name, from the collector's registry
        self.dead_lettered = 0  # events this reporter took out of delivery (the spool counts all)
        self._isolation = Isolation(retry_interval=self.config.suspect_retry)
        self._written_status: dict[str, Any] | None = None

    # -- lifetime ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="proscribe-reporter", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def notify(self) -> None:
        """A new event is in the spool: send it now (unless backing off)."""
        self._wake.set()

    def status(self) -> dict[str, Any]:
        now = self._clock()
        return {
            "collector": self.transport.url,
            "enrolled": self.identity.enrolled,
            "agent_id": self.identity.agent_id,
            "last_upload": _iso(self.last_upload),
            "last_heartbeat": _iso(self.last_heartbeat),
            "last_error": self.last_error,
            "last_error_time": _iso(self.last_error_time),
            "next_attempt": _iso(self._blocked_until) if self._blocked_until > now else None,
            "batch_limit": self._batch_limit,
            "policy_etag": self._policy_etag,
            "clock_offset_s": round(self.identity.clock_offset, 1),
            "dead_lettered": self.dead_lettered,
            "isolating": self._isolation.describe(),
            "signer_names": dict(self.signer_names),
        }

    # -- the loop ---------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                wait = self.run_once()
            except Exception as err:  # the loop must outlive its own bugs
                log.exception("reporter: unexpected error; backing off")
                self._fail(f"internal error: {err!r}")
                wait = max(0.0, self._blocked_until - self._clock())
            self._write_status()
            if wait > 0:
                self._wake.wait(wait)

    def run_once(self) -> float:
        """One turn of the loop; returns how long to sleep (0 = go again at once)."""
        now = self._clock()
        if now < self._blocked_until:
            return self._blocked_until - now
        if not self.identity.enrolled and not self._enroll():
            return self._sleep_time()
        more = self._upload()
        if self._clock() >= self._blocked_until:
            now = self._clock()
            if now >= self._next_heartbeat:
                self._heartbeat()
            if now >= self._next_policy and self._clock() >= self._blocked_until:
                self._poll_policy()
        if more and self._clock() >= self._blocked_until:
            return 0.0
        return self._sleep_time()

    def _sleep_time(self) -> float:
        now = self._clock()
        if now < self._blocked_until:
            return self._blocked_until - now
        due = [now + self.config.idle_check]
        if self.identity.enrolled:
            due += [self._next_heartbeat, self._next_policy]
        return max(0.0, min(due) - now)

    # -- outcomes ---------------------------------------------------------------------------

    def _fail(self, message: str) -> None:
        now = self._clock()
        self.last_error = message
        self.last_error_time = now
        self._blocked_until = self._backoff.failure(now)
        log.warning(
            "reporter: %s; next attempt in %.1fs", message, max(0.0, self._blocked_until - now)
        )

    def _ok(self) -> None:
        self._backoff.success()
        self.last_error = None  # status shows current health; the log keeps the history

    def _throttled(self, reply: Reply, what: str) -> None:
        now = self._clock()
        wait = parse_retry_after(reply.header("Retry-After"), now)
        self._blocked_until = now + wait
        self.last_error = f"{what}: collector busy (HTTP {reply.status}); retry after {wait:.0f}s"
        self.last_error_time = now
        log.warning("reporter: %s", self.last_error)

    def _common(self, reply: Reply, what: str) -> bool:
        """Handle answers that mean the same for every signed request; True if handled."""
        if reply.status in (429, 503):
            self._throttled(reply, what)
            return True
        if reply.status == 401:
            error = reply.error or "unauthorized"
            if error in ("unknown_agent", "revoked_agent"):
                log.warning("reporter: collector says %s; enrolling again", error)
                self.identity.forget(new_key=error == "revoked_agent")
            if error == "stale_request" and self._adopt_server_clock(reply):
                return True
            self._fail(f"{what}: collector refused our signature ({error})")
            return True
        if reply.status >= 500 or reply.status < 200 or 300 <= reply.status < 400:
            self._fail(f"{what}: collector answered HTTP {reply.status}")
            return True
        return False

    def _adopt_server_clock(self, reply: Reply) -> bool:
        """Take the collector's time from a ``stale_request`` answer; True when the offset
        changed (retry at once), False when it did not help (back off as usual)."""
        server = server_time(reply)
        if server is None:
            return False
        offset = server - time.time()
        if abs(offset - self.identity.clock_offset) < CLOCK_SLACK_SECONDS:
            return False  # already using that offset; something else is wrong
        self.identity.clock_offset = offset if abs(offset) >= CLOCK_SLACK_SECONDS else 0.0
        log.warning(
            "reporter: this machine's clock is %+.0f s off the collector's; signing requests "
            "with the collector's time (fix the clock: NTP)",
            -offset,
        )
        self.last_error = f"clock is {-offset:+.0f} s off the collector's; corrected"
        self.last_error_time = self._clock()
        self._blocked_until = self._clock()
        return True

    # -- enrollment -------------------------------------------------------------------------

    def _enroll(self) -> bool:
        try:
            body = self.identity.enroll_body()
        except ConfigError as err:
            self._fail(str(err))
            return False
        try:
            reply = self.transport.post_json(ENROLL_PATH, body)
        except TransportError as err:
            self._fail(f"enroll: {err}")
            return False
        if reply.status in (429, 503):
            self._throttled(reply, "enroll")
            return False
        agent_id = reply.json().get("agent_id")
        if reply.status != 200 or not isinstance(agent_id, str) or not 0 < len(agent_id) <= 200:
            hint = {
                401: " (fix: check collector.enroll_secret_file)",
                403: " (this machine or key is banned after a revocation, or the secret is not "
                "for this host: an admin must lift the ban or issue a secret)",
            }.get(reply.status, "")
            self._fail(f"enroll refused: HTTP {reply.status} {reply.error or ''}{hint}".strip())
            return False
        self.identity.set_agent_id(agent_id)
        self.enrollments += 1
        self._ok()
        now = self._clock()
        self._next_heartbeat = now
        self._next_policy = now
        log.info("reporter: enrolled as %s", agent_id)
        return True

    # -- events -----------------------------------------------------------------------------

    def _upload(self) -> bool:
        """Send one batch; True when the loop should go again at once."""
        isolation = self._isolation
        batch = isolation.batch(self.spool, self._batch_limit, self.config.batch_bytes)
        if not batch:
            return False  # nothing pending, or only held-back suspects (isolation.py): idle
        try:
            reply = self.transport.post_json(
                EVENTS_PATH,
                {"events": [item.event for item in batch]},
                signer=self.identity.sign,
                compress=self.config.compress,
            )
        except TransportError as err:
            isolation.reset()
            self._fail(f"events: {err}")
            return False
        if reply.status == 200:
            if not self._settle(batch, reply):
                isolation.reset()
                return False
            self._dead_letter(isolation.on_success(batch).dead)
            return True
        if reply.status == 413:
            return self._too_large(batch)
        kind = fault_kind(reply.status)
        if kind is None:
            isolation.reset()
            if not self._common(reply, "events"):
                self._fail(f"events: collector answered HTTP {reply.status}")
            return False
        # The batch itself may be at fault: find the event(s) so the rest can go (isolation.py).
        reason = f"HTTP {reply.status}: {reply.error or 'refused'}"
        step = isolation.on_fault(batch, reason, kind)
        self._dead_letter(step.dead)
        if not step.retry_now:
            if step.backoff:
                self._fail(f"events: batch of {len(batch)}: {step.note or reason}")
            else:
                self.last_error = f"events: {step.note}"
                self.last_error_time = self._clock()
            return False
        log.warning("reporter: events: batch of %d: %s", len(batch), step.note)
        self.last_error = f"events: {step.note}"
        self.last_error_time = self._clock()
        return True

    def _dead_letter(self, dead: dict[str, str]) -> None:
        for event_id, reason in dead.items():
            if self.spool.dead_letter([event_id], reason):
                self.dead_lettered += 1
            log.error("reporter: event %s dead-lettered: %s", event_id, reason)

    def _settle(self, batch: list[SpooledEvent], reply: Reply) -> bool:
        results = reply.json().get("results")
        sent = {item.id for item in batch}
        acked: list[str] = []
        rejected: dict[str, list[str]] = {}
        for result in results if isinstance(results, list) else []:
            if not isinstance(result, dict) or result.get("id") not in sent:
                continue
            status = result.get("status")
            if status in ("stored", "duplicate"):
                acked.append(str(result["id"]))
            elif status == "rejected":
                reason = f"rejected: {result.get('error') or 'no reason given'}"
                rejected.setdefault(reason, []).append(str(result["id"]))
        self.spool.ack(acked)
        for reason, ids in rejected.items():
            self.dead_lettered += self.spool.dead_letter(ids, reason)
            log.error("reporter: collector rejected %d event(s): %s", len(ids), reason)
        if not acked and not rejected:
            self._fail("events: collector answered 200 without results for this batch")
            return False
        self._ok()
        self.last_upload = self._clock()
        self._batch_limit = min(self.config.batch_events, self._batch_limit * 2)
        return True

    def _too_large(self, batch: list[SpooledEvent]) -> bool:
        if len(batch) == 1:
            self.dead_lettered += self.spool.dead_letter(
                [batch[0].id], "HTTP 413: too large for the collector"
            )
            log.error(
                "reporter: event %s is too large for the collector; dead-lettered", batch[0].id
            )
            return True
        self._batch_limit = max(1, len(batch) // 2)
        log.info("reporter: batch of %d too large; trying %d", len(batch), self._batch_limit)
        return True

    # -- heartbeat --------------------------------------------------------------------------

    def _heartbeat_payload(self, now: float) -> dict[str, Any]:
        payload: dict[str, Any] = {}
        if self._heartbeat_source is not None:
            try:
                payload.update(self._heartbeat_source())
            except Exception:  # a broken source must not stop heartbeats or uploads
                log.exception("reporter: heartbeat_source failed; sending a minimal heartbeat")
        for key in ("hostname", "os", "agent_version", "machine_id"):
            value = self.identity.host_facts.get(key)
            if value is not None:
                payload.setdefault(key, value)
        stats = self.spool.stats()
        payload["spool"] = {
            "depth": stats.depth,
            "bytes": stats.bytes,
            "dropped": stats.dropped_total,
        }
        payload.setdefault("time", _iso(now))
        return payload

    def farewell(self, by: str, timeout: float = 3.0) -> bool:
        """After :meth:`stop`: one last heartbeat saying the agent stops cleanly and who or
        what stopped it (``goodbye.by``), so the collector shows the host as stopped rather
        than silent. Best effort, bounded by ``timeout``; True if the collector took it."""
        if self._thread is not None or not self.identity.enrolled:
            return False
        payload = self._heartbeat_payload(self._clock())
        payload["goodbye"] = {"by": by[:256], "time": _iso(self._clock())}
        saved = self.transport.timeout
        self.transport.timeout = (min(saved[0], timeout), min(saved[1], timeout))
        try:
            reply = self.transport.post_json(HEARTBEAT_PATH, payload, signer=self.identity.sign)
        except TransportError as err:
            log.info("reporter: goodbye heartbeat not delivered (%s)", err)
            return False
        finally:
            self.transport.timeout = saved
        if reply.status != 200:
            log.info("reporter: goodbye heartbeat refused (HTTP %s)", reply.status)
            return False
        log.info("reporter: goodbye heartbeat delivered (%s)", by)
        return True

    def _heartbeat(self) -> None:
        now = self._clock()
        spread = self._heartbeat_interval * self.config.heartbeat_jitter
        jitter = self._rng.uniform(-spread, spread)
        self._next_heartbeat = now + max(1.0, self._heartbeat_interval + jitter)
        payload = self._heartbeat_payload(now)
        try:
            reply = self.transport.post_json(HEARTBEAT_PATH, payload, signer=self.identity.sign)
        except TransportError as err:
            self._fail(f"heartbeat: {err}")
            return
        if self._common(reply, "heartbeat"):
            return
        if reply.status != 200:
            self.last_error = f"heartbeat: HTTP {reply.status} {reply.error or ''}".strip()
            self.last_error_time = now
            log.error("reporter: %s", self.last_error)
            return
        self._ok()
        self.last_heartbeat = now
        self._follow_interval(reply.json().get("heartbeat_interval"), now)
        names = reply.json().get("signers")
        if isinstance(names, dict):
            self.signer_names = {
                str(k)[:64]: str(v)[:300]
                for k, v in list(names.items())[:256]
                if isinstance(v, str)
            }
        policy = reply.json().get("policy")
        if isinstance(policy, dict):
            sha = policy.get("sha256")
            if isinstance(sha, str) and sha and sha != self._policy_etag:
                self._next_policy = now  # the collector has a policy we have not seen

    def _follow_interval(self, value: object, now: float) -> None:
        """Adopt the collector's heartbeat interval, within [15 s, 1 h]; anything else (absent
        from an older collector, not a number) keeps the current one."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return
        interval = float(min(MAX_HEARTBEAT_INTERVAL, max(MIN_HEARTBEAT_INTERVAL, value)))
        if interval == self._heartbeat_interval:
            return
        log.info("reporter: heartbeat every %.0f s (the collector's setting)", interval)
        self._heartbeat_interval = interval
        spread = interval * self.config.heartbeat_jitter
        self._next_heartbeat = now + max(1.0, interval + self._rng.uniform(-spread, spread))

    @property
    def heartbeat_interval(self) -> float:
        return self._heartbeat_interval

    # -- policy -----------------------------------------------------------------------------

    def _poll_policy(self) -> None:
        now = self._clock()
        self._next_policy = now + self.config.policy_interval
        headers = {"If-None-Match": f'"{self._policy_etag}"'} if self._policy_etag else {}
        try:
            reply = self.transport.get(POLICY_PATH, signer=self.identity.sign, headers=headers)
        except TransportError as err:
            self._fail(f"policy: {err}")
            return
        if reply.status in (304, 404):
            self._ok()
            return
        if self._common(reply, "policy"):
            return
        if reply.status != 200:
            self.last_error = f"policy: HTTP {reply.status} {reply.error or ''}".strip()
            self.last_error_time = now
            return
        self._ok()
        doc = reply.json()
        try:
            data = base64.b64decode(str(doc.get("policy", "")), validate=True)
            sig = base64.b64decode(str(doc.get("signature", "")), validate=True)
        except (binascii.Error, ValueError):
            data = sig = b""
        if not data or not sig or len(data) > MAX_POLICY_BYTES:
            self.last_error = "policy: collector sent a malformed or oversized policy bundle"
            self.last_error_time = now
            log.error("reporter: %s", self.last_error)
            return
        etag = (reply.header("ETag") or "").removeprefix("W/").strip('"') or doc.get("sha256")
        # Remember the ETag whatever the verdict: the agent reports a rejection once, and the
        # next change on the collector changes the ETag.
        self._policy_etag = str(etag) if etag else None
        if self._on_policy is not None:
            try:
                self._on_policy(data, sig)
            except Exception:  # the agent's verifier reports its own verdicts
                log.exception("reporter: on_policy failed for policy %s", self._policy_etag)

    # -- status file ------------------------------------------------------------------------

    def _write_status(self) -> None:
        path = self.config.status_file
        if path is None:
            return
        status = self.status()
        if status == self._written_status:
            return
        try:
            atomic_write(path, json.dumps(status))
        except OSError as err:
            log.warning("reporter: cannot write %s: %s", path, err)
            return
        self._written_status = status


def _collector_section(config: AgentConfig) -> CollectorSection:
    if config.collector is None:
        raise ConfigError(
            f"{config.source}: [collector] is not set, so there is nowhere to report "
            "(fix: add [collector] url = … or run without a reporter)"
        )
    return config.collector


def build_identity(config: AgentConfig) -> IdentityStore:
    """The agent's identity towards the config's collector (its key is made on first use)."""
    collector = _collector_section(config)
    if collector.enroll_secret_file is not None:
        check_secret_file_private(collector.enroll_secret_file)  # the agent refuses to start
    facts = default_host_facts()
    if config.agent.hostname:
        facts["hostname"] = config.agent.hostname
    facts["machine_id"] = machine_identity(config.state_dir)
    return IdentityStore(config.state_dir, collector.enroll_secret_file, facts)


def build_reporter(
    config: AgentConfig,
    *,
    spool: Spool,
    identity: IdentityStore | None = None,
    heartbeat_source: HeartbeatSource | None = None,
    on_policy: PolicySink | None = None,
    reporter_config: ReporterConfig | None = None,
    wake: threading.Event | None = None,
) -> Reporter:
    """The daemon's entry point: a Reporter for the config's ``[collector]`` section."""
    collector = _collector_section(config)
    return reporter_for_url(
        spool,
        url=collector.url,
        ca_file=collector.ca_file,
        enroll_secret_file=collector.enroll_secret_file,
        state_dir=config.state_dir,
        heartbeat_source=heartbeat_source,
        on_policy=on_policy,
        config=reporter_config,
        identity=identity if identity is not None else build_identity(config),
        wake=wake,
    )


def reporter_for_url(
    spool: Spool,
    *,
    url: str,
    ca_file: Path | None,
    enroll_secret_file: Path | None,
    state_dir: Path,
    heartbeat_source: HeartbeatSource | None = None,
    on_policy: PolicySink | None = None,
    config: ReporterConfig | None = None,
    host_facts: dict[str, str] | None = None,
    identity: IdentityStore | None = None,
    wake: threading.Event | None = None,
) -> Reporter:
    """Wire a Reporter from plain settings (ConfigError names the bad key); easy to point at a
    test collector. Status goes to ``state_dir/reporter.json`` unless ``config`` says otherwise.
    """
    transport = Transport(url, ca_file=ca_file)
    if identity is None:
        identity = IdentityStore(state_dir, enroll_secret_file, host_facts)
    if config is None:
        config = ReporterConfig(status_file=Path(state_dir) / "reporter.json")
    return Reporter(
        spool,
        transport,
        identity,
        config,
        heartbeat_source=heartbeat_source,
        on_policy=on_policy,
        wake=wake,
    )
