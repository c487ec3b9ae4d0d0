"""Request models for the agent API, with the limits of :mod:`proscribe.core.events`.

Every string is capped and refuses NUL and lone surrogates: a NUL truncates SQLite text search
and PostgreSQL rejects it outright; a lone surrogate cannot be encoded as UTF-8 and would fail
deep inside the database driver. Events forbid unknown fields; heartbeats ignore them (a newer
agent may report more than this collector knows how to show).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
)
from pydantic_core import SchemaValidator

from proscribe.core.events import (
    EVENT_ACTIONS,
    KINDS,
    MAX_CMDLINE_ITEMS,
    MAX_DETAIL,
    MAX_EVENTS_PER_BATCH,
    MAX_STRING,
    SEVERITIES,
    parse_time,
)


def clean_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("NUL character not allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError("lone surrogate not allowed (text must be valid UTF-8)") from err
    return value


def _timestamp(value: str) -> str:
    try:
        parse_time(value)
    except ValueError as err:
        problem = (
            "is out of range" if "out of range" in str(err) else "must be RFC 3339 with a zone"
        )
        raise ValueError(f"time {problem}, e.g. 2025-01-28T09:14:03.120Z") from err
    return value


# Checked in pydantic-core (Rust), not per string in Python: ingest validates ~15 strings per
# event at 10k events/s. Lone surrogates are already refused by pydantic's str validation.
_NO_NUL = r"^[^\x00]*$"
# Canonical lower-case form only, so one event cannot be stored twice under two spellings.
_UUID = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
Text = Annotated[str, StringConstraints(max_length=MAX_STRING, pattern=_NO_NUL)]
Short = Annotated[str, StringConstraints(max_length=256, pattern=_NO_NUL)]
Detail = Annotated[str, StringConstraints(max_length=MAX_DETAIL, pattern=_NO_NUL)]
EventId = Annotated[str, StringConstraints(max_length=36, pattern=_UUID)]
Timestamp = Annotated[Short, AfterValidator(_timestamp)]
Hex = Annotated[str, StringConstraints(max_length=128, pattern=r"^[0-9a-fA-F]*$")]


Count = Annotated[int, Field(ge=0, le=2**53)]
Label = Annotated[str, StringConstraints(max_length=64, pattern=_NO_NUL)]
Mode = Annotated[str, StringConstraints(max_length=16, pattern=_NO_NUL)]
# 32 bytes of Ed25519 public key in base64: exactly what decode_public_key accepts.
PublicKeyText = Annotated[
    str, StringConstraints(max_length=52, pattern=r"^ed25519:[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")
]

# Strict: no coercion ("12" is not a pid), so a validated event's raw JSON is already exactly
# what the model describes and ingest stores it without a dump/re-encode round trip.
_STRICT = ConfigDict(extra="forbid", strict=True)
# Heartbeats ignore unknown keys (a newer agent reports more) but not wrong types.
_LENIENT = ConfigDict(extra="ignore", strict=True)


class PolicyRef(BaseModel):
    model_config = _STRICT
    id: Text | None = None
    serial: Count | None = None
    sha256: Hex | None = None


class HostRef(BaseModel):
    model_config = _STRICT
    agent_id: Short | None = None
    hostname: Text | None = None
    os: Short | None = None


class ProcessInfo(BaseModel):
    model_config = _STRICT
    pid: Count | None = None
    ppid: Count | None = None
    name: Text | None = None
    argv0: Text | None = None
    exe: Text | None = None
    cmdline: Annotated[list[Text], Field(max_length=MAX_CMDLINE_ITEMS)] | None = None
    user: Text | None = None
    uid: Count | None = None  # the real uid (who ran it): what user exemptions go by
    euid: Count | None = None  # the effective uid (a setuid program's differs from uid)
    sha256: Hex | None = None
    start_time: float | None = None


class DnsInfo(BaseModel):
    model_config = _STRICT
    qname: Text
    qtype: Short | None = None
    resolver: Text | None = None


class ModelInfo(BaseModel):
    """What a model file says it is (core/models/identity.py)."""

    model_config = _STRICT
    format: Short | None = None
    name: Text | None = None
    evidence: Annotated[list[Text], Field(max_length=16)] | None = None
    digests: Annotated[list[Short], Field(max_length=16)] | None = None


class FileInfo(BaseModel):
    model_config = _STRICT
    path: Text
    sha256: Hex | None = None
    owner: Text | None = None
    uid: Count | None = None
    size: Count | None = None
    mtime: Short | None = None
    model: ModelInfo | None = None
    quarantine: Short | None = None  # the quarantine record's id, when the file was moved


class EventIn(BaseModel):
    """One event as defined in :mod:`proscribe.core.events`."""

    model_config = _STRICT
    id: EventId
    time: Timestamp
    kind: Literal[KINDS]  # type: ignore[valid-type]
    rule: Text | None = None
    policy: PolicyRef | None = None
    action: Literal[EVENT_ACTIONS]  # type: ignore[valid-type]
    severity: Literal[SEVERITIES] = "high"  # type: ignore[valid-type]
    host: HostRef | None = None
    process: ProcessInfo | None = None
    dns: DnsInfo | None = None
    file: FileInfo | None = None
    detail: Detail | None = None
    count: Annotated[int, Field(ge=1, le=2**31)] = 1


def _as_plain_dicts(schema: Any) -> Any:
    """``schema`` (a pydantic-core schema) with every model made a typed dict of the same
    fields, constraints and strictness: what validates the same objects, but builds plain
    dicts. A defaulted field becomes optional with no default: a missing key stays missing."""
    if isinstance(schema, list):
        return [_as_plain_dicts(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if schema.get("type") == "model":
        config = schema.get("config", {})
        fields = {}
        for name, field in schema["schema"]["fields"].items():
            inner = field["schema"]
            required = inner["type"] != "default"
            fields[name] = {
                "type": "typed-dict-field",
                "schema": _as_plain_dicts(inner if required else inner["schema"]),
                "required": required,
            }
        return {
            "type": "typed-dict",
            "fields": fields,
            "extra_behavior": config.get("extra_fields_behavior", "ignore"),
            "strict": config.get("strict", False),
            "config": config,  # strictness and the like reach the fields through it
        }
    return {
        key: value if key in ("metadata", "cls", "ref") else _as_plain_dicts(value)
        for key, value in schema.items()
    }


# EventIn's rules exactly (derived from it, so the two cannot drift apart), validating into
# plain dicts instead of model instances: what ingest judges each event with (~10k events/s),
# in about half the time. Errors have the same locations and messages, but for a section that
# is not an object ("a valid dictionary", without "or instance of ProcessInfo"). Its keys come
# out in the schema's order, not the sender's.
EVENT_DICT = SchemaValidator(_as_plain_dicts(EventIn.__pydantic_core_schema__))
EVENT_DEFAULT_SEVERITY: str = EventIn.model_fields["severity"].default


class EventBatch(BaseModel):
    """The envelope; events stay raw dicts here so each is judged on its own."""

    model_config = _STRICT
    events: Annotated[list[dict[str, Any]], Field(max_length=MAX_EVENTS_PER_BATCH)]


class EnrollRequest(BaseModel):
    model_config = _STRICT
    secret: Short
    hostname: Text
    os: Label
    agent_version: Label
    public_key: PublicKeyText
    machine_id: MachineId | None = None


class HeartbeatPolicy(BaseModel):
    model_config = _LENIENT
    id: Text | None = None
    serial: Count | None = None
    sha256: Hex | None = None
    expires: Short | None = None
    stale: bool = False


class HeartbeatSpool(BaseModel):
    model_config = _LENIENT
    depth: Count = 0
    bytes: Count = 0
    # An int, or the spool's per-reason counters.
    dropped: Count | Annotated[dict[Short, Count], Field(max_length=64)] = 0

    def dropped_total(self) -> int:
        if isinstance(self.dropped, dict):
            return sum(self.dropped.values())
        return self.dropped


SensorValue = Text | bool | int | float | None
SensorState = SensorValue | Annotated[dict[Short, SensorValue], Field(max_length=32)]


class HeartbeatHealth(BaseModel):
    """How well the agent enforces (see ``proscribe.agent.heartbeat``); counters cumulative."""

    model_config = _LENIENT
    guard: Label | None = None
    drops: Annotated[dict[Short, Count], Field(max_length=64)] = Field(default_factory=dict)
    fail_open: Annotated[dict[Short, Count], Field(max_length=16)] = Field(default_factory=dict)
    sensors: Annotated[
        dict[Short, Annotated[dict[Short, SensorValue], Field(max_length=16)]],
        Field(max_length=16),
    ] = Field(default_factory=dict)
    policy_rejections: Count = 0
    last_policy_rejection: Detail | None = None


class Goodbye(BaseModel):
    """Sent in the last heartbeat of a clean stop."""

    model_config = _LENIENT
    by: Short
    time: Short | None = None


# /etc/machine-id (32 hex) or the agent's own random id: letters, digits, '-' and '_'.
MachineId = Annotated[
    str, StringConstraints(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
]


class HeartbeatIn(BaseModel):
    model_config = _LENIENT
    agent_version: Label = ""
    hostname: Text = ""
    os: Label = ""
    mode: Mode | None = None
    policy: HeartbeatPolicy | None = None
    sensors: Annotated[dict[Short, SensorState], Field(max_length=64)] = Field(default_factory=dict)
    spool: HeartbeatSpool = Field(default_factory=HeartbeatSpool)
    time: Short | None = None
    machine_id: MachineId | None = None
    health: HeartbeatHealth | None = None
    goodbye: Goodbye | None = None


class PolicyUpload(BaseModel):
    model_config = _STRICT
    policy: Annotated[str, StringConstraints(max_length=2 * 1024 * 1024)]
    signature: Annotated[str, StringConstraints(max_length=128 * 1024)]
