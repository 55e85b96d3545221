"""Subject syntax: validation and wildcard matching, as nats-server defines them.

Tokens are separated by '.'; no token may be empty; whitespace is not allowed. '*'
matches exactly one token and '>' one or more trailing tokens; both are wildcards only
as a whole token ('foo*' is a literal token), and '>' only as the last token.
"""

from __future__ import annotations

_WS = frozenset(" \t\r\n\f\v")


def valid_subject(subject: str) -> bool:
    """A subscription subject: wildcards allowed in their positions."""
    if not subject or any(c in _WS for c in subject):
        return False
    tokens = subject.split(".")
    last = len(tokens) - 1
    for i, tok in enumerate(tokens):
        if not tok:
            return False
        if tok == ">" and i != last:
            return False
    return True


def valid_literal(subject: str) -> bool:
    """A publish subject: valid and without wildcard tokens."""
    if not valid_subject(subject):
        return False
    return not any(t == "*" or t == ">" for t in subject.split("."))


def has_wildcard(subject: str) -> bool:
    return any(t == "*" or t == ">" for t in subject.split("."))


def match(pattern: str, subject: str) -> bool:
    """Does literal `subject` match `pattern` (which may hold wildcards)?"""
    if pattern == subject:
        return True
    if "*" not in pattern and ">" not in pattern:
        return False
    pt = pattern.split(".")
    st = subject.split(".")
    n = len(pt)
    for i, p in enumerate(pt):
        if p == ">" and i == n - 1:
            return len(st) > i
        if i >= len(st):
            return False
        if p != "*" and p != st[i]:
            return False
    return len(st) == n


def overlaps(a: str, b: str) -> bool:
    """Could some literal subject match both patterns? (stream subject overlap checks)"""
    at = a.split(".")
    bt = b.split(".")
    i = 0
    while i < len(at) and i < len(bt):
        x, y = at[i], bt[i]
        if x == ">" or y == ">":
            return True
        if x != y and x != "*" and y != "*":
            return False
        i += 1
    return len(at) == len(bt)


def subset(sub: str, sup: str) -> bool:
    """Is every subject matched by `sub` also matched by `sup`?"""
    st = sub.split(".")
    pt = sup.split(".")
    for i, p in enumerate(pt):
        if p == ">" and i == len(pt) - 1:
            return len(st) > i
        if i >= len(st):
            return False
        s = st[i]
        if s == ">":
            return False
        if p == "*":
            continue
        if p != s:
            return False
    return len(st) == len(pt)
