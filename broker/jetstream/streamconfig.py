"""Stream config checks and defaults, as nats-server's checkStreamCfg applies them.

`normalize(cfg)` returns a new config with server defaults filled in or raises JSError
with nats-server's code and text; `check_update(old, new)` adds the rules for updates;
`check_overlap(cfg, others)` rejects subjects another stream already captures.
"""

from __future__ import annotations

import re

import msgspec

from broker import subjects as subj
from broker.jetstream import errors
from broker.jetstream import transform as tr
from broker.jetstream.api import API_LEVEL, SERVER_VERSION, StreamConfig

DEFAULT_DUPLICATE_WINDOW_NS = 120_000_000_000
MIN_WINDOW_NS = 100_000_000
MAX_NAME_LEN = 255
MAX_DESCRIPTION_LEN = 4096
_RETENTION = ("limits", "interest", "workqueue")
_DISCARD = ("old", "new")
_STORAGE = ("file", "memory")
_COMPRESSION = ("none", "s2")
_BAD_NAME_CHARS = frozenset(".*>\\/ \t\r\n")


def valid_stream_name(name: str) -> bool:
    return bool(name) and not any(c in _BAD_NAME_CHARS for c in name)


def _unmarshal_error(value: str) -> errors.JSError:
    return errors.invalid_json('can not unmarshal "' + msgspec.json.encode(value).decode()
                               .replace("\\", "\\\\").replace('"', '\\"') + '"')


def _check_enums(cfg: StreamConfig) -> None:
    for value, allowed in ((cfg.retention, _RETENTION), (cfg.discard, _DISCARD),
                           (cfg.storage, _STORAGE), (cfg.compression, _COMPRESSION)):
        if value not in allowed:
            raise _unmarshal_error(value)


def _fill_limits(cfg: StreamConfig) -> None:
    invalid = errors.stream_invalid_config
    if cfg.num_replicas == 0:
        cfg.num_replicas = 1
    if cfg.num_replicas < 0:
        raise JSErrorReplicasNegative()
    if cfg.num_replicas > 5:
        raise invalid("maximum replicas is 5")
    for name in ("max_msgs", "max_msgs_per_subject", "max_bytes", "max_msg_size", "max_consumers"):
        if getattr(cfg, name) <= 0:  # 0 and any negative value mean "unlimited"
            setattr(cfg, name, -1)
    if cfg.max_age < 0:
        raise invalid("max age can not be negative")
    if 0 < cfg.max_age < MIN_WINDOW_NS:
        raise invalid("max age needs to be >= 100ms")
    if not cfg.duplicate_window:
        cfg.duplicate_window = 0
    if cfg.duplicate_window == 0 and cfg.mirror is msgspec.UNSET and not cfg.sources:
        window = DEFAULT_DUPLICATE_WINDOW_NS
        cfg.duplicate_window = cfg.max_age if 0 < cfg.max_age < window else window
    if cfg.duplicate_window < 0:
        raise invalid("duplicates window can not be negative")
    if cfg.max_age != 0 and cfg.duplicate_window > cfg.max_age:
        raise invalid("duplicates window can not be larger then max age")
    if 0 < cfg.duplicate_window < MIN_WINDOW_NS:
        raise invalid("duplicates window needs to be >= 100ms")


def JSErrorReplicasNegative() -> errors.JSError:  # noqa: N802 - mirrors the catalogue name
    return errors.JSError(400, 10133, "replicas count cannot be negative")


def _check_flags(cfg: StreamConfig) -> None:
    invalid = errors.stream_invalid_config
    if cfg.deny_purge and cfg.allow_rollup_hdrs:
        raise invalid("roll-ups require the purge permission")
    if cfg.discard_new_per_subject is True:
        if cfg.discard != "new":
            raise invalid("discard new per subject requires discard new policy to be set")
        if cfg.max_msgs_per_subject <= 0:
            raise invalid("discard new per subject requires max msgs per subject > 0")
    marker = cfg.subject_delete_marker_ttl
    if isinstance(marker, int) and marker != 0:
        if marker < 0:
            raise invalid("subject delete marker TTL must not be negative")
        if marker < 1_000_000_000:
            raise invalid("subject delete marker TTL must be at least 1 second")
        if not cfg.allow_msg_ttl:
            raise invalid("subject delete marker cannot be set if message TTLs are disabled")
        if not cfg.allow_rollup_hdrs:
            raise invalid("subject delete marker cannot be set if roll-ups are disabled")


def _check_subjects(cfg: StreamConfig) -> None:
    invalid = errors.stream_invalid_config
    subjects = cfg.subject_list()
    if not subjects and cfg.mirror is msgspec.UNSET and not cfg.sources:
        subjects = [cfg.name]
        cfg.subjects = subjects
    no_ack = cfg.no_ack is True
    for i, s in enumerate(subjects):
        if not subj.valid_subject(s):
            raise invalid("invalid subject")
        if not no_ack:
            if s == ">":
                raise invalid("capturing all subjects requires no-ack to be true")
            if subj.overlaps(s, "$JS.API.>"):
                raise invalid("subjects that overlap with jetstream api require no-ack to be true")
            if subj.overlaps(s, "$SYS.>"):
                raise invalid("subjects that overlap with system api require no-ack to be true")
        for other in subjects[i + 1:]:
            if subj.overlaps(other, s):
                raise invalid(f'subject "{s}" overlaps with "{other}"')


def normalize(cfg: StreamConfig, lookup=None, clustered: bool = False) -> StreamConfig:
    """A copy of `cfg` with nats-server's defaults, or JSError for an invalid config.
    `lookup(name)` gives another stream's config (or None): mirror and source checks
    look at the streams they copy from, as nats-server does. A cluster checks replicas
    against its peers itself (`clustered`)."""
    cfg = msgspec.structs.replace(cfg)
    invalid = errors.stream_invalid_config
    if not valid_stream_name(cfg.name):
        raise invalid("stream name is required and can not contain '.', '*', '>', '\\', '/'")
    if len(cfg.name) > MAX_NAME_LEN:
        raise invalid(f"stream name is too long, maximum allowed is {MAX_NAME_LEN}")
    if cfg.description == "":
        cfg.description = msgspec.UNSET
    elif isinstance(cfg.description, str) and len(cfg.description) > MAX_DESCRIPTION_LEN:
        raise invalid(f"stream description is too long, maximum allowed is {MAX_DESCRIPTION_LEN}")
    _check_enums(cfg)
    _fill_limits(cfg)
    if cfg.num_replicas > 1 and not clustered:
        raise errors.replicas_not_supported()
    _check_flags(cfg)
    _check_sourcing(cfg, lookup or (lambda name: None))
    _check_subjects(cfg)
    _check_transform(cfg)
    _check_republish(cfg)
    if not cfg.duplicate_window:
        cfg.duplicate_window = msgspec.UNSET  # mirrors and sourcing streams: omitted, as nats-server
    if cfg.discard_new_per_subject is False:
        cfg.discard_new_per_subject = msgspec.UNSET
    if cfg.no_ack is False:
        cfg.no_ack = msgspec.UNSET
    if cfg.first_seq == 0:
        cfg.first_seq = msgspec.UNSET
    meta = dict(cfg.metadata) if isinstance(cfg.metadata, dict) else {}
    for key in ("_nats.level", "_nats.ver"):
        meta.pop(key, None)
    meta["_nats.req.level"] = str(_required_level(cfg))
    cfg.metadata = meta
    return cfg


def _required_level(cfg: StreamConfig) -> int:
    """The API level a config needs (ADR-44), as nats-server records it."""
    level = 0
    marker = cfg.subject_delete_marker_ttl
    if cfg.allow_msg_ttl or (isinstance(marker, int) and marker > 0):
        level = 1
    if (cfg.flag("allow_msg_counter") or cfg.flag("allow_atomic") or cfg.flag("allow_msg_schedules")
            or cfg.persist_mode == "async"):
        level = 2
    if cfg.flag("allow_batched"):
        level = 4
    return level


def with_version_metadata(cfg: StreamConfig) -> StreamConfig:
    """The config as create/info/update replies show it (server level and version added)."""
    meta = dict(cfg.metadata) if isinstance(cfg.metadata, dict) else {}
    meta["_nats.level"] = str(API_LEVEL)
    meta["_nats.ver"] = SERVER_VERSION
    return msgspec.structs.replace(cfg, metadata=dict(sorted(meta.items())))


def sorted_metadata(cfg: StreamConfig) -> StreamConfig:
    meta = dict(cfg.metadata) if isinstance(cfg.metadata, dict) else {}
    return msgspec.structs.replace(cfg, metadata=dict(sorted(meta.items())))


def check_create(cfg: StreamConfig) -> None:
    if cfg.sealed:
        raise errors.stream_invalid_config("stream configuration for create can not be sealed")


def check_supported(cfg: StreamConfig) -> None:
    """Refuse what this server does not implement rather than accept it and ignore it."""
    for src in source_list(cfg):
        if "external" in src:
            raise errors.stream_invalid_config("external sources and mirrors (other accounts or "
                                               "domains) are not supported by this server")
        if "consumer" in src:
            raise errors.stream_invalid_config("sourcing through a durable consumer is not "
                                               "supported by this server")
    for name in ("allow_msg_counter", "allow_atomic", "allow_msg_schedules", "allow_batched"):
        if cfg.flag(name):
            raise errors.stream_invalid_config(f"{name} is not supported by this server")


def check_update(old: StreamConfig, new: StreamConfig) -> None:
    """Rules nats-server applies to an update on top of `normalize` (texts as it sends them)."""
    invalid = errors.stream_invalid_config
    if old.sealed and not new.sealed:
        raise invalid("stream configuration update can not unseal a sealed stream")
    if old.storage != new.storage:
        raise invalid("stream configuration update can not change storage type")
    if old.retention != new.retention and "workqueue" in (old.retention, new.retention):
        raise invalid("stream configuration update can not change retention policy to/from workqueue")
    if old.deny_delete and not new.deny_delete:
        raise invalid("stream configuration update can not cancel deny message deletes")
    if old.deny_purge and not new.deny_purge:
        raise invalid("stream configuration update can not cancel deny purge")
    # Removing the mirror promotes the stream to a normal one; changing it is refused.
    if new.mirror is not msgspec.UNSET and new.mirror != old.mirror:
        raise errors.JSError(400, 10055, "stream mirror configuration can not be updated")


def apply_seal(cfg: StreamConfig) -> None:
    """A sealed stream also denies deletes and purges (nats-server sets both on seal)."""
    if cfg.sealed:
        cfg.discard = "new"
        cfg.deny_delete = True
        cfg.deny_purge = True


def check_overlap(cfg: StreamConfig, others: list[StreamConfig]) -> None:
    mine = cfg.subject_list()
    for other in others:
        if other.name == cfg.name:
            continue
        for a in other.subject_list():
            for b in mine:
                if subj.overlaps(a, b):
                    raise errors.stream_subject_overlap()


# ---- mirror, sources and subject transforms ----
_SOURCE_KEYS = ("name", "opt_start_seq", "opt_start_time", "filter_subject", "subject_transforms",
                "external", "consumer")


def source_list(cfg: StreamConfig) -> list[dict]:
    """The mirror (as a one-element list) or the sources of a config."""
    if isinstance(cfg.mirror, dict):
        return [cfg.mirror]
    return list(cfg.sources) if isinstance(cfg.sources, list) else []


def _bad_json(field: str, want: str, value) -> errors.JSError:
    kind = {bool: "bool", int: "number", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), "value")
    return errors.invalid_json(f"json: cannot unmarshal {kind} into Go struct field {field} of type {want}")


def _canon_transform(raw, field: str) -> dict:
    if not isinstance(raw, dict):
        raise _bad_json(field, "server.SubjectTransformConfig", raw)
    out = {}
    for key in ("src", "dest"):
        value = raw.get(key)
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise _bad_json(f"{field}.{key}", "string", value)
        out[key] = value
    return out


def _canon_source(raw, field: str) -> dict:
    """A StreamSource as nats-server echoes it: Go's field order, empty fields left out."""
    if not isinstance(raw, dict):
        raise _bad_json(field, "server.StreamSource", raw)
    out: dict = {}
    for key in _SOURCE_KEYS:
        value = raw.get(key)
        if value is None:
            continue
        if key in ("name", "filter_subject", "opt_start_time"):
            if not isinstance(value, str):
                raise _bad_json(f"{field}.{key}", "string" if key != "opt_start_time" else "time.Time", value)
            if value and key == "opt_start_time":
                value = _go_time_text(value, f"{field}.{key}")
            if value:
                out[key] = value
        elif key == "opt_start_seq":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise _bad_json(f"{field}.{key}", "uint64", value)
            if value:
                out[key] = value
        elif key == "subject_transforms":
            if not isinstance(value, list):
                raise _bad_json(f"{field}.{key}", "[]server.SubjectTransformConfig", value)
            if value:
                out[key] = [_canon_transform(t, f"{field}.{key}") for t in value]
        elif key == "external":
            if not isinstance(value, dict):
                raise _bad_json(f"{field}.{key}", "server.ExternalStream", value)
            out[key] = {"api": value.get("api") or "", "deliver": value.get("deliver") or ""}
        else:
            if not isinstance(value, dict):
                raise _bad_json(f"{field}.{key}", "server.StreamConsumerSource", value)
            c = {k: value[k] for k in ("name", "deliver_subject") if value.get(k)}
            out[key] = c
    if "name" not in out:
        out["name"] = ""
    return {"name": out.pop("name"), **out}


_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})$")


def _go_time_text(value: str, field: str) -> str:
    """A time as Go's encoding/json writes it back (RFC 3339, fraction without trailing zeros)."""
    m = _RFC3339.match(value)
    if m is None:
        raise errors.invalid_json(f'parsing time "{value}" as '
                                  f'"2006-01-02T15:04:05Z07:00": cannot parse "{value}" as "2006"')
    base, frac, zone = m.groups()
    frac = (frac or "")[:9].rstrip("0")
    return base + ("." + frac if frac else "") + ("Z" if zone == "+00:00" else zone)


def index_name(src: dict) -> str:
    """nats-server's per-source index name: '<stream> <filters> <destinations>'."""
    name = src.get("name", "")
    ext = src.get("external")
    if isinstance(ext, dict):
        name += ":" + _go_hash(ext.get("api", ""))
    if isinstance(src.get("consumer"), dict):
        name += ":C=" + _go_hash(src["consumer"].get("name", ""))
    transforms = src.get("subject_transforms") or []
    if not transforms:
        source, dest = src.get("filter_subject") or ">", ">"
    else:
        source = "\f".join(t.get("src") or ">" for t in transforms)
        dest = "\f".join(t.get("dest") or ">" for t in transforms)
    return " ".join((name, source, dest))


def _go_hash(text: str) -> str:
    import hashlib
    digits = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    return "".join(digits[b % 62] for b in hashlib.sha256(text.encode()).digest()[:8])


def stream_identity(created_ns: int) -> str:
    """The identity nats-server puts in Nats-Stream-Source: a hash of the creation time."""
    from broker.jetstream.api import rfc3339
    return _go_hash(rfc3339(created_ns))


def _bad_link_consumer(link: dict, consumer: dict) -> bool:
    """A mirror's or source's `consumer` block nats-server refuses: a bad name or deliver
    subject, or combined with a start position or filter on the link itself."""
    deliver = consumer.get("deliver_subject", "")
    return bool(not _valid_asset_name(consumer.get("name", "")) or subj.has_wildcard(deliver)
                or not subj.valid_subject(deliver) or link.get("opt_start_seq")
                or link.get("opt_start_time") or link.get("filter_subject"))


def _valid_asset_name(name: str) -> bool:
    return valid_stream_name(name) and len(name) <= MAX_NAME_LEN


def _check_sourcing(cfg: StreamConfig, lookup) -> None:
    """nats-server's checks of mirror and sources, in its order and with its errors."""
    E = errors.JSError
    if cfg.mirror is not msgspec.UNSET:
        cfg.mirror = _canon_source(cfg.mirror, "StreamConfig.mirror")
    if cfg.sources is not msgspec.UNSET:
        if not isinstance(cfg.sources, list):
            raise _bad_json("StreamConfig.sources", "[]*server.StreamSource", cfg.sources)
        cfg.sources = [_canon_source(s, "StreamConfig.sources") if s is not None else None
                       for s in cfg.sources]
        if not cfg.sources:
            cfg.sources = msgspec.UNSET
    stream_subjects: list[str] = []
    delivery_prefixes: list[str] = []
    api_prefixes: list[str] = []
    mirror = cfg.mirror if isinstance(cfg.mirror, dict) else None
    if mirror is not None:
        if isinstance(cfg.first_seq, int) and cfg.first_seq > 0:
            raise E(400, 10143, "stream mirrors can not have first sequence configured")
        if cfg.subject_list():
            raise E(400, 10034, "stream mirrors can not contain subjects")
        if cfg.sources:
            raise E(400, 10031, "stream mirrors can not also contain other sources")
        for flag, code, what in (("allow_msg_counter", 10173, "calculate counters"),
                                 ("allow_atomic", 10198, "use atomic publishing"),
                                 ("allow_batched", 10209, "use batch publishing"),
                                 ("allow_msg_schedules", 10186, "schedule messages")):
            if cfg.flag(flag):
                raise E(400, code, f"stream mirrors can not also {what}")
        consumer = mirror.get("consumer")
        if consumer is not None and _bad_link_consumer(mirror, consumer):
            raise E(400, 10213, "stream mirror consumer config is invalid")
        transforms = mirror.get("subject_transforms") or []
        if mirror.get("filter_subject") and transforms:
            raise E(400, 10150, "mirror with multiple subject transforms cannot also have a single subject filter")
        marker = cfg.subject_delete_marker_ttl
        if isinstance(marker, int) and marker > 0:
            raise errors.stream_invalid_config("subject delete markers forbidden on mirrors")
        for i, t in enumerate(transforms):
            if t["src"] and not subj.valid_subject(t["src"]):
                raise E(400, 10151, f"mirror transform source: invalid subject {t['src']}")
            try:
                tr.validate_mapping(t["src"], t["dest"])
            except tr.MappingError as e:
                raise E(400, 10154, f"mirror transform: {e}") from None
            for j, other in enumerate(transforms):
                if i != j and subj.overlaps(t["src"] or ">", other["src"] or ">"):
                    raise E(400, 10152, "mirror subject filters can not overlap")
        if "external" not in mirror:
            if not _valid_asset_name(mirror["name"]):
                raise E(400, 10142, "mirrored stream name is invalid")
            origin = lookup(mirror["name"])
            if origin is not None:
                stream_subjects += origin.subject_list()
                if 0 < cfg.max_msg_size < origin.max_msg_size:
                    raise E(400, 10030, "stream mirror must have max message size >= source")
                cfg.mirror_direct = origin.allow_direct
        else:
            if mirror["external"]["deliver"]:
                delivery_prefixes.append(mirror["external"]["deliver"])
            if mirror["external"]["api"]:
                api_prefixes.append(mirror["external"]["api"])
    sources = cfg.sources if isinstance(cfg.sources, list) else []
    if sources and cfg.flag("allow_msg_schedules"):
        raise E(400, 10187, "stream source can not also schedule messages")
    inames: set[str] = set()
    cnames: set[str] = set()
    for src in sources:
        if src is None or not _valid_asset_name(src["name"]):
            raise E(400, 10141, "sourced stream name is invalid")
        iname = index_name(src)
        if iname in inames:
            raise E(400, 10140, "duplicate source configuration detected")
        inames.add(iname)
        transforms = src.get("subject_transforms") or []
        if src.get("filter_subject") and transforms:
            raise E(400, 10144, "source with multiple subject transforms cannot also have a single subject filter")
        for t in transforms:
            if t["src"] and not subj.valid_subject(t["src"]):
                raise E(400, 10145, f"source transform source: invalid subject {t['src']}")
            try:
                tr.validate_mapping(t["src"], t["dest"])
            except tr.MappingError as e:
                raise E(400, 10146, f"source transform: {e}") from None
        for i, t in enumerate(transforms):
            for j, other in enumerate(transforms):
                if i != j and subj.subset(t["src"], other["src"]):
                    raise E(400, 10147, "source filters can not overlap")
        consumer = src.get("consumer")
        if consumer is not None:
            if _bad_link_consumer(src, consumer):
                raise E(400, 10215, "stream source consumer config is invalid")
            cname = src["name"] + " " + consumer.get("name", "")
            if cname in cnames:
                raise E(400, 10216, "duplicate stream source consumer detected")
            cnames.add(cname)
        if "external" not in src:
            origin = lookup(src["name"])
            if origin is not None:
                stream_subjects += origin.subject_list()
                if 0 < cfg.max_msg_size < origin.max_msg_size:
                    raise E(400, 10046, "stream source must have max message size >= target")
        else:
            if src["external"]["deliver"]:
                delivery_prefixes.append(src["external"]["deliver"])
            if src["external"]["api"]:
                api_prefixes.append(src["external"]["api"])
    for pfx in delivery_prefixes:
        if not subj.valid_literal(pfx):
            raise E(400, 10024, f"stream external delivery prefix {pfx} must not contain wildcards")
        for s in stream_subjects:
            if subj.overlaps(s, f"{pfx}.{s}"):
                raise E(400, 10022, f"stream external delivery prefix {pfx} overlaps with stream subject {s}")
    for pfx in api_prefixes:
        if not subj.valid_literal(pfx):
            raise errors.stream_invalid_config(
                f"stream external api prefix {msgspec.json.encode(pfx).decode()} must be a valid subject without wildcards")
        if subj.overlaps(pfx, "$JS.API"):
            raise E(400, 10021, f"stream external api prefix {pfx} must not overlap with $JS.API")
    _check_cycles(cfg, lookup)


def _check_cycles(cfg: StreamConfig, lookup) -> None:
    to_visit = [cfg]
    visited: set[str] = set()
    while to_visit:
        cur = to_visit.pop(0)
        visited.add(cur.name)
        for src in cur.sources if isinstance(cur.sources, list) else []:
            if src is None or "external" in src:
                continue
            if src["name"] in visited:
                flt = src.get("filter_subject", "")
                if not flt or any(subj.overlaps(s, flt) for s in cur.subject_list()):
                    raise errors.stream_invalid_config("detected cycle")
            else:
                other = lookup(src["name"])
                if other is not None:
                    to_visit.append(other)
        m = cur.mirror if isinstance(cur.mirror, dict) else None
        if m is not None and "external" not in m:
            if m["name"] in visited:
                raise errors.stream_invalid_config("detected cycle")
            other = lookup(m["name"])
            if other is not None:
                to_visit.append(other)


def _check_republish(cfg: StreamConfig) -> None:
    """nats-server's republish checks (after the subject transform's, which can make a
    '>' to '>' republish an implicit one of the transformed subjects)."""
    rp = cfg.republish
    if not isinstance(rp, dict):
        return
    rp = dict(rp)
    if not rp.get("src"):
        rp["src"] = ">"
    dest = rp.get("dest") or ""
    t = cfg.subject_transform if isinstance(cfg.subject_transform, dict) else None
    subjects = cfg.subject_list()
    if dest == ">" and rp["src"] == ">" and t is not None and len(subjects) == 1 and t["src"] == subjects[0]:
        rp["src"] = rp["dest"] = dest = t["dest"]
    if any(subj.overlaps(dest, s) for s in subjects):
        raise errors.stream_invalid_config("stream configuration for republish destination forms a cycle")
    try:
        tr.Transform.build(rp["src"], dest)
    except tr.MappingError:
        raise errors.stream_invalid_config(f"stream configuration for republish with transform from "
                                           f"'{rp['src']}' to '{dest}' not valid") from None
    out = {"src": rp["src"], "dest": dest}  # Go's field order; headers_only only when set
    if rp.get("headers_only"):
        out["headers_only"] = rp["headers_only"]
    cfg.republish = out


def _check_transform(cfg: StreamConfig) -> None:
    if cfg.subject_transform is msgspec.UNSET:
        return
    t = _canon_transform(cfg.subject_transform, "StreamConfig.subject_transform")
    cfg.subject_transform = t
    if t["src"] and not subj.valid_subject(t["src"]):
        raise errors.JSError(400, 10155, f"stream transform source: invalid subject {t['src']}")
    try:
        tr.validate_mapping(t["src"], t["dest"])
    except tr.MappingError as e:
        raise errors.JSError(400, 10156, f"stream transform: {e}") from None
