"""nats-server's configuration files: the grammar and the digest.

`parse_file(path)` / `parse_text(text)` give a dict of key -> `Item`; each Item carries
its value (str, int, float, bool, datetime, dict[str, Item] or list[Item]) and where its
key (or, in arrays, the value) was written, for error messages. broker/confapply.py
applies such a tree to an `Options`.

Grammar, as nats-server reads it: `key = value`, `key: value` or `key value`; `key { }`
for maps; values end at a newline, ';' or ','; arrays `[ ]` split by ',' or newlines;
comments '#' and '//'; 'single' (raw) and "double" (escapes \\t \\n \\r \\" \\\\ \\xHH)
quoted strings and bare strings; numbers with size suffixes (1K = 1000, 1KB/1Ki/1KiB =
1024, likewise M G T P E); floats; true/false/yes/no/on/off; ISO8601 Zulu dates; block
strings `( ... )` closed by ')' alone on a line; `include file` (relative to the including
file); `$name` variables, looked up in the enclosing maps and then the environment.
Unquoted "2m" is therefore the integer 2000000, as in nats-server: durations need quotes.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any


class ConfParseError(Exception):
    """A malformed file. str() names the place (file:line:col); render() is what nats-server
    prints: a lexer error as "Parse error on line N: '<msg>'", a parser error (numbers out of
    range, unknown $variables, includes) as the bare message."""

    def __init__(self, message: str, file: str = "", line: int = 0, col: int = 0, lexical: bool = True) -> None:
        super().__init__(f"{file}:{line}:{col}: {message}")
        self.message, self.file, self.line, self.col = message, file, line, col
        self.lexical = lexical

    def render(self) -> str:
        if not self.lexical:
            return self.message
        # Go's lexer has already consumed an offending newline, so it reports the next line
        line = self.line + 1 if "got '\\n'" in self.message or "found new line" in self.message else self.line
        return f"Parse error on line {line}: '{self.message}'"


@dataclass
class Item:
    value: Any
    line: int = 0
    col: int = 0
    file: str = ""
    used: bool = False  # referenced as a $variable: not an unknown field then

    def where(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


_MULT = {"": 1}
for _i, _c in enumerate("kmgtpe", start=1):
    _MULT[_c] = 1000**_i
    for _s in ("b", "i", "ib"):
        _MULT[_c + _s] = 1024**_i
_BOOLS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
_DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_NUM = re.compile(r"(-?\d+)(?:\.(\d*)(\.[\d.:-]*)?)?([kKmMgGtTpPeE][bBiI]*)?")
_WS = " \t"
_SP = re.compile(r"[ \t]*")
_SP_COMMENT = re.compile(r"[ \t]*(?:(?:#|//)[^\n]*)?")  # then a comment to the end of the line
_KEY_SEP = re.compile(r"\s*[=:]?")
_SPACE = re.compile(r"(?:\s+|(?:#|//)[^\n]*)*")  # newlines and comments too


def _digit(c: str) -> bool:
    """A decimal digit as nats-server's lexer sees one (unicode.IsDigit: '٣' is, '¹' is not)."""
    return len(c) == 1 and c.isdecimal()


def _show(ch: str) -> str:
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t", "": "EOF"}.get(ch, ch)


class _Parser:
    def __init__(self, text: str, file: str, env_refs: set[str] | None = None) -> None:
        self.s = text
        self.n = len(text)
        self.i = 0
        self.file = file
        self.nl = [k for k, c in enumerate(text) if c == "\n"]
        self.ctxs: list[dict[str, Item]] = []
        self.env_refs = env_refs if env_refs is not None else set()
        self.depth = 0  # arrays and maps open
        self._wrap = 0  # '{' wrapping the whole file, still open

    # -- positions
    def pos(self, at: int) -> tuple[int, int]:
        """nats-server's line and column: columns count from the preceding newline, so they
        are 1-based except on the first line, where they are 0-based."""
        k = bisect.bisect_left(self.nl, at)
        return k + 1, at - (self.nl[k - 1] if k else 0)

    def fail(self, msg: str, at: int | None = None, lexical: bool = True) -> ConfParseError:
        line, col = self.pos(self.i if at is None else at)
        return ConfParseError(msg, self.file, line, col, lexical)

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.s[j] if j < self.n else ""

    def skip(self, rx: re.Pattern[str]) -> None:
        self.i = rx.match(self.s, self.i).end()

    def quoted(self, eof_message: str) -> str:
        """The raw text between the quote at the cursor and the next same quote."""
        end = self.s.find(self.s[self.i], self.i + 1)
        if end < 0:
            raise self.fail(eof_message)
        text, self.i = self.s[self.i + 1:end], end + 1
        return text

    # -- structure
    def parse_top(self) -> dict[str, Item]:
        top: dict[str, Item] = {}
        self.ctxs.append(top)
        while True:
            self.skip(_SPACE)
            if self.peek() == "":
                return top
            if self.peek() in "{}":  # a JSON-like file may wrap everything in { }
                self._wrap += 1 if self.peek() == "{" else -1
                self.i += 1
            else:
                self.entry(top)
                self.end_of_value(top=True)

    def end_of_value(self, top: bool = False) -> bool:
        """After a key's value.  Returns True when it consumed the '}' closing a map."""
        self.skip(_SP_COMMENT)
        c = self.peek()
        if c in ("\n", "\r", ";", ","):
            self.i += 1
            return False
        if c == "" or (top and c == "}"):  # the top level may end where a wrapping '}' does
            return False
        if c == "}" and not top:
            self.i += 1
            return True
        if top:  # inside a wrapping { } nats-server's lexer is in its block state
            raise self.fail(f"Expected a {'block' if self._wrap > 0 else 'top'}-level value to end with a new line, "
                            "comment or EOF, "
                            f"but got '{_show(c)}' instead.")
        raise self.fail(f'Expected a map value terminator "," or a map terminator "}}", but got \'{_show(c)}\' instead.')

    def key(self) -> tuple[str, int, bool]:
        start = self.i
        c = self.peek()
        if c in "=:":
            raise self.fail(f"Unexpected key separator '{c}'")
        if c in "\"'":
            return self.quoted("Unexpected EOF processing quoted map key."), start + 1, True
        while self.i < self.n and not self.s[self.i].isspace() and self.s[self.i] not in "=:":
            self.i += 1
        return self.s[start:self.i], start, False

    def entry(self, ctx: dict[str, Item]) -> None:
        name, at, quoted = self.key()
        if not quoted and name.lower() == "include" and (self.peek().isspace() or not self.peek()):
            self.include(ctx)
            return
        key_end = self.i
        self.skip(_KEY_SEP)
        if self.peek() == "":
            if ctx is not self.ctxs[0]:
                raise self.fail("config is invalid")
            if self.i == key_end:  # a bare key ends the file
                line, col = self.pos(self.i)
                raise self.fail(f"config is invalid ({self.file}:{line}:{col})", lexical=False)
            item = self.mk("", at)  # "key:" at the end of the file: an empty string, as in nats-server
        else:
            item = self.value()
        item.line, item.col = self.pos(at)
        ctx[name] = item

    def include(self, ctx: dict[str, Item]) -> None:
        self.skip(_SP)
        c = self.peek()
        if c and c in "\"'":
            name = self.quoted("Unexpected EOF in quoted include")
        else:
            bad = {"[": "start of an array", "{": "start of a map", "(": "start of a block", "-": "start of a number",
                   "\\": "escape sequence", "\n": "new line", "": "EOF"}
            if c in bad or _digit(c):
                raise self.fail(f"Expected include value but found {bad.get(c, 'start of a number')}")
            name = re.compile(r"[^\s;}']*").match(self.s, self.i).group(0)
            self.i += len(name)
        path = os.path.join(os.path.dirname(self.file), name)
        try:
            ctx.update(parse_file(path, self.env_refs))
        except OSError as e:
            raise self.fail(f"error parsing include file '{name}', open {path}: {(e.strerror or str(e)).lower()}",
                            lexical=False) from None
        except ConfParseError as e:
            raise self.fail(f"error parsing include file '{name}', {e.render()}", lexical=False) from None

    def map_body(self, start: int) -> dict[str, Item]:
        m: dict[str, Item] = {}
        self.ctxs.append(m)
        try:
            while True:
                self.skip(_SPACE)
                c = self.peek()
                if c == "":
                    raise self.fail("Unexpected EOF processing map.")
                if c == "}":
                    self.i += 1
                    return m
                if c == "]":
                    raise self.fail(f"Unexpected array end '{c}' processing map.")
                self.entry(m)
                if self.end_of_value():
                    return m
        finally:
            self.ctxs.pop()

    def array_body(self) -> list[Item]:
        out: list[Item] = []
        while True:
            self.skip(_SPACE)
            c = self.peek()
            if c == "":
                raise self.fail("Unexpected EOF.")
            if c == "]":
                self.i += 1
                return out
            if c == ",":
                raise self.fail("Unexpected array value terminator ','.")
            out.append(self.value())
            self.skip(_SP_COMMENT)
            c = self.peek()
            if c not in (",", "\n", "\r", "]"):
                raise self.fail('Expected an array value terminator "," or an array terminator "]", '
                                f"but got '{_show(c)}' instead.")
            self.i += 1
            if c == "]":
                return out

    # -- values
    def value(self) -> Item:
        self.skip(_SP)
        c = self.peek()
        start = self.i
        if c in "[{" and c:
            if len(self.ctxs) + self.depth > 100:
                raise self.fail("Nesting too deep.")
            self.i += 1
            self.depth += 1
            try:
                return self.mk(self.array_body() if c == "[" else self.map_body(start), start)
            finally:
                self.depth -= 1
        if c == "'":
            return self.mk(self.quoted("Unexpected EOF."), start)
        if c == '"':
            return self.mk(self.dq_string(), start)
        if c == "(":
            return self.mk(self.block_string(), start)
        if c == "-" or _digit(c):
            return self.number()
        if c == ".":
            raise self.fail("Floats must start with a digit")
        if c in ("\n", "\r"):
            raise self.fail("Expected value but found new line")
        return self.bare(start)

    def mk(self, v: Any, at: int) -> Item:
        line, col = self.pos(at)
        return Item(v, line, col, self.file)

    def escape(self) -> str:
        c = self.peek()
        self.i += 1
        simple = {"t": "\t", "n": "\n", "r": "\r", '"': '"', "\\": "\\"}
        if c in simple:
            return simple[c]
        if c == "x":
            hx = self.s[self.i:self.i + 2]
            if len(hx) < 2 or "\n" in hx:
                raise self.fail("Expected two hexadecimal digits after '\\x', but hit end of line")
            if not re.fullmatch(r"[0-9a-fA-F]{2}", hx):
                raise self.fail(f"Expected two hexadecimal digits after '\\x', but got '{hx}'")
            self.i += 2
            return chr(int(hx, 16))
        raise self.fail(f"Invalid escape character '{_show(c)}'. Only the following escape characters "
                        "are allowed: \\xXX, \\t, \\n, \\r, \\\", \\\\.")

    def chars(self, stop: str) -> tuple[str, bool]:
        """Characters up to one in `stop` (left unread), escapes decoded; and whether any were."""
        out, escaped = [], False
        while self.i < self.n and self.s[self.i] not in stop:
            self.i += 1
            if self.s[self.i - 1] == "\\":
                out.append(self.escape())
                escaped = True
            else:
                out.append(self.s[self.i - 1])
        return "".join(out), escaped

    def dq_string(self) -> str:
        self.i += 1
        text, _ = self.chars('"')
        if self.peek() != '"':
            raise self.fail("Unexpected EOF.")
        self.i += 1
        return text

    def block_string(self) -> str:
        self.i += 1
        m = re.compile(r"\n\)(?=\n|$)").search(self.s, self.i)  # ')' alone at the start of a line
        if not m:
            self.i = self.n
            raise self.fail("Unexpected EOF processing block.")
        text, self.i = self.s[self.i:m.start() + 1], m.end()
        return text

    def bare(self, start: int) -> Item:
        text, escaped = self.chars("\n\r;,]}' \t")
        if self.peek() == "'":
            self.i += 1
        if not escaped and text.lower() in _BOOLS:
            return self.mk(_BOOLS[text.lower()], start)
        if not escaped and text.startswith("$"):
            return self.variable(text[1:], start)
        return self.mk(text, start)

    def number(self) -> Item:
        """A value starting with a digit or '-': integer (maybe with a size suffix), float,
        date, IP address ("127.0.0.1:4222" is a string), or a string that starts with digits."""
        start, s = self.i, self.s
        if s[start] == "-" and not _digit(s[start + 1:start + 2]):
            c = self.peek(1)
            raise self.fail("Floats must start with a digit, not '.'." if c == "." else
                            f"Expected a digit but got '{_show(c)}'.", start + 1)
        m = _NUM.match(s, start)
        self.i = m.end()
        whole, frac, ip, suffix = m.group(1), m.group(2), m.group(3), m.group(4) or ""
        after = self.peek()
        if after == "-" and whole.isdigit() and frac is None and not suffix:
            if len(whole) != 4:
                raise self.fail("All ISO8601 dates must be in full Zulu form.")
            d = _DATE.match(s, start)
            if not d:
                raise self.fail("Expected a full Zulu ISO8601 datetime.")
            self.i = d.end()
            return self.mk(datetime.strptime(d.group(0), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc), start)
        if frac == "":
            raise self.fail(f"Floats must have a digit after the '.', but got '{_show(after)}' instead.")
        if ip is not None:
            return self.mk(s[start:self.i], start)
        if frac is not None:
            return self.mk(float(s[start:self.i]), start)
        if whole.startswith("-") or after in ("", "\n", "\r", "}", ";", ",") or after in _WS or _digit(after):
            text = s[start:self.i]
            if suffix.lower() not in _MULT or not whole.isascii():  # Go's ParseInt: ASCII digits only
                raise self.fail(f"expected integer, but got '{text}'", start, lexical=False)
            if not -(2**63) <= int(whole) < 2**63:
                raise self.fail(f"integer '{text}' is out of the range", start, lexical=False)
            return self.mk(int(whole) * _MULT[suffix.lower()], start)
        self.i = start  # "4222abc": a string that starts with digits
        return self.bare(start)

    def variable(self, name: str, start: int) -> Item:
        if name.startswith("2a$"):  # a bcrypt hash, not a variable
            return self.mk("$" + name, start)
        line, _ = self.pos(start)
        for ctx in reversed(self.ctxs):
            if name in ctx:
                ref = ctx[name]
                ref.used = True
                return self.mk(ref.value, start)
        if name in self.env_refs:
            raise self.fail(f"variable reference for '{name}' on line {line} could not be parsed: "
                            f"variable reference cycle for '{name}'", start, lexical=False)
        if name in os.environ:
            self.env_refs.add(name)
            try:
                sub = _Parser(f"pk={os.environ[name]}", self.file, self.env_refs).parse_top()
            except ConfParseError as e:
                raise self.fail(f"variable reference for '{name}' on line {line} could not be parsed: "
                                f"{e.message}", start, lexical=False) from None
            finally:
                self.env_refs.discard(name)
            return self.mk(sub["pk"].value, start)
        raise self.fail(f"variable reference for '{name}' on line {line} can not be found", start, lexical=False)


def digest(tree: dict[str, Item]) -> str:
    """nats-server's config digest ("sha256:<hex>", shown by -t): the SHA-256 of the parsed
    values encoded as Go's encoding/json encodes them (keys sorted, HTML characters escaped)."""

    def enc(v: Any) -> str:
        if isinstance(v, Item):
            return enc(v.value)
        if isinstance(v, dict):
            return "{" + ",".join(enc(k) + ":" + enc(v[k]) for k in sorted(v)) + "}"
        if isinstance(v, list):
            return "[" + ",".join(enc(x) for x in v) + "]"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            r = repr(v)
            if v and not 1e-6 <= abs(v) < 1e21:  # Go switches to exponent form outside this range
                mant, _, exp = f"{v:e}".partition("e") if "e" not in r else r.partition("e")
                return f"{mant}e{'-' if int(exp) < 0 else '+'}{abs(int(exp))}"
            out = format(Decimal(r), "f")
            return out.rstrip("0").rstrip(".") if "." in out else out
        if isinstance(v, datetime):
            return '"' + v.strftime("%Y-%m-%dT%H:%M:%SZ") + '"'
        text = json.dumps(v, ensure_ascii=False)
        for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                        ("\u2029", "\\u2029")):
            text = text.replace(ch, esc)
        return text

    return "sha256:" + hashlib.sha256((enc(tree) + "\n").encode()).hexdigest()


def parse_text(text: str, file: str = "", env_refs: set[str] | None = None) -> dict[str, Item]:
    return _Parser(text, file, env_refs).parse_top()


def parse_file(path: str, env_refs: set[str] | None = None) -> dict[str, Item]:
    """Parse a config file; OSError if it cannot be read, ConfParseError if malformed."""
    refs = env_refs if env_refs is not None else set()
    mark = "\0" + os.path.realpath(path)  # files being included, next to the $VARs being expanded
    if mark in refs:
        raise ConfParseError("include cycle detected", path, 1, 0, lexical=False)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    refs.add(mark)
    try:
        return parse_text(text, path, refs)
    finally:
        refs.discard(mark)
