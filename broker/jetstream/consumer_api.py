"""CONSUMER.* API requests: decoding, validation, ConsumerInfo rendering (no trio).

Each handler takes the ConsumerManager, the subject tokens after the verb and the
request body, and returns the response dict or raises JSError. Responses are dicts
built in nats-server's field order (the JSON is compared by eye and by clients that
require certain keys).
"""

from __future__ import annotations

import json
import re
import time

import msgspec

from broker import subjects as subj
from broker.jetstream import api, gojson
from broker.jetstream import errors as jerr
from broker.jetstream.consumer import NO_PRIORITY, Consumer, PullRequest
from broker.jetstream.consumerconfig import ConsumerConfig, cerr, normalize, parse_time

gojson.GO_EXTRA[ConsumerConfig] = {"sourcing": None}  # Go fields we do not model: not unknown

NAMES_LIMIT = 1024
LIST_LIMIT = 256
_BAD_NAME = re.compile(r"[.*>\s/\\]")

KINDS = {"CREATE": "consumer_create_response", "DURABLE.CREATE": "consumer_create_response",
         "INFO": "consumer_info_response", "DELETE": "consumer_delete_response",
         "NAMES": "consumer_names_response", "LIST": "consumer_list_response",
         "PAUSE": "consumer_pause_response", "RESET": "consumer_reset_response",
         "LEADER.STEPDOWN": "consumer_leader_stepdown_response"}


class CreateRequest(msgspec.Struct):
    stream_name: str = ""
    config: ConsumerConfig | None = None
    action: str = ""
    pedantic: bool = False


class NextRequest(msgspec.Struct):
    batch: int = 1
    expires: int = 0
    no_wait: bool = False
    max_bytes: int = 0
    idle_heartbeat: int = 0
    group: str = ""  # priority groups (ADR-42)
    min_pending: int = 0
    min_ack_pending: int = 0
    id: str = ""
    priority: int = 0


def go_json_text(body: bytes, with_offset: bool = True) -> str:
    """Go's encoding/json syntax error text for a malformed body (the parts nats-server shows)."""
    try:
        json.loads(body)
    except json.JSONDecodeError as ex:
        pos, msg = ex.pos, ex.msg
    except (UnicodeDecodeError, ValueError):
        return "invalid character looking for beginning of value"
    else:
        return ""
    if pos >= len(body.rstrip()) and msg != "Extra data":
        return "unexpected EOF"
    ch = body[pos:pos + 1].decode("latin-1")
    lit = {"n": "null", "t": "true", "f": "false"}.get(ch)
    if msg == "Expecting value" and lit:  # Go reads a literal letter by letter
        for i, want in enumerate(lit[1:], 1):
            got = body[pos + i:pos + i + 1].decode("latin-1")
            if not got:
                return "unexpected EOF"
            if got != want:
                text = f"invalid character {got!r} in literal {lit} (expecting {want!r})"
                return f"{text} at offset {pos + i + 1}" if with_offset else text
    what = {"Expecting property name enclosed in double quotes": "looking for beginning of object key string",
            "Expecting ':' delimiter": "after object key",
            "Expecting ',' delimiter": "after object key:value pair"}.get(msg, "looking for beginning of value")
    text = f"invalid character {ch!r} {what}"
    return f"{text} at offset {pos + 1}" if with_offset else text


def _json_error(body: bytes, ex: Exception | None = None) -> jerr.JSError:
    text = go_json_text(body)
    if not text:
        text = _go_type_error(str(ex)) if ex is not None else "cannot unmarshal"
    return jerr.invalid_json(text)


_DURATIONS = {"ack_wait", "idle_heartbeat", "inactive_threshold", "max_expires", "priority_timeout"}
_GO_KIND = {"str": "string", "int": "number", "float": "number", "object": "object", "array": "array",
            "bool": "bool"}


def _go_type_error(text: str) -> str:
    """msgspec's `Expected `int`, got `str` - at `$.config.ack_wait`` in Go's words."""
    m = re.match(r"Expected `([^`]*)`, got `([^`]*)`(?: - at `\$\.?([^`]*)`)?", text)
    if not m:
        return text
    want, got, path = m.group(1), m.group(2), m.group(3) or ""
    field = path.rsplit(".", 1)[-1]
    gotype = "time.Duration" if field in _DURATIONS else {"int": "int", "str": "string", "bool": "bool",
                                                          "object": "map", "array": "slice"}.get(want, want)
    where = f"Go struct field CreateConsumerRequest.{path}" if path else "Go value"
    return f"json: cannot unmarshal {_GO_KIND.get(got, got)} into {where} of type {gotype}"


def error_body(op: str, e: jerr.JSError) -> dict:
    d = {"type": api.PREFIX + KINDS[op], "error": e.as_dict()}
    if op in ("NAMES", "LIST"):  # nats-server's paged responses keep their zero-valued paging fields
        d.update({"total": 0, "offset": 0, "limit": 0, "consumers": []})
    return d


# ---- info -------------------------------------------------------------------------------
def config_json(cfg: ConsumerConfig, full_meta: bool) -> dict:
    d = msgspec.to_builtins(cfg)
    if full_meta:
        md = {"_nats.level": str(api.API_LEVEL)}
        md.update(cfg.metadata or {})
        md["_nats.ver"] = api.SERVER_VERSION
        d["metadata"] = dict(sorted(md.items()))
    return d


def info(mgr, e, kind: str | None, full_meta: bool = True) -> dict:
    c: Consumer = e.c
    now = time.time_ns()
    d: dict = {}
    if kind:
        d["type"] = api.PREFIX + kind
    d["stream_name"] = c.stream_name
    d["name"] = c.name
    d["created"] = api.rfc3339(c.created_ns)
    d["config"] = config_json(c.cfg, full_meta)
    delivered = {"consumer_seq": c.dseq, "stream_seq": c.dsseq}
    if c.dseq:
        delivered["last_active"] = api.rfc3339(c.last_delivery_ns)
    d["delivered"] = delivered
    floor = {"consumer_seq": c.adflr, "stream_seq": c.asflr}
    if c.last_ack_ns:
        floor["last_active"] = api.rfc3339(c.last_ack_ns)
    d["ack_floor"] = floor
    d["num_ack_pending"] = len(c.pending)
    d["num_redelivered"] = c.num_redelivered()
    d["num_waiting"] = len(c.waiting)
    d["num_pending"] = c.npending
    # a consumer asked for one replica shows a one-server block (ours still records its state
    # in the stream's log: it lives on the stream's leader)
    block = mgr.js.cluster_block(c.stream_name if e.replica is not None and c.cfg.num_replicas != 1 else "")
    if block is not None:
        d["cluster"] = msgspec.to_builtins(block)
    if c.push and mgr.server.has_interest(c.cfg.deliver_subject):
        d["push_bound"] = True
    if c.paused_until and c.paused_until > now:
        d["paused"] = True
        d["pause_remaining"] = c.paused_until - now
    d["ts"] = api.rfc3339(now)
    if c.cfg.priority_groups:  # nats-server reports the first group only (no pins: zero pinned_ts)
        d["priority_groups"] = [{"group": c.cfg.priority_groups[0], "pinned_ts": api.ZERO_TIME}]
    return d


def _stream(mgr, tokens: list[str]):
    if not tokens:
        raise jerr.bad_request()
    s = mgr.js.streams.get(tokens[0])
    if s is None:
        raise jerr.stream_not_found()
    return s


def _entry(mgr, tokens: list[str]):
    s = _stream(mgr, tokens)
    if len(tokens) < 2:
        raise jerr.bad_request()
    e = mgr.lookup(s.name, tokens[1])
    if e is None:
        raise cerr(404, 10014, "consumer not found")
    return s, e


# ---- create -----------------------------------------------------------------------------
def _decode_create(tokens: list[str], payload: bytes, stream) -> tuple[ConsumerConfig, str]:
    if not payload.strip():
        raise jerr.stream_mismatch()
    try:
        req = gojson.decode(payload, CreateRequest)
    except gojson.GoJSONError as ex:
        raise jerr.invalid_json(ex.text) from None
    except msgspec.ValidationError as ex:
        raise _json_error(payload, ex) from None
    if req.stream_name != stream.name:
        raise jerr.stream_mismatch()
    if req.config is None:
        raise cerr(400, 10025, "invalid JSON: consumer config required")
    return req.config, req.action


def create(mgr, tokens: list[str], payload: bytes, durable_api: bool) -> dict:
    stream = _stream(mgr, tokens)
    cfg, action = _decode_create(tokens, payload, stream)
    if durable_api:
        if len(tokens) < 2:
            raise jerr.bad_request()
        name = tokens[1]
        if cfg.durable_name and cfg.durable_name != name:
            raise cerr(400, 10017, "consumer name in subject does not match durable name in request")
        cfg.durable_name = name
    elif len(tokens) >= 2:
        name = tokens[1]
        if cfg.durable_name and cfg.durable_name != name:
            raise cerr(400, 10017, "consumer name in subject does not match durable name in request")
        if len(tokens) > 2:
            filt = ".".join(tokens[2:])
            if cfg.filter_subject != filt and (cfg.filter_subjects or []) != [filt]:
                raise cerr(400, 10131, "Consumer create request did not match filtered subject from create subject")
    else:
        if cfg.durable_name:
            raise cerr(400, 10020, "consumer expected to be ephemeral but a durable name was set in request")
        name = cfg.name or mgr.new_name(stream.name)
    if _BAD_NAME.search(name) or len(name) > 255:
        raise cerr(500, 10052, "consumer name can not contain '.', '*', '>', '\\', '/'")
    if durable_api or len(tokens) >= 2 or cfg.name:
        cfg.name = name  # an unnamed ephemeral keeps an empty config name, as nats-server shows it
    ncfg = normalize(cfg, stream.config)
    _check_stream_rules(mgr, stream, ncfg, name)
    existing = mgr.lookup(stream.name, name)
    if existing is not None:
        if action == "create" and _comparable(existing.c.cfg) != _comparable(ncfg):
            raise cerr(400, 10148, "consumer already exists")
        _update(mgr, existing, ncfg)
        return info(mgr, existing, "consumer_create_response")
    if action == "update":
        raise cerr(400, 10149, "consumer does not exist")
    mx = stream.config.max_consumers
    if mx and mx > 0 and mgr.consumer_count(stream.name) >= mx:
        raise cerr(400, 10026, "maximum consumers limit reached")
    now = time.time_ns()
    c = Consumer(stream.name, name, ncfg, stream.store, now)
    c.start(now, parse_time(ncfg.opt_start_time))
    c.paused_until = max(0, parse_time(ncfg.pause_until))
    if c.paused_until <= now:
        c.paused_until, ncfg.pause_until = 0, None
    e = mgr._add(stream, c, now)
    if e.durable:
        mgr._write_meta(e)
        mgr._write_state(e)
    result = info(mgr, e, "consumer_create_response")
    mgr._serve(e, now)
    return result


def _check_stream_rules(mgr, stream, cfg: ConsumerConfig, name: str) -> None:
    if (stream.config.retention != "limits" and mgr.js.replica(stream.name) is not None
            and cfg.num_replicas not in (0, stream.config.num_replicas)):
        raise cerr(400, 10134, "consumer config replicas must match interest retention stream's replicas")
    if stream.config.retention != "workqueue":
        return
    if cfg.ack_policy != "explicit":
        if not cfg.deliver_subject and cfg.ack_policy == "none":
            raise cerr(400, 10084, "consumer in pull mode requires explicit ack policy on workqueue stream")
        raise cerr(400, 10098, "workqueue stream requires explicit ack")
    if cfg.deliver_policy != "all":
        raise cerr(400, 10101, "consumer must be deliver all on workqueue stream")
    mine = cfg.filter_subjects or ([cfg.filter_subject] if cfg.filter_subject else [])
    for other in mgr.by_stream.get(stream.name, {}).values():
        if other.c.name == name:
            continue
        if not mine or not other.c.filters:
            raise cerr(400, 10099, "multiple non-filtered consumers not allowed on workqueue stream")
        if any(subj.overlaps(x, y) for x in other.c.filters for y in mine):
            raise cerr(400, 10100, "filtered consumer not unique on workqueue stream")


def _comparable(cfg: ConsumerConfig) -> dict:
    d = msgspec.to_builtins(cfg)
    d.pop("metadata", None)
    return d


_IMMUTABLE = (("deliver_policy", "deliver policy can not be updated"),
              ("opt_start_seq", "start sequence can not be updated"),
              ("opt_start_time", "start time can not be updated"),
              ("ack_policy", "ack policy can not be updated"),
              ("replay_policy", "replay policy can not be updated"),
              ("flow_control", "flow control can not be updated"),
              ("mem_storage", "can not update consumer storage type"),
              ("deliver_group", "deliver group can not be updated"))


def _update(mgr, e, ncfg: ConsumerConfig) -> None:
    old = e.c.cfg
    if _comparable(old) == _comparable(ncfg):
        return
    for field, text in _IMMUTABLE:
        if getattr(old, field) != getattr(ncfg, field):
            raise cerr(500, 10012, text)
    if bool(old.deliver_subject) != bool(ncfg.deliver_subject):
        raise cerr(500, 10012, "can not update push consumer to pull based" if old.deliver_subject
                   else "can not update pull consumer to push based")
    c = e.c
    c.cfg = ncfg
    c.use_priority_policy()
    c.filters = ncfg.filter_subjects[:] if ncfg.filter_subjects else (
        [ncfg.filter_subject] if ncfg.filter_subject else [])
    if old.filter_subject != ncfg.filter_subject or old.filter_subjects != ncfg.filter_subjects:
        c.recount()
    if e.durable:
        mgr._write_meta(e)


# ---- other verbs ------------------------------------------------------------------------
def h_create(mgr, tokens, payload):
    return create(mgr, tokens, payload, False)


def h_durable_create(mgr, tokens, payload):
    return create(mgr, tokens, payload, True)


def h_info(mgr, tokens, payload):
    _, e = _entry(mgr, tokens)
    return info(mgr, e, "consumer_info_response")


def h_delete(mgr, tokens, payload):
    _, e = _entry(mgr, tokens)
    mgr._delete(e)
    return {"type": api.PREFIX + "consumer_delete_response", "success": True}


class PagedRequest(msgspec.Struct):
    offset: int = 0


class PauseRequest(msgspec.Struct):
    pause_until: str = ""


def _strict(payload: bytes, typ, go: tuple):
    """A request body decoded as nats-server's unmarshalRequest does (unknown fields refused)."""
    try:
        return gojson.decode(payload, typ, go=go)
    except gojson.GoJSONError as ex:
        raise jerr.invalid_json(ex.text) from None
    except msgspec.ValidationError as ex:
        raise _json_error(payload, ex) from None


def _offset(payload: bytes) -> int:
    if not payload.strip():
        return 0
    off = _strict(payload, PagedRequest, ("JSApiConsumersRequest", {"offset": "int"})).offset
    return max(0, off)


def h_names(mgr, tokens, payload):
    s = _stream(mgr, tokens)
    off = _offset(payload)
    names = sorted(mgr.by_stream.get(s.name, {}))
    return {"type": api.PREFIX + "consumer_names_response", "total": len(names), "offset": off,
            "limit": NAMES_LIMIT, "consumers": names[off:off + NAMES_LIMIT]}


def h_list(mgr, tokens, payload):
    s = _stream(mgr, tokens)
    off = _offset(payload)
    entries = mgr.by_stream.get(s.name, {})
    names = sorted(entries)
    items = [info(mgr, entries[n], None, full_meta=False) for n in names[off:off + LIST_LIMIT]]
    return {"type": api.PREFIX + "consumer_list_response", "total": len(names), "offset": off,
            "limit": LIST_LIMIT, "consumers": items}


def h_pause(mgr, tokens, payload):
    _, e = _entry(mgr, tokens)
    until = 0
    if payload.strip():
        req = _strict(payload, PauseRequest, ("JSApiConsumerPauseRequest", {}))
        until = parse_time(req.pause_until)
    now = time.time_ns()
    c = e.c
    c.paused_until = until if until > now else 0
    c.cfg.pause_until = api.rfc3339(until) if c.paused_until else None
    if e.durable:  # part of its config (nats-server updates the consumer's assignment): kept, replicated
        mgr._write_meta(e)
    mgr._kick()
    out = {"type": api.PREFIX + "consumer_pause_response", "paused": bool(c.paused_until),
           "pause_until": api.rfc3339(until) if until else api.ZERO_TIME}
    if c.paused_until:
        out["pause_remaining"] = c.paused_until - now
    return out


class ResetRequest(msgspec.Struct):
    seq: int = 0


def h_reset(mgr, tokens, payload):
    """CONSUMER.RESET (ADR-60, nats-server 2.14+): restart delivery at the ack floor or at `seq`."""
    s, e = _entry(mgr, tokens)
    seq = 0
    if payload:
        try:  # nats-server decodes this one with plain json.Unmarshal: unknown fields are ignored
            seq = gojson.decode(payload, ResetRequest, strict=False,
                                go=("JSApiConsumerResetRequest", {"seq": "uint64"})).seq
        except gojson.GoJSONError as ex:
            raise jerr.invalid_json(ex.text) from None
        except msgspec.ValidationError as ex:
            raise jerr.invalid_json(str(ex)) from None
    c = e.c
    policy = c.cfg.deliver_policy
    if not seq:
        seq = c.asflr + 1
    elif policy == "by_start_sequence":
        if seq < c.cfg.opt_start_seq:
            raise cerr(400, 10204, "invalid reset: below start seq")
    elif policy == "by_start_time":
        if seq < c.seq_for_time(parse_time(c.cfg.opt_start_time)):
            raise cerr(400, 10204, "invalid reset: below start time")
    elif policy != "all":
        raise cerr(400, 10204, "invalid reset: not allowed")
    passed = c.reset(max(seq, 1))
    if e.stream.config.retention != "limits":
        for sseq in passed:
            mgr.js.stream_acked(s.name, sseq)
    out = info(mgr, e, "consumer_reset_response")
    out["reset_seq"] = c.sseq
    mgr._serve(e, time.time_ns())
    return out


def h_stepdown(mgr, tokens, payload):
    _entry(mgr, tokens)
    raise cerr(503, 10010, "JetStream clustering support required")


NEEDS_CONSUMER = {"DURABLE.CREATE", "INFO", "DELETE", "PAUSE", "RESET", "LEADER.STEPDOWN"}
HANDLERS = {"CREATE": h_create, "DURABLE.CREATE": h_durable_create, "INFO": h_info, "DELETE": h_delete,
            "NAMES": h_names, "LIST": h_list, "PAUSE": h_pause, "RESET": h_reset, "LEADER.STEPDOWN": h_stepdown}


# ---- pull requests ----------------------------------------------------------------------
class PullRejected(ValueError):
    """A MSG.NEXT request answered with a status instead of being queued."""

    def __init__(self, code: str, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def next_request(payload: bytes, reply: str, cfg: ConsumerConfig, now: int) -> PullRequest:
    """Decode a MSG.NEXT body; PullRejected carries the status nats-server answers with."""
    body = payload.strip()
    if body[:1] == b"{":
        try:
            r = msgspec.json.decode(body, type=NextRequest)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise PullRejected("400", "Bad Request - " + (go_json_text(body, with_offset=False)
                                                          or "invalid request")) from None
    else:
        r = NextRequest(batch=int(body) if body.isdigit() else 1)
    if r.batch <= 0:
        r.batch = 1
    if r.idle_heartbeat and r.expires and r.idle_heartbeat * 2 > r.expires:
        raise PullRejected("400", "Bad Request - heartbeat value too large")
    if cfg.max_batch and r.batch > cfg.max_batch:
        raise PullRejected("409", f"Exceeded MaxRequestBatch of {cfg.max_batch}")
    if cfg.max_expires and r.expires > cfg.max_expires:
        raise PullRejected("409", f"Exceeded MaxRequestExpires of {go_duration(cfg.max_expires)}")
    if cfg.max_bytes and r.max_bytes > cfg.max_bytes:
        raise PullRejected("409", f"Exceeded MaxRequestMaxBytes of {cfg.max_bytes}")
    policy = cfg.priority_policy
    if body[:1] == b"{":  # a JSON request always carries a (maybe empty) priority group
        if (r.min_pending or r.min_ack_pending) and policy != "overflow":
            raise PullRejected("400", "Bad Request - Not a Overflow Priority consumer")
        if r.id and policy != "pinned_client":
            raise PullRejected("400", "Bad Request - Not a Pinned Client Priority consumer")
        if not 0 <= r.priority <= 9:
            raise PullRejected("400", "Bad Request - Priority must be between 0 and 9")
        if policy:
            if not r.group:
                raise PullRejected("400", "Bad Request - Priority Group missing")
            if r.group not in (cfg.priority_groups or ()):
                raise PullRejected("400", "Bad Request - Invalid Priority Group")
    expires = now + r.expires if r.expires > 0 else 0
    req = PullRequest(reply, r.batch, r.max_bytes, expires, r.no_wait, r.idle_heartbeat, now)
    if policy:
        req.priority = r.priority if body[:1] == b"{" else NO_PRIORITY
        req.min_pending, req.min_ack_pending = r.min_pending, r.min_ack_pending
    return req


def go_duration(ns: int) -> str:
    """Go's time.Duration.String(): 1s, 1.5s, 250ms, 1m30s, 2h0m0s."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return sign + _trim(ns / size) + unit
    h, rem = divmod(ns, 3600 * 10**9)
    m, rem = divmod(rem, 60 * 10**9)
    secs = _trim(rem / 10**9) + "s"
    if h:
        return f"{sign}{h}h{m}m{secs}"
    if m:
        return f"{sign}{m}m{secs}"
    return sign + secs


def _trim(x: float) -> str:
    text = f"{x:.9f}".rstrip("0").rstrip(".")
    return text or "0"
