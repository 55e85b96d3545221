"""JetStream API errors with nats-server's codes and texts (server/errors.json).

nats-py builds `APIError(**error)` from the `error` object, so it must carry exactly
`code`, `err_code` and `description`. Texts below are the ones nats-server 2.15 sends.
"""

from __future__ import annotations


class JSError(Exception):
    """An API error reply: HTTP-ish `code`, JetStream `err_code`, exact `description`."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.err_code = err_code
        self.description = description
        # nats-server answers a few failures through its success path, so they do not
        # count as API errors in account info (e.g. a store error on MSG.DELETE).
        self.counts_as_error = True

    def as_dict(self) -> dict:
        return {"code": self.code, "err_code": self.err_code, "description": self.description}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JSError) and self.as_dict() == other.as_dict()

    def __hash__(self) -> int:
        return hash((self.code, self.err_code, self.description))

    def __repr__(self) -> str:
        return f"JSError({self.code}, {self.err_code}, {self.description!r})"


# Fixed texts.
def bad_request() -> JSError:
    return JSError(400, 10003, "bad request")


def invalid_json(err: str) -> JSError:
    return JSError(400, 10025, f"invalid JSON: {err}")


def not_enabled() -> JSError:
    return JSError(503, 10076, "JetStream not enabled")


def not_enabled_for_account() -> JSError:
    return JSError(503, 10039, "JetStream not enabled for account")


def insufficient_resources() -> JSError:
    return JSError(503, 10023, "insufficient resources")


def storage_resources_exceeded() -> JSError:
    return JSError(500, 10047, "insufficient storage resources available")


def memory_resources_exceeded() -> JSError:
    return JSError(500, 10028, "insufficient memory resources available")


def max_streams() -> JSError:
    return JSError(400, 10027, "maximum number of streams reached")


def stream_not_found() -> JSError:
    return JSError(404, 10059, "stream not found")


def stream_name_exists() -> JSError:
    return JSError(400, 10058, "stream name already in use with a different configuration")


def stream_subject_overlap() -> JSError:
    return JSError(400, 10065, "subjects overlap with an existing stream")


def stream_mismatch() -> JSError:
    return JSError(400, 10056, "stream name in subject does not match request")


def stream_name_path_separators() -> JSError:
    return JSError(400, 10128, "Stream name can not contain path separators")


def stream_invalid_config(err: str) -> JSError:
    return JSError(500, 10052, err)


def stream_update(err: str) -> JSError:
    return JSError(500, 10069, err)


def replicas_not_supported() -> JSError:
    return JSError(500, 10074, "replicas > 1 not supported in non-clustered mode")


def no_message_found() -> JSError:
    return JSError(404, 10037, "no message found")


def sequence_not_found(seq: int) -> JSError:
    return JSError(400, 10043, f"sequence {seq} not found")


def sealed() -> JSError:
    return JSError(400, 10109, "invalid operation on sealed stream")


def msg_delete_failed(err: str) -> JSError:
    return JSError(500, 10057, err)


def purge_failed(err: str) -> JSError:
    return JSError(500, 10110, err)


def source_header_not_allowed() -> JSError:
    return JSError(400, 10227, "message stream source header is not allowed")


def msg_too_big() -> JSError:
    return JSError(400, 10054, "message size exceeds maximum allowed")


def header_too_big() -> JSError:
    return JSError(400, 10097, "header size exceeds maximum allowed of 64k")


def store_failed(err: str) -> JSError:
    return JSError(503, 10077, err)


def wrong_last_sequence(seq: int) -> JSError:
    return JSError(400, 10071, f"wrong last sequence: {seq}")


def wrong_last_msg_id(msg_id: str) -> JSError:
    return JSError(400, 10070, f"wrong last msg ID: {msg_id}")


def expected_stream_mismatch() -> JSError:
    return JSError(400, 10060, "expected stream does not match")


def expected_last_subject_seq_invalid() -> JSError:
    return JSError(400, 10193, "missing sequence for expected last sequence per subject")


def rollup_failed(err: str) -> JSError:
    return JSError(500, 10111, err)


def ttl_invalid() -> JSError:
    return JSError(400, 10165, "invalid per-message TTL")


def ttl_disabled() -> JSError:
    return JSError(400, 10166, "per-message TTL is disabled")


# Store-failure texts (nats-server's ErrMaxMsgs, ErrMaxBytes, ErrMaxMsgsPerSubject).
MAX_MSGS = "maximum messages exceeded"
MAX_BYTES = "maximum bytes exceeded"
MAX_MSGS_PER_SUBJECT = "maximum messages per subject exceeded"
