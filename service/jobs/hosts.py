"""Host names and host patterns from a request, checked for what Ansible would do with them before it does.

Two of Ansible's conveniences turn a few bytes into unbounded work or a file read: a host name with ranges
(`h[0:99999999]`) is expanded into every name it stands for, and `--limit` reads a file of patterns for an
element starting with `@` and matches `~regex` elements with Python's backtracking `re`. Ranges are counted
here without expanding them, with Ansible's own arithmetic (`expand_hostname_range`); `@` elements are
refused; a regex is refused unless its worst case is bounded (see `check_regex`).
"""

from __future__ import annotations

import re
import string
import warnings
from typing import Any

from service.errors import shown

with warnings.catch_warnings():
    # Python's own regular-expression parser, under the name typeshed describes (re._parser in 3.11).
    warnings.simplefilter("ignore", DeprecationWarning)
    import sre_constants
    import sre_parse

# The longest host name that counts for the worst case of a regex (DNS names are at most 253 characters).
_NAME_LENGTH = 255
# A regex may cost at most this many steps per host name matched: two unbounded repetitions (`.*a.*`).
_REGEX_BUDGET = _NAME_LENGTH**2
_REGEX_MAX_LENGTH = 256
_REPEATS = (sre_constants.MAX_REPEAT, sre_constants.MIN_REPEAT, sre_constants.POSSESSIVE_REPEAT)
_REFERENCES = (sre_constants.GROUPREF, sre_constants.GROUPREF_EXISTS)
# `@` where an element of a limit can start: Ansible splits a limit on ',' or, without one, on ':',
# whitespace and brackets, then strips each element.
_FILE_ELEMENT = re.compile(r"(?:^|[^A-Za-z0-9_.-])@")
# A regex element: `~regex`, possibly after '!' or '&', once the limit is split either way.
_SEPARATORS = re.compile(r"[,:\s]")
# A bracketed IPv6 address with a port, which Ansible's address parser takes before any range expansion.
_IPV6_WITH_PORT = re.compile(r"^\[[0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.-]+)?\]:[0-9]+\Z")


def host_count(name: str) -> int:
    """How many hosts Ansible makes of an inventory host name; ValueError where Ansible would fail.

    Mirrors `ansible.plugins.inventory.expand_hostname_range` (the first `[...]` is a range
    `begin:end[:step]` of integers, as Python's int() reads them, or of letters; the rest of the name is
    expanded the same way for each), counting instead of listing, so `h[0:99999999]` costs nothing here.
    """
    if "[" not in name or _IPV6_WITH_PORT.match(name):
        return 1
    try:
        head, bounds_text, tail = name.replace("[", "|", 1).replace("]", "|", 1).split("|")
    except ValueError:
        raise ValueError("unbalanced brackets") from None
    bounds = bounds_text.split(":")
    if len(bounds) not in (2, 3):
        raise ValueError("a host range is [begin:end] or [begin:end:step]")
    begin, end = bounds[0] or "0", bounds[1]
    step = int(bounds[2]) if len(bounds) == 3 else 1
    if not end:
        raise ValueError("a host range needs an end")
    if step < 1:
        raise ValueError("the step of a host range must be at least 1")
    if begin[0] == "0" and len(begin) > 1 and len(begin) != len(end):
        raise ValueError("a zero-padded host range needs begin and end of equal length")
    try:
        first, last = string.ascii_letters.index(begin), string.ascii_letters.index(end)
    except ValueError:
        size = len(range(int(begin), int(end) + 1, step))
    else:
        if first > last:
            raise ValueError("a host range must have begin <= end") from None
        size = len(string.ascii_letters[first : last + 1 : step])
    rest = head + tail
    return size * (host_count(rest) if "[" in tail else 1)


def check_limit(limit: str) -> None:
    """ValueError unless `limit` is host patterns only: no file of patterns, no costly regex."""
    if _FILE_ELEMENT.search(limit):
        raise ValueError(
            "an element starting with '@' would make Ansible read a file of patterns: refused "
            "(list the hosts or groups instead)"
        )
    elements = {part.strip() for part in limit.split(",")} | {
        part for part in _SEPARATORS.split(limit) if part
    }
    for element in elements:
        pattern = element.lstrip("!&")
        if pattern.startswith("~"):
            check_regex(pattern[1:])


def check_regex(pattern: str) -> None:
    """ValueError unless matching `pattern` against a host name takes a bounded number of steps.

    Ansible matches a `~regex` limit element with Python's `re`, which backtracks: `(a+)+$` takes
    exponential time on a long name. Refused: a repetition or an alternation inside a repetition, back
    references, and patterns whose alternations and repetitions multiply to more than two unbounded
    repetitions' worth of steps per name (`.*prod.*` is fine, `.*.*.*x` is not).
    """
    if len(pattern) > _REGEX_MAX_LENGTH:
        raise ValueError(f"a ~regex element is longer than {_REGEX_MAX_LENGTH} characters")
    try:
        parsed = sre_parse.parse(pattern)
    except re.error as exc:
        raise ValueError(f"~{shown(pattern)} is not a regular expression: {exc}") from None
    cost = _cost(parsed, inside_repeat=False)
    if cost > _REGEX_BUDGET:
        raise ValueError(
            f"~{shown(pattern)} could take too long to match (more than two unbounded repetitions, or "
            "too many alternatives): refused"
        )


def _cost(pattern: sre_parse.SubPattern, *, inside_repeat: bool) -> int:
    """How many times `pattern` multiplies the backtracking steps of one match (ValueError: unbounded)."""
    cost = 1
    for op, argument in pattern.data:
        parts: Any = argument
        if op in _REFERENCES:
            raise ValueError("a ~regex element must not use back references")
        if op in _REPEATS:
            if inside_repeat:
                raise ValueError("a ~regex element must not repeat a repetition: it can backtrack forever")
            _, high, body = parts
            choices = _NAME_LENGTH if high == sre_constants.MAXREPEAT else min(high, _NAME_LENGTH)
            cost *= _cost(body, inside_repeat=True) * choices
        elif op is sre_constants.BRANCH:
            if inside_repeat:
                raise ValueError("a ~regex element must not repeat an alternation: it can backtrack forever")
            cost *= sum(_cost(branch, inside_repeat=False) for branch in parts[1])
        elif op in (sre_constants.SUBPATTERN, sre_constants.ASSERT, sre_constants.ASSERT_NOT):
            # The pattern is the last member: (group, flags, flags, p) or (direction, p).
            cost *= _cost(parts[-1], inside_repeat=inside_repeat)
        elif op is sre_constants.ATOMIC_GROUP:
            cost *= _cost(parts, inside_repeat=inside_repeat)
    return cost
