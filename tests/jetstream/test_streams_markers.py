"""Subject delete markers: with subject_delete_marker_ttl, the last message of a subject
aged out by max_age is replaced by a `Nats-Marker-Reason: MaxAge` marker that later
expires itself. Checked on nats-server and ours with the same script."""

from __future__ import annotations

import asyncio
import base64
import json

import nats
import pytest

from tests.conftest import our_server, reference

MARKER = b"NATS/1.0\r\nNats-Marker-Reason: MaxAge\r\nNats-TTL: 1s\r\nNats-Rollup: sub\r\n\r\n"


async def _state(nc):
    r = await nc.request("$JS.API.STREAM.INFO.SDM", b'{"subjects_filter":">"}', timeout=5)
    st = json.loads(r.data)["state"]
    return st["messages"], st["first_seq"], st["last_seq"], st.get("subjects")


async def _until(nc, predicate):
    for _ in range(100):  # generous: up to 10 s on a loaded machine
        state = await _state(nc)
        if predicate(state):
            return state
        await asyncio.sleep(0.1)
    return await _state(nc)


async def _script(url):
    nc = await nats.connect(url)
    try:
        cfg = {"name": "SDM", "subjects": ["sdm.*"], "max_age": 1_000_000_000, "allow_msg_ttl": True,
               "allow_rollup_hdrs": True, "subject_delete_marker_ttl": 1_000_000_000}
        r = await nc.request("$JS.API.STREAM.CREATE.SDM", json.dumps(cfg).encode(), timeout=5)
        assert "error" not in json.loads(r.data)
        for subject in ("sdm.a", "sdm.a", "sdm.b"):
            await nc.request(subject, b"v", timeout=5)
        with_markers = await _until(nc, lambda st: st[1] == 4)
        r = await nc.request("$JS.API.STREAM.MSG.GET.SDM", b'{"last_by_subj":"sdm.a"}', timeout=5)
        marker = json.loads(r.data)["message"]
        gone = await _until(nc, lambda st: st[0] == 0)
        return with_markers, (marker["seq"], base64.b64decode(marker["hdrs"]), marker.get("data")), gone
    finally:
        await nc.close()


@pytest.mark.parametrize("make", [our_server, reference], ids=["ours", "nats-server"])
def test_max_age_leaves_subject_delete_markers(tmp_path, make):
    srv = make(tmp_path).start()
    try:
        with_markers, marker, gone = asyncio.run(_script(srv.url))
    finally:
        srv.stop()
    assert with_markers == (2, 4, 5, {"sdm.a": 1, "sdm.b": 1})
    assert marker == (4, MARKER, None)
    assert gone == (0, 6, 5, None)


async def _ttl_script(url):
    nc = await nats.connect(url)
    try:
        cfg = {"name": "SDM", "subjects": ["sdm.*"], "allow_msg_ttl": True, "allow_rollup_hdrs": True,
               "subject_delete_marker_ttl": 2_000_000_000}
        r = await nc.request("$JS.API.STREAM.CREATE.SDM", json.dumps(cfg).encode(), timeout=5)
        assert "error" not in json.loads(r.data)
        await nc.request("sdm.a", b"v", timeout=5, headers={"Nats-TTL": "1s"})
        await nc.request("sdm.b", b"v", timeout=5)
        await nc.request("sdm.b", b"v", timeout=5, headers={"Nats-TTL": "1s"})
        r = await nc.request("$JS.API.STREAM.MSG.GET.SDM", b'{"seq":1}', timeout=5)
        raised = base64.b64decode(json.loads(r.data)["message"]["hdrs"])
        marked = await _until(nc, lambda st: st[2] == 4 and st[0] == 2)
        r = await nc.request("$JS.API.STREAM.MSG.GET.SDM", b'{"last_by_subj":"sdm.a"}', timeout=5)
        marker = json.loads(r.data)["message"]
        left = await _until(nc, lambda st: st[0] == 1)
        return raised, marked, (marker["seq"], base64.b64decode(marker["hdrs"])), left
    finally:
        await nc.close()


@pytest.mark.parametrize("make", [our_server, reference], ids=["ours", "nats-server"])
def test_message_ttl_with_markers(tmp_path, make):
    """A TTL below the marker TTL is raised to it (header rewritten in whole seconds); the
    last message of a subject expiring by TTL leaves a marker, others just go."""
    srv = make(tmp_path).start()
    try:
        raised, marked, marker, left = asyncio.run(_ttl_script(srv.url))
    finally:
        srv.stop()
    assert raised == b"NATS/1.0\r\nNats-TTL: 2\r\n\r\n"
    assert marked == (2, 2, 4, {"sdm.a": 1, "sdm.b": 1})
    assert marker == (4, MARKER.replace(b"Nats-TTL: 1s", b"Nats-TTL: 2s"))
    assert left == (1, 2, 4, {"sdm.b": 1})
