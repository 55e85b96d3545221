"""Consumer configuration: the JSON shape nats-server uses, validation and defaults (pure).

`normalize` turns a requested config into the one a consumer runs with, raising the
JSError nats-server answers for each invalid combination; field order and omission
of `ConsumerConfig` follow nats-server's JSON so responses compare equal.
"""

from __future__ import annotations

import calendar
import re
import time

import msgspec

from broker import subjects as subj
from broker.jetstream.errors import JSError

DEFAULT_ACK_WAIT_NS = 30_000_000_000
DEFAULT_MAX_ACK_PENDING = 1000
DEFAULT_MAX_WAITING = 512
DEFAULT_INACTIVE_NS = 5_000_000_000
DELIVER_POLICIES = ("all", "last", "new", "by_start_sequence", "by_start_time", "last_per_subject")
ACK_POLICIES = ("none", "all", "explicit")
PRIORITY_POLICIES = ("", "overflow", "prioritized", "pinned_client")
_GROUP = re.compile(r"^[a-zA-Z0-9/_=-]{1,16}$")
_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$")


class ConsumerConfig(msgspec.Struct, omit_defaults=True):
    """Field order and omission follow nats-server's JSON; None-defaults are the always-present fields."""
    durable_name: str = ""
    name: str = ""
    description: str = ""
    deliver_policy: str | None = None
    opt_start_seq: int = 0
    opt_start_time: str | None = None
    ack_policy: str | None = None
    ack_wait: int = 0
    max_deliver: int | None = None
    backoff: list[int] | None = None
    filter_subject: str = ""
    filter_subjects: list[str] | None = None
    replay_policy: str | None = None
    rate_limit_bps: int = 0
    sample_freq: str = ""
    max_waiting: int = 0
    max_ack_pending: int = 0
    flow_control: bool = False
    headers_only: bool = False
    max_batch: int = 0
    max_expires: int = 0
    max_bytes: int = 0
    deliver_subject: str = ""
    deliver_group: str = ""
    idle_heartbeat: int = 0
    inactive_threshold: int = 0
    num_replicas: int | None = None
    mem_storage: bool = False
    direct: bool = False
    metadata: dict[str, str] | None = None
    pause_until: str | None = None
    priority_groups: list[str] | None = None
    priority_policy: str = ""
    priority_timeout: int = 0


def cerr(code: int, err_code: int, text: str) -> JSError:
    return JSError(code, err_code, text)


def _policy_text(p: str) -> str:
    return {"all": "deliver all", "last": "deliver last", "new": "deliver new",
            "by_start_sequence": "deliver by start sequence", "by_start_time": "deliver by start time",
            "last_per_subject": "deliver last per subject"}[p]


def normalize(cfg: ConsumerConfig, stream_cfg) -> ConsumerConfig:
    """Validate a requested config and fill in nats-server's defaults; raises JSError."""
    c = msgspec.structs.replace(cfg)
    c.deliver_policy = c.deliver_policy or "all"
    c.ack_policy = c.ack_policy or "none"
    c.replay_policy = c.replay_policy or "instant"
    for value, allowed in ((c.deliver_policy, DELIVER_POLICIES), (c.ack_policy, ACK_POLICIES),
                           (c.replay_policy, ("instant", "original"))):
        if value not in allowed:
            raise cerr(400, 10025, f'invalid JSON: can not unmarshal "\\"{value}\\""')
    if c.priority_policy == "none":
        c.priority_policy = ""  # nats-server's zero value, omitted from its JSON
    if c.priority_policy not in PRIORITY_POLICIES:
        raise cerr(400, 10025, f'invalid JSON: unknown priority policy: "{c.priority_policy}"')
    if c.priority_timeout < 0:
        c.priority_timeout = 0
    if not c.priority_groups:
        c.priority_groups = None
    if c.num_replicas is None:
        c.num_replicas = 0
    if c.max_deliver is None or c.max_deliver == 0:
        c.max_deliver = -1
    push = bool(c.deliver_subject)
    if c.flow_control and not push:
        raise cerr(400, 10089, "consumer flow control requires a push based consumer")
    if c.flow_control and not c.idle_heartbeat:
        raise cerr(400, 10108, "consumer with flow control also needs heartbeats")
    if push and c.max_waiting:
        raise cerr(400, 10080, "consumer in push mode can not set max waiting")
    if not push and c.rate_limit_bps:
        raise cerr(400, 10086, "consumer in pull mode can not have rate limit set")
    if not push and c.idle_heartbeat:
        raise cerr(400, 10088, "consumer idle heartbeat requires a push based consumer")
    if c.backoff:
        if c.max_deliver != -1 and len(c.backoff) > c.max_deliver:
            raise cerr(400, 10116, "max deliver is required to be > length of backoff values")
        c.ack_wait = c.backoff[0]
    if c.ack_policy != "none" and not c.ack_wait:
        c.ack_wait = DEFAULT_ACK_WAIT_NS
    if c.ack_policy != "none" and not c.max_ack_pending:
        c.max_ack_pending = DEFAULT_MAX_ACK_PENDING
    if not push and not c.max_waiting:
        c.max_waiting = DEFAULT_MAX_WAITING
    if not c.durable_name and not c.inactive_threshold:
        c.inactive_threshold = DEFAULT_INACTIVE_NS
    _check_filters(c, stream_cfg)
    _check_start(c)
    if c.opt_start_time and not parse_time(c.opt_start_time):
        raise cerr(400, 10025, "invalid JSON: " + _time_error(c.opt_start_time))
    _check_priority(c)
    md = dict(c.metadata or {})
    needs_1 = c.pause_until or c.priority_policy or c.priority_timeout or c.priority_groups
    md["_nats.req.level"] = "1" if needs_1 else "0"  # API level the config needs (ADR-44)
    c.metadata = md
    return c


def _check_priority(c: ConsumerConfig) -> None:
    """Priority groups (ADR-42) as nats-server validates them; pinned_client is not served here."""
    if c.priority_policy:
        if c.deliver_subject:
            raise cerr(400, 10178, "priority groups can not be used with push consumers")
        if not c.priority_groups:
            raise cerr(400, 10159, "Setting PriorityPolicy requires at least one PriorityGroup to be set")
        for g in c.priority_groups:
            if not g:
                raise cerr(400, 10161, "Group name cannot be an empty string")
            if not _GROUP.match(g):
                raise cerr(400, 10162, "Valid priority group name must match A-Z, a-z, 0-9, -_/=)+ and may not "
                                       "exceed 16 characters")
        if c.priority_policy == "pinned_client":
            # Pin ids, Nats-Pin-Id, 423 replies, pinned TTL and CONSUMER.UNPIN are not implemented:
            # refuse rather than run it as something else.
            raise cerr(500, 10052, "priority policy pinned_client is not supported by this server")
    else:
        if c.priority_groups:
            raise cerr(400, 10196, "consumer can not have priority groups when policy is none")
        if c.priority_timeout > 0:
            raise cerr(400, 10197, "PinnedTTL cannot be set when PriorityPolicy is none")


def _check_filters(c: ConsumerConfig, stream_cfg) -> None:
    if c.filter_subject and c.filter_subjects:
        raise cerr(400, 10136, "consumer cannot have both FilterSubject and FilterSubjects specified")
    if c.filter_subject and not subj.valid_subject(c.filter_subject):
        raise cerr(500, 10052, "invalid subject")
    if any(not f for f in c.filter_subjects or ()):  # nats-server checks this before validity
        raise cerr(400, 10139, "consumer filter in FilterSubjects cannot be empty")
    fs = filters_of(c)
    for f in fs:
        if not f or not subj.valid_subject(f):
            raise cerr(500, 10052, "invalid subject")
    for i, a in enumerate(fs):
        for b in fs[i + 1:]:
            if subj.overlaps(a, b):
                raise cerr(400, 10138, "consumer subject filters cannot overlap")
    if c.filter_subject == ">":
        c.filter_subject = ""


def _check_start(c: ConsumerConfig) -> None:
    p = c.deliver_policy
    name = _policy_text(p)
    if p == "by_start_sequence":
        if not c.opt_start_seq:
            raise cerr(400, 10094, f"consumer delivery policy is {name}, but optional start sequence is not set")
    elif c.opt_start_seq:
        raise cerr(400, 10094, f"consumer delivery policy is {name}, but optional start sequence is also set")
    if p == "by_start_time":
        if not c.opt_start_time:
            raise cerr(400, 10094, f"consumer delivery policy is {name}, but optional start time is not set")
    elif c.opt_start_time:
        raise cerr(400, 10094, f"consumer delivery policy is {name}, but optional start time is also set")
    if p == "last_per_subject" and not filters_of(c):
        raise cerr(400, 10094, f"consumer delivery policy is {name}, but optional filter subject is not set")


def filters_of(c: ConsumerConfig) -> list[str]:
    if c.filter_subjects:
        return [f for f in c.filter_subjects]
    if c.filter_subject and c.filter_subject != ">":
        return [c.filter_subject]
    return []


def parse_duration_ns(text: str) -> int:
    """A Go duration such as `5s`, `1m30s`, `250ms` in nanoseconds; ValueError if malformed."""
    units = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
    total, i, text = 0.0, 0, text.strip()
    if not text:
        raise ValueError("empty duration")
    while i < len(text):
        j = i
        while j < len(text) and (text[j].isdigit() or text[j] == "."):
            j += 1
        k = j
        while k < len(text) and not (text[k].isdigit() or text[k] == "."):
            k += 1
        if j == i or text[j:k] not in units:
            raise ValueError(f"bad duration {text!r}")
        total += float(text[i:j]) * units[text[j:k]]
        i = k
    return int(total)


def parse_time(text: str | None) -> int:
    """RFC 3339 (any offset, up to ns precision) to ns since the epoch; 0 for empty/invalid."""
    if not text:
        return 0
    m = _TIME.match(text.strip())
    if not m:
        return 0
    base = time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")
    secs = _timegm(base)
    frac = int((m.group(2) or ".0")[1:].ljust(9, "0")[:9])
    tz = m.group(3)
    if tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        secs -= sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    return secs * 1_000_000_000 + frac


def _timegm(t) -> int:
    return calendar.timegm(t)


def _time_error(text: str) -> str:
    """Go's time.Parse error for the common malformed RFC 3339 inputs."""
    head = f'parsing time "{text}" as "2006-01-02T15:04:05Z07:00": '
    if not re.match(r"^\d{4}", text):
        return head + f'cannot parse "{text}" as "2006"'
    if len(text) > 10 and text[10] != "T":
        return head + f'cannot parse "{text[10:]}" as "T"'
    return head + f'cannot parse "{text}" as "2006-01-02T15:04:05Z07:00"'
