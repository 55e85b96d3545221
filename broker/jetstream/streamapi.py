"""Handlers for `$JS.API.STREAM.*` and `$JS.API.DIRECT.GET.*`, plus republish.

Each handler validates the request exactly as nats-server does, changes nothing when
it fails, and answers with nats-server's response shape (see api.py). `js` is the
JetStream runtime (manager.py); handlers run one at a time in its API task.
"""

from __future__ import annotations

import logging
import time

import msgspec

from broker import headers
from broker import subjects as subj
from broker.jetstream import api, errors, gojson, transform
from broker.jetstream import streamconfig as sc
from broker.jetstream.stream import Stream

log = logging.getLogger("broker.jetstream")


LIST_LIMIT = 256
NAMES_LIMIT = 1024
SUBJECTS_LIMIT = 100_000


# Go request structs behind each decoder: name and scalar field types, for Go's type-error text.
_GO_REQ = {
    api.StreamInfoRequest: ("JSApiStreamInfoRequest",
                            {"offset": "int", "deleted_details": "bool", "subjects_filter": "string"}),
    api.StreamPurgeRequest: ("JSApiStreamPurgeRequest", {"seq": "uint64", "filter": "string", "keep": "uint64"}),
    api.MsgGetRequest: ("JSApiMsgGetRequest", {"seq": "uint64", "last_by_subj": "string", "next_by_subj": "string",
                                               "batch": "int", "max_bytes": "int", "up_to_seq": "uint64",
                                               "no_hdr": "bool"}),
    api.MsgDeleteRequest: ("JSApiMsgDeleteRequest", {"seq": "uint64", "no_erase": "bool"}),
}
# Fields of nats-server's JSApiMsgGetRequest we do not serve (batch/multi gets): known, so not refused.
_MSG_GET_EXTRA = {k: None for k in ("start_time", "multi_last", "up_to_seq", "up_to_time", "no_hdr")}


def _decode(typ, payload: bytes, default, go_name: str = "", extra=None):
    """A request body decoded strictly, as nats-server's unmarshalRequest does (gojson)."""
    if not payload or not payload.strip():
        return default
    go = _GO_REQ.get(typ)
    if go_name:
        go = (go_name, {"offset": "int", "subject": "string"})
    try:
        return gojson.decode(payload, typ, extra=extra, go=go)
    except gojson.GoJSONError as e:
        raise errors.invalid_json(e.text) from None
    except msgspec.ValidationError as e:
        raise errors.invalid_json(str(e)) from None


def _error(resp_cls, e: errors.JSError, **extra):
    return resp_cls(error=api.ApiError(e.code, e.err_code, e.description), **extra)


def _now() -> int:
    return time.time_ns()


def _fresh(js, stream: Stream) -> None:
    """Apply due expiries before reporting, so reads never show expired messages. (A
    replicated stream expires only through its leader's entries: never on a read.)"""
    if js.replica(stream.name) is None:
        js.expire_stream(stream, _now())


def stream_state(js, stream: Stream, subjects_filter: str = "") -> api.StreamState:
    _fresh(js, stream)
    count = js.consumers.consumer_count(stream.name) + js.sourcing.consumer_count(stream)
    return stream.state(count, subjects_filter)


async def handle(js, tokens: list[str], reply: str, hdr: bytes | None, payload: bytes) -> None:
    op = tokens[0]
    rest = tokens[1:]
    if op == "MSG" and rest:
        op, rest = "MSG." + rest[0], rest[1:]
    entry = _HANDLERS.get(op)
    if entry is None:
        return
    fn, resp_cls, needs_name, extra = entry
    if needs_name != (len(rest) == 1) or len(rest) > 1:
        return
    try:
        resp = await fn(js, rest[0] if rest else "", payload)
        if op != "MSG.GET":  # nats-server counts only failed message gets
            js.count_api(False)
    except errors.JSError as e:
        js.count_api(e.counts_as_error)
        resp = _error(resp_cls, e, **extra)
    js.reply_json(reply, resp)


# ---- create / update / info / delete ----
def _decode_config(payload: bytes) -> api.StreamConfig:
    if not payload:
        raise errors.bad_request()
    try:
        return gojson.decode(payload, api.StreamConfig, extra=gojson.STREAM_CONFIG_NESTED)
    except gojson.GoJSONError as e:
        raise errors.invalid_json(e.text) from None
    except msgspec.ValidationError as e:
        raise errors.invalid_json(str(e)) from None


async def _create(js, name: str, payload: bytes):
    cfg = prepare_create(js, name, payload, _lookup(js))
    existing = js.streams.get(name)
    if existing is not None:
        if _same_config(existing.config, cfg):
            return _info_like(js, existing, api.StreamCreateResponse, did_create=True)
        raise errors.stream_name_exists()
    sc.check_overlap(cfg, [s.config for s in js.streams.values()])
    js.check_reservation(cfg)
    return create_local(js, cfg, _now())


def prepare_create(js, name: str, payload: bytes, lookup, clustered: bool = False) -> api.StreamConfig:
    """The config a STREAM.CREATE asks for, checked and with defaults, or JSError."""
    cfg = _decode_config(payload)
    if cfg.name != name:
        raise errors.stream_mismatch()
    if "/" in name or "\\" in name:
        raise errors.stream_name_path_separators()
    sc.check_create(cfg)
    if cfg.mirror_direct and cfg.mirror is msgspec.UNSET:
        raise errors.stream_invalid_config("stream has no mirror but does have mirror direct")
    cfg = sc.normalize(cfg, lookup, clustered)
    sc.check_supported(cfg)
    return cfg


def create_local(js, cfg: api.StreamConfig, created: int):
    """Make the stream on this node from a checked config (no other stream has its name)."""
    js.remove_files(cfg.name)  # leftovers of an interrupted delete must not come back to life
    stream = Stream(cfg, js.open_store(cfg), created)
    if cfg.first_seq not in (msgspec.UNSET, 0, 1):
        stream.store.skip_to(cfg.first_seq)
    js.save_meta(stream)
    js.attach(stream)
    return _info_like(js, stream, api.StreamCreateResponse, did_create=True)


def _lookup(js):
    def lookup(name: str):
        stream = js.streams.get(name)
        return stream.config if stream is not None else None
    return lookup


def _sourcing_info(js, stream: Stream) -> dict:
    mirror, sources = js.sourcing.info(stream)
    out = {}
    if mirror is not None:
        out["mirror"] = mirror
    if sources:
        out["sources"] = sources
    return out


def _same_config(old: api.StreamConfig, new: api.StreamConfig) -> bool:
    a = msgspec.structs.replace(old, metadata=msgspec.UNSET)
    b = msgspec.structs.replace(new, metadata=msgspec.UNSET)
    return a == b and _user_meta(old) == _user_meta(new)


def _user_meta(cfg: api.StreamConfig) -> dict:
    meta = cfg.metadata if isinstance(cfg.metadata, dict) else {}
    return {k: v for k, v in meta.items() if not k.startswith("_nats.")}


def _info_like(js, stream: Stream, resp_cls, **extra):
    block = js.cluster_block(stream.name)
    if block is not None:
        extra["cluster"] = block
    return resp_cls(config=sc.with_version_metadata(stream.config), created=api.rfc3339(stream.created_ns),
                    state=stream_state(js, stream), ts=api.rfc3339(_now()), **_sourcing_info(js, stream),
                    **extra)


async def _update(js, name: str, payload: bytes):
    stream = js.streams.get(name)
    cfg = prepare_update(js, name, payload, stream.config if stream is not None else None, _lookup(js),
                         [s.config for s in js.streams.values()])
    return await update_local(js, stream, cfg)


def prepare_update(js, name: str, payload: bytes, old: api.StreamConfig | None, lookup, others,
                   clustered: bool = False) -> api.StreamConfig:
    """The config a STREAM.UPDATE asks for, checked against the current one, or JSError."""
    cfg = _decode_config(payload)
    if cfg.name != name:
        raise errors.stream_mismatch()
    if old is None:
        raise errors.stream_not_found()
    cfg = sc.normalize(cfg, lookup, clustered)
    sc.check_supported(cfg)
    sc.check_update(old, cfg)
    sc.check_overlap(cfg, others)
    js.check_reservation(cfg)
    sc.apply_seal(cfg)
    return cfg


async def update_local(js, stream: Stream, cfg: api.StreamConfig):
    old = stream.config
    stream.update(cfg, _now())
    js.sourcing.attach(stream)
    js.consumers.stream_purged(stream)
    if (old.subject_list() != cfg.subject_list() or old.allow_direct != cfg.allow_direct
            or old.subject_transform != cfg.subject_transform):
        js.resubscribe(stream)
    js.save_meta(stream)
    await js.sync_stream(stream)
    js.kick_timer()
    return _info_like(js, stream, api.StreamUpdateResponse)


async def _info(js, name: str, payload: bytes):
    req = _decode(api.StreamInfoRequest, payload, api.StreamInfoRequest())
    stream = js.streams.get(name)
    if stream is None:
        raise errors.stream_not_found()
    state = stream_state(js, stream, req.subjects_filter)
    if req.deleted_details and isinstance(state.num_deleted, int):
        state.deleted = stream.deleted_seqs()
    total = limit = 0
    if isinstance(state.subjects, dict):
        total, limit = len(state.subjects), SUBJECTS_LIMIT
    return api.StreamInfoResponse(total=total, limit=limit, config=sc.with_version_metadata(stream.config),
                                  created=api.rfc3339(stream.created_ns), state=state,
                                  cluster=js.cluster_block(name) or api.ClusterInfo(leader=js.server.server_name),
                                  ts=api.rfc3339(_now()),
                                  **_sourcing_info(js, stream))


async def _delete(js, name: str, payload: bytes):
    stream = js.streams.get(name)
    if stream is None:
        raise errors.stream_not_found()
    await delete_local(js, stream)
    return api.StreamDeleteResponse(success=True)


async def delete_local(js, stream: Stream) -> None:
    name = stream.name
    replica = js.replica(name)
    await js.detach(stream)
    if replica is not None:
        js.cluster.close_replica(replica)
    js.forget_meta(name)
    js.consumers.stream_deleted(stream)
    stream.store.delete()
    js.remove_files(name)


async def _purge(js, name: str, payload: bytes):
    stream = js.streams.get(name)
    if stream is None:
        raise errors.stream_not_found()
    req = _decode(api.StreamPurgeRequest, payload, api.StreamPurgeRequest())
    replica = js.replica(name)
    if replica is not None:  # every replica purges when the entry applies
        if stream.config.sealed:
            raise errors.sealed()
        if stream.config.deny_purge:
            raise errors.purge_failed("stream purge not permitted")
        if req.seq > 0 and req.keep > 0:
            raise errors.bad_request()
        from broker.jetstream.cluster import streamsm

        purged = await replica.propose_wait(streamsm.Purge(req.filter, req.seq, req.keep))
        return api.StreamPurgeResponse(success=True, purged=purged)
    purged = stream.purge(req.filter, req.seq, req.keep)
    js.consumers.stream_purged(stream)
    await js.sync_stream(stream)
    return api.StreamPurgeResponse(success=True, purged=purged)


# ---- names / list ----
def _matching_streams(js, subject_filter: str) -> list[Stream]:
    out = []
    for name in sorted(js.streams):
        stream = js.streams[name]
        if subject_filter and subject_filter != ">":
            if not any(subj.overlaps(s, subject_filter) for s in stream.config.subject_list()):
                continue
        out.append(stream)
    return out


async def _names(js, _name: str, payload: bytes):
    req = _decode(api.StreamNamesRequest, payload, api.StreamNamesRequest(), "JSApiStreamNamesRequest")
    found = _matching_streams(js, req.subject)
    offset = min(max(0, req.offset), len(found))  # nats-server clamps the offset to the total
    page = found[offset:offset + NAMES_LIMIT]
    return api.StreamNamesResponse(total=len(found), offset=offset,
                                   streams=[s.name for s in page] or None)


async def _list(js, _name: str, payload: bytes):
    req = _decode(api.StreamNamesRequest, payload, api.StreamNamesRequest(), "JSApiStreamListRequest")
    found = _matching_streams(js, req.subject)
    offset = min(max(0, req.offset), len(found))
    page = found[offset:offset + LIST_LIMIT]
    items = [list_item(js, s) for s in page]
    return api.StreamListResponse(total=len(found), offset=offset, streams=items)


def list_item(js, s: Stream) -> api.StreamListItem:
    block = js.cluster_block(s.name)
    extra = {"cluster": block} if block is not None else {}
    return api.StreamListItem(config=sc.sorted_metadata(s.config), created=api.rfc3339(s.created_ns),
                              state=stream_state(js, s), ts=api.rfc3339(_now()), **_sourcing_info(js, s), **extra)


# ---- single messages ----
def find_msg(stream: Stream, req: api.MsgGetRequest):
    """The message a get request names, or None; JSError for a malformed request."""
    store = stream.store
    if req.last_by_subj:
        if req.seq or req.next_by_subj:
            raise errors.bad_request()
        return store.last_msg(req.last_by_subj)
    if req.next_by_subj:
        return store.next_msg(max(req.seq, 1), req.next_by_subj)
    if req.seq > 0:
        return store.get(req.seq)
    raise errors.bad_request()


async def _msg_get(js, name: str, payload: bytes):
    req = _decode(api.MsgGetRequest, payload, api.MsgGetRequest(), extra=_MSG_GET_EXTRA)
    if req.batch > 0 or req.max_bytes > 0:  # nats-server checks the request before the stream
        raise errors.bad_request()
    stream = js.streams.get(name)
    if stream is None:
        raise errors.stream_not_found()
    _fresh(js, stream)
    msg = find_msg(stream, req)
    if msg is None:
        raise errors.no_message_found()
    out = api.StoredMessage(subject=msg.subject, seq=msg.seq, time=api.rfc3339(msg.ts))
    if msg.hdr:
        out.hdrs = msg.hdr
    if msg.data:
        out.data = msg.data
    return api.StreamMsgGetResponse(message=out)


async def _msg_delete(js, name: str, payload: bytes):
    stream = js.streams.get(name)
    if stream is None:
        raise errors.stream_not_found()
    req = _decode(api.MsgDeleteRequest, payload, api.MsgDeleteRequest())
    if req.seq <= 0:
        raise errors.bad_request()
    try:
        replica = js.replica(name)
        if replica is not None:  # every replica deletes it when the entry applies
            from broker.jetstream.cluster import streamsm

            await replica.propose_wait(streamsm.DeleteMsg(req.seq, req.no_erase))
            return api.StreamMsgDeleteResponse(success=True)
        stream.delete_msg(req.seq)
    except errors.JSError as e:
        if e.err_code == 10057 and e.description != "message delete not permitted":
            e.counts_as_error = False
        raise
    js.consumers.stream_purged(stream)
    await js.sync_stream(stream)
    return api.StreamMsgDeleteResponse(success=True)


_HANDLERS = {
    "CREATE": (_create, api.StreamCreateResponse, True, {}),
    "UPDATE": (_update, api.StreamUpdateResponse, True, {}),
    "INFO": (_info, api.StreamInfoResponse, True, {}),
    "DELETE": (_delete, api.StreamDeleteResponse, True, {}),
    "PURGE": (_purge, api.StreamPurgeResponse, True, {}),
    "NAMES": (_names, api.StreamNamesResponse, False, {}),
    "LIST": (_list, api.StreamListResponse, False, {}),
    "MSG.GET": (_msg_get, api.StreamMsgGetResponse, True, {}),
    "MSG.DELETE": (_msg_delete, api.StreamMsgDeleteResponse, True, {}),
}


# ---- DIRECT.GET ----
NOT_FOUND = headers.build(None, "404", "Message Not Found")
BAD_REQUEST = headers.build(None, "408", "Bad Request")
EMPTY_REQUEST = headers.build(None, "408", "Empty Request")
MALFORMED_REQUEST = headers.build(None, "408", "Malformed Request")


def direct_headers(stream: Stream, msg) -> bytes:
    extra = (f"Nats-Stream: {stream.name}\r\nNats-Subject: {msg.subject}\r\n"
             f"Nats-Sequence: {msg.seq}\r\nNats-Time-Stamp: {api.rfc3339(msg.ts)}\r\n\r\n").encode()
    if msg.hdr and msg.hdr.endswith(b"\r\n\r\n"):
        return msg.hdr[:-2] + extra
    return b"NATS/1.0\r\n" + extra


def direct_get_handler(js, stream: Stream, name: str = ""):
    """DIRECT.GET for `stream`, subscribed under its own name or (a mirror with
    mirror_direct) under its origin's `name`; answers come from `stream` either way."""
    prefix_len = len(f"$JS.API.DIRECT.GET.{name or stream.name}")

    def on_direct(subject: str, reply: str, hdr: bytes | None, payload: bytes) -> None:
        if not reply:
            return
        try:
            answer(subject, reply, payload)
        except Exception:  # our bug: never let it reach the publisher's connection
            log.exception("DIRECT.GET on %s failed", subject)

    def answer(subject: str, reply: str, payload: bytes) -> None:
        publish = js.server.publish
        last_subject = subject[prefix_len + 1:]
        if last_subject:
            req = api.MsgGetRequest(last_by_subj=last_subject)
        elif not payload:
            publish(reply, "", EMPTY_REQUEST, b"")
            return
        else:
            try:  # nats-server uses plain json.Unmarshal here: unknown fields are ignored
                req = gojson.decode(payload, api.MsgGetRequest, strict=False, go=_GO_REQ[api.MsgGetRequest])
            except (gojson.GoJSONError, msgspec.ValidationError):
                publish(reply, "", MALFORMED_REQUEST, b"")
                return
            if not (req.seq or req.last_by_subj or req.next_by_subj):
                publish(reply, "", EMPTY_REQUEST, b"")
                return
        js.expire_stream(stream, _now())
        try:
            msg = find_msg(stream, req)
        except errors.JSError:
            publish(reply, "", BAD_REQUEST, b"")
            return
        if msg is None:
            publish(reply, "", NOT_FOUND, b"")
            return
        publish(reply, "", direct_headers(stream, msg), msg.data)

    return on_direct


# ---- republish ----
def _map_subject(src: str, dest: str, subject: str) -> str:
    """Map `subject` (matched by `src`) onto `dest`, wildcards filled positionally."""
    if "*" not in dest and ">" not in dest:
        return dest
    parts = subject.split(".")
    src_toks = src.split(".")
    captured: list[str] = []
    for i, tok in enumerate(src_toks):
        if tok == "*":
            captured.append(parts[i])
        elif tok == ">":
            captured.append(".".join(parts[i:]))
    out = []
    k = 0
    for tok in dest.split("."):
        if tok in ("*", ">") and k < len(captured):
            out.append(captured[k])
            k += 1
        else:
            out.append(tok)
    return ".".join(out)


def _republish_transform(src: str, dest: str):
    try:
        return transform.Transform(src, dest)
    except transform.MappingError:  # a config stored before these were checked
        return None


def republish(js, stream: Stream, stored: list[tuple[int, str]]) -> None:
    rp = stream.config.republish
    src = rp.get("src") or ">"
    dest = rp.get("dest") or ""
    headers_only = bool(rp.get("headers_only"))
    if not dest:
        return
    mapping = _republish_transform(src, dest)
    for seq, subject in stored:
        if not subj.match(src, subject):
            continue
        msg = stream.store.get(seq)
        if msg is None:
            continue
        prev = stream.store.last_msg(subject)
        prev_seq = 0
        if prev is not None and prev.seq != seq:
            prev_seq = prev.seq
        elif prev is not None:
            older = [s for s in stream.store.subject_seqs(subject) if s < seq]
            prev_seq = older[-1] if older else 0
        extra = (f"Nats-Stream: {stream.name}\r\nNats-Subject: {subject}\r\nNats-Sequence: {seq}\r\n"
                 f"Nats-Time-Stamp: {api.rfc3339(msg.ts)}\r\nNats-Last-Sequence: {prev_seq}\r\n")
        if headers_only:
            extra += f"Nats-Msg-Size: {len(msg.data)}\r\n"
        base = msg.hdr[:-2] if msg.hdr and msg.hdr.endswith(b"\r\n\r\n") else b"NATS/1.0\r\n"
        target = mapping.match(subject) if mapping is not None else None
        js.server.publish(target or _map_subject(src, dest, subject), "", base + extra.encode() + b"\r\n",
                          b"" if headers_only else msg.data)


# ---- /jsz details ----
def account_detail(js, query: dict) -> dict:
    mem, disk, _, _, _ = js.usage()
    detail = {"name": "$G", "id": "$G", "memory": mem, "storage": disk,
              "reserved_memory": 0, "reserved_storage": 0, "accounts": 0, "ha_assets": 0,
              "api": {"level": 0, "total": js.api_total, "errors": js.api_errors}}
    streams = query.get("streams")
    if isinstance(streams, list):
        streams = streams[0] if streams else ""
    if str(streams).lower() in ("1", "true"):
        detail["stream_detail"] = [
            {"name": s.name, "created": api.rfc3339(s.created_ns),
             "cluster": {"leader": js.server.server_name},
             "state": msgspec.to_builtins(stream_state(js, s))}
            for s in _matching_streams(js, "")]
    return detail
