"""The node registry of a cluster of replicas, shared through Redis (`serve --redis-url`).

Where it sits: the same seat as `server.registry.LocalRegistry` (which it extends): the tunnel attaches
and detaches the links this replica holds; the router, REST, RPC, MCP and SSE read entries and links
from it. A node held by another replica is listed from a local mirror fed by Redis pub/sub (reads
never touch Redis) and its link is a `server.replica_link.RemoteLink`, which carries the call to the
holding replica. Without ``--redis-url`` none of this is built: the embedded default is untouched.

Redis keys and the Lua scripts that change them: `server.cluster_keys`.

Rules:
1. Every change of a node's holder goes through one Lua script (claim, update, release, reap), which
   also publishes the event: the order of events on ``cortex:events`` is the order of the changes.
2. Newest connection wins across replicas: a replica that holds a link whose claim it already saw on
   the channel, and then sees another connection's claim for that node, drops the link and closes it
   4409. A claim not yet seen is newer than any claim seen so far, so it is never dropped for one.
3. Update and release name the connection; they change nothing once another connection holds the
   node (a replaced link's late exit never marks a live node disconnected).
4. A replica whose lease is gone is dead: every replica turns the dead one's nodes disconnected in
   its own mirror (and tells its SSE/MCP subscribers) and fails calls in flight to it; any replica
   clears the dead one's keys. A replica that finds its own lease gone (it was paused, or Redis
   restarted empty) claims its links again, and its tool lists, but never over a newer connection's
   claim: that link is closed 4409 instead, and the replica mirrors the connection Redis names as the
   holder (whose claim it may have read, and passed over, while its own reclaim was pending).
5. Writes to Redis are queued and sent in order by one task, in pipelined batches: the tunnel's
   heartbeat never waits on Redis, and a node's pending updates are coalesced into one. `attach` and
   `detach` return once their write went through (at most `WRITE_WAIT_S`; it is retried after).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from server.cluster_keys import (
    CLAIM,
    EVENTS,
    REAP,
    RECLAIM,
    RELEASE,
    REPLICAS,
    UPDATE,
    held_key,
    node_key,
    replica_key,
    tools_key,
)
from server.registry import LocalRegistry, NodeEntry, NodeLink
from server.replica_link import RemoteLink, ReplicaLinks

if TYPE_CHECKING:
    from server.auth import TokenAuthority
    from server.config import ServerConfig
    from server.metrics import Metrics

__all__ = ["ClusterConfig", "ClusterRegistry", "cluster_registry", "new_replica_id"]

logger = logging.getLogger(__name__)

_BATCH = 512
WRITE_WAIT_S = 2.0
"""How long attach/detach wait for their write to reach Redis (it is retried in the background after)."""


def new_replica_id() -> str:
    return "r" + secrets.token_hex(6)


@dataclass(frozen=True)
class ClusterConfig:
    """How this replica takes part in the cluster (all intervals in seconds)."""

    redis_url: str
    replica_id: str
    lease_s: float = 3.0
    refresh_s: float = 1.0


def _wire(entry: NodeEntry, tools_id: str) -> dict[str, Any]:
    """What other replicas need to list the node and check calls to it (times as Unix seconds)."""
    return {
        "workspace": entry.workspace,
        "status": entry.status,
        "connected_at": entry.connected_at,
        "last_seen": entry.last_seen,
        "rtt_ms": entry.rtt_ms,
        "info": entry.info,
        "tools_id": tools_id,
        "audit_head": entry.audit_head,
        "audit_warning": entry.audit_warning,
        "audit": entry.audit,
    }


def _strs(values: Any) -> list[str]:
    """Members of a Redis set as text (the client decodes responses; bytes only if misconfigured)."""
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def cluster_registry(
    config: ServerConfig, known: Callable[[], list[tuple[str, str]]], metrics: Metrics
) -> ClusterRegistry:
    """The registry of one replica, from the server's configuration (``serve --redis-url``)."""
    assert config.redis_url is not None
    cluster = ClusterConfig(
        config.redis_url,
        config.replica_id or new_replica_id(),
        lease_s=config.replica_lease_s,
        refresh_s=config.replica_refresh_s,
    )
    registry = ClusterRegistry(cluster, known, metrics=metrics)
    registry.max_frame_bytes = config.max_frame_bytes
    return registry


@dataclass
class _Held:
    """A link this replica holds: its connection id and whether its claim came back on the channel."""

    link: NodeLink
    conn: str
    claim_seen: bool = False


_Op = tuple[str, str, str, "asyncio.Future[None] | None"]
"""A queued write: (claim | update | release, node name, connection id, done when written)."""


class ClusterRegistry(LocalRegistry):
    """`LocalRegistry` for the links held here, plus a mirror of the nodes other replicas hold."""

    def __init__(
        self,
        config: ClusterConfig,
        known: Callable[[], list[tuple[str, str]]] | None = None,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__(known)
        self.config = config
        self.rid = config.replica_id
        self.url: str | None = None
        """This replica's internal address for replica links (`advertise`)."""
        self.links: ReplicaLinks | None = None
        """Set by `use_authority` (the links are signed with the server's key)."""
        self.max_frame_bytes = 16 * 1024 * 1024
        self._metrics = metrics
        self._redis: aioredis.Redis | None = None
        self._held: dict[str, _Held] = {}
        self._remote: dict[str, tuple[str, str]] = {}  # name -> (holder rid, conn) for nodes held elsewhere
        self._remote_links: dict[tuple[str, str, str], NodeLink] = {}
        self._tools: dict[str, tuple[list[dict[str, Any]], Any]] = {}
        self._tools_ids: dict[int, tuple[list[dict[str, Any]], str]] = {}
        self._ops: asyncio.Queue[_Op] = asyncio.Queue()
        self._dirty: set[str] = set()
        self._conns = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = asyncio.Event()
        self._stopping = False
        self._started = time.time()

    # -- life -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect, announce the lease, load the mirror and follow the channel (returns when listed)."""
        self._redis = aioredis.Redis.from_url(
            self.config.redis_url, decode_responses=True, health_check_interval=30
        )
        self._claim = self._redis.register_script(CLAIM)
        self._update = self._redis.register_script(UPDATE)
        self._release = self._redis.register_script(RELEASE)
        self._reclaim = self._redis.register_script(RECLAIM)
        self._reap = self._redis.register_script(REAP)
        try:
            await self._renew_lease()
        except (RedisError, OSError) as exc:
            logger.error("cluster: cannot reach Redis (%s): this replica cannot start", exc)
            raise
        self._tasks = [
            asyncio.create_task(self._follow(), name="cluster-events"),
            asyncio.create_task(self._write_loop(), name="cluster-writer"),
            asyncio.create_task(self._lease_loop(), name="cluster-lease"),
        ]
        async with asyncio.timeout(10):
            await self._ready.wait()

    async def stop(self) -> None:
        """Leave the cluster: send what is queued, release what this replica holds, drop the lease."""
        self._stopping = True
        if self.links is not None:
            await self.links.close()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        redis = self._redis
        if redis is None:
            return
        ops = [self._ops.get_nowait() for _ in range(self._ops.qsize())]
        ops += [("release", name, held.conn, None) for name, held in self._held.items()]
        self._held.clear()
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            async with asyncio.timeout(3):
                for start in range(0, len(ops), _BATCH):
                    await self._write(ops[start : start + _BATCH])
                await redis.delete(replica_key(self.rid))
                await redis.srem(REPLICAS, self.rid)
        await redis.aclose()

    def use_authority(self, authority: TokenAuthority) -> None:
        """Replica links are opened with tokens signed by the server's (shared) signing key."""
        self.links = ReplicaLinks(self, authority, self.max_frame_bytes)

    async def advertise(self, url: str) -> None:
        """The address other replicas dial for calls to nodes held here (announced at once)."""
        self.url = url
        await self._renew_lease()

    # -- NodeRegistry ---------------------------------------------------------------------------------
    def link(self, name: str) -> NodeLink | None:
        local = self._links.get(name)
        if local is not None:
            return local
        holder = self._remote.get(name)
        if holder is None or self.links is None:
            return None
        key = (name, *holder)
        remote = self._remote_links.get(key)
        if remote is None:
            if len(self._remote_links) > 4 * (len(self._remote) + 64):
                self._remote_links.clear()  # bounded: stale connections' links are rebuilt on demand
            remote = self._remote_links[key] = RemoteLink(self.links, holder[0], name)
        return remote

    async def forget(self, name: str) -> None:
        """Drop a revoked node. Held elsewhere, subscribers here still hear it disconnect (as when held
        here: `NodeDirectory.on_revoked` detaches first); the holder closes its link itself."""
        holder = self._remote.get(name)
        if holder is not None:
            self._drop_remote(name, holder[0])
        await super().forget(name)

    def local_link(self, name: str) -> NodeLink | None:
        """The link to `name` if this replica holds it (what a replica link may call)."""
        return self._links.get(name)

    async def attach(self, entry: NodeEntry, link: NodeLink) -> NodeLink | None:
        """Hold the node here; returns once the claim is in Redis (or after `WRITE_WAIT_S`)."""
        self._conns += 1
        conn = f"{self.rid}.{self._conns}"
        self._held[entry.name] = _Held(link, conn)
        self._remote.pop(entry.name, None)
        old = await super().attach(entry, link)  # publishes node.connected: queued as the claim
        await self._written()
        return old

    async def detach(self, name: str, link: NodeLink) -> bool:
        held = self._held.get(name)
        if not await super().detach(name, link):
            return False
        if held is not None and held.link is link:
            del self._held[name]
            self._dirty.discard(name)
            self._ops.put_nowait(("release", name, held.conn, None))
            await self._written()
        return True

    async def _written(self) -> None:
        """Wait (bounded) until every write queued so far reached Redis."""
        if self._stopping:
            return  # the writer is gone; `stop` sends what is left
        marker: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._ops.put_nowait(("flush", "", "", marker))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WRITE_WAIT_S):
                await asyncio.shield(marker)

    def publish(self, event: str, entry: NodeEntry) -> None:
        super().publish(event, entry)
        held = self._held.get(entry.name)
        if held is None or self._links.get(entry.name) is not held.link:
            return  # only the holder tells the cluster about a node
        if event == "node.connected":
            self._ops.put_nowait(("claim", entry.name, held.conn, None))
        elif event == "node.updated" and entry.name not in self._dirty:
            self._dirty.add(entry.name)
            self._ops.put_nowait(("update", entry.name, held.conn, None))

    # -- writing --------------------------------------------------------------------------------------
    def _message(self, event: str, name: str, conn: str, state: str | None) -> str:
        head = json.dumps({"rid": self.rid, "conn": conn, "event": event, "name": name})
        return head[:-1] + ',"node":' + (state or "null") + "}"

    def _tools_id(self, entry: NodeEntry) -> tuple[str, bool]:
        """The id of the entry's tool list, and whether Redis may not have it yet (then it is stored
        with the write; `_stored_tools` remembers it only once that write went through)."""
        known = self._tools_ids.get(id(entry.tools))
        if known is not None and known[0] is entry.tools:
            return known[1], False
        text = json.dumps(entry.tools, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:32], True

    def _stored_tools(self, tools: list[dict[str, Any]], tools_id: str) -> None:
        if len(self._tools_ids) > 1024:
            self._tools_ids.clear()
        self._tools_ids[id(tools)] = (tools, tools_id)

    async def _write_loop(self) -> None:
        while True:
            ops = [await self._ops.get()]
            while len(ops) < _BATCH and not self._ops.empty():
                ops.append(self._ops.get_nowait())
            for attempt in range(50):
                try:
                    await self._write(ops)
                    break
                except (RedisError, OSError) as exc:
                    logger.warning("cluster: writing to Redis failed (%s); retrying", exc)
                    await asyncio.sleep(min(0.1 * (attempt + 1), 2.0))
            for *_, done in ops:
                if done is not None and not done.done():
                    done.set_result(None)

    async def _write(self, ops: list[_Op]) -> None:
        assert self._redis is not None
        pipe = self._redis.pipeline(transaction=False)
        stored: list[tuple[list[dict[str, Any]], str]] = []
        reclaims: dict[int, tuple[str, str]] = {}  # pipeline position -> the reclaimed node
        for op, name, conn, _done in ops:
            if op == "flush":
                continue
            if op == "release":
                message = self._message("node.disconnected", name, conn, None)
                await self._release(
                    keys=[node_key(name), held_key(self.rid)], args=[conn, name, message], client=pipe
                )
                continue
            held = self._held.get(name)
            entry = self._entries.get(name)
            if held is None or held.conn != conn or entry is None:
                continue  # the link is gone (its release follows) or was replaced (its claim follows)
            if op == "update":
                self._dirty.discard(name)
            tools_id, new = self._tools_id(entry)
            if new and all(tools is not entry.tools for tools, _ in stored):  # once per batch
                pipe.set(tools_key(tools_id), json.dumps(entry.tools, separators=(",", ":")))
                stored.append((entry.tools, tools_id))
            state = json.dumps(_wire(entry, tools_id), separators=(",", ":"), default=str)
            if op in ("claim", "reclaim"):
                message = self._message("node.connected", name, conn, state)
                script = self._claim if op == "claim" else self._reclaim
                await script(
                    keys=[node_key(name), held_key(self.rid)],
                    args=[self.rid, conn, name, state, message],
                    client=pipe,
                )
                if op == "reclaim":
                    reclaims[len(pipe.command_stack) - 1] = (name, conn)
            else:
                message = self._message("node.updated", name, conn, state)
                await self._update(keys=[node_key(name)], args=[conn, state, message], client=pipe)
        results = await pipe.execute()
        for position, (name, conn) in reclaims.items():
            held = self._held.get(name)
            if results[position] == 0 and held is not None and held.conn == conn:
                self._supersede(name, held)  # a newer connection took the node while we were away
                await self._adopt_holder(name)
        for tools, tools_id in stored:  # only now: a failed write is rebuilt with its tool lists again
            self._stored_tools(tools, tools_id)

    # -- following the cluster ------------------------------------------------------------------------
    async def _follow(self) -> None:
        assert self._redis is not None
        failures = 0
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(EVENTS)
                await self._load_snapshot()  # after subscribing: nothing falls between the two
                self._ready.set()
                failures = 0
                while True:
                    message = await pubsub.get_message(timeout=5.0)
                    if message is not None and message.get("type") == "message":
                        await self._on_message(message["data"])
            except (RedisError, OSError) as exc:
                failures += 1
                logger.warning("cluster: the event channel failed (%s); resubscribing", exc)
                await asyncio.sleep(min(0.1 * 2**failures, 2.0))
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _load_snapshot(self) -> None:
        assert self._redis is not None
        replicas = [r for r in _strs(await self._redis.smembers(REPLICAS)) if r != self.rid]
        alive = await self._alive(replicas)
        seen: set[str] = set()
        for rid in alive:
            names = _strs(await self._redis.smembers(held_key(rid)))
            for start in range(0, len(names), _BATCH):  # pipelined: thousands of nodes in a few trips
                chunk = names[start : start + _BATCH]
                pipe = self._redis.pipeline(transaction=False)
                for name in chunk:
                    pipe.hgetall(node_key(name))
                for name, fields in zip(chunk, await pipe.execute(), strict=True):
                    if not isinstance(fields, dict) or fields.get("holder") != rid:
                        continue
                    seen.add(name)
                    if name not in self._held:  # ours are not mirrored
                        await self._mirror(rid, str(fields.get("conn", "")), name, fields.get("state"))
        for name, (rid, _conn) in list(self._remote.items()):
            if name not in seen:
                self._drop_remote(name, rid)

    async def _alive(self, replicas: list[str]) -> list[str]:
        assert self._redis is not None
        if not replicas:
            return []
        exists = await self._redis.mget([replica_key(r) for r in replicas])
        return [r for r, value in zip(replicas, exists, strict=True) if value is not None]

    async def _on_message(self, data: str) -> None:
        try:
            message = json.loads(data)
            rid, conn, event, name = message["rid"], message["conn"], message["event"], message["name"]
        except (ValueError, KeyError, TypeError):
            logger.warning("cluster: an event that is not ours on %s: %.200s", EVENTS, data)
            return
        held = self._held.get(name)
        if event == "node.connected":
            if held is not None:
                if held.conn == conn:
                    held.claim_seen = True
                    return
                if not held.claim_seen:
                    return  # our claim comes later in the channel: it is the newer one (rule 2)
                self._supersede(name, held)
            if rid == self.rid:
                return
            state = message.get("node")
            if isinstance(state, dict):
                await self._apply_connected(rid, conn, name, state)
        elif rid == self.rid:
            return
        elif self._remote.get(name) != (rid, conn):
            return
        elif event == "node.updated":
            entry = self._entries.get(name)
            state = message.get("node")
            if entry is not None and isinstance(state, dict):
                await self._fill(entry, state)
                LocalRegistry.publish(self, "node.updated", entry)
        elif event == "node.disconnected":
            self._drop_remote(name, rid)

    async def _adopt_holder(self, name: str) -> None:
        """After a failed reclaim: mirror the connection that holds `name` now, as Redis has it.

        Its `node.connected` may have been read while our reclaim was pending and passed over as older
        than our claim (the claim we were waiting for never came), which would leave the node listed
        connected here through our superseded link and callable nowhere from here."""
        assert self._redis is not None
        fields = await self._redis.hgetall(node_key(name))
        holder = fields.get("holder")
        if isinstance(holder, str) and holder != self.rid and await self._alive([holder]):
            if await self._mirror(holder, str(fields.get("conn", "")), name, fields.get("state")):
                return
        entry = self._entries.get(name)
        if entry is not None and name not in self._remote and entry.status != "disconnected":
            self._mark_disconnected(entry)  # held nowhere we can reach: not listed through our old link

    async def _mirror(self, rid: str, conn: str, name: str, raw_state: str | bytes | None) -> bool:
        """Mirror `name` as held by connection `conn` of replica `rid`, from its state as stored in
        Redis (a no-op when mirrored already); False when that state is not one."""
        if self._remote.get(name) == (rid, conn):
            return True
        try:
            state = json.loads(raw_state or "null")
        except ValueError:
            return False
        if not isinstance(state, dict):
            return False
        await self._apply_connected(rid, conn, name, state)
        return True

    def _supersede(self, name: str, held: _Held) -> None:
        """Another connection of this node (on another replica) is newer: drop ours and close it 4409."""
        del self._held[name]
        self._dirty.discard(name)
        if self._links.get(name) is held.link:
            del self._links[name]
            if self._metrics is not None:
                self._metrics.node_disconnected()
        task = asyncio.ensure_future(held.link.close(4409, "replaced by a newer connection"))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _apply_connected(self, rid: str, conn: str, name: str, state: dict[str, Any]) -> None:
        workspace = state.get("workspace")
        if not isinstance(workspace, str):
            return
        entry = NodeEntry(name=name, workspace=workspace)
        previous = self._entries.get(name)
        if previous is not None and self.decorate is not None:
            entry.audit = previous.audit
        await self._fill(entry, state)
        self._entries[name] = entry
        self._remote[name] = (rid, conn)
        LocalRegistry.publish(self, "node.connected", entry)

    async def _fill(self, entry: NodeEntry, state: dict[str, Any]) -> None:
        status = state.get("status")
        entry.status = status if status in ("connected", "unhealthy") else "connected"
        entry.connected_at = _number(state.get("connected_at"))
        entry.last_seen = _number(state.get("last_seen"))
        entry.rtt_ms = _number(state.get("rtt_ms"))
        info = state.get("info")
        entry.info = info if isinstance(info, dict) else {}
        for name in ("audit_head", "audit"):
            value = state.get(name)
            setattr(entry, name, value if isinstance(value, dict) else getattr(entry, name))
        warning = state.get("audit_warning")
        entry.audit_warning = warning if isinstance(warning, str) else None
        tools_id = state.get("tools_id")
        if isinstance(tools_id, str):
            tools = await self._tool_list(tools_id)
            if tools is not None:
                entry.tools, entry.validators = tools

    async def _tool_list(self, tools_id: str) -> tuple[list[dict[str, Any]], Any] | None:
        known = self._tools.get(tools_id)
        if known is not None:
            return known
        assert self._redis is not None
        text = await self._redis.get(tools_key(tools_id))
        try:
            tools = json.loads(text) if text else None
        except ValueError:
            tools = None
        if not isinstance(tools, list) or not all(isinstance(t, dict) and "name" in t for t in tools):
            return None
        known = self.catalog.intern(tools)
        if len(self._tools) < 1024:
            self._tools[tools_id] = known
        return known

    def _drop_remote(self, name: str, rid: str) -> None:
        if self._remote.get(name, ("",))[0] != rid:
            return
        del self._remote[name]
        entry = self._entries.get(name)
        if entry is not None:
            self._mark_disconnected(entry)

    def _mark_disconnected(self, entry: NodeEntry) -> None:
        entry.status = "disconnected"
        entry.rtt_ms = None
        LocalRegistry.publish(self, "node.disconnected", entry)

    # -- leases ---------------------------------------------------------------------------------------
    async def _renew_lease(self) -> bool:
        """Renew this replica's lease; True if it had lapsed (other replicas took us for dead)."""
        assert self._redis is not None
        value = json.dumps({"id": self.rid, "url": self.url, "started": self._started})
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(replica_key(self.rid), value, px=int(self.config.lease_s * 1000), get=True)
        pipe.sadd(REPLICAS, self.rid)
        previous, _ = await pipe.execute()
        return previous is None

    async def _lease_loop(self) -> None:
        assert self._redis is not None
        first = True
        while True:
            await asyncio.sleep(self.config.refresh_s)
            try:
                lapsed = await self._renew_lease()
                if lapsed and not first:
                    logger.warning("cluster: this replica's lease had lapsed; claiming its nodes again")
                    self._tools_ids.clear()  # Redis may have lost everything (restarted): store them again
                    for name, held in self._held.items():
                        held.claim_seen = False
                        self._ops.put_nowait(("reclaim", name, held.conn, None))
                first = False
                await self._reap_dead()
            except (RedisError, OSError) as exc:
                logger.warning("cluster: lease renewal failed (%s)", exc)

    async def _reap_dead(self) -> None:
        assert self._redis is not None
        replicas = [r for r in _strs(await self._redis.smembers(REPLICAS)) if r != self.rid]
        holders = {rid for rid, _ in self._remote.values()}
        alive = set(await self._alive(sorted(set(replicas) | holders)))
        for rid in (set(replicas) | holders) - alive:
            logger.warning("cluster: replica %s is gone; its nodes are disconnected", rid)
            for name, (holder, _conn) in list(self._remote.items()):
                if holder == rid:
                    self._drop_remote(name, rid)
            if self.links is not None:
                self.links.replica_gone(rid)
            await self._reap(keys=[held_key(rid), replica_key(rid), REPLICAS], args=[rid])

    async def replica_url(self, rid: str) -> str | None:
        """The advertised address of replica `rid`, None when it has no live lease or no address yet."""
        assert self._redis is not None
        value = await self._redis.get(replica_key(rid))
        if value is None:
            return None
        try:
            url = json.loads(value).get("url")
        except (ValueError, AttributeError):
            return None
        return url if isinstance(url, str) else None
