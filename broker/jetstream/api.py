"""msgspec Structs for the stream half of `$JS.API` (nats-server 2.15 shapes).

Field order follows nats-server's JSON so replies are byte-for-byte alike where it is
cheap; fields nats-server omits when empty are typed `X | UnsetType = UNSET` (msgspec
never writes UNSET). Durations are integer nanoseconds; times are RFC 3339 strings.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

API_LEVEL = 5
SERVER_VERSION = "2.15.1"
ZERO_TIME = "0001-01-01T00:00:00Z"
PREFIX = "io.nats.jetstream.api.v1."


def rfc3339(ns: int) -> str:
    """Go's RFC3339Nano in UTC: trailing zeros of the fraction dropped; 0 = Go's zero time."""
    if ns <= 0:
        return ZERO_TIME
    secs, frac = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac:
        text += "." + f"{frac:09d}".rstrip("0")
    return text + "Z"


class StreamConfig(msgspec.Struct, kw_only=True):
    name: str = ""
    description: str | UnsetType = UNSET
    subjects: list[str] | UnsetType = UNSET
    retention: str = "limits"
    max_consumers: int = 0
    max_msgs: int = 0
    max_bytes: int = 0
    max_age: int = 0
    max_msgs_per_subject: int = 0
    max_msg_size: int = 0
    discard: str = "old"
    storage: str = "file"
    num_replicas: int = 0
    no_ack: bool | UnsetType = UNSET
    duplicate_window: int | UnsetType = UNSET  # 0 (mirrors, sourcing streams) is left out
    placement: dict[str, Any] | UnsetType = UNSET
    mirror: dict[str, Any] | UnsetType = UNSET
    sources: list[dict[str, Any]] | UnsetType = UNSET
    compression: str = "none"
    first_seq: int | UnsetType = UNSET
    subject_transform: dict[str, Any] | UnsetType = UNSET
    republish: dict[str, Any] | UnsetType = UNSET
    allow_direct: bool = False
    mirror_direct: bool = False
    discard_new_per_subject: bool | UnsetType = UNSET
    sealed: bool = False
    deny_delete: bool = False
    deny_purge: bool = False
    allow_rollup_hdrs: bool = False
    consumer_limits: dict[str, Any] = msgspec.field(default_factory=dict)
    allow_msg_ttl: bool = False
    subject_delete_marker_ttl: int | UnsetType = UNSET
    allow_msg_counter: bool | UnsetType = UNSET
    allow_atomic: bool | UnsetType = UNSET
    allow_msg_schedules: bool | UnsetType = UNSET
    persist_mode: str | UnsetType = UNSET
    allow_batched: bool | UnsetType = UNSET
    metadata: dict[str, str] | UnsetType = UNSET

    def subject_list(self) -> list[str]:
        return self.subjects if isinstance(self.subjects, list) else []

    def flag(self, name: str) -> bool:
        return getattr(self, name) is True


class StreamState(msgspec.Struct, kw_only=True):
    messages: int = 0
    bytes: int = 0
    first_seq: int = 0
    first_ts: str = ZERO_TIME
    last_seq: int = 0
    last_ts: str = ZERO_TIME
    num_subjects: int | UnsetType = UNSET
    subjects: dict[str, int] | UnsetType = UNSET
    num_deleted: int | UnsetType = UNSET
    deleted: list[int] | UnsetType = UNSET
    consumer_count: int = 0


class StreamSourceInfo(msgspec.Struct, kw_only=True):
    """A mirror's or source's state in STREAM.INFO (nats-server's StreamSourceInfo)."""
    name: str
    external: dict[str, str] | UnsetType = UNSET
    lag: int = 0
    active: int = -1  # ns since the origin was last seen, -1 = never
    error: "ApiError | UnsetType" = UNSET
    filter_subject: str | UnsetType = UNSET
    subject_transforms: list[dict[str, str]] | UnsetType = UNSET
    seq: int | UnsetType = UNSET  # sources: last origin sequence copied


class PeerInfo(msgspec.Struct, kw_only=True):
    name: str
    current: bool
    offline: bool | UnsetType = UNSET
    active: int
    lag: int | UnsetType = UNSET
    peer: str


class ClusterInfo(msgspec.Struct, kw_only=True):
    """`cluster` in stream/consumer info: only `leader` on a single server; in a cluster its
    name too, and for replicated assets the Raft group and the other replicas."""
    name: str | UnsetType = UNSET
    raft_group: str | UnsetType = UNSET
    leader: str | UnsetType = UNSET
    leader_since: str | UnsetType = UNSET
    system_account: bool | UnsetType = UNSET  # replicated: its Raft traffic is the system account's
    traffic_account: str | UnsetType = UNSET
    replicas: list[PeerInfo] | UnsetType = UNSET


class ApiError(msgspec.Struct):
    code: int
    err_code: int
    description: str


class _Resp(msgspec.Struct, kw_only=True, tag_field="type"):
    pass


class StreamCreateResponse(_Resp, tag=PREFIX + "stream_create_response"):
    error: ApiError | UnsetType = UNSET
    config: StreamConfig | UnsetType = UNSET
    created: str | UnsetType = UNSET
    state: StreamState | UnsetType = UNSET
    cluster: ClusterInfo | UnsetType = UNSET
    mirror: StreamSourceInfo | UnsetType = UNSET
    sources: list[StreamSourceInfo] | UnsetType = UNSET
    ts: str | UnsetType = UNSET
    did_create: bool | UnsetType = UNSET


class StreamUpdateResponse(_Resp, tag=PREFIX + "stream_update_response"):
    error: ApiError | UnsetType = UNSET
    config: StreamConfig | UnsetType = UNSET
    created: str | UnsetType = UNSET
    state: StreamState | UnsetType = UNSET
    cluster: ClusterInfo | UnsetType = UNSET
    mirror: StreamSourceInfo | UnsetType = UNSET
    sources: list[StreamSourceInfo] | UnsetType = UNSET
    ts: str | UnsetType = UNSET


class StreamInfoResponse(_Resp, tag=PREFIX + "stream_info_response"):
    error: ApiError | UnsetType = UNSET
    total: int = 0
    offset: int = 0
    limit: int = 0
    config: StreamConfig | UnsetType = UNSET
    created: str | UnsetType = UNSET
    state: StreamState | UnsetType = UNSET
    cluster: ClusterInfo | UnsetType = UNSET
    mirror: StreamSourceInfo | UnsetType = UNSET
    sources: list[StreamSourceInfo] | UnsetType = UNSET
    ts: str | UnsetType = UNSET


class StreamListItem(msgspec.Struct, kw_only=True):
    config: StreamConfig
    created: str
    state: StreamState
    cluster: ClusterInfo | UnsetType = UNSET
    mirror: StreamSourceInfo | UnsetType = UNSET
    sources: list[StreamSourceInfo] | UnsetType = UNSET
    ts: str


class StreamListResponse(_Resp, tag=PREFIX + "stream_list_response"):
    error: ApiError | UnsetType = UNSET
    total: int = 0
    offset: int = 0
    limit: int = 256
    streams: list[StreamListItem] | None = None
    missing: list[str] | UnsetType = UNSET


class StreamNamesResponse(_Resp, tag=PREFIX + "stream_names_response"):
    error: ApiError | UnsetType = UNSET
    total: int = 0
    offset: int = 0
    limit: int = 1024
    streams: list[str] | None = None


class StreamDeleteResponse(_Resp, tag=PREFIX + "stream_delete_response"):
    error: ApiError | UnsetType = UNSET
    success: bool | UnsetType = UNSET


class StreamPurgeResponse(_Resp, tag=PREFIX + "stream_purge_response"):
    error: ApiError | UnsetType = UNSET
    success: bool | UnsetType = UNSET
    purged: int = 0


class StreamMsgDeleteResponse(_Resp, tag=PREFIX + "stream_msg_delete_response"):
    error: ApiError | UnsetType = UNSET
    success: bool | UnsetType = UNSET


class StoredMessage(msgspec.Struct, kw_only=True):
    subject: str
    seq: int
    hdrs: bytes | UnsetType = UNSET  # msgspec writes bytes as base64, as Go does for []byte
    data: bytes | UnsetType = UNSET
    time: str


class StreamMsgGetResponse(_Resp, tag=PREFIX + "stream_msg_get_response"):
    error: ApiError | UnsetType = UNSET
    message: StoredMessage | UnsetType = UNSET


class AccountLimits(msgspec.Struct, kw_only=True):
    max_memory: int = -1
    max_storage: int = -1
    max_streams: int = -1
    max_consumers: int = -1
    max_ack_pending: int = -1
    memory_max_stream_bytes: int = -1
    storage_max_stream_bytes: int = -1
    max_bytes_required: bool = False


class ApiStats(msgspec.Struct, kw_only=True):
    level: int = API_LEVEL
    total: int = 0
    errors: int = 0


class AccountInfoResponse(_Resp, tag=PREFIX + "account_info_response"):
    error: ApiError | UnsetType = UNSET
    memory: int = 0
    storage: int = 0
    reserved_memory: int = 0
    reserved_storage: int = 0
    streams: int = 0
    consumers: int = 0
    limits: AccountLimits = msgspec.field(default_factory=AccountLimits)
    api: ApiStats = msgspec.field(default_factory=ApiStats)


# Requests (unknown fields are ignored, as Go's encoding/json does).
class StreamInfoRequest(msgspec.Struct, kw_only=True):
    subjects_filter: str = ""
    deleted_details: bool = False
    offset: int = 0


class StreamNamesRequest(msgspec.Struct, kw_only=True):
    subject: str = ""
    offset: int = 0


class StreamPurgeRequest(msgspec.Struct, kw_only=True):
    filter: str = ""
    seq: int = 0
    keep: int = 0


class MsgGetRequest(msgspec.Struct, kw_only=True):
    seq: int = 0
    last_by_subj: str = ""
    next_by_subj: str = ""
    batch: int = 0  # batch gets are DIRECT.GET only: MSG.GET answers bad request, as nats-server
    max_bytes: int = 0


class MsgDeleteRequest(msgspec.Struct, kw_only=True):
    seq: int = 0
    no_erase: bool = False


encoder = msgspec.json.Encoder()
config_decoder = msgspec.json.Decoder(StreamConfig)
