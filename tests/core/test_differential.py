"""Differential tests: identical raw bytes to our server and to nats-server; identical replies.

Each case is a byte sequence sent right after the server's INFO. We then send a PING
and read until the PONG (the connection stayed open) or until the server closes it.
INFO lines carry per-server ids, so they are replaced by a placeholder before comparing.
"""

import re
import socket
import time

import pytest

from tests.conftest import our_server, reference

READ_TIMEOUT_S = 5.0

CONNECT = b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true,"protocol":1}\r\n'
VERBOSE = b'CONNECT {"verbose":true,"pedantic":false,"headers":true}\r\n'
PEDANTIC = b'CONNECT {"verbose":false,"pedantic":true,"headers":true}\r\n'
NOHDR = b'CONNECT {"verbose":false,"pedantic":false}\r\n'

CASES = {
    "ping": CONNECT,
    "pubsub": CONNECT + b"SUB foo 1\r\nPUB foo 5\r\nhello\r\n",
    "pub_reply": CONNECT + b"SUB foo 1\r\nPUB foo bar 5\r\nhello\r\n",
    "empty_tokens": CONNECT + b"SUB foo  1\r\nPUB foo  5\r\nhello\r\nUNSUB 1 \r\nPUB foo 1\r\nx\r\n",
    "hpub": CONNECT + b"SUB foo 1\r\nHPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n",
    "hpub_reply": CONNECT + b"SUB foo 1\r\nHPUB foo rep 22 25\r\nNATS/1.0\r\nA: bc\r\n\r\nhey\r\n",
    "wildcards": CONNECT + b"SUB foo.* 1\r\nSUB foo.> 2\r\nSUB > 3\r\nSUB *.bar 4\r\nSUB foo 5\r\nPUB foo.bar 1\r\nx\r\n",
    "queue": CONNECT + b"SUB q grp 1\r\nPUB q 1\r\nx\r\n",
    "verbose": VERBOSE + b"SUB foo 1\r\nPUB foo 2\r\nhi\r\nUNSUB 1\r\n",
    "unsub_max": CONNECT + b"SUB foo 1\r\nUNSUB 1 2\r\n" + b"PUB foo 1\r\na\r\n" * 4,
    "dup_sid": CONNECT + b"SUB foo 1\r\nSUB bar 1\r\nPUB foo 1\r\na\r\nPUB bar 1\r\nb\r\n",
    "unknown_sid": CONNECT + b"UNSUB 99\r\n",
    "case_and_tabs": CONNECT + b"sub foo\tgrp 1\r\npub foo 2\r\nhi\r\nping\r\n",
    "no_responders": CONNECT + b"SUB _INBOX.x 1\r\nPUB nobody _INBOX.x 2\r\nhi\r\n",
    "hpub_without_headers_support": NOHDR + b"SUB foo 1\r\nHPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n",
    "defaults_verbose_pedantic": b'CONNECT {}\r\nSUB foo 1\r\nPUB foo.* 1\r\nx\r\n',
    "invalid_subject": CONNECT + b"SUB foo..bar 1\r\nSUB .foo 2\r\nSUB foo. 3\r\nSUB foo.>.bar 4\r\n",
    "literal_wildcard_tokens": CONNECT + b"SUB foo* 1\r\nPUB foo* 1\r\nx\r\n",
    "pub_to_wildcard": CONNECT + b"SUB foo.* 1\r\nSUB foo.bar 2\r\nPUB foo.* 1\r\nx\r\n",
    "pedantic_pub_wildcard": PEDANTIC + b"PUB foo.* 1\r\nx\r\n",
    "pedantic_pub_wildcard_still_routed": PEDANTIC + b"SUB foo.* 1\r\nPUB foo.* 1\r\nx\r\n",
    "unknown_op": CONNECT + b"FOO bar\r\n",
    "pub_no_args": CONNECT + b"PUB\r\n",
    "payload_size_mismatch": CONNECT + b"PUB foo 3\r\nabcdef\r\n",
    "max_payload": CONNECT + b"PUB foo 2000000\r\n",
    "max_control_line": CONNECT + b"SUB " + b"a" * 5000 + b" 1\r\n",
    "sub_wrong_args": CONNECT + b"SUB a b c d\r\n",
    "hpub_hdr_too_big": CONNECT + b"HPUB foo 10 5\r\nabcde\r\n",
    "bad_connect_json": b"CONNECT {nope\r\n",
    "no_responders_without_headers": b'CONNECT {"no_responders":true}\r\n',
    "empty_payload": CONNECT + b"SUB e 1\r\nPUB e 0\r\n\r\n",
    "utf8_subject": CONNECT + "SUB ünï.* 1\r\nPUB ünï.cödé 1\r\nx\r\n".encode(),
    "pedantic_verbose_wildcard": b'CONNECT {"headers":true}\r\nSUB foo.* 1\r\nPUB foo.* 1\r\nx\r\n',
    "no_echo": b'CONNECT {"echo":false,"headers":true}\r\nSUB foo 1\r\nPUB foo 1\r\nx\r\n',
    # one connection, a literal and a `*` subscription on the last token: literal first
    "literal_before_pwc": CONNECT + b"SUB foo.* 1\r\nSUB foo.bar 2\r\nSUB *.bar 3\r\nPUB foo.bar 1\r\nx\r\n",
    # runs: PUBs repeating one header line, which our server takes as one unit
    # (several subscriptions of one connection sit on different trie nodes: nats-server
    # keeps the subscriptions of one node in a map, so their order among themselves varies)
    "run": CONNECT + b"SUB foo 1\r\nSUB f* 2\r\nSUB * 3\r\nSUB > 4\r\n" + b"PUB foo 5\r\nhello\r\n" * 20,
    "run_reply_two_subjects": CONNECT + b"SUB foo 1\r\nSUB > 2\r\n"
    + b"PUB foo r.1 3\r\nabc\r\n" * 9 + b"PUB bar 3\r\nxyz\r\n" * 9 + b"PUB foo r.1 3\r\nabc\r\n" * 3,
    "run_payloads_hold_crlf_and_header": CONNECT + b"SUB foo 1\r\n"
    + b"PUB foo 14\r\nPUB foo 14\r\nab\r\n" * 12 + b"PUB foo 14\r\n\r\n\r\nPUB foo 14\r\n" * 3,
    "run_cut_by_ping_sub_unsub": CONNECT + b"SUB foo 1\r\n" + b"PUB foo 1\r\na\r\n" * 10 + b"PING\r\n"
    + b"PUB foo 1\r\nb\r\n" * 10 + b"SUB foo.> 2\r\nSUB *.bar 3\r\nSUB foo.bar 4\r\n"
    + b"PUB foo.bar 1\r\nc\r\n" * 10 + b"SUB foo 2\r\n" + b"PUB foo 1\r\nc\r\n" * 10 + b"UNSUB 1\r\n"
    + b"PUB foo 1\r\nd\r\n" * 10,
    "run_unsub_max": CONNECT + b"SUB foo 1\r\nSUB * 2\r\nUNSUB 1 7\r\n" + b"PUB foo 1\r\na\r\n" * 20,
    # messages received before UNSUB <sid> <max> count toward max (in the same read, too)
    "run_unsub_max_counts_earlier": CONNECT + b"SUB foo 1\r\nSUB foo q 2\r\nSUB * 3\r\nSUB > 4\r\n"
    + b"PUB foo 1\r\na\r\n" * 3 + b"UNSUB 1 5\r\nUNSUB 2 3\r\nUNSUB 3 2\r\nUNSUB 4 0\r\n" + b"PUB foo 1\r\nb\r\n" * 6,
    "unsub_max_not_counting_no_responders": CONNECT + b"SUB _INBOX.x 1\r\nPUB nobody _INBOX.x 2\r\nhi\r\n"
    + b"UNSUB 1 2\r\nPUB nobody _INBOX.x 2\r\nhi\r\n" + b"PUB _INBOX.x 1\r\nz\r\n" * 3,
    "run_queue_and_plain": CONNECT + b"SUB foo q 1\r\nSUB foo 2\r\n" + b"PUB foo 2\r\nhi\r\n" * 16,
    "run_no_interest": CONNECT + b"SUB other 1\r\n" + b"PUB nobody 2\r\nhi\r\n" * 30 + b"PUB other 1\r\nx\r\n",
    "run_no_responders": CONNECT + b"SUB _INBOX.x 1\r\n" + b"PUB nobody _INBOX.x 2\r\nhi\r\n" * 10,
    "run_no_echo": b'CONNECT {"echo":false,"verbose":false,"pedantic":false}\r\nSUB foo 1\r\n'
    + b"PUB foo 1\r\nx\r\n" * 12,
    "run_verbose": VERBOSE + b"SUB foo 1\r\n" + b"PUB foo 2\r\nhi\r\n" * 10,
    "run_pedantic_wildcard": PEDANTIC + b"SUB foo.* 1\r\n" + b"PUB foo.* 1\r\nx\r\n" * 10,
    "run_then_bad_frame": CONNECT + b"SUB foo 1\r\n" + b"PUB foo 5\r\nhello\r\n" * 10
    + b"PUB foo 5\r\nhelloX\r\n" + b"PUB foo 5\r\nhello\r\n" * 3,
    "run_then_max_payload": CONNECT + b"SUB foo 1\r\n" + b"PUB foo 1\r\nz\r\n" * 10 + b"PUB foo 2000000\r\n",
    "run_then_hpub": CONNECT + b"SUB foo 1\r\n" + b"PUB foo 1\r\nz\r\n" * 10
    + b"HPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n" * 10 + b"PUB foo 1\r\nz\r\n" * 10,
    "run_empty_payloads": CONNECT + b"SUB e 1\r\n" + b"PUB e 0\r\n\r\n" * 25,
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diff")
    ours = our_server(tmp, jetstream=False).start()
    ref = reference(tmp, jetstream=False).start()
    yield ours, ref
    ours.stop()
    ref.stop()


def exchange(port: int, data: bytes) -> bytes:
    s = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S)
    try:
        buf = b""
        while b"\r\n" not in buf:
            buf += s.recv(65536)
        s.sendall(data)
        time.sleep(0.05)
        try:
            s.sendall(b"PING\r\n")
        except OSError:
            pass
        out = b""
        deadline = time.monotonic() + READ_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if out.count(b"PONG\r\n") >= data.upper().count(b"PING\r\n") + 1 and not chunk:
                break
            if not chunk:
                out += b"<closed>"
                break
            out += chunk
            if out.count(b"PONG\r\n") >= data.upper().count(b"PING\r\n") + 1:
                s.settimeout(0.2)  # collect whatever immediately follows the last PONG

        return out
    finally:
        s.close()


def normalise(out: bytes) -> bytes:
    """Mask per-server INFO contents; drop server-initiated PINGs (their timing is not the point)."""
    out = re.sub(rb"INFO \{.*?\} \r\n", b"INFO {...}\r\n", out)
    return re.sub(rb"(?m)^PING\r\n", b"", out)


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_reply_as_nats_server(servers, name):
    ours, ref = servers
    data = CASES[name]
    want = normalise(exchange(ref.port, data))
    got = normalise(exchange(ours.port, data))
    assert got == want, f"{name}: ours={got!r} nats-server={want!r}"


def test_server_survives_every_case(servers):
    ours, _ = servers
    assert b"PONG\r\n" in exchange(ours.port, CONNECT)


AUTH_CASES = {
    "auth_ok": b'CONNECT {"verbose":false,"pedantic":false,"user":"alice","pass":"s3cret"}\r\n',
    "auth_wrong_password": b'CONNECT {"verbose":false,"pedantic":false,"user":"alice","pass":"nope"}\r\n',
    "auth_missing": b'CONNECT {"verbose":false,"pedantic":false}\r\n',
    "auth_pub_before_connect": b"PUB foo 1\r\nx\r\n",
    "auth_sub_before_connect": b"SUB foo 1\r\n",
}


@pytest.fixture(scope="module")
def auth_servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("diffauth")
    flags = ("--user", "alice", "--pass", "s3cret")
    ours = our_server(tmp, *flags, jetstream=False).start()
    ref = reference(tmp, *flags, jetstream=False).start()
    yield ours, ref
    ours.stop()
    ref.stop()


@pytest.mark.parametrize("name", sorted(AUTH_CASES))
def test_same_auth_reply_as_nats_server(auth_servers, name):
    ours, ref = auth_servers
    data = AUTH_CASES[name]
    want = normalise(exchange(ref.port, data))
    got = normalise(exchange(ours.port, data))
    assert got == want, f"{name}: ours={got!r} nats-server={want!r}"
