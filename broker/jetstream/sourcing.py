"""Mirrors and sources: streams that copy messages from other streams on this node.

How this works: every stream with a `mirror` or `sources` gets one Link per origin
(nats-server's sourceInfo). Nothing here talks to a client or a consumer: the origin's
store is read directly. A single pump task wakes when an origin stored messages (the
manager calls `origin_stored` from `_after_store`, so only fsynced messages are
copied), when a target's writer took the previous batch, on stream create/delete and
once a second. For each target whose previous batch was applied it reads up to
_BATCH messages per link after the last queued origin sequence and hands them to
the target's writer (`queued[target]` + its wake event); the writer calls `apply`,
which stores them through `Stream.store_copy` in the same task, with the same limits
and group commit as publishes, and returns what it stored for consumers and acks.

Sources are stored under a new sequence with nats-server's header
`Nats-Stream-Source: <origin> <origin seq> <filter> <dest> <origin subject> <origin ident>`
(ident: hash of the origin's creation time, so a recreated origin is noticed and
copied again from its start). Where a source restarts comes from the newest such
header in the target (as nats-server scans for it), else from `sources.json`, which
keeps each source's last origin sequence across a full purge of the target. A mirror
keeps the origin's sequence numbers and timestamps (gaps become deleted sequences)
and restarts after its own last sequence.
"""

from __future__ import annotations

import logging
import os
import re
import time

import msgspec
import trio

from broker import subjects as subj
from broker.jetstream import api, errors
from broker.jetstream import streamconfig as sc
from broker.jetstream import transform as tr

log = logging.getLogger("broker.jetstream")

_BATCH = 256  # origin messages read per link per round
SOURCE_HDR = "Nats-Stream-Source"
_RETRY_NS = 2_000_000_000  # after a copy could not be stored (nats-server's retry threshold)
_SAVE_EVERY_NS = 1_000_000_000  # sources.json is rewritten at most this often
_DIRECT_CAUGHT_UP = 10  # a mirror_direct mirror answers DIRECT.GET once fewer are pending
DIRECT_GROUP = "_sys_"  # queue group of every DIRECT.GET subscription, as nats-server's


class Link:
    """One mirror or source of a target stream."""

    def __init__(self, kind: str, spec: dict) -> None:
        self.kind = kind  # "mirror" | "source"
        self.spec = spec
        self.origin: str = spec.get("name", "")
        self.iname = sc.index_name(spec)
        parts = self.iname.split(" ")
        self.hdr_filter, self.hdr_dest = parts[-2], parts[-1]
        self.filter_subject: str = spec.get("filter_subject", "")
        transforms = spec.get("subject_transforms") or []
        self.transform_cfgs = [{"src": t["src"], "dest": t["dest"]} for t in transforms]
        self.transforms = [tr.Transform.build(t["src"], t["dest"]) for t in transforms]
        self.filters: list[str] = [t["src"] or ">" for t in transforms] or (
            [self.filter_subject] if self.filter_subject else [])
        self.sseq = 0  # last origin sequence stored in the target
        self.queued = 0  # last origin sequence handed to the target's writer
        self.started = False  # start position worked out
        self.ident = ""  # identity of the origin the copies came from
        self.last_ns = 0  # last time the origin was seen (0 = never: active -1)
        self.lag = 0
        self.err: errors.JSError | None = None
        self.retry_at = 0
        self.halted = False  # a copy failed in the current batch: drop the rest of it

    def matches(self, subject: str) -> bool:
        return not self.filters or any(subj.match(f, subject) for f in self.filters)


class Sourcing:
    def __init__(self, js) -> None:
        self.js = js
        self.links: dict[str, list[Link]] = {}  # target stream -> its links
        self.queued: dict[str, list] = {}  # target -> copies waiting for its writer
        self._origins: set[str] = set()
        self._wake = trio.Event()
        self._dirty: set[str] = set()  # targets whose sources.json is behind
        self._direct: dict[str, list] = {}  # mirror_direct mirrors -> their DIRECT.GET subscriptions

    # ---- lifecycle, called by the manager ----
    def attach(self, stream) -> None:
        """A stream was created, restored or updated: (re)build its links."""
        cfg = stream.config
        old = {link.iname: link for link in self.links.get(stream.name, [])}
        links = []
        if isinstance(cfg.mirror, dict):
            links.append(Link("mirror", cfg.mirror))
        for spec in cfg.sources if isinstance(cfg.sources, list) else []:
            links.append(Link("source", spec))
        self._undirect(stream.name)
        if not links:
            self.detach(stream.name)
            return
        fresh = []
        for i, link in enumerate(links):
            prev = old.get(link.iname)
            if prev is not None and prev.kind == link.kind:
                links[i] = prev
            else:
                fresh.append(link)
        if any(link.kind == "source" for link in fresh):
            self._starting_seqs(stream, [link for link in fresh if link.kind == "source"])
        self.links[stream.name] = links
        self.queued.pop(stream.name, None)
        for link in links:
            link.queued = link.sseq
        self._origins = {link.origin for ls in self.links.values() for link in ls}
        self._release([link for link in old.values() if link not in links])
        self.wake()

    def detach(self, name: str) -> None:
        """A target stream was deleted (or no longer copies anything)."""
        self._undirect(name)
        gone = self.links.pop(name, None)
        if gone is not None:
            self.queued.pop(name, None)
            self._origins = {link.origin for ls in self.links.values() for link in ls}
            self._release(gone)
        self.wake()

    def _release(self, gone: list[Link]) -> None:
        """Links removed: on interest origins, what only they still wanted goes (as when
        nats-server deletes a sourcing consumer)."""
        for link in gone:
            origin = self.js.streams.get(link.origin)
            if origin is None or origin.config.retention != "interest":
                continue
            st = origin.store.state()
            for seq in range(max(link.sseq + 1, st.first_seq), st.last_seq + 1):
                self.js.stream_acked(origin.name, seq)

    def origin_stored(self, name: str) -> None:
        if name in self._origins:
            self.wake()

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        for name in list(self._dirty):
            self._save(name)

    # ---- mirror_direct ----
    def _subscribe_direct(self, stream, origin: str) -> None:
        """A mirror that has (nearly) caught up answers DIRECT.GET for its origin too, in the
        same queue group as the origin's own subscription (one of them answers)."""
        from broker.jetstream import streamapi
        server = self.js.server
        on_direct = streamapi.direct_get_handler(self.js, stream, origin)
        self._direct[stream.name] = [
            server.subscribe(subject, on_direct, DIRECT_GROUP)
            for subject in (f"$JS.API.DIRECT.GET.{origin}", f"$JS.API.DIRECT.GET.{origin}.>")]

    def _undirect(self, name: str) -> None:
        for sub in self._direct.pop(name, []):
            self.js.server.unsubscribe(sub)

    # ---- where sources start ----
    def _starting_seqs(self, stream, links: list[Link]) -> None:
        """Last origin sequence per source: the newest Nats-Stream-Source header in the
        target, else what sources.json remembers (it outlives a purge of the target)."""
        want = {link.iname: link for link in links}
        saved = self._load(stream)
        store = stream.store
        st = store.state()
        seq = st.last_seq
        pending = dict(want)
        while pending and seq >= st.first_seq and st.messages:
            msg = store.get(seq)
            seq -= 1
            if msg is None or not msg.hdr:
                continue
            value = _header(msg.hdr, SOURCE_HDR)
            if not value:
                continue
            fields = value.split(" ")
            if len(fields) < 4:
                continue
            iname = " ".join((fields[0], fields[2], fields[3]))
            link = pending.pop(iname, None)
            if link is not None and fields[1].isdigit():
                link.sseq = int(fields[1])
                link.ident = fields[5] if len(fields) >= 6 else ""
                link.started = True
        for iname, link in pending.items():
            entry = saved.get(iname)
            if entry and entry[0] > 0:
                link.sseq, link.ident = int(entry[0]), str(entry[1])
                link.started = True

    def _state_path(self, stream) -> str:
        return os.path.join(self.js.stream_dir(stream.name), "sources.json")

    def _load(self, stream) -> dict:
        if stream.config.storage != "file":
            return {}
        try:
            with open(self._state_path(stream), "rb") as f:
                data = msgspec.json.decode(f.read())
            return data if isinstance(data, dict) else {}
        except (OSError, msgspec.DecodeError):
            return {}

    def _save(self, name: str) -> None:
        self._dirty.discard(name)
        stream = self.js.streams.get(name)
        links = self.links.get(name)
        if stream is None or not links or stream.config.storage != "file":
            return
        body = msgspec.json.encode({link.iname: [link.sseq, link.ident]
                                    for link in links if link.kind == "source"})
        path = self._state_path(stream)
        try:
            with open(path + ".tmp", "wb") as f:
                f.write(body)
            os.replace(path + ".tmp", path)
        except OSError as e:  # a hint only: the stored headers are the primary record
            log.warning("stream '%s': could not save sources state: %s", name, e)

    # ---- the pump ----
    async def run(self) -> None:
        saved_at = 0
        while True:
            with trio.move_on_after(1.0):
                await self._wake.wait()
            self._wake = trio.Event()
            now = time.time_ns()
            try:
                self._round(now)
            except Exception:  # our bug: keep the other links copying
                log.exception("mirror/source copying failed")
            if self._dirty and now - saved_at >= _SAVE_EVERY_NS:  # a hint: at most once a second
                saved_at = now
                for name in list(self._dirty):
                    self._save(name)
            await trio.lowlevel.checkpoint()

    def _round(self, now: int) -> None:
        js = self.js
        for target, links in list(self.links.items()):
            if self.queued.get(target):
                continue  # its writer has not taken the previous batch yet
            stream = js.streams.get(target)
            runner = js._runners.get(target)
            if stream is None or runner is None:
                continue
            batch = []
            own = tr.for_stream(stream.config)  # the target's own subject_transform
            for link in links:
                origin = js.streams.get(link.origin)
                if origin is None:
                    if link.err is None:
                        link.err = errors.stream_not_found()
                    continue
                ident = sc.stream_identity(origin.created_ns)
                link.err = None
                if link.kind == "source" and link.ident and link.ident != ident:
                    log.warning("JetStream source stream %r for stream '$G > %s' was recreated, "
                                "resetting source state", link.origin, target)
                    link.sseq = link.queued = 0
                    link.started = False
                link.ident = ident
                link.last_ns = now
                if not link.started:
                    self._start(link, stream, origin)
                if now < link.retry_at:
                    continue
                link.halted = False
                batch.extend(self._read(link, origin, ident, own))
                if link.kind == "mirror" and stream.config.mirror_direct and target not in self._direct:
                    if origin.store.state().last_seq - link.sseq < _DIRECT_CAUGHT_UP:
                        self._subscribe_direct(stream, link.origin)
            if batch:
                self.queued[target] = batch
                runner.wake.set()

    def _start(self, link: Link, target, origin) -> None:
        """First origin sequence to copy, as nats-server's consumer start options pick it."""
        link.started = True
        spec = link.spec
        if link.kind == "mirror":
            last = target.store.state().last_seq
            if last > 0:
                link.sseq = link.queued = last
                return
            start = 0
            if spec.get("opt_start_seq"):
                start = spec["opt_start_seq"]
            elif spec.get("opt_start_time"):
                start = _first_at_or_after(origin.store, parse_time(spec["opt_start_time"]))
            link.sseq = link.queued = max(0, start - 1)
            return
        if link.sseq > 0:
            link.queued = link.sseq
            return
        start = 0
        tst = target.store.state()
        if spec.get("opt_start_seq"):
            start = spec["opt_start_seq"]
        elif spec.get("opt_start_time"):
            at = parse_time(spec["opt_start_time"])
            if tst.last_ts and at < tst.last_ts:
                at = tst.last_ts
            start = _first_at_or_after(origin.store, at)
        elif tst.first_seq > 1 and tst.last_ts:
            start = _first_at_or_after(origin.store, tst.last_ts)
        link.queued = max(0, start - 1)

    def _read(self, link: Link, origin, ident: str, own: "tr.Transform | None") -> list:
        store = origin.store
        out = []
        seq = link.queued + 1
        filters = link.filters
        while len(out) < _BATCH:
            if len(filters) <= 1:
                msg = store.next_msg(seq, filters[0] if filters else None)
            else:
                found = [m for m in (store.next_msg(seq, f) for f in filters) if m is not None]
                msg = min(found, key=lambda m: m.seq) if found else None
            if msg is None:
                break
            seq = msg.seq + 1
            subject = tr.first_match(link.transforms, msg.subject)
            if own is not None:
                subject = own.match(subject) or subject
            hdr = _strip(msg.hdr, link.kind == "source")
            if link.kind == "source":
                value = (f"{link.origin} {msg.seq} {link.hdr_filter} {link.hdr_dest} "
                         f"{msg.subject} {ident}")
                hdr = _append_header(hdr, SOURCE_HDR, value)
            out.append((link, msg.seq, subject, hdr, msg.data, msg.ts))
            link.queued = msg.seq
        return out

    # ---- the writer side ----
    def apply(self, stream, now: int, refused: errors.JSError | None) -> list[tuple[int, str]]:
        """Store the copies queued for `stream` (called from its writer task)."""
        items = self.take(stream)
        if not items:
            return []
        results: list = []
        halted: set[int] = set()
        for link, oseq, subject, hdr, data, ts in items:
            if id(link) in halted:  # an earlier copy of this link failed: the rest waits for the retry
                results.append(False)
                continue
            try:
                if refused is not None:
                    raise refused
                if link.kind == "mirror":
                    if oseq <= stream.store.state().last_seq:
                        results.append(None)
                        continue
                    results.append(stream.store_copy(subject, hdr, data, now, at_seq=oseq, ts=ts))
                else:
                    results.append(stream.store_copy(subject, hdr, data, now))
            except errors.JSError as e:
                halted.add(id(link))
                results.append(e)
        return self.settle(stream, items, results, now)

    def take(self, stream) -> list:
        """The queued copies still wanted: (link, origin seq, subject, hdr, data, ts) each."""
        batch = self.queued.pop(stream.name, None)
        if not batch:
            return []
        links = self.links.get(stream.name, [])
        for link in links:
            link.halted = False
        return [item for item in batch if item[1] > item[0].sseq and item[0] in links]

    def settle(self, stream, items: list, results: list, now: int) -> list[tuple[int, str]]:
        """What storing `items` gave, one result each: (seq, duplicate), None (a mirror already
        had it), a JSError (that link halts and retries from its last stored copy), False (not
        tried: an earlier copy of the link failed). Returns the new (seq, subject) stored.
        A replicated target's leader calls it once the entry with the copies applied."""
        stored: list[tuple[int, str]] = []
        links = self.links.get(stream.name, [])
        for (link, oseq, subject, hdr, data, ts), r in zip(items, results):
            if link.halted or link not in links or r is False:
                continue
            if r is None:
                link.sseq = oseq
                continue
            if isinstance(r, errors.JSError):
                log.debug("stream '%s': copy of '%s' seq %d not stored: %s",
                          stream.name, link.origin, oseq, r.description)
                link.halted = True
                link.queued = link.sseq
                link.retry_at = now + _RETRY_NS
                continue
            seq, dup = r
            link.sseq = oseq
            if not dup:
                stored.append((seq, subject))
            origin = self.js.streams.get(link.origin)
            if origin is not None and origin.config.retention != "limits":
                # nats-server's sourcing consumer acks on delivery: a workqueue's message is
                # taken, an interest stream's goes once nobody else wants it
                self.js.stream_acked(link.origin, oseq)
        self._dirty.add(stream.name)
        self.wake()
        return stored

    # ---- interest ----
    def wants(self, origin, seq: int, subject: str) -> bool:
        """Does a mirror or source of `origin` still have to copy this message? (For
        interest and workqueue origins, where nats-server's sourcing consumer is interest.)"""
        if origin.name not in self._origins:
            return False
        for links in self.links.values():
            for link in links:
                if link.origin == origin.name and seq > link.sseq and link.matches(subject):
                    return True
        return False

    def consumer_count(self, stream) -> int:
        """Sourcing consumers nats-server counts on an interest or workqueue origin."""
        if stream.config.retention == "limits" or stream.name not in self._origins:
            return 0
        return sum(1 for links in self.links.values() for link in links if link.origin == stream.name)

    # ---- STREAM.INFO ----
    def info(self, stream) -> tuple[api.StreamSourceInfo | None, list[api.StreamSourceInfo]]:
        links = self.links.get(stream.name, [])
        now = time.time_ns()
        mirror = None
        sources = []
        for link in links:
            out = api.StreamSourceInfo(name=link.origin, lag=self._lag(link),
                                       active=now - link.last_ns if link.last_ns else -1)
            if link.err is not None:
                out.error = api.ApiError(link.err.code, link.err.err_code, link.err.description)
            if link.filter_subject:
                out.filter_subject = link.filter_subject
            if link.transform_cfgs:
                out.subject_transforms = link.transform_cfgs
            if link.kind == "mirror":
                mirror = out
            else:
                if link.sseq:
                    out.seq = link.sseq
                sources.append(out)
        return mirror, sources

    def _lag(self, link: Link) -> int:
        origin = self.js.streams.get(link.origin)
        if origin is None or not link.started:
            return link.lag
        store = origin.store
        if store.state().last_seq <= link.sseq:
            left = 0
        elif not link.filters:
            left = store.num_pending(link.sseq + 1)
        else:
            left = sum(store.num_pending(link.sseq + 1, f) for f in link.filters)
        # nats-server reports what its consumer said was pending after the message being
        # copied, minus one: the next one in flight does not count, nor (while a copy
        # could not be stored and waits for a retry) the one that failed.
        blocked = link.halted or link.retry_at > time.time_ns()
        link.lag = max(0, left - (2 if blocked else 1))
        return link.lag


def _first_at_or_after(store, ts: int) -> int:
    """Smallest stored sequence whose timestamp is >= ts (last_seq + 1 if none)."""
    st = store.state()
    lo, hi = st.first_seq, st.last_seq + 1
    while lo < hi:
        mid = (lo + hi) // 2
        msg = store.next_msg(mid)
        if msg is None or msg.ts >= ts:
            hi = mid
        else:
            lo = msg.seq + 1
    msg = store.next_msg(lo)
    return msg.seq if msg is not None else st.last_seq + 1


_TIME = re.compile(r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$")


def parse_time(text: str) -> int:
    """An RFC 3339 time as Unix nanoseconds (0 if it does not parse)."""
    import calendar
    m = _TIME.match(text.strip())
    if not m:
        return 0
    y, mo, d, h, mi, s, frac, zone = m.groups()
    secs = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s)))
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        secs -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    ns = int((frac or "0")[:9].ljust(9, "0"))
    return secs * 1_000_000_000 + ns


def _header(hdr: bytes, name: str) -> str | None:
    key = b"\r\n" + name.encode() + b":"
    i = hdr.find(key)
    if i < 0:
        return None
    start = i + len(key)
    end = hdr.find(b"\r\n", start)
    return hdr[start:end].decode("utf-8", "replace").strip()


def _strip(hdr: bytes | None, source: bool) -> bytes | None:
    """Headers of a copy: Nats-Expected-* and Nats-Batch-* dropped (and, for a source, an
    earlier Nats-Stream-Source); None when only the status line would be left."""
    if not hdr:
        return None
    if b"Nats-Expected-" not in hdr and b"Nats-Batch-" not in hdr and (not source or SOURCE_HDR.encode() not in hdr):
        return hdr
    lines = hdr.split(b"\r\n")
    kept = [lines[0]]
    for line in lines[1:]:
        if not line:
            continue
        if line.startswith(b"Nats-Expected-") or line.startswith(b"Nats-Batch-"):
            continue
        if source and line.startswith(SOURCE_HDR.encode() + b":"):
            continue
        kept.append(line)
    if len(kept) == 1:
        return None
    return b"\r\n".join(kept) + b"\r\n\r\n"


def _append_header(hdr: bytes | None, name: str, value: str) -> bytes:
    line = f"{name}: {value}\r\n".encode()
    if not hdr:
        return b"NATS/1.0\r\n" + line + b"\r\n"
    return hdr[:-2] + line + b"\r\n"
