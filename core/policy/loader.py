"""Load and lint schema-1 policy files into the immutable model of :mod:`.model`.

Parsing is pure over ``bytes``: the bytes are the exact ones a signature was checked over, so
they are decoded here (strict UTF-8, no BOM, no NUL, at most 1 MiB) and parsed with the
standard library's ``tomllib``. Every problem found becomes a :class:`LintIssue` with the file,
the line (from :class:`~._lines.LineIndex`), what is wrong and the fix; :func:`load_policy`
raises one :class:`PolicyError` carrying all of them, so an admin fixes a file in one pass.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path

from proscribe.core.errors import LintIssue, PolicyError
from proscribe.core.policy import _rules
from proscribe.core.policy._checks import Table
from proscribe.core.policy._lines import ROOT, LineIndex
from proscribe.core.policy.model import (
    MAX_POLICY_BYTES,
    Defaults,
    Meta,
    Policy,
    Reference,
)

__all__ = ["lint_policy", "load_policy", "load_policy_file", "read_policy_bytes"]

_TOP_KEYS = ("meta", "defaults", "process", "domain", "file", "model", "exemption")
_TOML_WHERE = re.compile(r"\s*\(at line (\d+), column \d+\)\s*$")


def load_policy(data: bytes, source: str = "<policy>") -> Policy:
    """Parse and check a policy; raise :class:`PolicyError` carrying every issue found."""
    policy, issues = _load(data, source)
    if issues or policy is None:
        raise PolicyError(issues or [LintIssue(source, None, "invalid policy")])
    return policy


def lint_policy(data: bytes, source: str = "<policy>") -> list[LintIssue]:
    """Every problem in a policy file, in file order; an empty list means it loads."""
    return _load(data, source)[1]


def load_policy_file(path: Path) -> Policy:
    """Read (at most 1 MiB + 1 byte) and load a policy file."""
    return load_policy(read_policy_bytes(path), str(path))


def read_policy_bytes(path: Path) -> bytes:
    """The bytes of a policy file, capped; unreadable files raise :class:`PolicyError`."""
    try:
        with open(path, "rb") as handle:
            return handle.read(MAX_POLICY_BYTES + 1)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise PolicyError(
            LintIssue(str(path), None, f"cannot read policy file: {reason}", "check the path")
        ) from err


def _load(data: bytes, source: str) -> tuple[Policy | None, list[LintIssue]]:
    text, issues = _decode(data, source)
    if text is None:
        return None, issues
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        where = _TOML_WHERE.search(message)
        line = int(where.group(1)) if where else None
        message = _TOML_WHERE.sub("", message)
        return None, [
            LintIssue(source, line, f"not valid TOML: {message}", "correct the TOML syntax")
        ]
    except RecursionError:
        # tomllib recurses per nesting level: "a = [[[[…" thousands deep exhausts the stack.
        return None, [
            LintIssue(source, None, "not valid TOML: nested too deeply", "flatten the arrays")
        ]
    builder = _PolicyBuilder(source, LineIndex(text))
    policy = builder.build(document)
    found = sorted(builder.issues, key=lambda issue: issue.line or 0)
    if found:
        return None, found
    assert policy is not None
    sha = hashlib.sha256(data).hexdigest()
    return _with(policy, sha256=sha, source=source), []


def _with(policy: Policy, *, sha256: str, source: str) -> Policy:
    return Policy(
        meta=policy.meta,
        defaults=policy.defaults,
        process=policy.process,
        domain=policy.domain,
        file=policy.file,
        exemptions=policy.exemptions,
        sha256=sha256,
        source=source,
        model=policy.model,
    )


def _decode(given: object, source: str) -> tuple[str | None, list[LintIssue]]:
    def issue(line: int | None, message: str, fix: str) -> tuple[None, list[LintIssue]]:
        return None, [LintIssue(source, line, message, fix)]

    if not isinstance(given, bytes | bytearray | memoryview):
        return issue(None, "policy must be given as bytes", "read the file in binary mode")
    data = bytes(given)
    if len(data) > MAX_POLICY_BYTES:
        return issue(
            None,
            f"policy is larger than {MAX_POLICY_BYTES} bytes",
            "split it or remove unused rules; policies are capped at 1 MiB",
        )
    if data.startswith(b"\xef\xbb\xbf"):
        return issue(1, "file starts with a byte order mark (BOM)", "save it as UTF-8 without BOM")
    if b"\x00" in data:
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        return issue(line, "file contains a NUL byte", "remove it; a policy is plain text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        return issue(line, "file is not valid UTF-8", "save it with UTF-8 encoding")
    return text, []


class _PolicyBuilder:
    """Turns a parsed TOML document into a :class:`Policy`, collecting issues as it goes."""

    def __init__(self, source: str, lines: LineIndex) -> None:
        self.source = source
        self.lines = lines
        self.issues: list[LintIssue] = []

    def table(self, raw: dict[str, object], ref: tuple[str, int], kind: str) -> Table:
        return Table(raw, ref, kind, self.lines, self.source, self.issues)

    def build(self, document: dict[str, object]) -> Policy | None:
        root = self.table(document, ROOT, "top level")
        root.unknown_keys(_TOP_KEYS)
        meta_raw = root.subtable("meta", required=True)
        meta = self.meta(meta_raw) if meta_raw is not None else None
        defaults_raw = root.subtable("defaults", required=False)
        defaults = self.defaults(defaults_raw) if defaults_raw is not None else Defaults()
        references = {r.id for r in meta.references} if meta else set()
        rules = _rules.RuleBuilder(self, defaults, references)
        process = tuple(
            r for r in (rules.process(t) for t in root.array("process")) if r is not None
        )
        domain = tuple(r for r in (rules.domain(t) for t in root.array("domain")) if r is not None)
        files = tuple(r for r in (rules.file(t) for t in root.array("file")) if r is not None)
        models = tuple(r for r in (rules.model(t) for t in root.array("model")) if r is not None)
        exemptions = tuple(
            e for e in (rules.exemption(t) for t in root.array("exemption")) if e is not None
        )
        if meta is None or self.issues:
            return None
        return Policy(meta, defaults, process, domain, files, exemptions, model=models)

    def meta(self, t: Table) -> Meta | None:
        t.unknown_keys(
            ("schema", "id", "serial", "issued", "expires", "title", "description", "reference")
        )
        schema = t.integer("schema", required=True)
        if schema is not None and schema != 1:
            t.issue("schema", f"schema {schema} is not supported", "set schema = 1")
        policy_id = t.identifier("id", required=True)
        serial = t.integer("serial", required=True)
        if serial is not None and serial < 1:
            t.issue("serial", "serial must be a positive integer", "use 1 or higher")
        issued = t.instant("issued", required=True)
        expires = t.instant("expires", required=False)
        if issued is not None and expires is not None and expires <= issued:
            t.issue("expires", "expires is not after issued", "set expires later than issued")
        title = t.text("title", required=True)
        description = t.text("description") or ""
        references: list[Reference] = []
        seen: set[str] = set()
        for ref_table in t.array("reference"):
            ref = self.reference(ref_table)
            if ref is None:
                continue
            if ref.id in seen:
                ref_table.issue("id", f"duplicate reference id {ref.id!r}", "give it another id")
            seen.add(ref.id)
            references.append(ref)
        if None in (schema, policy_id, serial, issued, title):
            return None
        assert policy_id is not None and serial is not None and issued is not None
        return Meta(
            schema=1,
            id=policy_id,
            serial=serial,
            issued=issued,
            expires=expires,
            title=title or "",
            description=description,
            references=tuple(references),
        )

    def reference(self, t: Table) -> Reference | None:
        t.unknown_keys(("id", "title", "url", "issued", "authority"))
        ref_id = t.identifier("id", required=True)
        title = t.text("title", required=True)
        url = t.text("url") or ""
        if url and not url.startswith(("https://", "http://")):
            t.issue("url", f"url {url!r} is not an http(s) address", "use https://…")
        issued = t.date_text("issued")
        authority = t.text("authority") or ""
        if ref_id is None or title is None:
            return None
        return Reference(ref_id, title, url, issued, authority)

    def defaults(self, t: Table) -> Defaults:
        t.unknown_keys(("action", "severity"))
        return Defaults(
            action=t.action("action") or "report", severity=t.severity("severity") or "high"
        )
