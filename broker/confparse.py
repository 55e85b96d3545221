"""The nats-server configuration grammar.

`parse_file(path)` / `parse_text(text)` give a dict of key -> `Item`; each Item carries
its value (str, int, float, bool, datetime, dict[str, Item] or list[Item]) and where its
key (or, in arrays, the value) was written, for error messages.

Grammar, as nats-server reads it: `key = value`, `key: value` or `key value`; `key { }`
for maps; values end at a newline, ';' or ','; arrays `[ ]` split by ',' or newlines;
comments '#' and '//'; 'single' (raw) and "double" (escapes \\t \\n \\r \\" \\\\ \\xHH)
quoted strings and bare strings; numbers with size suffixes (1K = 1000, 1KB/1Ki/1KiB =
1024, likewise M G T P E); floats; true/false/yes/no/on/off; ISO8601 Zulu dates; block
strings `( ... )` closed by ')' alone on a line; `include file` (relative to the including
file); `$name` variables, looked up in the enclosing maps and then the environment.
"""

from __future__ import annotations

import bisect
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any


class ConfParseError(Exception):
    def __init__(self, message: str, file: str = "", line: int = 0, col: int = 0) -> None:
        super().__init__(message)
        self.message, self.file, self.line, self.col = message, file, line, col

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.col}: {self.message}"
        return self.message


@dataclass
class Item:
    value: Any
    line: int = 0
    col: int = 0
    file: str = ""
    used: bool = False  # referenced as a $variable: not an unknown field then

    def where(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


_SUFFIX_LETTERS = set("kKmMgGtTpPeE")
_MULT = {"": 1}
for _i, _c in enumerate("kmgtpe", start=1):
    _MULT[_c] = 1000**_i
    for _s in ("b", "i", "ib"):
        _MULT[_c + _s] = 1024**_i
_BOOLS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
_DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
_WS = " \t"


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

    # -- positions
    def pos(self, at: int) -> tuple[int, int]:
        """nats-server's line and column: columns count from the preceding newline, so they
        are 1-based except on the first line, where they are 0-based."""
        k = bisect.bisect_left(self.nl, at)
        return k + 1, at - (self.nl[k - 1] if k else 0)

    def fail(self, msg: str, at: int | None = None) -> ConfParseError:
        line, col = self.pos(self.i if at is None else at)
        return ConfParseError(msg, self.file, line, col)

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.s[j] if j < self.n else ""

    def skip_ws(self) -> None:
        while self.i < self.n and self.s[self.i] in _WS:
            self.i += 1

    def comment_here(self) -> bool:
        c = self.peek()
        return c == "#" or (c == "/" and self.peek(1) == "/")

    def skip_comment(self) -> None:
        while self.i < self.n and self.s[self.i] != "\n":
            self.i += 1

    def skip_space_comments(self) -> None:
        """Whitespace, newlines and comments."""
        while self.i < self.n:
            c = self.s[self.i]
            if c.isspace():
                self.i += 1
            elif self.comment_here():
                self.skip_comment()
            else:
                return

    # -- structure
    def parse_top(self) -> dict[str, Item]:
        top: dict[str, Item] = {}
        self.ctxs.append(top)
        depth = 0  # a JSON-like file may wrap everything in { }
        while True:
            self.skip_space_comments()
            c = self.peek()
            if c == "":
                if depth:
                    raise self.fail("Unexpected EOF.")
                return top
            if c == "{":
                depth += 1
                self.i += 1
                continue
            if c == "}" and depth:
                depth -= 1
                self.i += 1
                continue
            self.entry(top)
            self.end_of_value("top", c_end="}" if depth else "")

    def end_of_value(self, where: str, c_end: str = "}") -> bool:
        """After a key's value.  Returns True when the closing '}' of a map was consumed."""
        self.skip_ws()
        if self.comment_here():
            self.skip_comment()
        c = self.peek()
        if c in ("\n", "", ";", ",") or c == "\r":
            if c:
                self.i += 1
            return False
        if c_end and c == c_end:
            self.i += 1
            return True
        if where == "top":
            raise self.fail("Expected a top-level value to end with a new line, comment or EOF, "
                            f"but got '{_show(c)}' instead.")
        raise self.fail(f"Expected a map value terminator ',' or a map terminator '}}', but got '{_show(c)}' instead.")

    def key(self) -> tuple[str, int, bool]:
        start = self.i
        c = self.peek()
        if c in "=:":
            raise self.fail(f"Unexpected key separator '{c}'")
        if c in "\"'":
            end = self.s.find(c, self.i + 1)
            if end < 0:
                raise self.fail("Unexpected EOF processing quoted map key.")
            self.i = end + 1
            return self.s[start + 1:end], start + 1, True
        while self.i < self.n and not self.s[self.i].isspace() and self.s[self.i] not in "=:":
            self.i += 1
        return self.s[start:self.i], start, False

    def entry(self, ctx: dict[str, Item]) -> None:
        name, at, quoted = self.key()
        if not quoted and name.lower() == "include" and self.peek() in _WS:
            self.include(ctx)
            return
        while self.i < self.n and self.s[self.i].isspace():
            self.i += 1
        if self.peek() in "=:" and self.peek():
            self.i += 1
        if self.peek() == "":
            raise self.fail("config is invalid")
        item = self.value()
        item.line, item.col = self.pos(at)
        ctx[name] = item

    def include(self, ctx: dict[str, Item]) -> None:
        self.skip_ws()
        c = self.peek()
        if c in "\"'":
            end = self.s.find(c, self.i + 1)
            if end < 0:
                raise self.fail("Unexpected EOF in quoted include")
            name, self.i = self.s[self.i + 1:end], end + 1
        else:
            if c in "[{(" or c.isdigit() or c in "-\\\n" or c == "":
                raise self.fail("Expected include value but found " + (
                    "new line" if c in "\n" else "start of a number" if c.isdigit() or c == "-" else
                    f"'{_show(c)}'"))
            start = self.i
            while self.i < self.n and self.s[self.i] not in "\n;}'" and self.s[self.i] not in _WS:
                self.i += 1
            name = self.s[start:self.i]
        path = os.path.join(os.path.dirname(self.file), name)
        try:
            sub = parse_file(path, self.env_refs)
        except (ConfParseError, OSError) as e:
            err = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            if isinstance(e, OSError):
                err = f"open {path}: {(e.strerror or str(e)).lower()}"
            raise self.fail(f"error parsing include file '{name}', {err}") from None
        ctx.update(sub)

    def map_body(self, start: int) -> dict[str, Item]:
        m: dict[str, Item] = {}
        self.ctxs.append(m)
        try:
            while True:
                self.skip_space_comments()
                c = self.peek()
                if c == "":
                    raise self.fail("Unexpected EOF processing map.")
                if c == "}":
                    self.i += 1
                    return m
                if c == "]":
                    raise self.fail(f"Unexpected array end '{c}' processing map.")
                self.entry(m)
                if self.end_of_value("map"):
                    return m
        finally:
            self.ctxs.pop()

    def array_body(self) -> list[Item]:
        out: list[Item] = []
        while True:
            self.skip_space_comments()
            c = self.peek()
            if c == "":
                raise self.fail("Unexpected EOF.")
            if c == "]":
                self.i += 1
                return out
            if c == ",":
                raise self.fail("Unexpected array value terminator ','.")
            at = self.i
            item = self.value()
            item.line, item.col = self.pos(at)
            out.append(item)
            self.skip_ws()
            if self.comment_here():
                self.skip_comment()
            c = self.peek()
            if c in (",", "\n", "\r"):
                self.i += 1
            elif c == "]":
                self.i += 1
                return out
            else:
                raise self.fail("Expected an array value terminator ',' or an array terminator ']', "
                                f"but got '{_show(c)}' instead.")

    # -- values
    def value(self) -> Item:
        self.skip_ws()
        c = self.peek()
        start = self.i
        if c == "[":
            self.i += 1
            return self.mk(self.array_body(), start)
        if c == "{":
            self.i += 1
            return self.mk(self.map_body(start), start)
        if c == "'":
            end = self.s.find("'", self.i + 1)
            if end < 0:
                raise self.fail("Unexpected EOF.")
            self.i = end + 1
            return self.mk(self.s[start + 1:end], start)
        if c == '"':
            return self.mk(self.dq_string(), start)
        if c == "(":
            return self.mk(self.block_string(), start)
        if c == "-":
            return self.number(negative=True)
        if c.isdigit():
            return self.number(negative=False)
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

    def dq_string(self) -> str:
        self.i += 1
        out: list[str] = []
        while True:
            c = self.peek()
            if c == "":
                raise self.fail("Unexpected EOF.")
            self.i += 1
            if c == '"':
                return "".join(out)
            if c == "\\":
                out.append(self.escape())
            else:
                out.append(c)

    def block_string(self) -> str:
        self.i += 1
        m = re.compile(r"\n[ \t]*\)").search(self.s, self.i)
        if not m:
            raise self.fail("Unexpected EOF processing block.")
        text = self.s[self.i:m.start()]
        self.i = m.end()
        return text

    def bare(self, start: int) -> Item:
        out: list[str] = []
        escaped = False
        while self.i < self.n:
            c = self.s[self.i]
            if c in "\n\r;,]}'" or c in _WS:
                break
            self.i += 1
            if c == "\\":
                out.append(self.escape())
                escaped = True
            else:
                out.append(c)
        text = "".join(out)
        if self.peek() == "'":
            self.i += 1
        if not escaped and text.lower() in _BOOLS:
            return self.mk(_BOOLS[text.lower()], start)
        if not escaped and text.startswith("$"):
            return self.variable(text[1:], start)
        return self.mk(text, start)

    def number(self, negative: bool) -> Item:
        start = self.i
        if negative:
            self.i += 1
            if not self.peek().isdigit():
                c = self.peek()
                raise self.fail("Floats must start with a digit, not '.'." if c == "."
                                else f"Expected a digit but got '{_show(c)}'.")
        while self.peek().isdigit():
            self.i += 1
        c = self.peek()
        term = lambda ch: ch in ("", "\n", "\r", "}", ";", ",") or ch in _WS or ch.isdigit()  # noqa: E731
        if c == "-" and not negative:
            if self.i - start != 4:
                raise self.fail("All ISO8601 dates must be in full Zulu form.")
            m = _DATE.match(self.s, start)
            if not m:
                raise self.fail("Expected a full Zulu ISO8601 datetime.")
            self.i = m.end()
            dt = datetime.strptime(m.group(0), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
            return self.mk(dt, start)
        if c == ".":
            self.i += 1
            if not self.peek().isdigit():
                raise self.fail(f"Floats must have a digit after the '.', but got '{_show(self.peek())}' instead.")
            while self.peek().isdigit():
                self.i += 1
            if self.peek() == ".":  # an IP address (maybe with a port) is a string
                while self.peek().isdigit() or self.peek() in ".:-" and self.peek():
                    self.i += 1
                return self.mk(self.s[start:self.i], start)
            return self.mk(float(self.s[start:self.i]), start)
        if c and c in _SUFFIX_LETTERS:
            self.i += 1
            while self.peek() and self.peek() in "bBiI":
                self.i += 1
            if term(self.peek()):
                return self.integer(start)
            self.i = start
            return self.bare(start)
        if negative or term(c):
            return self.integer(start)
        self.i = start  # "4222abc": a string that starts with digits
        return self.bare(start)

    def integer(self, start: int) -> Item:
        text = self.s[start:self.i]
        digits = re.match(r"-?\d+", text).group(0)
        suffix = text[len(digits):].lower()
        if suffix not in _MULT:
            raise self.fail(f"expected integer, but got '{text}'", start)
        n = int(digits) * _MULT[suffix]
        if not -(2**63) <= int(digits) < 2**63:
            raise self.fail(f"integer '{text}' is out of the range", start)
        return self.mk(n, start)

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
                            f"variable reference cycle for '{name}'", start)
        if name in os.environ:
            self.env_refs.add(name)
            try:
                sub = _Parser(f"pk={os.environ[name]}", self.file, self.env_refs).parse_top()
            except ConfParseError as e:
                raise self.fail(f"variable reference for '{name}' on line {line} could not be parsed: "
                                f"{e.message}", start) from None
            finally:
                self.env_refs.discard(name)
            return self.mk(sub["pk"].value, start)
        raise self.fail(f"variable reference for '{name}' on line {line} can not be found", start)


def parse_text(text: str, file: str = "", env_refs: set[str] | None = None) -> dict[str, Item]:
    return _Parser(text, file, env_refs).parse_top()


def parse_file(path: str, env_refs: set[str] | None = None) -> dict[str, Item]:
    """Parse a config file; OSError if it cannot be read, ConfParseError if malformed."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return parse_text(text, path, env_refs)
