"""Three-node clustered JetStream of either server, for tests and bench/meta_failover.py.

`JSCluster(kind, workdir)` starts three nodes n1..n3 of our broker (`kind="ours"`) or of
the real nats-server (`kind="nats-server"`), every node configured with the routes of all
three (nats-server refuses a JetStream cluster without configured routes), JetStream on,
a store directory per node, a server name and the cluster name "jsc". Helpers find the
meta leader (from /jsz `meta_cluster.leader`), the leader of a stream or consumer (from
STREAM.INFO / CONSUMER.INFO `cluster.leader`), kill -9 / SIGSTOP / SIGCONT / restart a
node by name, connect nats-py to one node, and send one `$JS.API` request counting every
response it gets.

`OURS_READY` is the one switch for the `ours` parameter of every test in tests/jscluster:
while it is False those tests are skipped ("clustered JetStream not built yet").

Fixtures (module scope: one cluster per kind shared by the tests of a module; a test that
kills or stops nodes calls `restore()` in its finally block):
  jsc      plain cluster, flags only
  jsc_sys  the same plus `-c accounts.conf` with a system account (SYS, user sys/sys):
           `$JS.API.META.LEADER.STEPDOWN` is only served to the system account
Helpers: JSCluster.{start, stop, restore, wait_ready, wait_meta_leader, meta_leader,
meta_view, stream_leader, consumer_leader, jsz, jsz_streams, kill, sigstop, cont, restart,
connect, connect_all}; api (first answer), api_all (every answer to one request), api_retry
(until no 10008 / timeout), until_routed / publish (retry no-responders right after a
create), normalize / key_paths (compare answers across servers), kind_params.

nats-py is asyncio while pytest here runs trio mode: tests are sync functions that call
asyncio.run, and the helpers below that touch the network over HTTP are sync.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import ServerProc, free_port, nats_server_binary

# Flip to True when clustered JetStream lands in our server: every `ours` test runs.
OURS_READY = True
OURS_SKIP_REASON = "clustered JetStream not built yet"

CLUSTER_NAME = "jsc"
NAMES = ("n1", "n2", "n3")
WAIT_S = 30.0

# `$JS.API.META.LEADER.STEPDOWN` is only served to the system account (nats-server drops it
# from any other account with a rate-limited warning), so clusters made with
# system_account=True load this config: a SYS account with one user and system_account SYS.
# Clients without credentials still land in the global account $G.
SYS_USER, SYS_PASS = "sys", "sys"
SYS_ACCOUNT_CONF = f"""accounts {{
  SYS {{ users = [{{user: {SYS_USER}, password: {SYS_PASS}}}] }}
}}
system_account: SYS
"""

# nats-server first: tests that compare against nats-server's live answers find them cached.
KINDS = ("nats-server", "ours")


def kind_params(*kinds: str) -> list:
    """pytest params for the server kinds; `ours` carries the one not-ready skip."""
    out = []
    for kind in kinds or KINDS:
        marks = [pytest.mark.skipif(not OURS_READY, reason=OURS_SKIP_REASON)] if kind == "ours" else []
        out.append(pytest.param(kind, id=kind, marks=marks))
    return out


_HASH_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def peer_id(server_name: str) -> str:
    """nats-server's Raft peer id of a server: its getHash (sha256 of the name, first 8 bytes
    each mapped onto 62 digits)."""
    return "".join(_HASH_DIGITS[b % 62] for b in hashlib.sha256(server_name.encode()).digest()[:8])


def http_json(port: int, path: str, timeout: float = 3.0) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
        return json.loads(resp.read())


def wait_for(cond: Callable[[], Any], what: str, timeout: float = WAIT_S, interval: float = 0.05) -> Any:
    """Poll `cond` until it returns something truthy; connection errors count as not yet."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            got = cond()
            if got:
                return got
        except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc})")
        time.sleep(interval)


class Node:
    """One cluster member: a ServerProc plus its name and cluster port."""

    def __init__(self, proc: ServerProc, name: str, cluster_port: int):
        self.proc = proc
        self.name = name
        self.cluster_port = cluster_port
        self.stopped = False  # SIGSTOPped

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def port(self) -> int:
        return self.proc.port

    @property
    def http_port(self) -> int:
        return self.proc.http_port

    @property
    def alive(self) -> bool:
        return self.proc.proc is not None and self.proc.proc.poll() is None

    def jsz(self, query: str = "", timeout: float = 3.0) -> dict:
        return http_json(self.http_port, "/jsz" + (f"?{query}" if query else ""), timeout)


class JSCluster:
    """Three JetStream nodes of one server kind meshed by configured routes."""

    def __init__(self, kind: str, workdir: Path, names: tuple[str, ...] = NAMES,
                 system_account: bool = False):
        if kind not in KINDS:
            raise ValueError(f"unknown server kind {kind!r}")
        self.kind = kind
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        cports = {n: free_port() for n in names}
        routes = ",".join(f"nats://127.0.0.1:{cp}" for cp in cports.values())
        head = [sys.executable, "-m", "broker"] if kind == "ours" else [nats_server_binary()]
        self.system_account = system_account
        conf: list[str] = []
        # our server has no accounts: every client may ask what nats-server keeps for the
        # system account, so its "system account" cluster is the plain one
        if system_account and kind != "ours":
            path = self.workdir / "accounts.conf"
            path.write_text(SYS_ACCOUNT_CONF)
            conf = ["-c", str(path)]
        self.nodes: dict[str, Node] = {}
        for n in names:
            extra = conf + ["-n", n, "--cluster", f"nats://127.0.0.1:{cports[n]}", "--cluster_name",
                            CLUSTER_NAME, "--routes", routes]
            proc = ServerProc(head, extra, str(self.workdir / f"{n}-store"), self.workdir / f"{n}.log")
            self.nodes[n] = Node(proc, n, cports[n])

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self, wait_leader: bool = True) -> "JSCluster":
        try:
            for node in self.nodes.values():
                node.proc.start()
            if wait_leader:
                self.wait_ready()
        except AssertionError as exc:
            said = self.exited_nodes()
            self.stop()
            if said:
                raise AssertionError(f"{exc}\n{said}") from exc
            raise
        except BaseException:
            self.stop()
            raise
        return self

    def exited_nodes(self) -> str:
        """Which nodes are no longer running, with the end of each one's log (for a failure)."""
        out = []
        for name, node in self.nodes.items():
            if node.proc.proc is not None and node.proc.proc.poll() is not None:
                tail = "\n".join(node.proc.log_text().splitlines()[-15:])
                out.append(f"node {name} exited with {node.proc.proc.returncode}; its log ends:\n{tail}")
        return "\n".join(out)

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.stopped:
                self.cont(node.name)
        for node in self.nodes.values():
            node.proc.stop(timeout=5)

    def __enter__(self) -> "JSCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def node(self, name: str) -> Node:
        return self.nodes[name]

    def names(self) -> list[str]:
        return list(self.nodes)

    def live(self) -> list[str]:
        return [n for n, node in self.nodes.items() if node.alive and not node.stopped]

    def kill(self, name: str) -> None:
        """SIGKILL (kill -9) and reap."""
        node = self.nodes[name]
        if node.stopped:
            node.proc.signal(signal.SIGCONT)
            node.stopped = False
        node.proc.kill()

    def sigstop(self, name: str) -> None:
        self.nodes[name].proc.signal(signal.SIGSTOP)
        self.nodes[name].stopped = True

    def cont(self, name: str) -> None:
        self.nodes[name].proc.signal(signal.SIGCONT)
        self.nodes[name].stopped = False

    def restart(self, name: str) -> None:
        """Start a killed node again on the same ports and store directory (or SIGTERM + start)."""
        node = self.nodes[name]
        if node.stopped:
            self.cont(name)
        if node.alive:
            node.proc.stop()
        node.proc.start()

    def log(self, name: str) -> str:
        return self.nodes[name].proc.log_text()

    # -- cluster state -------------------------------------------------------------------------

    def jsz(self, name: str, query: str = "") -> dict:
        return self.nodes[name].jsz(query)

    def meta_view(self, name: str) -> dict:
        """/jsz meta_cluster as node `name` sees it ({} when it has none)."""
        return self.jsz(name).get("meta_cluster") or {}

    def meta_leader(self, among: list[str] | None = None) -> str | None:
        """The meta leader every live node (or every node of `among`) agrees on, else None."""
        seen = set()
        for n in among or self.live():
            seen.add(self.meta_view(n).get("leader") or None)
        if len(seen) == 1:
            leader = seen.pop()
            if leader is not None and leader in self.live():
                return leader
        return None

    def wait_meta_leader(self, among: list[str] | None = None, exclude: str | None = None,
                         timeout: float = WAIT_S) -> str:
        def ok():
            leader = self.meta_leader(among)
            return leader if leader and leader != exclude else None
        return wait_for(ok, f"a meta leader agreed by {among or self.live()} (not {exclude})", timeout)

    def healthy(self, name: str) -> bool:
        try:
            resp = http_json(self.nodes[name].http_port, "/healthz?js-enabled-only=true")
        except urllib.error.HTTPError:
            return False
        return resp.get("status") == "ok"

    def meta_current(self, name: str) -> bool:
        """Node `name` knows the meta leader and, if it is the leader, sees every peer current."""
        view = self.meta_view(name)
        if not view.get("leader"):
            return False
        if view["leader"] == name:
            reps = view.get("replicas") or []
            return len(reps) == len(self.nodes) - 1 and all(r.get("current") for r in reps)
        return True

    def wait_ready(self, timeout: float = WAIT_S) -> str:
        """Every node running, routed, agreeing on a meta leader that sees all peers current."""
        def ok():
            leader = self.meta_leader(self.names())
            if not leader or not all(self.meta_current(n) for n in self.names()):
                return None
            if not all(self.healthy(n) for n in self.names()):
                return None
            if not all(run_sync(lambda n=n: self._answers_info(n)) for n in self.names()):
                return None
            return leader
        return wait_for(ok, f"{self.kind} cluster ready (all nodes, one meta leader, peers current, "
                            "account INFO answered through every node)", timeout, interval=0.1)

    async def _answers_info(self, name: str) -> bool:
        """`$JS.API.INFO` through node `name` gets a non-error answer."""
        try:
            nc = await self.connect(name)
        except Exception:
            return False
        try:
            resp = await api(nc, "$JS.API.INFO", timeout=2)
            return "error" not in resp
        except Exception:
            return False
        finally:
            await nc.close()

    def restore(self, timeout: float = WAIT_S) -> str:
        """Bring every node back (SIGCONT / start) and wait until the cluster is ready."""
        for name, node in self.nodes.items():
            if node.stopped:
                self.cont(name)
            if not node.alive:
                node.proc.start()
        return self.wait_ready(timeout)

    def jsz_streams(self, name: str) -> set[str]:
        """Streams node `name` itself holds, from its /jsz?streams=1."""
        doc = self.jsz(name, "streams=1")
        out = set()
        for acc in doc.get("account_details") or []:
            for sd in acc.get("stream_detail") or []:
                out.add(sd["name"])
        return out

    # -- clients -------------------------------------------------------------------------------

    async def connect(self, name: str, system: bool = False, **kw):
        """A nats-py connection to node `name` only (no reconnect to other nodes unless asked);
        `system=True` logs in as the system account's user."""
        import nats
        opts = dict(servers=[self.nodes[name].url], allow_reconnect=False, connect_timeout=5,
                    dont_randomize=True)
        if system and self.kind != "ours":  # ours: no accounts, any client is the system's
            opts.update(user=SYS_USER, password=SYS_PASS)
        opts.update(kw)
        return await nats.connect(**opts)

    async def connect_all(self) -> dict[str, Any]:
        return {n: await self.connect(n) for n in self.live()}

    def stream_leader(self, stream: str, via: str | None = None, timeout: float = WAIT_S) -> str:
        """`cluster.leader` of STREAM.INFO asked through `via` (default: any live node)."""
        return self._leader_from(f"$JS.API.STREAM.INFO.{stream}", via, timeout)

    def consumer_leader(self, stream: str, consumer: str, via: str | None = None,
                        timeout: float = WAIT_S) -> str:
        return self._leader_from(f"$JS.API.CONSUMER.INFO.{stream}.{consumer}", via, timeout)

    def _leader_from(self, subject: str, via: str | None, timeout: float) -> str:
        async def ask() -> str | None:
            nc = await self.connect(via or self.live()[0])
            try:
                msg = await nc.request(subject, b"", timeout=2)
                return (json.loads(msg.data).get("cluster") or {}).get("leader")
            except Exception:
                return None
            finally:
                await nc.close()
        return wait_for(lambda: run_sync(ask), f"a leader in {subject}", timeout, interval=0.2)


def run_sync(coro_fn: Callable[[], Any]) -> Any:
    """Run `coro_fn()` to completion from sync code, also when called inside a running event
    loop (then on a private loop in a worker thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_fn())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(coro_fn())).result()


# -- the JetStream API --------------------------------------------------------------------------

class Response:
    """One raw response: subject, headers (dict or None), data, and its JSON body if any."""

    def __init__(self, msg, at: float):
        self.subject = msg.subject
        self.headers = msg.headers
        self.data = msg.data
        self.at = at  # seconds after the request was published

    @property
    def json(self) -> dict:
        return json.loads(self.data)

    def __repr__(self) -> str:
        return f"Response(headers={self.headers!r}, data={self.data[:200]!r}, at={self.at:.3f})"


async def api_all(nc, subject: str, body: Any = b"", first_timeout: float = 5.0,
                  linger: float = 1.0) -> list[Response]:
    """Publish one request and return EVERY response: waits up to `first_timeout` for the
    first, then `linger` more seconds for any further ones."""
    payload = body if isinstance(body, (bytes, bytearray)) else json.dumps(body).encode()
    inbox = nc.new_inbox()
    got: list[Response] = []
    first = asyncio.Event()
    t0 = time.monotonic()

    async def cb(msg):
        got.append(Response(msg, time.monotonic() - t0))
        first.set()

    sub = await nc.subscribe(inbox, cb=cb)
    await nc.flush()
    t0 = time.monotonic()
    await nc.publish(subject, payload, reply=inbox)
    await nc.flush()
    try:
        await asyncio.wait_for(first.wait(), first_timeout)
    except asyncio.TimeoutError:
        pass
    else:
        await asyncio.sleep(linger)
    await sub.unsubscribe()
    return got


async def api(nc, subject: str, body: Any = b"", timeout: float = 5.0) -> dict:
    """One request, the first response's JSON (for setup steps; api_all counts responses)."""
    payload = body if isinstance(body, (bytes, bytearray)) else json.dumps(body).encode()
    msg = await nc.request(subject, payload, timeout=timeout)
    return json.loads(msg.data)


async def api_retry(nc, subject: str, body: Any = b"", until: float = WAIT_S,
                    per_request: float = 2.0) -> dict:
    """Repeat a request until it answers without a 503/10008 (no meta leader) or a timeout."""
    import nats.errors
    deadline = time.monotonic() + until
    last: Any = None
    while time.monotonic() < deadline:
        try:
            resp = await api(nc, subject, body, timeout=per_request)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError, asyncio.TimeoutError) as exc:
            last = exc
            await asyncio.sleep(0.1)
            continue
        if (resp.get("error") or {}).get("err_code") == 10008:
            last = resp
            await asyncio.sleep(0.1)
            continue
        return resp
    raise AssertionError(f"{subject} did not answer within {until}s (last: {last!r})")


async def until_routed(fn: Callable[[], Any], until: float = 15.0) -> Any:
    """Await `fn()`, retried while nats-py reports no responders: right after a stream or
    consumer is created, its interest may not have crossed the routes to this node yet
    (nats-server behaves so too)."""
    from nats.errors import NoRespondersError
    from nats.js.errors import NoStreamResponseError, ServiceUnavailableError
    deadline = time.monotonic() + until
    while True:
        try:
            return await fn()
        except (NoStreamResponseError, ServiceUnavailableError, NoRespondersError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def publish(js, subject: str, data: bytes, headers: dict | None = None, until: float = 15.0):
    """js.publish through until_routed."""
    return await until_routed(lambda: js.publish(subject, data, headers=headers), until)


async def publish_acked(nc, subject: str, tag: str, lo: int, hi: int, acked: dict[int, int],
                        window: int = 50, size: int = 0, stream: str = "", wait: float = 60.0) -> None:
    """Publish messages lo..hi-1 (payload "<tag>-<i>" padded to `size` bytes, Nats-Msg-Id
    "<tag>-<i>"), `window` in flight, each retried with its id (no responders, timeouts, 503s
    while there is no leader) until acknowledged within `wait` s; acked[i] = its stream
    sequence, as acked. With `stream`, every PubAck must name that stream."""
    import nats.errors

    async def one(i: int) -> None:
        mid = f"{tag}-{i}"
        deadline = time.monotonic() + wait
        last: Any = None
        while True:
            try:
                msg = await nc.request(subject, mid.encode().ljust(size, b"."), timeout=2,
                                       headers={"Nats-Msg-Id": mid})
                body = json.loads(msg.data)
                if "error" not in body:
                    assert not stream or body["stream"] == stream, body
                    acked[i] = body["seq"]
                    return
                assert body["error"].get("code") == 503, body
                last = body
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
                last = exc
            assert time.monotonic() < deadline, f"publish {mid} not acknowledged within {wait}s (last: {last!r})"
            await asyncio.sleep(0.2)

    for start in range(lo, hi, window):
        await asyncio.gather(*(one(i) for i in range(start, min(start + window, hi))))


def stream_config(name: str, subjects: list[str] | None = None, **kw) -> dict:
    cfg = {"name": name, "subjects": subjects if subjects is not None else [f"{name}.>"],
           "retention": "limits", "storage": "file", "num_replicas": 1}
    cfg.update(kw)
    return cfg


# -- normalizing responses for comparison across servers ---------------------------------------

ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time: kept, it says "never"
TIME_KEYS = {"created", "ts", "first_ts", "last_ts", "leader_since", "last_active", "time", "now",
             "start", "server_time"}
ID_KEYS = {"server_id", "id", "peer", "nonce", "raft_group"}
NAME_KEYS = {"leader"}
DURATION_KEYS = {"active", "uptime"}


def normalize(obj: Any) -> Any:
    """Replace what legitimately differs between runs and servers (timestamps other than the
    zero time, ids, peers, raft group names, leader names, durations) with placeholders; keep
    every key and every other value."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if k in TIME_KEYS and v is not None and v != ZERO_TIME:
                out[k] = "<time>"
            elif k in ID_KEYS and v is not None:
                out[k] = "<id>"
            elif k in NAME_KEYS and v is not None:
                out[k] = "<leader>"
            elif k in DURATION_KEYS and isinstance(v, (int, float, str)):
                out[k] = "<duration>"
            else:
                out[k] = normalize(v)
        return out
    if isinstance(obj, list):
        return [normalize(v) for v in obj]
    return obj


def key_paths(obj: Any, prefix: str = "") -> set[str]:
    """Every key path in a JSON document (lists contribute `[]`)."""
    out: set[str] = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = f"{prefix}.{k}" if prefix else k
            out.add(p)
            out |= key_paths(v, p)
    elif isinstance(obj, list):
        for v in obj:
            out |= key_paths(v, prefix + "[]")
    return out


# -- fixtures -----------------------------------------------------------------------------------

def shared_cluster(request, tmp_path_factory, prefix: str, **kw) -> Iterator[JSCluster]:
    """The body of a module-scoped fixture parametrized by kind_params(): one three-node
    cluster of that kind, started once and shared by the module's tests (`yield from`)."""
    cl = JSCluster(request.param, tmp_path_factory.mktemp(f"{prefix}-{request.param}"), **kw)
    cl.start()
    try:
        yield cl
    finally:
        cl.stop()


def run(coro):
    """Run a nats-py coroutine from a sync test (pytest runs trio here, nats-py is asyncio)."""
    return asyncio.run(coro)


@pytest.fixture(scope="module", params=kind_params())
def jsc(request, tmp_path_factory) -> Iterator[JSCluster]:
    """A shared three-node cluster per server kind. Tests that kill or stop nodes call
    `jsc.restore()` in a finally block so the next test gets all three nodes back."""
    yield from shared_cluster(request, tmp_path_factory, "jsc")


@pytest.fixture(scope="module", params=kind_params())
def jsc_sys(request, tmp_path_factory) -> Iterator[JSCluster]:
    """A shared three-node cluster per server kind with a system account (for meta leader
    stepdown, which only the system account may ask for). Same restore() contract as jsc."""
    yield from shared_cluster(request, tmp_path_factory, "jsc-sys", system_account=True)


# -- replicated streams (tests/jscluster/test_streams_r3.py) -----------------------------------

def stream_state_on(cl: JSCluster, name: str, stream: str) -> dict | None:
    """The stream's state in node `name`'s own store, from its /jsz?streams=1 (None when the
    node holds no such stream). A per-node read: it needs no leader and no quorum."""
    doc = cl.jsz(name, "streams=1")
    for acc in doc.get("account_details") or []:
        for sd in acc.get("stream_detail") or []:
            if sd.get("name") == stream:
                return sd.get("state") or {}
    return None


async def stream_info_any(cl: JSCluster, stream: str, via: list[str] | None = None,
                          timeout: float = 2.0) -> dict | None:
    """STREAM.INFO through the first node of `via` (default: live nodes) that answers without
    an error; None when none does."""
    return await api_any(cl, f"$JS.API.STREAM.INFO.{stream}", via, timeout)


async def api_any(cl: JSCluster, subject: str, via: list[str] | None = None, timeout: float = 2.0) -> dict | None:
    """An API request through the first node of `via` (default: live nodes) that answers
    without an error; None when none does."""
    for name in via or cl.live():
        try:
            nc = await cl.connect(name)
        except Exception:
            continue
        try:
            resp = await api(nc, subject, timeout=timeout)
            if "error" not in resp:
                return resp
        except Exception:
            pass
        finally:
            await nc.close()
    return None


async def consumer_info_any(cl: JSCluster, stream: str, durable: str, via: list[str] | None = None,
                            timeout: float = 2.0) -> dict | None:
    """CONSUMER.INFO through the first node of `via` (default: live nodes) answering without error."""
    return await api_any(cl, f"$JS.API.CONSUMER.INFO.{stream}.{durable}", via, timeout)


def make_leader(cl: JSCluster, want: str, info: Callable[[], Any], stepdown: str, what: str,
                timeout: float = 60.0) -> dict:
    """Make node `want` the leader of a replicated stream or consumer: `info()` (a coroutine
    function) asks its INFO (None: no answer), `stepdown` is its `...LEADER.STEPDOWN...`
    subject, asked through `want` with body {"placement": {"preferred": want}} (nats-server
    2.11+ honours it); while a server refuses that body, plain stepdowns until `want` wins.
    Each stepdown's election is waited for (a leader other than the one before it, at most
    10 s) before the next. Returns the INFO that names `want` as leader."""
    state: dict = {"plain": False, "last": None}

    async def attempt() -> dict | None:
        doc = await info()
        leader = ((doc or {}).get("cluster") or {}).get("leader")
        if leader == want:
            return doc
        if leader is None:  # no leader (or no answer) yet: nothing to step down
            return None
        nc = await cl.connect(want)
        try:
            body: Any = b"" if state["plain"] else {"placement": {"preferred": want}}
            try:
                resp = await api(nc, stepdown, body, timeout=3)
            except Exception as exc:
                state["last"] = exc
                return None
            state["last"] = resp
            if "error" in resp:
                state["plain"] = not state["plain"]
                await asyncio.sleep(0.5)
                return None
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # this election's outcome before asking again
                await asyncio.sleep(0.2)
                doc = await info()
                now = ((doc or {}).get("cluster") or {}).get("leader")
                if now == want:
                    return doc
                if now and now != leader:
                    return None
            return None
        finally:
            await nc.close()

    return wait_for(lambda: run_sync(attempt), f"{want} leading {what} (last stepdown answer: "
                    f"{state['last']!r})", timeout, interval=0.2)


def make_stream_leader(cl: JSCluster, stream: str, want: str, timeout: float = 60.0) -> dict:
    """make_leader for `stream` (its INFO asked through `want`)."""
    return make_leader(cl, want, lambda: stream_info_any(cl, stream, via=[want]),
                       f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", stream, timeout)


def make_consumer_leader(cl: JSCluster, stream: str, durable: str, want: str, timeout: float = 60.0) -> dict:
    """make_leader for the consumer `stream`/`durable` (its INFO asked through any live node)."""
    return make_leader(cl, want, lambda: consumer_info_any(cl, stream, durable),
                       f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{durable}", f"consumer {stream}/{durable}",
                       timeout)


class ProxiedJSCluster(JSCluster):
    """A JSCluster whose routes all cross proxies of the toxiproxy-API server
    (deploy/chaos/toxiproxy_server.py): one proxy per ordered node pair, each node's --routes
    are its proxies to the other two, and every node advertises an unreachable cluster
    address so route gossip cannot bypass the proxies (as deploy/chaos/cluster.py's
    LocalCluster does). `isolate(name)` disables every proxy to and from `name` (closing the
    live route connections); `heal()` enables them all again. Client ports are not proxied."""

    def __init__(self, kind: str, workdir: Path, names: tuple[str, ...] = NAMES):
        super().__init__(kind, workdir, names)
        import socket
        self._dead = socket.socket()  # bound, never listening: the advertised cluster address
        self._dead.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{self._dead.getsockname()[1]}"
        self.edges: dict[str, tuple[str, str, int, int]] = {}  # proxy -> (from, to, listen, upstream)
        taken = {p for nd in self.nodes.values() for p in (nd.port, nd.http_port, nd.cluster_port)}
        for a, node in self.nodes.items():
            urls = []
            for b, other in self.nodes.items():
                if a != b:
                    listen = free_port()
                    while listen in taken:  # nothing listens on the nodes' ports yet
                        listen = free_port()
                    taken.add(listen)
                    self.edges[f"{a}_to_{b}"] = (a, b, listen, other.cluster_port)
                    urls.append(f"nats://127.0.0.1:{listen}")
            extra = node.proc.extra
            extra[extra.index("--routes") + 1] = ",".join(urls)
            extra += ["--cluster_advertise", dead]
        self._toxi = None
        self._toxi_api = None
        self.proxies: dict = {}

    def start(self, wait_leader: bool = True) -> "JSCluster":
        from tests.chaos.toxi import ToxiproxyProc
        if self._toxi is None:
            self._toxi = ToxiproxyProc(self.workdir / "toxiproxy.log")
            self._toxi_api = self._toxi.__enter__()
            for pname, (_a, _b, listen, upstream) in self.edges.items():
                self.proxies[pname] = self._toxi_api.create(upstream=f"127.0.0.1:{upstream}", name=pname,
                                                            listen=f"127.0.0.1:{listen}")
        return super().start(wait_leader)

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            if self._toxi is not None:
                self._toxi.__exit__(None, None, None)
                self._toxi = None
            self._dead.close()

    def routes_of(self, name: str) -> int:
        return http_json(self.nodes[name].http_port, "/routez").get("num_routes", 0)

    def isolate(self, name: str) -> list[str]:
        """Disable every proxy between `name` and the other nodes; returns the proxies cut."""
        cut = [p for p, (a, b, _l, _u) in self.edges.items() if name in (a, b)]
        for p in cut:
            self.proxies[p].disable()
        return cut

    def heal(self) -> None:
        self._toxi_api.reset()
