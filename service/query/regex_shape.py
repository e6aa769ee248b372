"""Regex shapes that cannot backtrack catastrophically.

Client filters may use ``$regex``; a pattern like ``(a+)+$`` can make the server backtrack
for minutes on one document. ``check_regex_shape`` refuses quantified groups that contain
quantifiers or alternations, backreferences, lookaround, most ``(?...)`` groups and other
constructs, and bounds how many variable-length repetitions and branches may follow one
another. It is conservative: some harmless patterns are refused, never a dangerous one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class RegexRefused(Exception):
    """The pattern's shape is not allowed; the message says why."""


def check_regex_shape(pattern: str, options: str = "") -> None:
    """Raise ``RegexRefused`` unless ``pattern`` has a shape that cannot backtrack
    catastrophically under ``options`` (``$options`` letters: with ``x`` white space is
    ignored, with ``m`` a leading ``^`` anchors every line)."""
    _RegexShape.check(pattern, options)


def printable(text: str, limit: int = 60) -> str:
    """Text as it may appear in an error detail: escaped if unprintable, cut if long."""
    shown = text if text.isprintable() else text.encode("unicode_escape").decode("ascii")
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


_UNBOUNDED = -1
_QUANTIFIER_BRACES = re.compile(r"\{[ \t]*(\d*)[ \t]*(?:(,)[ \t]*(\d*)[ \t]*)?\}")
_EXTENDED_SPACE = frozenset(" \t\n\r\f\v")
# Worst-case backtracking grows like `branches * n ** degree` for a subject of length n,
# where degree counts variable-length repetitions that can run one after another, plus one
# for an unanchored pattern (tried again from every position), and branches multiplies the
# choices of alternations and optional items in sequence. One document's match cannot be
# interrupted by the query's time limit, so on a 2000-character URL degree 2 is about 2 ms
# (``a*[#@]``), degree 3 over a second and degree 4 minutes.
_MAX_REGEX_DEGREE = 2
_MAX_REGEX_BRANCHES = 64
_MAX_BRANCHES_AT_MAX_DEGREE = 4
# A bounded repetition of at most this many choices ({2,3}) is counted as branches.
_MAX_BOUNDED_CHOICES = 16


@dataclass(slots=True)
class _Shape:
    degree: int = 0
    # The degree of the costliest run inside, never below ``degree``: a possessive
    # repetition gives nothing back, so it adds no degree to what follows it, but it runs
    # again, for up to n steps, at each choice of the repetitions before it (``.+a++b`` is
    # n ** 3 unanchored).
    peak: int = 0
    branches: int = 1
    quantified: bool = False  # contains a variable-length quantifier
    alternation: bool = False  # contains |
    top_level_branches: int = 1  # the |-separated branches of this (sub)pattern itself


class _RegexShape:
    """A small recursive-descent reader of PCRE syntax that refuses risky patterns.

    Refused: a repetition (``*``, ``+``, ``{n,m}`` with m > 1) of a group that itself
    contains a quantifier or an alternation, as in ``(a+)+``, ``(a|aa)+``, ``(.*)*``;
    backreferences and subroutine calls; lookahead and lookbehind; every ``(?...)``
    group except ``(?:...)`` (inline flags could switch on extended mode and hide
    structure in comments); ``(*VERB)``s, which can raise the engine's match limits;
    ``\\Q...\\E``; unbalanced or unterminated syntax; and a pattern whose degree (above) passes
    ``_MAX_REGEX_DEGREE``, or whose branches pass ``_MAX_REGEX_BRANCHES``
    (``_MAX_BRANCHES_AT_MAX_DEGREE`` at the highest degree). The reader is conservative:
    whatever it cannot tell is safe is refused.
    """

    def __init__(self, pattern: str, extended: bool) -> None:
        self.s = pattern
        self.i = 0
        self.extended = extended

    @classmethod
    def check(cls, pattern: str, options: str) -> None:
        reader = cls(pattern, "x" in options)
        reader.skip_ignored()
        # Only a ^ (or \A) before everything, in every branch, saves the retry at each
        # position; with m, ^ matches after every newline.
        anchored = pattern.startswith(("^", "\\A"), reader.i) and "m" not in options
        shape = reader.alternation()
        if reader.i < len(pattern):
            raise RegexRefused("unbalanced parenthesis")
        if anchored and shape.top_level_branches > 1:
            anchored = False
        degree = shape.peak + (0 if anchored else 1)
        if degree > _MAX_REGEX_DEGREE:
            raise RegexRefused(
                "repetitions in sequence can backtrack heavily: at most one unbounded "
                "repetition (*, +, {n,}) that gives characters back, two after a leading ^ "
                "(a leading or trailing .* is never needed; a possessive quantifier such as "
                "[^/]*+ gives nothing back, but counts after another repetition, which runs "
                "it again at each of its choices)"
            )
        most = _MAX_BRANCHES_AT_MAX_DEGREE if degree == _MAX_REGEX_DEGREE else _MAX_REGEX_BRANCHES
        if shape.branches > most:
            raise RegexRefused("too many combined alternatives and optional parts")

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def skip_ignored(self) -> None:
        if not self.extended:
            return
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in _EXTENDED_SPACE:
                self.i += 1
            elif c == "#":
                end = self.s.find("\n", self.i)
                self.i = len(self.s) if end < 0 else end + 1
            else:
                return

    def alternation(self) -> _Shape:
        branches = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            branches.append(self.sequence())
        if len(branches) == 1:
            return branches[0]
        return _Shape(
            degree=max(b.degree for b in branches),
            peak=max(b.peak for b in branches),
            branches=min(sum(b.branches for b in branches), _MAX_REGEX_BRANCHES + 1),
            quantified=any(b.quantified for b in branches),
            alternation=True,
            top_level_branches=len(branches),
        )

    def sequence(self) -> _Shape:
        total = _Shape()
        while True:
            self.skip_ignored()
            if self.peek() in ("", "|", ")"):
                return total
            start = self.i
            item = self.atom()
            self.skip_ignored()
            bounds = self.quantifier()
            if bounds is not None:
                item = self.repeat(item, bounds, start)
            total = _Shape(
                degree=total.degree + item.degree,
                peak=max(total.peak, total.degree + item.peak),
                branches=min(total.branches * item.branches, _MAX_REGEX_BRANCHES + 1),
                quantified=total.quantified or item.quantified,
                alternation=total.alternation or item.alternation,
            )

    def atom(self) -> _Shape:
        s, c = self.s, self.s[self.i]
        if c == "(":
            if s.startswith("(*", self.i):
                raise RegexRefused("(*VERB) constructs are not allowed")
            if s.startswith(("(?=", "(?!", "(?<=", "(?<!"), self.i):
                raise RegexRefused("lookahead and lookbehind are not allowed")
            if s.startswith("(?:", self.i):
                self.i += 3
            elif s.startswith("(?", self.i):
                raise RegexRefused(
                    "only (...) and (?:...) groups are allowed; use $options for flags"
                )
            else:
                self.i += 1
            body = self.alternation()
            if self.peek() != ")":
                raise RegexRefused("unbalanced parenthesis")
            self.i += 1
            return body
        if c == "[":
            self.char_class()
        elif c == "\\":
            self.escape()
        elif c in "*+?" or (c == "{" and self.braces() is not None):
            raise RegexRefused("a quantifier has nothing to repeat")
        else:
            self.i += 1
        return _Shape()

    def escape(self) -> None:
        self.i += 1
        if self.i >= len(self.s):
            raise RegexRefused("the pattern ends with a backslash")
        e = self.s[self.i]
        self.i += 1
        if e in "123456789" or e in "gk":
            raise RegexRefused("backreferences are not allowed")
        if e == "Q":
            raise RegexRefused("\\Q...\\E quoting is not supported; escape characters singly")
        if e == "c":
            if self.i >= len(self.s):
                raise RegexRefused("\\c needs a character after it")
            self.i += 1  # \cX is one control character, whatever X is
        elif e in "xoNpPu" and self.peek() == "{":
            end = self.s.find("}", self.i)
            if end < 0:
                raise RegexRefused(f"unterminated \\{e}{{...}}")
            self.i = end + 1

    def char_class(self) -> None:
        s = self.s
        self.i += 1
        if self.peek() == "^":
            self.i += 1
        if self.peek() == "]":
            self.i += 1  # a ] first in the class is literal
        while self.i < len(s):
            c = s[self.i]
            if c == "\\":
                self.escape_in_class()
            elif c == "[" and s[self.i + 1 : self.i + 2] in (":", ".", "="):
                end = s.find(s[self.i + 1] + "]", self.i + 2)
                self.i = end + 2 if end >= 0 else self.i + 1
            elif c == "]":
                self.i += 1
                return
            else:
                self.i += 1
        raise RegexRefused("unterminated character class")

    def escape_in_class(self) -> None:
        # Digits are octal escapes here, not backreferences.
        if self.s.startswith(("\\1", "\\2", "\\3", "\\4", "\\5", "\\6", "\\7"), self.i):
            self.i += 2
            return
        if self.s.startswith(("\\8", "\\9"), self.i):
            raise RegexRefused("backreferences are not allowed")
        self.escape()

    def braces(self) -> tuple[int, int] | None:
        match = _QUANTIFIER_BRACES.match(self.s, self.i)
        if match is None or not (match[1] or match[3]):
            return None  # not a quantifier: PCRE reads the { literally
        low = int(match[1] or 0)
        high = low if match[2] is None else (int(match[3]) if match[3] else _UNBOUNDED)
        if high != _UNBOUNDED and high < low:
            raise RegexRefused("a {min,max} quantifier has max below min")
        self.i = match.end()
        return low, high

    def quantifier(self) -> tuple[int, int, bool] | None:
        """``(min, max, possessive)`` of the quantifier here, if there is one."""
        c = self.peek()
        bounds: tuple[int, int] | None
        if c == "*":
            bounds = (0, _UNBOUNDED)
        elif c == "+":
            bounds = (1, _UNBOUNDED)
        elif c == "?":
            bounds = (0, 1)
        elif c == "{":
            return self.quantifier_suffix(self.braces())
        else:
            return None
        self.i += 1
        return self.quantifier_suffix(bounds)

    def quantifier_suffix(self, bounds: tuple[int, int] | None) -> tuple[int, int, bool] | None:
        if bounds is None:
            return None
        possessive = self.peek() == "+"
        if self.peek() in ("?", "+"):
            self.i += 1  # lazy or possessive
        self.skip_ignored()
        c = self.peek()
        if c in ("*", "+", "?") or (c == "{" and _braces_quantifier(self.s, self.i)):
            raise RegexRefused("a quantifier cannot follow another quantifier")
        return (*bounds, possessive)

    def repeat(self, item: _Shape, bounds: tuple[int, int, bool], start: int) -> _Shape:
        low, high, possessive = bounds
        repeating = high == _UNBOUNDED or high > 1
        if repeating and (item.quantified or item.alternation):
            raise RegexRefused(
                f"the repeated group {printable(self.s[start : self.i], 40)!r} contains a "
                "quantifier or alternation, which can backtrack catastrophically"
            )
        if low == high:  # exact count: no choice to backtrack over
            return item
        if repeating and high != _UNBOUNDED and high - low < _MAX_BOUNDED_CHOICES:
            # A few counts to choose from (c{2,3}): a factor, not another power of n.
            return _Shape(
                degree=item.degree,
                peak=item.peak,
                branches=min(item.branches * (high - low + 1), _MAX_REGEX_BRANCHES + 1),
                quantified=True,
            )
        if repeating:
            # A possessive repetition never gives characters back, so it adds no degree to
            # what follows; its own run costs one (``peak``). It still counts as a
            # quantifier for the nesting rule above.
            degree = item.degree if possessive else item.degree + 1
            return _Shape(
                degree=degree,
                peak=max(item.peak, item.degree + 1),
                branches=item.branches,
                quantified=True,
            )
        # Optional: the item once, or not at all.
        return _Shape(
            degree=item.degree,
            peak=item.peak,
            branches=min(item.branches + 1, _MAX_REGEX_BRANCHES + 1),
            quantified=True,
            alternation=item.alternation,
        )


def _braces_quantifier(s: str, i: int) -> bool:
    match = _QUANTIFIER_BRACES.match(s, i)
    return match is not None and bool(match[1] or match[3])
