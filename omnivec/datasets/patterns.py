"""Shard spec patterns -> shard URLs, as webdataset's `expand_urls` gives them (`::` between specs,
`${NAME}` from the environment variable `WDS_NAME`, bash brace patterns: `{000..099}`, `{a,b}`), but
counted before they are expanded: a pattern naming more than `MAX_SHARDS` shards is refused
instead of filling memory (`{000000000..999999999}` is a billion names)."""

from __future__ import annotations

import os
import re

from braceexpand import UnbalancedBracesError, braceexpand, char_range_re, int_range_re, make_char_range

from ..errors import DataError

MAX_SHARDS = 1_000_000  # more shards than any dataset holds (a billion samples in shards of 1000)


def expand_pattern(spec: str) -> list[str]:
    """The URLs of a shard spec, in order; `DataError` naming the pattern when it is malformed or
    names more than `MAX_SHARDS` shards."""
    parts = [substitute(part, spec) for part in spec.split("::")]
    total = sum(brace_count(part, spec) for part in parts)
    if total > MAX_SHARDS:
        shown = f"{total:,}" if total < 10**18 else "over 10^18"
        raise DataError(
            f"{spec}: names {shown} shards, more than the {MAX_SHARDS:,} a shard spec may name "
            "(a brace range too wide?)"
        )
    try:
        return [url for part in parts for url in braceexpand(part)]
    except UnbalancedBracesError as e:
        raise DataError(f"{spec}: {e}") from e


def substitute(part: str, spec: str) -> str:
    """`part` with each `${NAME}` replaced by the environment variable `WDS_NAME` (as webdataset does)."""

    def value(match: re.Match) -> str:
        name = "WDS_" + match[1]
        if name not in os.environ:
            raise DataError(f"{spec}: ${{{match[1]}}} needs the environment variable {name}, which is not set")
        return os.environ[name]

    for _ in range(10):  # webdataset substitutes up to 10 times (values may hold ${...} themselves)
        part, last = re.sub(r"\$\{(\w+)\}", value, part), part
        if part == last:
            break
    return part


def brace_count(pattern: str, spec: str) -> int:
    """How many strings `braceexpand(pattern)` gives, counted without making them (its grammar:
    `{a..b[..step]}` ranges of integers or letters, `{x,y,...}` alternatives, nested, `\\` escapes)."""
    count, depth, start, pos = 1, 0, 0, 0
    while pos < len(pattern):
        char = pattern[pos]
        if char == "\\":
            pos += 2
            continue
        if char == "{":
            start = pos if depth == 0 else start
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                break
            if depth == 0:
                count *= expression_count(pattern[start + 1 : pos], spec)
        pos += 1
    if depth != 0:
        raise DataError(f"{spec}: unbalanced braces in {pattern!r}")
    return count


def expression_count(expr: str, spec: str) -> int:
    """How many strings the inside of one `{...}` gives."""
    if match := int_range_re.match(expr):
        first, last, step = int(match[1]), int(match[2]), int(match[3] or 1) or 1
        return abs(last - first) // step + 1
    if match := char_range_re.match(expr):
        return len(make_char_range(*match.groups()))
    alternatives, depth, start, pos = [], 0, 0, 0
    while pos < len(expr):
        if expr[pos] == "\\":
            pos += 2
            continue
        depth += {"{": 1, "}": -1}.get(expr[pos], 0)
        if expr[pos] == "," and depth == 0:
            alternatives.append(expr[start:pos])
            start = pos + 1
        pos += 1
    if not alternatives:  # `{x}`: kept as it is, braces and all
        return brace_count(expr, spec)
    return sum(brace_count(a, spec) for a in [*alternatives, expr[start:]])
