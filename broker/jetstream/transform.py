"""Subject transforms (stream `subject_transform`, source/mirror `subject_transforms`).

A transform maps subjects matching `src` (empty = '>') onto `dest`. Destination
tokens are literals, '>' (the rest of the subject), `$N` or mustache functions:
`{{wildcard(n)}}`, `{{partition(count, n...)}}`, `{{split(n, delim)}}`,
`{{splitFromLeft(n, pos)}}`, `{{splitFromRight(n, pos)}}`, `{{sliceFromLeft(n, size)}}`,
`{{sliceFromRight(n, size)}}`, `{{left(n, len)}}`, `{{right(n, len)}}`, `{{random(count)}}`
(function names case-insensitive in their first letters, as nats-server accepts them).
`n` counts the '*' wildcards of `src` from 1.

`validate_mapping(src, dest)` checks a pair the way nats-server's ValidateMapping does
and raises MappingError carrying nats-server's error text; `Transform(src, dest)` builds
one (None-like `Transform.build` returns None for an empty dest, which means "filter
only, keep the subject"). `Transform.match(subject)` returns the mapped subject or None
when the subject is not matched by `src`.
"""

from __future__ import annotations

import random
import re

from broker import subjects as subj

_INVALID = "invalid mapping destination"
ERR_BAD_SUBJECT = "invalid subject"
ERR_INVALID_TRANSFORM = f"{_INVALID}: invalid transform"
ERR_UNKNOWN_FUNCTION = f"{_INVALID}: unknown function"
ERR_INDEX_OUT_OF_RANGE = f"{_INVALID}: wildcard index out of range"
ERR_NOT_ENOUGH_ARGS = f"{_INVALID}: not enough arguments passed to the function"
ERR_INVALID_ARG = f"{_INVALID}: function argument is invalid or in the wrong format"
ERR_TOO_MANY_ARGS = f"{_INVALID}: too many arguments passed to the function"

_WS = r"[\t\n\f\r ]"


def _fn(name: str) -> re.Pattern:
    first, rest = name[0], name[1:]
    # camelCase names accept either case at each word start (splitFromLeft: [sS]plit[fF]rom[lL]eft)
    pattern = f"[{first.lower()}{first.upper()}]"
    for ch in rest:
        pattern += f"[{ch.lower()}{ch.upper()}]" if ch.isupper() else re.escape(ch)
    return re.compile(r"{{" + _WS + "*" + pattern + _WS + r"*\((.*)\)" + _WS + r"*}}")


_PARTITION = _fn("partition")
_WILDCARD = _fn("wildcard")
_SPLIT_FROM_LEFT = _fn("splitFromLeft")
_SPLIT_FROM_RIGHT = _fn("splitFromRight")
_SLICE_FROM_LEFT = _fn("sliceFromLeft")
_SLICE_FROM_RIGHT = _fn("sliceFromRight")
_SPLIT = _fn("split")
_LEFT = _fn("left")
_RIGHT = _fn("right")
_RANDOM = _fn("random")
_COMMA = re.compile(r"," + _WS + "*")
_INT = re.compile(r"^[+-]?[0-9]+$")

# function kinds
NONE, PARTITION, WILDCARD, SPLIT_FROM_LEFT, SPLIT_FROM_RIGHT = range(5)
SLICE_FROM_LEFT, SLICE_FROM_RIGHT, SPLIT, LEFT, RIGHT, RANDOM = range(5, 11)
_INT32_MAX = 2**31 - 1
_INT64_MAX = 2**63 - 1


class MappingError(ValueError):
    """A transform nats-server would refuse; str() is its error text."""

    def __init__(self, err: str, token: str = "") -> None:
        super().__init__(f"{err} in {token}" if token else err)


def _args(rx: re.Pattern, token: str) -> list[str] | None:
    m = rx.search(token)
    if m is None:
        return None
    return _COMMA.split(m.group(1))


def _atoi(text: str, limit: int = _INT64_MAX) -> int | None:
    text = text.strip(" ")
    if not _INT.match(text):
        return None
    value = int(text)
    if value > limit or value < -limit - 1:
        return None
    return value


def _index_int(token: str, args: list[str], kind: int) -> tuple[int, list[int], int, str]:
    if len(args) < 2:
        raise MappingError(ERR_NOT_ENOUGH_ARGS, token)
    if len(args) > 2:
        raise MappingError(ERR_TOO_MANY_ARGS, token)
    index = _atoi(args[0])
    number = _atoi(args[1], _INT32_MAX)
    if index is None or number is None:
        raise MappingError(ERR_INVALID_ARG, token)
    return kind, [index], number, ""


def _placeholder(token: str) -> tuple[int, list[int], int, str]:
    """(kind, wildcard indexes, int argument, string argument) of one destination token."""
    n = len(token)
    if n <= 1:
        return NONE, [-1], -1, ""
    if token[0] == "$":
        index = _atoi(token[1:]) if token[1:] == token[1:].strip(" ") else None
        if index is None:
            return NONE, [-1], -1, ""
        return WILDCARD, [index], -1, ""
    if not (n > 4 and token.startswith("{{") and token.endswith("}}")):
        return NONE, [-1], -1, ""
    args = _args(_WILDCARD, token)
    if args is not None:
        if len(args) == 1 and args[0] == "":
            raise MappingError(ERR_NOT_ENOUGH_ARGS, token)
        if len(args) != 1:
            raise MappingError(ERR_TOO_MANY_ARGS, token)
        index = _atoi(args[0])
        if index is None:
            raise MappingError(ERR_INVALID_ARG, token)
        return WILDCARD, [index], -1, ""
    args = _args(_PARTITION, token)
    if args is not None:
        count = _atoi(args[0])
        if count is None or count > _INT32_MAX:
            raise MappingError(ERR_INVALID_ARG, token)
        indexes = []
        for a in args[1:]:
            i = _atoi(a)
            if i is None:
                raise MappingError(ERR_INVALID_ARG, token)
            indexes.append(i)
        return PARTITION, indexes, _wrap32(count), ""
    for rx, kind in ((_SPLIT_FROM_LEFT, SPLIT_FROM_LEFT), (_SPLIT_FROM_RIGHT, SPLIT_FROM_RIGHT),
                     (_SLICE_FROM_LEFT, SLICE_FROM_LEFT), (_SLICE_FROM_RIGHT, SLICE_FROM_RIGHT),
                     (_RIGHT, RIGHT), (_LEFT, LEFT)):
        args = _args(rx, token)
        if args is not None:
            return _index_int(token, args, kind)
    args = _args(_SPLIT, token)
    if args is not None:
        if len(args) < 2:
            raise MappingError(ERR_NOT_ENOUGH_ARGS, token)
        if len(args) > 2:
            raise MappingError(ERR_TOO_MANY_ARGS, token)
        index = _atoi(args[0])
        if index is None or " " in args[1] or "." in args[1]:
            raise MappingError(ERR_INVALID_ARG, token)
        return SPLIT, [index], -1, args[1]
    args = _args(_RANDOM, token)
    if args is not None:
        if len(args) != 1:
            raise MappingError(ERR_NOT_ENOUGH_ARGS, token)
        count = _atoi(args[0])
        if count is None or count > _INT32_MAX:
            raise MappingError(ERR_INVALID_ARG, token)
        return RANDOM, [], _wrap32(count), ""
    raise MappingError(ERR_UNKNOWN_FUNCTION, token)


def _wrap32(value: int) -> int:
    """Go's int32(x) conversion."""
    value &= 0xFFFFFFFF
    return value - 2**32 if value >= 2**31 else value


def _subject_info(subject: str) -> tuple[bool, list[str], int, bool]:
    if not subject:
        return False, [], 0, False
    tokens = subject.split(".")
    npwc = 0
    fwc = False
    for t in tokens:
        if not t or fwc:
            return False, [], 0, False
        if t == ">":
            fwc = True
        elif t == "*":
            npwc += 1
    return True, tokens, npwc, fwc


def _fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


class Transform:
    __slots__ = ("src", "dest", "dtoks", "stoks", "kinds", "indexes", "ints", "strs")

    def __init__(self, src: str, dest: str) -> None:
        if not src:
            src = ">"
        ok_s, stoks, npwc, sfwc = _subject_info(src)
        ok_d, dtoks, dnpwc, dfwc = _subject_info(dest)
        if not ok_s or not ok_d or dnpwc > 0 or sfwc != dfwc:
            raise MappingError(ERR_BAD_SUBJECT)
        self.src, self.dest, self.stoks, self.dtoks = src, dest, stoks, dtoks
        self.kinds: list[int] = []
        self.indexes: list[list[int]] = []
        self.ints: list[int] = []
        self.strs: list[str] = []
        if npwc > 0 or sfwc:
            wildcard_pos: dict[int, int] = {}  # 1-based wildcard number -> source token index
            for i, t in enumerate(stoks):
                if t == "*":
                    wildcard_pos[len(wildcard_pos) + 1] = i
            for token in dtoks:
                kind, idx, number, text = _placeholder(token)
                if kind in (NONE, RANDOM):
                    self._add(kind, [-1] if kind == NONE else [], number, text)
                    continue
                positions = []
                for w in idx:
                    if w > npwc:
                        raise MappingError(ERR_INDEX_OUT_OF_RANGE, f"{token}: [{w}]")
                    positions.append(wildcard_pos.get(w, 0))
                self._add(kind, positions, number, text)
        else:
            for token in dtoks:
                kind, _, number, _ = _placeholder(token)
                if kind == NONE:
                    self._add(NONE, [-1], -1, "")
                elif kind in (RANDOM, PARTITION):
                    self._add(kind, [], number, "")
                else:
                    raise MappingError(ERR_INDEX_OUT_OF_RANGE, token)

    def _add(self, kind: int, indexes: list[int], number: int, text: str) -> None:
        self.kinds.append(kind)
        self.indexes.append(indexes)
        self.ints.append(number)
        self.strs.append(text)

    @staticmethod
    def build(src: str, dest: str) -> "Transform | None":
        """None for an empty destination (a filter without a mapping)."""
        if not dest:
            return None
        return Transform(src, dest)

    def match(self, subject: str) -> str | None:
        """The mapped subject, or None when `subject` does not match the source."""
        if self.src == ">" and self.dest == ">":
            return subject
        if not subj.valid_literal(subject):
            return None
        if self.src != ">" and not subj.match(self.src, subject):
            return None
        return self.apply(subject.split("."))

    def apply(self, tokens: list[str]) -> str:
        out: list[str] = []
        last = len(self.kinds) - 1
        for i, kind in enumerate(self.kinds):
            if kind == NONE:
                if self.dtoks[i] == ">":
                    break
                out.append(self.dtoks[i])
            else:
                out.append(self._function(i, kind, tokens))
            if i < last:
                out.append(".")
        if self.dtoks[-1] == ">":
            out.append(".".join(tokens[len(self.stoks) - 1:]))
        return "".join(out)

    def _function(self, i: int, kind: int, tokens: list[str]) -> str:
        idx = self.indexes[i]
        number = self.ints[i]
        if kind == PARTITION:
            if idx:
                key = "".join(tokens[j] for j in idx)
            else:
                key = ".".join(tokens)
            return "0" if number == 0 else str(_fnv32a(key.encode()) % (number & 0xFFFFFFFF))
        if kind == WILDCARD:
            if idx and 0 <= idx[0] < len(tokens):
                return tokens[idx[0]]
            return ""
        if kind == RANDOM:
            return "0" if number <= 0 else str(random.randrange(2**31) % number)
        tok = tokens[idx[0]]
        n = len(tok)
        if kind == SPLIT_FROM_LEFT:
            return tok[:number] + "." + tok[number:] if 0 < number < n else tok
        if kind == SPLIT_FROM_RIGHT:
            return tok[:n - number] + "." + tok[n - number:] if 0 < number < n else tok
        if kind == SLICE_FROM_LEFT:
            if not 0 < number < n:
                return tok
            return ".".join(tok[j:j + number] for j in range(0, n, number))
        if kind == SLICE_FROM_RIGHT:
            if not 0 < number < n:
                return tok
            rem = n % number
            parts = [tok[:rem]] if rem else []
            parts += [tok[j:j + number] for j in range(rem, n, number)]
            return ".".join(parts)
        if kind == SPLIT:
            delim = self.strs[i]
            parts = tok.split(delim) if delim else list(tok)
            out = []
            for j, part in enumerate(parts):
                out.append(part)
                if j < len(parts) - 1 and parts[j + 1] and not (j == 0 and not part):
                    out.append(".")
            return "".join(out)
        if kind == LEFT:
            return tok[:number] if 0 < number < n else tok
        if kind == RIGHT:
            return tok[n - number:] if 0 < number < n else tok
        return ""


def validate_mapping(src: str, dest: str) -> None:
    """nats-server's ValidateMapping: MappingError (with its text) for a bad pair."""
    if not dest:
        return
    seen_fwc = False
    for t in dest.split("."):
        n = len(t)
        if n == 0 or seen_fwc:
            raise MappingError(ERR_INVALID_TRANSFORM, t)
        if n > 4 and t.startswith("{{") and t.endswith("}}"):
            if not any(rx.search(t) for rx in (_PARTITION, _WILDCARD, _SPLIT_FROM_LEFT, _SPLIT_FROM_RIGHT,
                                               _SLICE_FROM_LEFT, _SLICE_FROM_RIGHT, _SPLIT, _RANDOM)):
                raise MappingError(ERR_UNKNOWN_FUNCTION, t)
            continue
        if t == ">":
            seen_fwc = True
        elif any(c in t for c in "\t\n\f\r "):
            raise MappingError(ERR_INVALID_TRANSFORM)
    Transform(src, dest)


def first_match(transforms: list["Transform | None"], subject: str) -> str:
    """The subject mapped by the first transform that matches it (unchanged if none)."""
    for tr in transforms:
        if tr is None:
            continue
        mapped = tr.match(subject)
        if mapped is not None:
            return mapped
    return subject


def for_stream(cfg) -> "Transform | None":
    """A stream's own `subject_transform` (applied to everything it stores), or None."""
    t = cfg.subject_transform
    if not isinstance(t, dict) or not t.get("dest"):
        return None
    return Transform(t.get("src") or "", t["dest"])


def wrap_push(cfg, push):
    """`push` with the stream's subject transform applied first (nats-server transforms a
    published subject before any check, so expected-subject checks, limits, consumers and
    republish all see the stored subject). Unmatched subjects are stored unchanged."""
    t = for_stream(cfg)
    if t is None:
        return push

    def transformed(subject: str, reply: str, hdr: bytes | None, payload: bytes) -> None:
        push(t.match(subject) or subject, reply, hdr, payload)
    return transformed
