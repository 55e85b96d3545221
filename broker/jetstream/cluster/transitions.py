"""Changing a stream's replica count in place: one copy to N (promote) and N to one (demote).

How this works. The meta leader records the new placement (`UpdateStream` with a new
assignment, its `epoch` bumped so the Raft group is a new one):
- 1 -> N: peers are the old host plus N-1 placed servers; the group's first voter is the old
  host alone (`voters`). The host closes its single-copy stream and reopens the same store as
  the group's initial state (`StreamReplica.open(adopt=True)`): it leads alone, snapshots, and
  adds the others one at a time; they restore that snapshot and catch up from it. Durable
  consumers move into the stream's log from their state files.
- N -> 1: the kept server is the stream leader the meta leader knew. It waits until it leads
  with everything committed applied (so it holds every acknowledged message), closes the group
  with a snapshot (the store is synced) and reopens the store as a single-copy stream; its
  consumers' states are written as single-copy state files. The other replicas hand the
  leadership to it if they hold it, wait until it leads (at most HANDOVER_WAIT_S), then
  remove their copies.
"""

from __future__ import annotations

import logging
import os
import shutil

import trio

from broker.jetstream import api, streamapi
from broker.jetstream.cluster import meta as m

log = logging.getLogger("broker.jetstream.cluster")

HANDOVER_WAIT_S = 5.0


async def promote(cluster, stream, sa: m.StreamAssignment, reply: str) -> None:
    js = cluster.js
    cons = js.consumers
    for e in list(cons.by_stream.get(sa.name, {}).values()):
        if e.durable:
            cons._write_state(e)  # the latest positions, read back into the log below
    cons.leader_lost(stream)
    await js.detach(stream)
    stream.store.sync()
    stream.store.close()
    new = await cluster._open_replica(sa, "", adopt=True)
    replica = js.replica(sa.name)
    for e in list(cons.by_stream.get(sa.name, {}).values()):
        if e.durable and e.replica is not None:
            e.replica.consumer_upsert(e)  # now recorded in the stream's log, not in files
    shutil.rmtree(cons._obs_dir(sa.name), ignore_errors=True)
    log.info("JetStream cluster: stream '$G > %s' grows from 1 to %d replicas", sa.name, len(sa.peers))
    if reply and replica is not None:
        js.count_api(False)
        js.reply_json(reply, streamapi._info_like(js, new, api.StreamUpdateResponse))


async def demote(cluster, replica, sa: m.StreamAssignment, reply: str) -> None:
    js = cluster.js
    cons = js.consumers
    g = replica.group
    with trio.move_on_after(HANDOVER_WAIT_S):
        while not (replica.is_leader and replica.consumers_started and g.applied_index >= g.last_index):
            await trio.sleep(0.02)
    if not replica.is_leader:
        log.warning("JetStream cluster: stream '$G > %s' shrinks to 1 replica here without leading it: "
                    "what its leader acknowledged last may be missing", sa.name)
    stream = replica.stream
    entries = [e for e in cons.by_stream.get(sa.name, {}).values() if e.durable]
    await js.detach(stream)
    cluster.close_replica(replica, snapshot=True)
    stream.store.close()
    shutil.rmtree(os.path.join(js.stream_dir(sa.name), "raft"), ignore_errors=True)
    from broker.jetstream.stream import Stream

    new = Stream(sa.config, js.open_store(sa.config), sa.created)
    js.save_meta(new)
    for e in entries:  # their positions become single-copy state files
        e.replica = None
        cons._gates.pop(id(e.c), None)
        e.stream = new
        cons._write_meta(e)
        cons._write_state(e)
    cons.leader_lost(stream)
    js.attach(new)
    await cons.restore(new)
    log.info("JetStream cluster: stream '$G > %s' shrinks to 1 replica", sa.name)
    if reply:
        js.count_api(False)
        js.reply_json(reply, streamapi._info_like(js, new, api.StreamUpdateResponse))


async def hand_over(cluster, replica, sa: m.StreamAssignment) -> None:
    """This server is no longer a replica of a stream that lives on (N -> 1): leadership goes
    to the kept server before this copy is removed."""
    keep = sa.peers[0]
    if replica.is_leader:
        replica.step_down(m.raft_id(keep), None)
    with trio.move_on_after(HANDOVER_WAIT_S):
        while replica.leader_name != keep and not replica.group.stopped:
            await trio.sleep(0.02)
