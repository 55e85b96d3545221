"""Decoding `$JS.API` request bodies the way nats-server's Go code does.

nats-server decodes most API requests with a `json.Decoder` that has
`DisallowUnknownFields` set (jetstream_api.go `unmarshalRequest`, strict mode is the
default): a field the request struct does not have is an error
`json: unknown field "<name>"` (400/10025 `invalid JSON: ...`), nested structs
included. Go matches keys case-insensitively (`{"Seq":1}` sets `seq`), a JSON null
leaves a field unset, the first problem in document order is the one reported, and
a body may hold several JSON values one after another (each decoded into the same
request). MSG.NEXT, CONSUMER.RESET and DIRECT.GET use plain `json.Unmarshal`
instead and ignore unknown fields; their decoders here pass `strict=False`.

`decode` returns a msgspec Struct; errors it finds itself come as `GoJSONError`
carrying Go's text, errors of value types are left to msgspec (ValidationError) so
the callers keep their existing wording for those.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import msgspec

# Known fields of a Go request struct that our msgspec Struct does not model (name ->
# nested field schema or None), for Structs that appear nested in a request.
GO_EXTRA: dict[type, dict[str, Any]] = {}


class GoJSONError(ValueError):
    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


_PLACEMENT = {"cluster": None, "tags": None, "preferred": None}
_TRANSFORM = {"src": None, "dest": None}
_SOURCE = {"name": None, "opt_start_seq": None, "opt_start_time": None, "filter_subject": None,
           "subject_transforms": _TRANSFORM, "external": {"api": None, "deliver": None},
           "consumer": {"name": None, "deliver_subject": None}}
# Nested Go structs of StreamConfig that api.StreamConfig keeps as dicts.
STREAM_CONFIG_NESTED = {"placement": _PLACEMENT, "mirror": _SOURCE, "sources": _SOURCE,
                        "subject_transform": _TRANSFORM, "republish": {"src": None, "dest": None, "headers_only": None},
                        "consumer_limits": {"inactive_threshold": None, "max_ack_pending": None}}


@functools.lru_cache(maxsize=None)
def _schema(typ) -> dict[str, tuple[str, Any]]:
    """lower-cased key -> (encode name, nested schema or msgspec type) for a Struct type."""
    info = msgspec.inspect.type_info(typ)
    out: dict[str, tuple[str, Any]] = {}
    for f in info.fields:
        out[f.encode_name.lower()] = (f.encode_name, f.type)
    return out


def _struct_of(t) -> type | None:
    """The Struct class a msgspec field type decodes into (through Optional/list), if any."""
    if isinstance(t, msgspec.inspect.StructType):
        return t.cls
    if isinstance(t, msgspec.inspect.UnionType):
        for x in t.types:
            s = _struct_of(x)
            if s is not None:
                return s
    if isinstance(t, (msgspec.inspect.ListType,)):
        return _struct_of(t.item_type)
    return None


def _plain_type(t) -> Any:
    """A msgspec-convertible Python type for checking a leaf value, or None to skip."""
    k = type(t)
    if k is msgspec.inspect.IntType:
        return int
    if k is msgspec.inspect.StrType:
        return str
    if k is msgspec.inspect.BoolType:
        return bool
    if k is msgspec.inspect.UnionType:
        kinds = [_plain_type(x) for x in t.types if not isinstance(x, msgspec.inspect.NoneType)]
        if len(kinds) == 1:
            return kinds[0]
    return None


class _Stop(Exception):
    """An earlier value has the wrong type: Go reports that, so msgspec's error stands."""


def _go_kind(value) -> str:
    """How Go's UnmarshalTypeError names a JSON value."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return f"number {json.dumps(value)}"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "null")


def _go_fits(value, gotype: str) -> bool:
    if gotype == "string":
        return isinstance(value, str)
    if gotype == "bool":
        return isinstance(value, bool)
    if gotype in ("int", "uint64"):
        return (isinstance(value, int) and not isinstance(value, bool)
                and (value >= 0 or gotype == "int") and -2**63 <= value < 2**64)
    return True


def _walk_struct(obj: dict, typ, extra: dict[str, Any] | None, strict: bool, go: tuple | None = None) -> dict:
    """`go`: (Go struct name, {field: Go type}) to report scalar type errors in Go's words."""
    schema = _schema(typ)
    extra = extra or {}
    out: dict = {}
    for key, value in obj.items():
        lk = key.lower()
        hit = schema.get(lk)
        if hit is None:
            name = next((k for k in extra if k.lower() == lk), None)
            if name is None:
                if strict:
                    raise GoJSONError(f'json: unknown field "{key}"')
                continue
            if value is not None:
                out[name] = _walk_plain(value, extra[name], strict)
            continue
        name, ftype = hit
        if value is None:  # Go leaves the field as it was
            continue
        if go is not None and name in go[1] and not _go_fits(value, go[1][name]):
            raise GoJSONError(f"json: cannot unmarshal {_go_kind(value)} into Go struct field "
                              f"{go[0]}.{name} of type {go[1][name]}")
        sub = _struct_of(ftype)
        if sub is not None and isinstance(value, dict):
            value = _walk_struct(value, sub, GO_EXTRA.get(sub), strict)
        elif sub is not None and isinstance(value, list):
            value = [_walk_struct(v, sub, GO_EXTRA.get(sub), strict) if isinstance(v, dict) else v for v in value]
        elif name in extra:
            value = _walk_plain(value, extra[name], strict)
        else:
            pt = _plain_type(ftype)
            if pt is not None and not (type(value) is pt or (pt is int and type(value) is int)):
                raise _Stop()
        out[name] = value
    return out


def _walk_plain(value, schema: dict[str, Any] | None, strict: bool):
    """A nested Go struct we only know by its field names (kept as a dict on our side)."""
    if schema is None:
        return value
    if isinstance(value, list):
        return [_walk_plain(v, schema, strict) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, v in value.items():
        name = next((k for k in schema if k.lower() == key.lower()), None)
        if name is None:
            if strict:
                raise GoJSONError(f'json: unknown field "{key}"')
            continue
        out[name] = _walk_plain(v, schema[name], strict)
    return out


_raw = json.JSONDecoder()


def values(payload: bytes, stream: bool = True) -> list:
    """The JSON values in a body; GoJSONError on bad syntax. stream: as Go's json.Decoder reads
    them (one after another, syntax errors with their offset); else as json.Unmarshal (exactly
    one value, its own wording for trailing data and truncation)."""
    from broker.jetstream.consumer_api import go_json_text
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        raise GoJSONError("invalid character looking for beginning of value") from None
    out, pos, n = [], 0, len(text)
    while True:
        while pos < n and text[pos] in " \t\r\n":
            pos += 1
        if pos >= n:
            if not out and not stream:
                raise GoJSONError("unexpected end of JSON input")
            return out
        if out and not stream:
            raise GoJSONError(f"invalid character {text[pos]!r} after top-level value")
        try:
            obj, pos = _raw.raw_decode(text, pos)
        except json.JSONDecodeError:
            # Offsets are counted in the whole body: pad the failing value's start with blanks.
            start = pos
            err = go_json_text(b" " * start + payload[start:], stream)
            if err == "unexpected EOF" and not stream:
                err = "unexpected end of JSON input"
            raise GoJSONError(err) from None
        out.append(obj)


def decode(payload: bytes, typ, *, strict: bool = True, extra: dict[str, Any] | None = None,
           go: tuple | None = None):
    """Decode a request body into Struct `typ` as nats-server would (see module doc).
    strict=False reads it as json.Unmarshal does (CONSUMER.RESET, DIRECT.GET).

    GoJSONError: syntax errors and (strict) unknown fields, in Go's words.
    msgspec.ValidationError: a value of the wrong type (reported by msgspec)."""
    merged: dict = {}
    for obj in values(payload, stream=strict):
        if obj is None:  # null into a struct: nothing changes
            continue
        if not isinstance(obj, dict):
            if go is not None:
                raise GoJSONError(f"json: cannot unmarshal {_go_kind(obj).split(' ')[0]} into Go value "
                                  f"of type server.{go[0]}")
            return msgspec.convert(obj, typ)  # msgspec reports the type mismatch
        try:
            merged.update(_walk_struct(obj, typ, extra, strict, go))
        except _Stop:
            # msgspec names the offending field; unknown fields after it do not matter (Go
            # keeps the first error), unknown fields before it were already reported.
            return msgspec.convert({k: v for k, v in obj.items() if v is not None}, typ)
    return msgspec.convert(merged, typ)
