"""nats-server's configuration files: the grammar, the digest, and applying keys to Options.

`parse_file(path)` / `parse_text(text)` give a dict of key -> `Item`; each Item carries
its value (str, int, float, bool, datetime, dict[str, Item] or list[Item]) and where its
key (or, in arrays, the value) was written, for error messages.  `apply_config_file`
applies one to an `Options`, with nats-server's key names, checks and error wording.

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
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from broker.config import ConfigError, _fmt_go_duration, _go_duration, check_tls_files, normalize_url


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


# ------------------------------------------------------------ applying a file to Options

_GO_TYPES = {str: "string", int: "int64", float: "float64", bool: "bool", dict: "map[string]interface {}",
             list: "[]interface {}", datetime: "time.Time"}


def _go_type(v: Any) -> str:
    return _GO_TYPES.get(type(v), type(v).__name__)


class _Bad(Exception):
    """One configuration error, reported as nats-server does: `file:line:col: reason`."""

    def __init__(self, item: Item, reason: str) -> None:
        super().__init__(reason)
        self.item = item

    def render(self) -> str:
        return f"{self.item.where()}: {self}"


def _want(item: Item, typ: type) -> Any:
    v = item.value
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise _Bad(item, f"interface conversion: interface {{}} is {_go_type(v)}, not {_GO_TYPES[typ]}")
    return v


def _listen(item: Item) -> tuple[str, int]:
    """A port number or "host:port" ("[v6]:port")."""
    v = item.value
    if isinstance(v, int) and not isinstance(v, bool):
        return "", v
    if not isinstance(v, str):
        raise _Bad(item, f"expected port or host:port, got {_go_type(v)}")
    host, sep, port = v.rpartition(":")
    if not sep or (":" in host and not (host.startswith("[") and host.endswith("]"))):
        raise _Bad(item, f'could not parse address string "{v}"')
    if not re.fullmatch(r"[+-]?\d+", port):
        raise _Bad(item, f'could not parse port "{port}"')
    return host.strip("[]"), int(port)


def _duration(key: str, item: Item, warnings: list[str]) -> float:
    """A Go duration string; a bare number is seconds, with nats-server's warning."""
    if isinstance(item.value, str):
        try:
            return _go_duration(item.value)
        except ValueError as e:
            raise _Bad(item, f"error parsing {key}: {e}") from None
    seconds = _want(item, int)
    warnings.append(f'{item.where()}: invalid use of field "{key}": {key} should be converted to a duration')
    return float(seconds)


def _timeout(key: str, item: Item, what: str, warnings: list[str] | None) -> float:
    """authorization/tls `timeout`: seconds as a number, or a duration string."""
    v = item.value
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        t = float(v)
    elif isinstance(v, str):
        try:
            t = _go_duration(v)
        except ValueError as e:
            raise _Bad(item, f"error parsing {what} config, 'timeout' {e}") from None
    else:
        raise _Bad(item, f"error parsing {what} config, 'timeout' wrong type")
    if warnings is not None and t > 60:
        warnings.append(
            f'{item.where()}: invalid use of field "{key}": timeout of {v} ({t:f} seconds) is high, consider '
            "keeping it under 60 seconds. possibly caused by unquoted duration; use '1m' instead of 1m, for example")
    return t


def _storage_size(item: Item, what: str) -> int:
    """JetStream limits: an integer (suffixes per the grammar) or a string "<n>K|M|G|T" (powers of 2)."""
    v = item.value
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if not isinstance(v, str):
        raise _Bad(item, f"{what} must be int64 or string")
    if v == "":
        return 0
    if not re.fullmatch(r"[+-]?\d+", v[:-1]):
        raise _Bad(item, f'{what} strconv.ParseInt: parsing "{v[:-1]}": invalid syntax')
    shift = {"K": 10, "M": 20, "G": 30, "T": 40}.get(v[-1])
    if shift is None:
        raise _Bad(item, f"{what} sizes defined as strings must end in K, M, G, T")
    return int(v[:-1]) << shift


# Keys nats-server knows that change nothing here (tuning of features this broker lacks),
# accepted and ignored; and features it lacks that matter (auth, TLS, storage encryption,
# other listeners), refused rather than silently ignored.
_IGNORED = {
    "top": {"trace_headers", "disable_sublist_cache", "no_sublist_cache", "logfile_max_num", "log_max_num",
            "prof_block_rate", "max_sub_tokens", "max_subscription_tokens", "no_system_account", "no_system",
            "no_sys_acc", "no_header_support", "connect_error_reports", "reconnect_error_reports", "server_tags",
            "server_metadata", "feature_flags", "no_fast_producer_stall", "max_closed_clients", "write_timeout"},
    "cluster": {"connect_backoff", "pool_size", "accounts", "compression", "ping_interval", "ping_max",
                "write_deadline", "write_timeout"},
    "jetstream": {"domain", "unique_tag", "max_outstanding_catchup", "max_buffered_size",
                  "max_buffered_msgs", "request_queue_limit", "info_queue_limit", "meta_compact",
                  "meta_compact_size", "meta_compact_sync", "max_concurrent_io", "extension_hint", "limits"},
    "tls": {"cipher_suites", "curve_preferences", "min_version", "allow_insecure_cipher_suites",
            "connection_rate_limit"},
}
_UNSUPPORTED = {
    "accounts", "users", "nkeys", "gateway", "leaf", "leafnodes", "websocket", "ws", "mqtt", "mappings", "maps",
    "operator", "operators", "roots", "root", "root_operators", "root_operator", "resolver", "account_resolver",
    "accounts_resolver", "resolver_tls", "resolver_preload", "resolver_pinned_accounts", "trusted", "trusted_keys",
    "system_account", "system", "no_auth_user", "auth_callout", "auth_hook", "proxy_required", "permissions",
    "default_permissions", "default_permission", "default_sentinel", "proxy_protocol", "proxies", "ocsp",
    "ocsp_cache", "allow_non_tls", "default_js_domain", "tls", "key", "ek", "encryption_key", "prev_key",
    "prev_ek", "prev_encryption_key", "cipher", "tpm", "insecure", "verify_and_map", "certs", "cert_store",
    "cert_match_by", "cert_match", "pinned_certs", "handshake_first", "first", "ocsp_peer",
    "verify_cert_and_check_known_urls",
}


def _unknown(key: str, item: Item, block: str = "") -> None:
    lk = key.lower()
    if lk in _IGNORED.get(block, ()):
        return
    if lk in _UNSUPPORTED:
        raise _Bad(item, f'field "{key}" is not supported by this server')
    if not item.used:  # a variable definition that was referenced is not an unknown field
        raise _Bad(item, f'unknown field "{key}"' if block != "tls" else
                   f'error parsing tls config, unknown field ["{key}"]')


def _simple(o: Any, table: dict[str, tuple[str, str]], key: str, item: Item, warnings: list[str]) -> bool:
    """Keys that map straight onto one attribute: kind is int, str, bool or dur."""
    spec = table.get(key.lower())
    if spec is None:
        return False
    kind, attr = spec
    if kind == "dur":
        setattr(o, attr, _duration(key.lower(), item, warnings))
    else:
        setattr(o, attr, _want(item, {"int": int, "str": str, "bool": bool}[kind]))
    return True


def _table(**kinds: str) -> dict[str, tuple[str, str]]:
    """_table(port="int", monitor_port="int:http_port") -> {key: (kind, attribute)}."""
    return {key: (spec.partition(":")[0], spec.partition(":")[2] or key) for key, spec in kinds.items()}


_TOP = _table(
    port="int", http_port="int", monitor_port="int:http_port", https_port="int", prof_port="int",
    max_pending="int", max_traced_msg_len="int", max_subscriptions="int", max_subs="int:max_subscriptions",
    ping_max="int", logfile_size_limit="int:log_size_limit", log_size_limit="int",
    client_advertise="str", host="str", net="str:host", logfile="str:log_file", log_file="str",
    remote_syslog="str", pidfile="str:pid_file", pid_file="str", ports_file_dir="str", http_base_path="str",
    debug="bool", trace="bool", logtime="bool", logtime_utc="bool", syslog="bool",
    ping_interval="dur:ping_interval_s", write_deadline="dur:write_deadline_s",
)
_AUTH = {**_table(user="str:username", username="str", password="str", token="str"), "pass": ("str", "password")}
_CLUSTER = _table(port="int:cluster_port", host="str:cluster_host", net="str:cluster_host",
                  advertise="str:cluster_advertise", cluster_advertise="str", no_advertise="bool",
                  connect_retries="int")


def _auth_block(o: Any, item: Item, warnings: list[str]) -> None:
    a = SimpleNamespace(username="", password="", token="", timeout=0.0)
    for k, it in _want(item, dict).items():
        if k.lower() == "timeout":
            a.timeout = _timeout(k, it, "authorization", warnings)
        elif not _simple(a, _AUTH, k, it, warnings):
            _unknown(k, it)
    if (a.username or a.password) and a.token:
        raise _Bad(item, "Cannot have a user/pass and token")
    o.username, o.password, o.token = a.username, a.password, a.token
    o.auth_timeout_s, o._auth_timeout_set = a.timeout, bool(a.timeout)


def _tls_block(o: Any, item: Item) -> None:
    files = {"cert_file": "", "key_file": "", "ca_file": ""}
    verify, timeout, first = False, 0.0, False
    for k, it in _want(item, dict).items():
        lk = k.lower()
        if lk in files:
            if not isinstance(it.value, str):
                raise _Bad(it, f"error parsing tls config, expected '{lk}' to be filename")
            files[lk] = it.value
        elif lk == "verify":
            if not isinstance(it.value, bool):
                raise _Bad(it, "error parsing tls config, expected 'verify' to be a boolean")
            verify = it.value
        elif lk == "timeout":
            timeout = _timeout(k, it, "tls", None)
        elif lk in ("handshake_first", "first") and isinstance(it.value, bool):
            first = it.value
        else:
            _unknown(k, it, "tls")
    cert, key, ca = files["cert_file"], files["key_file"], files["ca_file"]
    if not cert:
        raise _Bad(item, "missing 'cert_file' in TLS configuration")
    if not key:
        raise _Bad(item, "missing 'key_file' in TLS configuration")
    err = check_tls_files(cert, key, ca)
    if err:
        raise _Bad(item, err)
    o.tls, o.tls_cert, o.tls_key, o.tls_ca, o.tls_verify, o.tls_timeout_s = True, cert, key, ca, verify, timeout
    o.tls_handshake_first = first


def _jetstream_block(o: Any, item: Item, warnings: list[str]) -> None:
    v = item.value
    if isinstance(v, bool):
        o.jetstream = v
        return
    if isinstance(v, str):
        if v.lower() not in ("enabled", "enable", "disabled", "disable"):
            raise _Bad(item, f"Expected 'enabled' or 'disabled' for string value, got '{v}'")
        o.jetstream = v.lower().startswith("enable")
        return
    enable = True
    for k, it in _want(item, dict).items():
        lk = k.lower()
        if lk in ("store", "store_dir", "storedir"):
            if o.store_dir:
                raise _Bad(it, "Duplicate 'store_dir' configuration")
            o.store_dir = _want(it, str)
        elif lk in ("sync", "sync_interval"):
            if isinstance(it.value, str) and it.value.lower() == "always":
                o.sync_interval = "always"
            else:
                seconds = _duration(k, it, warnings)
                o.sync_interval = it.value if isinstance(it.value, str) else f"{seconds:g}s"
        elif lk in ("max_memory_store", "max_mem_store", "max_mem"):
            o.max_memory_store = _storage_size(it, "max_mem_store")
        elif lk in ("max_file_store", "max_file"):
            o.max_file_store = _storage_size(it, "max_file_store")
        elif lk in ("enable", "enabled"):
            enable = _want(it, bool)
        elif lk == "strict":
            if not _want(it, bool):  # the API always decodes requests strictly here
                raise _Bad(it, 'field "strict" set to false is not supported by this server')
        else:
            _unknown(k, it, "jetstream")
    o.jetstream = enable


def _cluster_block(o: Any, item: Item, warnings: list[str]) -> None:
    if not isinstance(item.value, dict):
        raise _Bad(item, f"Expected map to define cluster, got {_go_type(item.value)}")
    for k, it in item.value.items():
        lk = k.lower()
        if _simple(o, _CLUSTER, k, it, warnings):
            continue
        if lk == "name":
            if " " in _want(it, str):
                raise _Bad(it, "cluster name cannot contain spaces")
            o.cluster_name = it.value
        elif lk == "listen":
            o.cluster_host, o.cluster_port = _listen(it)
        elif lk == "routes":
            urls: list[str] = []
            for r in _want(it, list):
                u = normalize_url(_want(r, str))
                if u in urls:
                    warnings.append(f'{r.where()}: invalid use of field "{r.value}": Duplicate route entry detected')
                else:
                    urls.append(u)
            o.routes = urls
        elif lk == "authorization":
            a = SimpleNamespace(username="", password="", token="", _auth_timeout_set=False)
            _auth_block(a, it, warnings)
            if a.token:
                raise _Bad(it, "Cluster authorization does not support tokens")
            o.cluster_username, o.cluster_password = a.username, a.password
        else:
            _unknown(k, it, "cluster")


def _top_key(o: Any, k: str, item: Item, warnings: list[str]) -> None:
    lk = k.lower()
    if _simple(o, _TOP, k, item, warnings):
        return
    if lk == "trace_verbose":
        o.trace = o.trace_verbose = _want(item, bool)
    elif lk == "listen":
        o.host, o.port = _listen(item)
    elif lk in ("http", "https"):
        o.http_host, port = _listen(item)
        o._http_host_set = bool(o.http_host)
        setattr(o, f"{lk}_port", port)
    elif lk == "server_name":
        if " " in _want(item, str):
            raise _Bad(item, "server name cannot contain spaces")
        o.server_name = item.value
    elif lk in ("max_payload", "max_control_line"):
        if _want(item, int) > 2**31 - 1:
            raise _Bad(item, f"{k} value is too big")
        setattr(o, lk, item.value)
    elif lk in ("max_connections", "max_conn"):
        o.max_connections = _want(item, int) or -1  # nats-server: 0 refuses every client
    elif lk in ("lame_duck_duration", "lame_duck_grace_period"):
        try:
            d = _go_duration(_want(item, str))
        except ValueError as e:
            raise _Bad(item, f"error parsing {lk}: {e}") from None
        if lk == "lame_duck_duration" and d < 30:
            raise _Bad(item, f"invalid lame_duck_duration of {_fmt_go_duration(d)}, minimum is 30 seconds")
        if d < 0:
            raise _Bad(item, "invalid lame_duck_grace_period, needs to be positive")
        setattr(o, lk + "_s", d)
    elif lk == "authorization":
        _auth_block(o, item, warnings)
    elif lk == "tls":
        _tls_block(o, item)
    elif lk == "jetstream":
        _jetstream_block(o, item, warnings)
    elif lk in ("store_dir", "storedir"):
        if o.store_dir:
            raise _Bad(item, "Duplicate 'store_dir' configuration")
        o.store_dir = _want(item, str)
    elif lk == "cluster":
        _cluster_block(o, item, warnings)
    else:
        _unknown(k, item, "top")


def apply_config_file(opts: Any, path: str, strict: bool = False) -> None:
    """Apply a config file onto Options; ConfigError lists every problem, by line.  Warnings
    alone are printed to stderr and do not stop it, as in nats-server, unless `strict` (-t)."""
    opts.config_file = path
    try:
        tree = parse_file(path)
        opts.config_digest = digest(tree)
    except OSError as e:
        raise ConfigError(f"open {path}: {(e.strerror or str(e)).lower()}") from None
    except ConfParseError as e:
        raise ConfigError(e.render()) from None
    warnings: list[str] = [] if tree else [f"{path}: config has no values or is empty"]
    errors: list[_Bad] = []
    # jetstream before a top-level store_dir, so a duplicate is reported on the same line each time
    for k in sorted(tree, key=lambda key: (key.lower() != "jetstream", tree[key].line)):
        try:
            _top_key(opts, k, tree[k], warnings)
        except _Bad as e:
            errors.append(e)
    if errors or (warnings and strict):
        errors.sort(key=lambda e: (e.item.line, e.item.col))
        raise ConfigError("\n".join(warnings + [e.render() for e in errors]))
    if warnings:
        sys.stderr.write("".join(w + "\n" for w in warnings))
