"""Domain-name normalization shared by the policy loader and the matchers.

A name is normalized to the form the matcher stores and looks up: lower case, IDNA (punycode)
for non-ASCII labels, one trailing dot removed. ``normalize_domain`` validates strictly (used on
policy input); ``normalize_query`` is the cheap form for names seen on the wire, which were
already encoded by the resolver and only need case and the root dot folded.
"""

from __future__ import annotations

import re

MAX_NAME = 253
MAX_LABEL = 63
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def normalize_domain(name: str) -> str:
    """Normalize a policy domain name or raise ``ValueError`` saying what is wrong."""
    text = name.strip()
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise ValueError("empty domain name")
    if "*" in text:
        raise ValueError(
            f"{name!r}: wildcards are not used; a name already covers all its subdomains"
        )
    labels = []
    for label in text.split("."):
        if not label:
            raise ValueError(f"{name!r}: empty label (two dots in a row?)")
        if not label.isascii():
            try:
                label = label.encode("idna").decode("ascii")
            except UnicodeError as err:
                raise ValueError(f"{name!r}: not a valid internationalized name ({err})") from err
        label = label.lower()
        if not _LABEL.match(label):
            raise ValueError(
                f"{name!r}: label {label!r} must be 1-63 letters, digits, '-' or '_' "
                "and not start or end with '-'"
            )
        labels.append(label)
    result = ".".join(labels)
    if len(result) > MAX_NAME:
        raise ValueError(f"{name!r}: longer than {MAX_NAME} characters")
    return result


def normalize_query(name: str) -> str:
    """Fold a name seen in a DNS message for lookup (case and trailing dot).

    Names on the wire are ASCII (non-ASCII names travel as punycode); a non-ASCII name here is
    passed through ``normalize_domain`` and, if even that fails, returned lower-cased so that a
    malformed query can still be reported rather than crash the caller.
    """
    if name.isascii():
        return name.lower().rstrip(".")
    try:
        return normalize_domain(name)
    except ValueError:
        return name.lower().rstrip(".")
