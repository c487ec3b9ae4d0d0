"""Command-line regexes that cannot hang the agent.

Process rules carry regexes searched in a process's joined command line, and that text is chosen
by whoever starts the process. Python's ``re`` is a backtracking engine, so a careless pattern
such as ``(a+)+$`` or ``(\\w+\\s?)*$`` takes exponential time on a crafted input, and even two
open-ended repeats in sequence (``a.*b.*c``) take cubic time. We keep ``re`` (no new runtime
dependency, the same syntax admins know) and bound the work instead, in three ways:

1. **The input is bounded.** The matcher searches at most :data:`MAX_CMDLINE_MATCH_CHARS`
   characters (:func:`cmdline_window` keeps the head and the tail of a longer command line,
   where the program and its model argument are). Even one open-ended repeat is quadratic in
   the text length (``\\w+\\b-`` on a run of letters: about 15 ms at 1024 characters, 60-130
   ms at 2048 on a busy 2-core machine), which sets the window size. Text in the middle of a
   longer command line is not searched; name, path, hash, DNS and file rules do not depend on
   the window.
2. **The pattern's shape is restricted** when it is compiled, once per policy: at most
   :data:`MAX_PATTERN_CHARS` characters; no backreferences, lookahead/lookbehind or
   conditionals (they defeat the analysis below and are never needed for a denylist); no repeat
   of something that itself repeats or alternates (``(a+)+``, ``(a*)*b``, ``(a|aa)+``): that
   is what makes backtracking exponential.
3. **The remaining polynomial degree is capped.** With the shapes above, a piece of the
   pattern can end in a bounded number of places from a given position (its *paths*: 1 for a
   character, ``n + 1`` for an open-ended repeat, ``max + 1`` for ``{m,max}``, the sum over
   alternatives), and trying them all costs its *work*. In a sequence, every path of what came
   before re-runs what follows: ``work += paths * next_work``; ``paths *= next_paths``. We
   require ``work <= 40 * (n + 1)``: in effect one open-ended repeat that can backtrack
   (``.*``, ``\\S+``), followed by small bounded ones; ``a.*b.*c`` or ``.*\\s+x`` (9 s on 2048
   spaces in plain ``re``) are refused.

   A repeat has one path when it cannot usefully backtrack: it is possessive (``\\s++``), or
   its body is one character class and nothing the pattern may need next belongs to that
   class: a literal (``\\s+run``, ``\\d+\\.``), a small literal class (``[0-9.]*\\s``) or
   the complement class (``\\s+\\S``). Any shorter match would leave a class character
   where something else must be, so only the longest match can succeed.

The result: a search costs at most ``n`` start positions times ``work``, at most ``40 * n**2``
simple steps (4e7 for ``n = 1024``: well under a second in the model's worst case) whatever
the input, and far less in practice because the model counts every start and every alternative
as if all of them matched. ``tests/unit/test_regex_safety.py`` measures every pattern in the
shipped packs and a set of realistic ones against adversarial inputs of full length.
"""

from __future__ import annotations

import functools
import re
import warnings
from collections.abc import Iterable, Sequence
from re import _compiler as sre_compile  # type: ignore[attr-defined]
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

MAX_PATTERN_CHARS = 512
MAX_CMDLINE_MATCH_CHARS = 1024
MAX_REPEATS = 16  # repeats of any kind in one pattern
_WORK_BUDGET = 40 * (MAX_CMDLINE_MATCH_CHARS + 1)

_SINGLE_CHAR_OPS = frozenset({sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN})
_REPEAT_OPS = frozenset({sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT})

_Item = tuple[Any, Any]


def compile_cmdline_regex(pattern: str) -> re.Pattern[str]:
    """Compile a command-line regex after checking that it cannot backtrack without bound.

    Raises ``ValueError`` with one sentence saying what is wrong and what to write instead.
    """
    if not isinstance(pattern, str):
        raise ValueError("a command-line pattern must be a string")
    if not pattern:
        raise ValueError("empty pattern (it would match every command line)")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(
            f"pattern is {len(pattern)} characters, the limit is {MAX_PATTERN_CHARS}; "
            "split it into several patterns"
        )
    if "\x00" in pattern:
        raise ValueError("pattern contains a NUL character")
    try:
        with warnings.catch_warnings(record=True) as caught:
            # `re` warns about syntax whose meaning will change ("[--]", "[[a]"): refuse it
            # rather than print a warning from the agent or enforce a pattern that may change.
            warnings.simplefilter("always")
            compiled = re.compile(pattern)
            parsed = sre_parse.parse(pattern, 0)
        if caught:
            raise ValueError(
                f"ambiguous regular expression: {caught[0].message}; escape the character"
            )
    except re.error as err:
        raise ValueError(f"not a valid regular expression: {err}") from err
    except OverflowError as err:
        raise ValueError("a repeat count is too large") from err
    except RecursionError as err:
        raise ValueError("regular expression is nested too deeply") from err
    checker = _ShapeCheck(parsed.state)
    try:
        _paths, work = checker.sequence(list(parsed.data), parsed.state.flags, [])
    except RecursionError as err:
        raise ValueError("regular expression is nested too deeply") from err
    if checker.repeats > MAX_REPEATS:
        raise ValueError(
            f"pattern has {checker.repeats} repeats, the limit is {MAX_REPEATS}; simplify it"
        )
    if work > _WORK_BUDGET:
        raise ValueError(
            "pattern could take too long on a long command line: it has more than one "
            "open-ended repeat (.*, \\S+, …) that can backtrack; keep one, and make the "
            "others bounded and small ({0,8}) or follow them by a character they cannot match"
        )
    for probe in ("", "x", " ", "-"):
        found = compiled.search(probe)
        if found is not None and found.start() == found.end():
            # "(?:)", "x*" or "^$" would match every process (kernel threads have no cmdline).
            raise ValueError("pattern can match empty text, so it would match every process")
    return compiled


_SPACES = str.maketrans("\n\r\t\v\f\x85\u2028\u2029", "        ")


def cmdline_window(argv: Sequence[str]) -> str:
    """The text a command-line regex is searched in: arguments joined by spaces (line breaks
    inside an argument become spaces too), at most :data:`MAX_CMDLINE_MATCH_CHARS` characters.

    A longer command line keeps its head and its tail (the program is at the start, the
    model or file argument usually at the end), joined by a space, so padding the middle of a
    command line does not push those out of view.
    """
    # an argument may hold line breaks (a quoted note): they are spaces here, so a pattern's
    # "." spans them and a newline cannot split a command line out of a regex's reach
    text = " ".join(argv).translate(_SPACES)
    if len(text) <= MAX_CMDLINE_MATCH_CHARS:
        return text
    half = (MAX_CMDLINE_MATCH_CHARS - 1) // 2
    return text[:half] + " " + text[-(MAX_CMDLINE_MATCH_CHARS - 1 - half) :]


_Continuation = list[tuple[list[_Item], int]]  # what follows, innermost first, with its flags
_UNKNOWN: _Continuation = [([(None, None)], 0)]  # inside a repeat body: assume anything follows


class _ShapeCheck:
    """Walks an ``sre`` parse tree, rejects unsafe constructs and bounds the backtracking work.

    For each piece we compute ``(paths, work)``: how many different ways (end positions) it can
    match from one position, and how many steps trying all of them costs. In a sequence every
    path of the part so far re-runs the next part: ``work += paths * next_work`` and
    ``paths *= next_paths``. The total of a search is at most ``n`` starts times ``work``.
    """

    def __init__(self, state: Any) -> None:
        self.state = state
        self.repeats = 0

    def sequence(self, items: list[_Item], flags: int, after: _Continuation) -> tuple[int, int]:
        paths, work = 1, 0
        for index, item in enumerate(items):
            rest: _Continuation = [(items[index + 1 :], flags), *after]
            item_paths, item_work = self.item(item, flags, rest)
            work += paths * item_work
            paths *= item_paths
            if work > _WORK_BUDGET:
                break  # already over; keep the numbers small
        return paths, work

    def item(self, item: _Item, flags: int, after: _Continuation) -> tuple[int, int]:
        op, av = item
        if op in (sre.GROUPREF, sre.GROUPREF_IGNORE, sre.GROUPREF_LOC_IGNORE):
            raise ValueError("backreferences (\\1, (?P=name)) are not allowed")
        if op is sre.GROUPREF_EXISTS:
            raise ValueError("conditional groups (?(1)…|…) are not allowed")
        if op in (sre.ASSERT, sre.ASSERT_NOT):
            raise ValueError(
                "lookahead and lookbehind ((?=…), (?!…), (?<=…), (?<!…)) are not allowed"
            )
        if op is sre.SUBPATTERN:
            _group, add, remove, sub = av
            return self.sequence(list(sub.data), (flags | add) & ~remove, after)
        if op is sre.ATOMIC_GROUP:
            return 1, self.sequence(list(av.data), flags, after)[1]
        if op is sre.BRANCH:
            results = [self.sequence(list(b.data), flags, after) for b in av[1]]
            return sum(p for p, _ in results), sum(w for _, w in results)
        if op in _REPEAT_OPS:
            return self.repeat(op, av, flags, after)
        return 1, 1  # one character, an anchor or a word boundary

    def repeat(self, op: Any, av: Any, flags: int, after: _Continuation) -> tuple[int, int]:
        _low, high, body = av
        self.repeats += 1
        body_items = list(body.data)
        if high > 1 and _contains(body_items, lambda o, a: o in _REPEAT_OPS and a[1] > 1):
            raise ValueError(
                "a repeated group contains another repeat, e.g. (a+)+ or (\\w+\\s?)*: this can "
                "take exponential time; repeat a single character class instead"
            )
        if high > 1 and _contains(body_items, lambda o, a: o is sre.BRANCH):
            raise ValueError(
                "a repeated group contains alternatives, e.g. (a|ab)+: this can take "
                "exponential time; use a character class [ab] or list whole patterns"
            )
        # A body that runs at most once is followed by the rest of the pattern; one that may
        # run again could be followed by itself: assume anything.
        inner_paths, inner_work = self.sequence(body_items, flags, after if high <= 1 else _UNKNOWN)
        times = (
            MAX_CMDLINE_MATCH_CHARS if high is sre.MAXREPEAT else min(high, MAX_CMDLINE_MATCH_CHARS)
        )
        work = times * inner_work
        if op is sre.POSSESSIVE_REPEAT or self._only_longest(body_items, flags, after):
            return 1, work
        if high <= 1:
            return 1 + inner_paths, inner_work
        return (times + 1) * inner_paths, work

    def _only_longest(self, body: list[_Item], flags: int, after: _Continuation) -> bool:
        """True when only the longest match of the repeat can lead to success.

        That holds when the body is one character class and no character the pattern may need
        next belongs to that class: a shorter match would leave a class character exactly where
        something else must be.
        """
        if len(body) != 1 or body[0][0] not in _SINGLE_CHAR_OPS:
            return False
        follow = _follow_set(after)
        if not follow:
            return False
        return all(self._disjoint(body[0], flags, item, item_flags) for item, item_flags in follow)

    def _disjoint(self, body: _Item, body_flags: int, follow: _Item, follow_flags: int) -> bool:
        """Whether no character matches both single-character items (False when unsure)."""
        same_mode = (body_flags ^ follow_flags) & (re.ASCII | re.LOCALE | re.DOTALL) == 0
        categories = (_single_category(body), _single_category(follow))
        if (
            same_mode
            and categories[0] is not None
            and _COMPLEMENTS.get(categories[0]) is (categories[1])
        ):
            return True  # \s vs \S, \d vs \D, \w vs \W
        chars = _finite_chars(follow, follow_flags)
        if chars is not None:
            body_re = self._compile_item(body, body_flags)
            return not any(body_re.fullmatch(ch) for ch in chars)
        chars = _finite_chars(body, body_flags)
        if chars is not None:
            follow_re = self._compile_item(follow, follow_flags)
            return not any(follow_re.fullmatch(ch) for ch in chars)
        return False

    def _compile_item(self, item: _Item, flags: int) -> re.Pattern[str]:
        sub = sre_parse.SubPattern(self.state, [item])
        compiled: re.Pattern[str] = sre_compile.compile(sub, flags)
        return compiled


def _follow_set(after: _Continuation) -> list[tuple[_Item, int]] | None:
    """The single-character items that may be consumed next, or None when not obvious
    (the pattern may end there, or the next piece is an anchor other than a word boundary)."""
    for depth, (items, flags) in enumerate(after):
        for index, (op, av) in enumerate(items):
            rest: _Continuation = [(items[index + 1 :], flags), *after[depth + 1 :]]
            if op is None:
                return None  # inside a repeat body
            if op in _SINGLE_CHAR_OPS:
                return [((op, av), flags)]
            if op is sre.AT and av in (sre.AT_BOUNDARY, sre.AT_NON_BOUNDARY):
                continue  # zero width: the next consumed character is still what follows
            if op is sre.SUBPATTERN:
                _group, add, remove, sub = av
                return _follow_set([(list(sub.data), (flags | add) & ~remove), *rest])
            if op is sre.BRANCH:
                return _union(_follow_set([(list(b.data), flags), *rest]) for b in av[1])
            if op in _REPEAT_OPS:
                low, _high, body = av
                first = _follow_set([(list(body.data), flags), *rest])
                return first if low > 0 else _union([first, _follow_set(rest)])
            return None
    return None  # the pattern can end here


def _union(
    sets: Iterable[list[tuple[_Item, int]] | None],
) -> list[tuple[_Item, int]] | None:
    found: list[tuple[_Item, int]] = []
    for each in sets:
        if each is None:
            return None
        found.extend(each)
    return found


_COMPLEMENTS = {
    sre.CATEGORY_SPACE: sre.CATEGORY_NOT_SPACE,
    sre.CATEGORY_NOT_SPACE: sre.CATEGORY_SPACE,
    sre.CATEGORY_DIGIT: sre.CATEGORY_NOT_DIGIT,
    sre.CATEGORY_NOT_DIGIT: sre.CATEGORY_DIGIT,
    sre.CATEGORY_WORD: sre.CATEGORY_NOT_WORD,
    sre.CATEGORY_NOT_WORD: sre.CATEGORY_WORD,
}
_MAX_ENUMERATED = 64


def _single_category(item: _Item) -> Any:
    """``\\s``, ``\\S``, ``\\d``, … parse as a class holding one category."""
    op, av = item
    if op is sre.IN and len(av) == 1 and av[0][0] is sre.CATEGORY:
        return av[0][1]
    return None


def _finite_chars(item: _Item, flags: int) -> set[str] | None:
    """Every character a small literal class matches (case variants included), else None."""
    op, av = item
    chars: set[str] = set()
    if op is sre.LITERAL:
        chars.add(chr(av))
    elif op is sre.IN:
        for member_op, member in av:
            if member_op is sre.LITERAL:
                chars.add(chr(member))
            elif member_op is sre.RANGE and member[1] - member[0] < _MAX_ENUMERATED:
                chars.update(chr(code) for code in range(member[0], member[1] + 1))
            else:
                return None  # negated, a category, or a wide range
    else:
        return None
    if len(chars) > _MAX_ENUMERATED:
        return None
    if flags & re.IGNORECASE:
        chars = {variant for ch in chars for variant in _literal_variants(ord(ch), flags)}
    return chars


@functools.lru_cache(maxsize=512)
def _literal_variants(code: int, flags: int) -> tuple[str, ...]:
    """Every character a literal matches under ``flags`` (case folding included)."""
    char = chr(code)
    if not flags & re.IGNORECASE:
        return (char,)
    literal = re.compile(re.escape(char), flags & (re.IGNORECASE | re.ASCII | re.UNICODE))
    # Case folds of a character never leave the Basic Multilingual Plane for a BMP literal
    # (and stay in their own block otherwise), so scanning the BMP plus the literal's own
    # neighbourhood finds them all.
    found = {char}
    candidates = range(0x10000) if code < 0x10000 else range(code - 0x80, code + 0x80)
    for point in candidates:
        if literal.fullmatch(chr(point)):
            found.add(chr(point))
    return tuple(sorted(found))


def _contains(items: list[_Item], wanted: Any) -> bool:
    for op, av in items:
        if wanted(op, av):
            return True
        if op is sre.SUBPATTERN and _contains(list(av[3].data), wanted):
            return True
        if op is sre.ATOMIC_GROUP and _contains(list(av.data), wanted):
            return True
        if op is sre.BRANCH and any(_contains(list(b.data), wanted) for b in av[1]):
            return True
        if op in _REPEAT_OPS and _contains(list(av[2].data), wanted):
            return True
    return False
