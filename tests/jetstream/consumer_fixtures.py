"""Shared helpers for the consumer / KV-watch / object-store tests.

`server` is module-scoped and parametrized: each test runs against our broker and
against the real nats-server, so every expectation written here is checked against
the reference too. Tests are sync functions that `run()` an asyncio coroutine with
nats-py (pytest-trio owns async tests in this repository).
"""

from __future__ import annotations

import asyncio
import json

import nats
import pytest

from tests.conftest import our_server, reference

WAIT_S = 10.0  # generous bound for anything we wait on; never asserted as a duration


def server_fixture(kinds=("ours", "ref")):
    @pytest.fixture(scope="module", params=list(kinds))
    def server(request, tmp_path_factory):
        tmp = tmp_path_factory.mktemp(request.param)
        srv = (our_server(tmp) if request.param == "ours" else reference(tmp)).start()
        yield srv
        srv.stop()
    return server


def run(coro_fn, url: str):
    async def main():
        nc = await nats.connect(url)
        try:
            return await asyncio.wait_for(coro_fn(nc), 60)
        finally:
            await nc.close()
    return asyncio.run(main())


async def kv_nonempty(call, attempts: int = 5):
    """Await `call()` (kv.keys / kv.history on a bucket known to hold entries),
    again when nats-py raises NoKeysError falsely.

    nats-py's KeyValue.watch() can queue its end-of-initial-values marker before
    messages already buffered on the subscription were handed to its callback
    (nats-io/nats.py#842): keys()/history() then raise NoKeysError although the
    server delivered the entries. It is a client race, seen against nats-server
    too; a server that really answers nothing still fails after `attempts`."""
    from nats.js.errors import NoKeysError
    for attempt in range(attempts):
        try:
            return await call()
        except NoKeysError:
            if attempt == attempts - 1:
                raise


async def api(nc, subject: str, body=None) -> dict:
    payload = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    msg = await nc.request("$JS.API." + subject, payload, timeout=WAIT_S)
    return json.loads(msg.data)


class Inbox:
    """A raw subscription collecting messages (data and status) in order."""

    def __init__(self, nc, subject: str):
        self.nc = nc
        self.subject = subject
        self.msgs: list = []
        self._event = asyncio.Event()
        self.sub = None

    async def start(self) -> "Inbox":
        async def cb(m):
            self.msgs.append(m)
            self._event.set()
        self.sub = await self.nc.subscribe(self.subject, cb=cb)
        return self

    async def wait_for(self, pred, timeout: float = WAIT_S):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for m in self.msgs:
                if pred(m):
                    return m
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"timed out; got {[(m.subject, m.headers) for m in self.msgs]}")
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), left)
            except asyncio.TimeoutError:
                pass

    async def wait_count(self, n: int, timeout: float = WAIT_S) -> list:
        await self.wait_for(lambda m: len(self.msgs) >= n, timeout)
        return self.msgs[:n]


def status(m) -> tuple[str, str] | None:
    h = m.headers or {}
    if "Status" not in h:
        return None
    return h["Status"], h.get("Description", "")


def data_msgs(msgs) -> list:
    return [m for m in msgs if status(m) is None]


def ack_meta(reply: str) -> dict:
    t = reply.split(".")
    assert len(t) == 9 and t[:2] == ["$JS", "ACK"], reply
    return {"stream": t[2], "consumer": t[3], "delivered": int(t[4]), "sseq": int(t[5]), "dseq": int(t[6]),
            "ts": int(t[7]), "pending": int(t[8])}


async def add_stream(nc, name: str, subjects: list[str], **extra) -> dict:
    cfg = {"name": name, "subjects": subjects, "storage": extra.pop("storage", "file")}
    cfg.update(extra)
    r = await api(nc, f"STREAM.CREATE.{name}", cfg)
    assert "error" not in r, r
    return r


async def add_consumer(nc, stream: str, cfg: dict, name: str | None = None) -> dict:
    subject = f"CONSUMER.CREATE.{stream}" + (f".{name}" if name else "")
    return await api(nc, subject, {"stream_name": stream, "config": cfg})


async def publish(nc, subject: str, data: bytes, n: int = 1, headers=None) -> None:
    js = nc.jetstream()
    for _ in range(n):
        await js.publish(subject, data, headers=headers)
