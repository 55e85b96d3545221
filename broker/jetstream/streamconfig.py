"""Stream config checks and defaults, as nats-server's checkStreamCfg applies them.

`normalize(cfg)` returns a new config with server defaults filled in or raises JSError
with nats-server's code and text; `check_update(old, new)` adds the rules for updates;
`check_overlap(cfg, others)` rejects subjects another stream already captures.
"""

from __future__ import annotations

import msgspec

from broker import subjects as subj
from broker.jetstream import errors
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


def normalize(cfg: StreamConfig) -> StreamConfig:
    """A copy of `cfg` with nats-server's defaults, or JSError for an invalid config."""
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
    if cfg.num_replicas > 1:
        raise errors.replicas_not_supported()
    _check_flags(cfg)
    _check_subjects(cfg)
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
    for name in ("mirror", "sources", "subject_transform"):
        if getattr(cfg, name) not in (msgspec.UNSET, None, []):
            raise errors.stream_invalid_config(f"{name} is not supported by this server")
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
    if (old.mirror is msgspec.UNSET) != (new.mirror is msgspec.UNSET) or old.mirror != new.mirror:
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
