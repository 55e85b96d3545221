"""Stream subject transforms, sources and mirrors: the same nats-py script against
nats-server and ours, comparing what each stores (subjects, data, headers, sequences),
the STREAM.INFO `mirror`/`sources` blocks and the errors for invalid configs; plus a
restart of our server on the same store (copying resumes without duplicates or gaps).

What legitimately differs is masked: timestamps, `active` (only whether it is -1),
the origin identity at the end of Nats-Stream-Source (a hash of the origin's creation
time), and how copies from *different* sources interleave (each source's own order is
compared).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import nats
import pytest

from tests.conftest import our_server, reference
from tests.jetstream.consumer_fixtures import kv_nonempty

VOLATILE = {"created", "ts", "first_ts", "last_ts", "time", "leader", "now", "server_id", "opt_start_time"}
WAIT_S = 40.0  # nats-server retries a missing origin after ~10 s and notices a deleted one after ~20 s


def _mask(obj):
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in VOLATILE and isinstance(v, str) and v != "0001-01-01T00:00:00Z":
                out[k] = "<t>"
            elif k == "active":
                out[k] = "never" if v == -1 else "seen"
            elif k in ("mirror", "sources") and k in obj and isinstance(v, (dict, list)) and "config" in obj:
                out[k] = _mask_sources(v)
            else:
                out[k] = _mask(v)
        return out
    if isinstance(obj, list):
        return [_mask(v) for v in obj]
    return obj


def _mask_sources(v):
    if isinstance(v, list):  # nats-server lists sources in map order
        return sorted((_mask(x) for x in v), key=lambda x: json.dumps(x, sort_keys=True))
    return _mask(v)


async def _req(nc, subject: str, body=None) -> dict:
    payload = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
    msg = await nc.request(subject, payload, timeout=5)
    return json.loads(msg.data)


async def _wait(pred, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        got = await pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def _mask_source_hdr(hdr: str) -> str:
    out = []
    for line in hdr.split("\r\n"):
        if line.startswith("Nats-Stream-Source: "):
            fields = line.split(" ")
            if len(fields) == 7:  # ... <origin subject> <origin identity>
                fields[-1] = "<ident>"
            line = " ".join(fields)
        out.append(line)
    return "\r\n".join(out)


async def _messages(nc, stream: str) -> list:
    info = await _req(nc, f"$JS.API.STREAM.INFO.{stream}")
    state = info["state"]
    out = []
    for seq in range(state["first_seq"], state["last_seq"] + 1):
        r = await _req(nc, f"$JS.API.STREAM.MSG.GET.{stream}", {"seq": seq})
        if "message" not in r:
            out.append((seq, r["error"]["err_code"]))
            continue
        m = r["message"]
        hdr = base64.b64decode(m["hdrs"]).decode() if "hdrs" in m else None
        out.append((seq, m["subject"], base64.b64decode(m.get("data", "")).decode(),
                    _mask_source_hdr(hdr) if hdr else None))
    return out


def _per_source(msgs: list) -> dict:
    """A sourcing stream's messages grouped by source (filter and transform), in order."""
    groups: dict = {}
    for entry in msgs:
        if len(entry) != 4:
            groups.setdefault("gap", []).append(entry[0])
            continue
        _, subject, data, hdr = entry
        key = "local"
        for line in (hdr or "").split("\r\n"):
            if line.startswith("Nats-Stream-Source: "):
                f = line.split(" ")
                key = " ".join((f[1], f[3], f[4]))
        groups.setdefault(key, []).append((subject, data, hdr))
    return groups


def _both(tmp_path, body, storage: str = "file"):
    results = []
    for factory, name in ((reference, "ref"), (our_server, "ours")):
        srv = factory(tmp_path, name=name).start()
        try:
            async def run():
                nc = await nats.connect(srv.url, max_reconnect_attempts=1)
                try:
                    return await body(nc, nc.jetstream(), storage)
                finally:
                    await nc.close()
            results.append(asyncio.run(run()))
        finally:
            srv.stop()
    return results


# ---- config checks ----
def C(name, **cfg):
    return (f"$JS.API.STREAM.CREATE.{name}", {"name": name, **cfg})


BAD_CONFIGS = [
    C("T", subjects=["t.>"], subject_transform={"src": "t.>", "dest": "x.*"}),
    C("T", subjects=["t.>"], subject_transform={"src": "t..x", "dest": "x.>"}),
    C("T", subjects=["t.*"], subject_transform={"src": "t.*", "dest": "x.{{wildcard(2)}}"}),
    C("T", subjects=["t.*"], subject_transform={"src": "t.*", "dest": "x.{{bogus(1)}}"}),
    C("T", subjects=["t.*"], subject_transform={"src": "t.*", "dest": "x.{{partition(a)}}"}),
    C("T", subjects=["t.*"], subject_transform={"src": "t.*", "dest": "x.{{split(1)}}"}),
    C("T", subjects=["t.*"], subject_transform={"src": "t.*", "dest": "x..y"}),
    C("T", subjects=["t"], subject_transform={"src": "t", "dest": "x.{{wildcard(1)}}"}),
    C("M", subjects=["m"], mirror={"name": "O"}),
    C("M", mirror={"name": "O"}, sources=[{"name": "P"}]),
    C("M", mirror={"name": "O"}, first_seq=5),
    C("M", mirror={"name": "O.x"}),
    C("M", mirror={"name": ""}),
    C("M", mirror={"name": "O", "filter_subject": "a", "subject_transforms": [{"src": "a", "dest": "b"}]}),
    C("M", mirror={"name": "O", "subject_transforms": [{"src": "a.>", "dest": "b.>"}, {"src": "a.b", "dest": "c"}]}),
    C("M", mirror={"name": "O", "subject_transforms": [{"src": "a..b", "dest": "b"}]}),
    C("M", mirror={"name": "O", "subject_transforms": [{"src": "a.*", "dest": "b.{{wildcard(3)}}"}]}),
    C("M", mirror={"name": "O"}, subject_delete_marker_ttl=2_000_000_000, allow_msg_ttl=True, allow_rollup_hdrs=True),
    C("M", mirror_direct=True),
    C("S", sources=[{"name": "O"}, {"name": "O"}]),
    C("S", sources=[{"name": "O*"}]),
    C("S", sources=[{"name": "O", "filter_subject": "a", "subject_transforms": [{"src": "b", "dest": "c"}]}]),
    C("S", sources=[{"name": "O", "subject_transforms": [{"src": "a.*", "dest": "b"}, {"src": "a.x", "dest": "c"}]}]),
    C("S", sources=[{"name": "O", "subject_transforms": [{"src": "a.*", "dest": "b.{{wildcard(9)}}"}]}]),
    C("S", sources=[{"name": "O", "subject_transforms": [{"src": "a b", "dest": "c"}]}]),
    C("S", sources=[{"name": "O", "external": {"api": "$JS.API", "deliver": ""}}]),
    C("S", sources=[{"name": "O", "external": {"api": "$JS.x.*", "deliver": ""}}]),
    C("S", sources=[{"name": "O", "external": {"api": "", "deliver": "d.*"}}]),
    ("$JS.API.STREAM.CREATE.ORIGIN", {"name": "ORIGIN", "subjects": ["o.>"], "max_msg_size": 100}),
    C("S", sources=[{"name": "ORIGIN"}], max_msg_size=10),
    C("M", mirror={"name": "ORIGIN"}, max_msg_size=10),
    C("S", subjects=["o2.>"], sources=[{"name": "ORIGIN"}]),
    ("$JS.API.STREAM.UPDATE.ORIGIN", {"name": "ORIGIN", "subjects": ["o.>"], "max_msg_size": 100,
                                      "sources": [{"name": "S"}]}),
    C("M", mirror={"name": "ORIGIN"}),
    ("$JS.API.STREAM.UPDATE.M", {"name": "M", "mirror": {"name": "ORIGIN", "filter_subject": "o.a"}}),
    ("$JS.API.STREAM.UPDATE.M", {"name": "M", "mirror": {"name": "ORIGIN"}, "subjects": ["m"]}),
    ("$JS.API.STREAM.UPDATE.ORIGIN", {"name": "ORIGIN", "subjects": ["o.>"], "max_msg_size": 100,
                                      "mirror": {"name": "M"}}),
    ("$JS.API.STREAM.UPDATE.ORIGIN", {"name": "ORIGIN", "subjects": ["o.>"], "max_msg_size": 100,
                                      "sources": [{"name": "M"}]}),
    C("S2", sources=[{"name": "ORIGIN", "opt_start_seq": 0, "subject_transforms": []}]),
    C("S3", sources=[{"name": "ORIGIN", "opt_start_time": "2026-01-02T03:04:05.120000Z"}]),
    C("S4", sources=[{"name": "ORIGIN", "opt_start_time": "2026-01-02T03:04:05+02:00"}]),
    C("S5", sources=[{"name": "ORIGIN", "opt_start_time": "yesterday"}]),
    C("T2", subjects=["t2.*.*"], subject_transform={"src": "t2.*.*", "dest": "u.{{wildcard(2)}}.{{wildcard(1)}}"}),
    C("T3", subjects=["t3.>"], subject_transform={"dest": "u3.>"}),
]


def test_config_errors_and_echo_match_reference(tmp_path):
    async def body(nc, js, storage):
        out = []
        for subject, cfg in BAD_CONFIGS:
            out.append(_mask(await _req(nc, subject, cfg)))
        return out

    ref, ours = _both(tmp_path, body)
    for i, (a, b) in enumerate(zip(ref, ours)):
        assert b == a, f"step {i} {BAD_CONFIGS[i]}"


# ---- stream subject transform ----
def test_subject_transform_stores_transformed_subjects(tmp_path):
    async def body(nc, js, storage):
        out = [_mask(await _req(nc, "$JS.API.STREAM.CREATE.TR", {
            "name": "TR", "subjects": ["in.>", "other"], "storage": storage,
            "subject_transform": {"src": "in.*.>", "dest": "out.{{wildcard(1)}}.>"}}))]
        for subject in ("in.a.b", "in.b.c.d", "other", "in.x"):
            out.append(json.loads((await nc.request(subject, b"d-" + subject.encode(), timeout=5)).data))
        # expected-subject checks see the stored subject
        hdrs = {"Nats-Expected-Last-Subject-Sequence": "1"}
        out.append(json.loads((await nc.request("in.a.b", b"2", timeout=5, headers=hdrs)).data))
        out.append(await _messages(nc, "TR"))
        out.append(_mask(await _req(nc, "$JS.API.STREAM.INFO.TR", {"subjects_filter": ">"})))
        return out

    for storage in ("file", "memory"):
        (tmp_path / storage).mkdir()
        ref, ours = _both(tmp_path / storage, body, storage)
        assert ours == ref


# ---- sources ----
async def _source_script(nc, js, storage):
    out = []
    await _req(nc, "$JS.API.STREAM.CREATE.ORIG", {"name": "ORIG", "subjects": ["foo.>"], "storage": storage})
    await _req(nc, "$JS.API.STREAM.CREATE.ORIG2", {"name": "ORIG2", "subjects": ["bar.*"], "storage": storage})
    for i in range(6):
        hdrs = {"Nats-Msg-Id": f"id{i}", "X-Keep": "yes", "Nats-Expected-Last-Sequence": str(i)} if i % 3 == 1 else None
        await js.publish(f"foo.{i % 2}", f"m{i}".encode(), headers=hdrs)
    await js.publish("bar.x", b"b1")
    await _req(nc, "$JS.API.STREAM.MSG.DELETE.ORIG", {"seq": 3})
    create = await _req(nc, "$JS.API.STREAM.CREATE.SRC", {
        "name": "SRC", "storage": storage, "subjects": ["local"],
        "sources": [{"name": "ORIG", "filter_subject": "foo.1"},
                    {"name": "ORIG", "subject_transforms": [{"src": "foo.*", "dest": "moved.{{wildcard(1)}}"}]},
                    {"name": "ORIG2", "opt_start_seq": 2},
                    {"name": "MISSING"}]})
    out.append(_mask(create))
    await _req(nc, "$JS.API.STREAM.CREATE.LIM", {
        "name": "LIM", "storage": storage, "max_msgs": 3, "sources": [{"name": "ORIG"}]})

    async def src_done():
        a = (await _req(nc, "$JS.API.STREAM.INFO.SRC"))["state"]["messages"]
        b = (await _req(nc, "$JS.API.STREAM.INFO.LIM"))["sources"][0].get("seq")
        return a == 8 and b == 6
    await _wait(src_done, "sources to copy what was stored")
    await js.publish("local", b"own")
    await js.publish("foo.1", b"later", headers={"Nats-Msg-Id": "late"})
    await js.publish("bar.y", b"b2")

    async def later_done():  # LIM too: it copies ORIG's new message (seq 7) on its own
        a = (await _req(nc, "$JS.API.STREAM.INFO.SRC"))["state"]["messages"]
        b = (await _req(nc, "$JS.API.STREAM.INFO.LIM"))["sources"][0].get("seq")
        return a == 12 and b == 7
    await _wait(later_done, "sources to copy new messages")
    out.append(_per_source(await _messages(nc, "SRC")))
    out.append(await _messages(nc, "LIM"))
    for name in ("SRC", "LIM"):
        info = _mask(await _req(nc, f"$JS.API.STREAM.INFO.{name}"))
        out.append(info)
    return out


@pytest.mark.parametrize("storage", ["file", "memory"])
def test_sources_copy_like_nats_server(tmp_path, storage):
    ref, ours = _both(tmp_path, _source_script, storage)
    for i, (a, b) in enumerate(zip(ref, ours)):
        assert b == a, f"part {i}"


# ---- mirrors ----
async def _mirror_script(nc, js, storage):
    out = []
    await _req(nc, "$JS.API.STREAM.CREATE.ORIG", {"name": "ORIG", "subjects": ["foo.>"], "storage": storage,
                                                  "allow_direct": True})
    for i in range(8):
        await js.publish(f"foo.{i % 3}", f"m{i}".encode(), headers={"Nats-Expected-Stream": "ORIG", "A": "b"}
                         if i == 2 else None)
    for seq in (2, 5):
        await _req(nc, "$JS.API.STREAM.MSG.DELETE.ORIG", {"seq": seq})
    out.append(_mask(await _req(nc, "$JS.API.STREAM.CREATE.MIR", {
        "name": "MIR", "storage": storage, "mirror": {"name": "ORIG"}})))
    out.append(_mask(await _req(nc, "$JS.API.STREAM.CREATE.MFROM", {
        "name": "MFROM", "storage": storage, "mirror": {"name": "ORIG", "opt_start_seq": 4}})))
    out.append(_mask(await _req(nc, "$JS.API.STREAM.CREATE.MFILT", {
        "name": "MFILT", "storage": storage, "max_msgs": 2,
        "mirror": {"name": "ORIG", "subject_transforms": [{"src": "foo.1", "dest": "one"}]}})))

    async def done():
        infos = [await _req(nc, f"$JS.API.STREAM.INFO.{n}") for n in ("MIR", "MFROM", "MFILT")]
        return [i["state"]["last_seq"] for i in infos] == [8, 8, 8]
    await _wait(done, "mirrors to catch up")
    await js.publish("foo.0", b"new")

    async def done2():  # every mirror has caught up with the new message, not only MIR
        infos = [await _req(nc, f"$JS.API.STREAM.INFO.{n}") for n in ("MIR", "MFROM", "MFILT")]
        return ([i["state"]["last_seq"] for i in infos[:2]] == [9, 9]
                and all(i["mirror"]["lag"] == 0 for i in infos))
    await _wait(done2, "mirrors to copy a new message")
    for name in ("MIR", "MFROM", "MFILT"):
        out.append(await _messages(nc, name))
        out.append(_mask(await _req(nc, f"$JS.API.STREAM.INFO.{name}", {"deleted_details": True})))
    # a mirror has no subjects: publishing to the origin's subject reaches only the origin
    out.append(json.loads((await nc.request("foo.9", b"x", timeout=5)).data))

    async def done3():  # the update and the list below show the mirrors' state: let them copy foo.9
        infos = [await _req(nc, f"$JS.API.STREAM.INFO.{n}") for n in ("MIR", "MFROM", "MFILT")]
        return ([i["state"]["last_seq"] for i in infos[:2]] == [10, 10]
                and all(i["mirror"]["lag"] == 0 for i in infos))
    await _wait(done3, "mirrors to copy the message published to ORIG")
    out.append(_mask(await _req(nc, "$JS.API.STREAM.UPDATE.MIR", {
        "name": "MIR", "storage": storage, "mirror": {"name": "ORIG"}, "max_msgs": 100})))
    out.append(_mask(await _req(nc, "$JS.API.STREAM.LIST")))
    return out


@pytest.mark.parametrize("storage", ["file", "memory"])
def test_mirror_keeps_sequences_like_nats_server(tmp_path, storage):
    ref, ours = _both(tmp_path, _mirror_script, storage)
    for i, (a, b) in enumerate(zip(ref, ours)):
        assert b == a, f"part {i}"


def test_kv_mirror_readable_through_nats_py(tmp_path):
    """nats-py 2.x has no KV mirror option; a mirror stream that maps the origin's keys
    to its own bucket prefix is a bucket nats-py can open and read."""
    async def body(nc, js, storage):
        kv = await js.create_key_value(bucket="ORIG", history=3)
        await kv.put("a", b"1")
        await kv.put("b", b"2")
        await kv.put("a", b"3")
        await kv.delete("b")
        await js.add_stream(name="KV_COPY", mirror={"name": "KV_ORIG", "subject_transforms": [
            {"src": "$KV.ORIG.>", "dest": "$KV.COPY.>"}]}, max_msgs_per_subject=3, allow_direct=True,
            allow_rollup_hdrs=True, deny_delete=True)

        async def done():
            return (await js.stream_info("KV_COPY")).state.last_seq == 4
        await _wait(done, "the KV mirror to catch up")
        copy = await js.key_value("COPY")
        entry = await copy.get("a")
        out = [entry.key, entry.value, entry.revision]
        try:
            await copy.get("b")
            out.append("b present")
        except nats.js.errors.KeyNotFoundError:
            out.append("b deleted")
        out.append(sorted(await kv_nonempty(copy.keys)))
        out.append([(e.key, e.value, e.revision) for e in await kv_nonempty(lambda: copy.history("a"))])
        return out

    ref, ours = _both(tmp_path, body)
    assert ours == ref
    assert ours[0:3] == ["a", b"3", 3]


def test_deleted_origin_leaves_source_and_mirror_with_an_error(tmp_path):
    async def body(nc, js, storage):
        await _req(nc, "$JS.API.STREAM.CREATE.ORIG", {"name": "ORIG", "subjects": ["foo"]})
        await js.publish("foo", b"1")
        await _req(nc, "$JS.API.STREAM.CREATE.SRC", {"name": "SRC", "sources": [{"name": "ORIG"}]})
        await _req(nc, "$JS.API.STREAM.CREATE.MIR", {"name": "MIR", "mirror": {"name": "ORIG"}})

        async def copied():
            a = await _req(nc, "$JS.API.STREAM.INFO.SRC")
            b = await _req(nc, "$JS.API.STREAM.INFO.MIR")
            return a["state"]["messages"] == 1 and b["state"]["messages"] == 1
        await _wait(copied, "copies")
        await _req(nc, "$JS.API.STREAM.DELETE.ORIG")

        async def errored():
            a = await _req(nc, "$JS.API.STREAM.INFO.SRC")
            b = await _req(nc, "$JS.API.STREAM.INFO.MIR")
            if "error" in a["sources"][0] and "error" in b["mirror"]:
                return [_mask(a), _mask(b)]
            return None
        return await _wait(errored, "the deleted origin to show as an error")

    ref, ours = _both(tmp_path, body)
    assert ours == ref


# ---- restart ----
def test_restart_resumes_copying_without_duplicates_or_gaps(tmp_path):
    srv = our_server(tmp_path).start()

    async def phase(n_from: int, n_to: int, purge: bool = False):
        nc = await nats.connect(srv.url, max_reconnect_attempts=1)
        js = nc.jetstream()
        try:
            if n_from == 0:
                await _req(nc, "$JS.API.STREAM.CREATE.ORIG", {"name": "ORIG", "subjects": ["o.*"]})
                await _req(nc, "$JS.API.STREAM.CREATE.SRC", {"name": "SRC", "sources": [{"name": "ORIG"}]})
                await _req(nc, "$JS.API.STREAM.CREATE.MIR", {"name": "MIR", "mirror": {"name": "ORIG"}})
            for i in range(n_from, n_to):
                await js.publish(f"o.{i % 4}", str(i).encode())

            async def caught_up():
                src = (await _req(nc, "$JS.API.STREAM.INFO.SRC"))["sources"][0].get("seq")
                mir = (await _req(nc, "$JS.API.STREAM.INFO.MIR"))["state"]["last_seq"]
                return src == n_to and mir == n_to
            await _wait(caught_up, f"copies up to {n_to}")
            if purge:
                await _req(nc, "$JS.API.STREAM.PURGE.SRC")
            return await _messages(nc, "SRC"), await _messages(nc, "MIR")
        finally:
            await nc.close()

    try:
        src, mir = asyncio.run(phase(0, 30))
        assert [m[2] for m in src] == [str(i) for i in range(30)]
        srv.restart()
        src, mir = asyncio.run(phase(30, 60))
        assert [m[2] for m in src] == [str(i) for i in range(60)]
        assert [f"ORIG {i + 1} > >" in m[3] for i, m in enumerate(src)] == [True] * 60
        assert [(m[0], m[2]) for m in mir] == [(i + 1, str(i)) for i in range(60)]
        srv.restart()  # a purge of the target does not make the source copy everything again
        src, _ = asyncio.run(phase(60, 60, purge=True))
        assert src == []
        srv.restart()
        src, mir = asyncio.run(phase(60, 65))
        assert [m[2] for m in src] == [str(i) for i in range(60, 65)]
        assert len(mir) == 65
        srv.kill()  # a crash: the stored Nats-Stream-Source headers say where to go on
        srv.start()
        src, mir = asyncio.run(phase(65, 70))
        assert [m[2] for m in src] == [str(i) for i in range(60, 70)]
        assert [(m[0], m[2]) for m in mir][-5:] == [(i + 1, str(i)) for i in range(65, 70)]
    finally:
        srv.stop()


def test_source_header_refused_and_workqueue_origin_drained(tmp_path):
    """A client may not publish Nats-Stream-Source itself; sourcing from a workqueue
    stream takes its messages (the origin's copy is gone once sourced)."""
    async def body(nc, js, storage):
        out = []
        await _req(nc, "$JS.API.STREAM.CREATE.O", {"name": "O", "subjects": ["o"]})
        out.append(json.loads((await nc.request("o", b"x", timeout=5,
                                                headers={"Nats-Stream-Source": "X 1 > > o"})).data))
        await _req(nc, "$JS.API.STREAM.CREATE.WQ", {"name": "WQ", "subjects": ["w.*"], "retention": "workqueue"})
        for i in range(3):
            await js.publish(f"w.{i}", str(i).encode())
        await _req(nc, "$JS.API.STREAM.CREATE.S", {"name": "S", "sources": [{"name": "WQ"}]})

        async def drained():
            wq = (await _req(nc, "$JS.API.STREAM.INFO.WQ"))["state"]
            s = (await _req(nc, "$JS.API.STREAM.INFO.S"))["state"]
            return wq["messages"] == 0 and s["messages"] == 3
        await _wait(drained, "the workqueue to be sourced")
        out.append(_per_source(await _messages(nc, "S")))
        wq = (await _req(nc, "$JS.API.STREAM.INFO.WQ"))["state"]
        out.append((wq["first_seq"], wq["last_seq"]))
        return out

    ref, ours = _both(tmp_path, body)
    assert ours == ref


def test_interest_origin_keeps_messages_for_its_mirror_and_source(tmp_path):
    """On an interest stream the sourcing consumers are interest (and counted as consumers):
    what is published while they exist is copied, then released."""
    async def body(nc, js, storage):
        await _req(nc, "$JS.API.STREAM.CREATE.INT", {"name": "INT", "subjects": ["i.*"], "retention": "interest"})
        await js.publish("i.a", b"nobody wants this")
        await _req(nc, "$JS.API.STREAM.CREATE.S", {"name": "S", "sources": [{"name": "INT", "filter_subject": "i.b"}]})
        await _req(nc, "$JS.API.STREAM.CREATE.M", {"name": "M", "mirror": {"name": "INT"}})

        async def consumers():
            return (await _req(nc, "$JS.API.STREAM.INFO.INT"))["state"]["consumer_count"] == 2
        await _wait(consumers, "sourcing consumers on the interest stream")
        for subject in ("i.a", "i.b", "i.a"):
            await js.publish(subject, subject.encode())

        async def copied():
            s = (await _req(nc, "$JS.API.STREAM.INFO.S"))["state"]["messages"]
            m = (await _req(nc, "$JS.API.STREAM.INFO.M"))["state"]["messages"]
            i = (await _req(nc, "$JS.API.STREAM.INFO.INT"))["state"]["messages"]
            return (s, m, i) == (1, 3, 0)
        await _wait(copied, "copies from the interest stream")
        return [_per_source(await _messages(nc, "S")), await _messages(nc, "M"),
                _mask(await _req(nc, "$JS.API.STREAM.INFO.INT"))["state"]]

    ref, ours = _both(tmp_path, body)
    assert ours == ref


def test_start_time_and_source_updates_match_reference(tmp_path):
    async def body(nc, js, storage):
        out = []
        await _req(nc, "$JS.API.STREAM.CREATE.L", {"name": "L", "subjects": ["l.*"]})
        for i in range(6):
            await js.publish(f"l.{i % 3}", str(i).encode())
        start = (await _req(nc, "$JS.API.STREAM.MSG.GET.L", {"seq": 4}))["message"]["time"]
        await _req(nc, "$JS.API.STREAM.CREATE.T", {"name": "T", "subjects": ["t"],
                                                   "sources": [{"name": "L", "opt_start_time": start}]})
        await _req(nc, "$JS.API.STREAM.CREATE.MT", {"name": "MT", "mirror": {"name": "L", "opt_start_time": start}})

        async def first():
            t = (await _req(nc, "$JS.API.STREAM.INFO.T"))["state"]["messages"]
            m = (await _req(nc, "$JS.API.STREAM.INFO.MT"))["state"]["messages"]
            return (t, m) == (3, 3)
        await _wait(first, "copies from the start time")
        await js.publish("t", b"own")
        upd = await _req(nc, "$JS.API.STREAM.UPDATE.T", {
            "name": "T", "subjects": ["t"],
            "sources": [{"name": "L", "opt_start_time": start}, {"name": "L", "filter_subject": "l.1"}]})
        out.append(upd.get("error"))

        async def second():
            return (await _req(nc, "$JS.API.STREAM.INFO.T"))["state"]["messages"] == 6
        await _wait(second, "the added source to copy")
        await _req(nc, "$JS.API.STREAM.UPDATE.T", {"name": "T", "subjects": ["t"],
                                                   "sources": [{"name": "L", "filter_subject": "l.1"}]})
        await js.publish("l.1", b"six")
        await js.publish("l.2", b"seven")

        async def third():
            return (await _req(nc, "$JS.API.STREAM.INFO.T"))["state"]["messages"] == 7
        await _wait(third, "the remaining source to copy")
        out.append(_per_source(await _messages(nc, "T")))
        out.append(await _messages(nc, "MT"))
        for name in ("T", "MT"):
            out.append(_mask(await _req(nc, f"$JS.API.STREAM.INFO.{name}")))
        return out

    ref, ours = _both(tmp_path, body)
    for i, (a, b) in enumerate(zip(ref, ours)):
        assert b == a, f"part {i}"


def test_copies_refused_by_a_full_target_show_as_lag(tmp_path):
    """A discard-new target that is full stores no more copies; the block reports the lag
    as nats-server does (what was pending after the copy that failed, minus one)."""
    async def body(nc, js, storage):
        await _req(nc, "$JS.API.STREAM.CREATE.O", {"name": "O", "subjects": ["o.*"]})
        for i in range(5):
            await js.publish(f"o.{i}", b"x")
        await _req(nc, "$JS.API.STREAM.CREATE.T", {"name": "T", "sources": [{"name": "O"}], "max_msgs": 2,
                                                   "discard": "new"})
        await _req(nc, "$JS.API.STREAM.CREATE.M", {"name": "M", "mirror": {"name": "O"}, "max_msgs": 2,
                                                   "discard": "new"})

        async def blocked():
            t = await _req(nc, "$JS.API.STREAM.INFO.T")
            m = await _req(nc, "$JS.API.STREAM.INFO.M")
            if t["sources"][0]["lag"] == 1 and m["mirror"]["lag"] == 1:
                return [_mask(t), _mask(m)]
            return None
        return await _wait(blocked, "the full targets to report their lag")

    ref, ours = _both(tmp_path, body)
    assert ours == ref


def test_mirror_direct_answers_for_its_origin(tmp_path):
    """A mirror of an allow_direct stream inherits mirror_direct and, once caught up, answers
    DIRECT.GET for the origin (in one queue group with it: after the origin is deleted it
    is the one answering, under its own name)."""
    async def body(nc, js, storage):
        await _req(nc, "$JS.API.STREAM.CREATE.O", {"name": "O", "subjects": ["o.*"], "allow_direct": True})
        for i in range(3):
            await js.publish(f"o.{i}", f"v{i}".encode())
        create = await _req(nc, "$JS.API.STREAM.CREATE.M", {"name": "M", "mirror": {"name": "O"}})
        out = [create["config"]["mirror_direct"], create["config"]["allow_direct"]]

        async def answering():
            streams = set()
            for _ in range(20):
                m = await nc.request("$JS.API.DIRECT.GET.O", b'{"seq":2}', timeout=2)
                streams.add(m.headers.get("Nats-Stream"))
            return streams == {"O", "M"}
        await _wait(answering, "the mirror to answer direct gets too")
        await _req(nc, "$JS.API.STREAM.DELETE.O")
        for subject, body in (("$JS.API.DIRECT.GET.O", b'{"seq":2}'), ("$JS.API.DIRECT.GET.O", b'{"seq":9}'),
                              ("$JS.API.DIRECT.GET.O.o.1", b"")):
            m = await nc.request(subject, body, timeout=2)
            hdrs = {k: v for k, v in (m.headers or {}).items() if k != "Nats-Time-Stamp"}
            out.append((sorted(hdrs.items()), m.data))
        try:
            await nc.request("$JS.API.DIRECT.GET.M", b'{"seq":2}', timeout=1)
            out.append("M answers under its own name")
        except nats.errors.NoRespondersError:
            out.append("no responders")
        return out

    ref, ours = _both(tmp_path, body)
    assert ours == ref


def test_republish_checks_and_implicit_republish_of_a_transform(tmp_path):
    """nats-server's republish checks sit next to the subject transform's: '>' to '>' with a
    transform of the one stream subject republishes the transformed subjects."""
    configs = [
        {"subjects": ["in.>"], "subject_transform": {"src": "in.>", "dest": "out.>"},
         "republish": {"src": ">", "dest": ">"}},
        {"subjects": ["x.>"], "republish": {"src": ">", "dest": ">"}},
        {"subjects": ["in2.>"], "republish": {"src": "in2.>", "dest": "in2.x.>"}},
        {"subjects": ["in3.>"], "republish": {"dest": "rp.>", "headers_only": False}},
        {"subjects": ["in4.*"], "republish": {"src": "in4.*", "dest": "rp4.{{wildcard(1)}}.x"}},
        {"subjects": ["in5.*"], "republish": {"src": "in5.*", "dest": "rp5.{{wildcard(2)}}"}},
    ]

    async def body(nc, js, storage):
        out = []
        for i, cfg in enumerate(configs):
            out.append(_mask(await _req(nc, f"$JS.API.STREAM.CREATE.R{i}", {"name": f"R{i}", **cfg})))
        sub = await nc.subscribe("out.>")
        sub4 = await nc.subscribe("rp4.>")
        await nc.request("in.a", b"x", timeout=2)
        await nc.request("in4.k", b"y", timeout=2)
        for s in (sub, sub4):
            m = await s.next_msg(timeout=5)
            out.append((m.subject, m.data, m.headers.get("Nats-Subject")))
        return out

    ref, ours = _both(tmp_path, body)
    assert ours == ref
