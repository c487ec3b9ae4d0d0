"""Property-based tests: whatever bytes arrive, the loader answers with PolicyError or a Policy.

A crash here (KeyError, TypeError, OverflowError, RecursionError, …) would be a traceback for an
admin running ``policy lint`` and a dead policy reload in the agent.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proscribe.core.errors import LintIssue, PolicyError
from proscribe.core.policy.loader import lint_policy, load_policy
from proscribe.core.policy.model import Policy

ROOT = Path(__file__).resolve().parents[2]
SEED = (ROOT / "policies" / "us-navy-deepseek-2025.toml").read_bytes()

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Values that are valid TOML but the wrong thing in most places.
TRICKY_VALUES = [
    "[]",
    "[[]]",
    "[1, 2]",
    '["", " "]',
    "{ a = 1 }",
    "true",
    "-1",
    "0",
    "9223372036854775807",
    "1e400",
    "nan",
    "-inf",
    "1979-05-27",
    "07:32:00",
    "1979-05-27T07:32:00",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    '"(a+)+$"',
    '"[unclosed"',
    '["(a|aa)+", ".*"]',
    '["=", "=.", "*.x.com", "com", "a..b"]',
    '["\\u0000"]',
    '"\\u202e"',
    '"' + "x" * 5000 + '"',
    '["*"]',
    '"block"',
    '"kill"',
    "'''multi\nline'''",
]


def check(data: bytes) -> None:
    issues = lint_policy(data, "fuzz.toml")
    assert all(isinstance(i, LintIssue) for i in issues)
    try:
        policy = load_policy(data, "fuzz.toml")
    except PolicyError as err:
        assert err.issues, "a PolicyError always carries at least one issue"
        assert issues, "lint and load must agree"
        assert "\n" not in str(err), "the error a CLI prints is one line"
        return
    assert isinstance(policy, Policy)
    assert issues == []


@FUZZ
@given(st.binary(max_size=2048))
@example(b"")
@example(b"\xef\xbb\xbf")
@example(b"[meta]\x00")
@example(b"[[meta.reference]]\n[[meta.reference]]\n")
@example(b"a = " + b"[" * 3000 + b"]" * 3000)
def test_random_bytes(data: bytes) -> None:
    check(data)


@FUZZ
@given(st.text(max_size=1024))
def test_random_text(text: str) -> None:
    check(text.encode("utf-8", "surrogatepass"))


TOML_ATOMS = st.sampled_from(
    [
        "[meta]",
        "[[process]]",
        "[[domain]]",
        "[[file]]",
        "[[exemption]]",
        "[defaults]",
        "[[meta.reference]]",
        "schema = 1",
        'id = "x"',
        "serial = 1",
        'title = "t"',
        "issued = 2025-01-01T00:00:00Z",
        'names = ["a.example"]',
        'rules = ["x"]',
        'cmdline = ["a.*b"]',
        'globs = ["/x/**"]',
        'directives = ["x"]',
        "[process]",
        "x = ",
        "[meta.reference]",
        '"quoted key" = 1',
        "a.b.c = 1",
        "[a.b]",
    ]
)


@FUZZ
@given(st.lists(TOML_ATOMS, max_size=40))
def test_random_toml_shapes(lines: list[str]) -> None:
    check("\n".join(lines).encode())


@st.composite
def mutated_policy(draw: st.DrawFn) -> bytes:
    data = bytearray(SEED)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "delete", "insert", "value", "dupline", "cut"]))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 40))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "cut":
            del data[at:]
        else:
            lines = bytes(data).split(b"\n")
            index = draw(st.integers(0, len(lines) - 1))
            if kind == "dupline":
                lines.insert(index, lines[index])
            elif b"=" in lines[index]:
                key = lines[index].split(b"=", 1)[0]
                lines[index] = key + b"= " + draw(st.sampled_from(TRICKY_VALUES)).encode()
            data = bytearray(b"\n".join(lines))
    return bytes(data)


@FUZZ
@given(mutated_policy())
def test_mutations_of_a_valid_pack(data: bytes) -> None:
    check(data)


@FUZZ
@given(st.sampled_from(TRICKY_VALUES), st.integers(0, 400))
def test_every_key_with_every_tricky_value(value: str, pick: int) -> None:
    lines = SEED.decode().split("\n")
    keyed = [i for i, line in enumerate(lines) if "=" in line and not line.startswith("#")]
    index = keyed[pick % len(keyed)]
    key = lines[index].split("=", 1)[0]
    lines[index] = f"{key}= {value}"
    check("\n".join(lines).encode())


def test_seed_is_valid() -> None:
    assert lint_policy(SEED, "seed") == []


LIST_KEYS = {
    "[[process]]": ["names", "paths", "cmdline", "sha256", "directives"],
    "[[domain]]": ["names"],
    "[[file]]": ["globs"],
    "[[exemption]]": ["rules", "hosts", "users"],
}


@FUZZ
@given(
    st.sampled_from(sorted(LIST_KEYS)),
    st.data(),
    st.lists(st.text(max_size=40), min_size=1, max_size=4),
)
def test_random_strings_in_every_list_key(
    table: str, data: st.DataObject, items: list[str]
) -> None:
    key = data.draw(st.sampled_from(LIST_KEYS[table]))
    quoted = ", ".join(_toml_string(item) for item in items)
    text = "\n".join(
        [
            SEED.decode(),
            "[[domain]]",
            'id = "fuzz-base"',
            'names = ["b.example"]',
            table,
            'id = "fuzz-target"',
            f"{key} = [{quoted}]",
        ]
    )
    check(text.encode("utf-8", "surrogatepass"))


def _toml_string(text: str) -> str:
    escaped = []
    for char in text:
        if char in '"\\' or ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\u{ord(char):04x}")
        elif 0xD800 <= ord(char) <= 0xDFFF:
            escaped.append("?")  # TOML strings cannot hold lone surrogates
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'
