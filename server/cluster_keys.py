"""The Redis schema of a cluster of replicas: key names, and the Lua scripts that change a node's holder.

Where it sits: under `server.cluster_registry`, which is its only user (the reaper and the lease loop
there name the same keys). No imports: names and script text only.

Redis keys (every key of ours starts with ``cortex:``; the change feed and other shared state of
`server.*` add their own names beside these):

    cortex:replica:{rid}   string, JSON ``{"id", "url", "started"}``: the replica's lease (PX), renewed
                           every ``refresh_s``; gone = the replica is dead
    cortex:replicas        set of replica ids that announced a lease (the reaper removes dead ones)
    cortex:held:{rid}      set of node names the replica holds
    cortex:node:{name}     hash ``holder`` (rid), ``conn`` (connection id), ``state`` (JSON, listing fields)
    cortex:tools:{sha256}  string: one tool declaration list (nodes declaring the same share it)
    cortex:events          pub/sub channel: ``{"rid", "conn", "event", "name", "node"}`` per change

The scripts (rules 1 and 3 of `server.cluster_registry`): every change of a node's holder is one of
them, and each publishes its event on ``cortex:events`` itself, so the order of events on the channel
is the order of the changes. Update and release name the connection and change nothing once another
connection holds the node; a reclaim never goes over another connection's claim.
"""

from __future__ import annotations

__all__ = [
    "CLAIM",
    "EVENTS",
    "PREFIX",
    "REAP",
    "RECLAIM",
    "RELEASE",
    "REPLICAS",
    "UPDATE",
    "held_key",
    "node_key",
    "replica_key",
    "tools_key",
]

PREFIX = "cortex:"
EVENTS = PREFIX + "events"
REPLICAS = PREFIX + "replicas"


def replica_key(rid: str) -> str:
    return f"{PREFIX}replica:{rid}"


def held_key(rid: str) -> str:
    return f"{PREFIX}held:{rid}"


def node_key(name: str) -> str:
    return f"{PREFIX}node:{name}"


def tools_key(tools_id: str) -> str:
    return f"{PREFIX}tools:{tools_id}"


# KEYS[1] node hash, KEYS[2] held set of this replica. ARGV: rid, conn, name, state, message.
CLAIM = """
local prev = redis.call('HGET', KEYS[1], 'holder')
if prev and prev ~= ARGV[1] then redis.call('SREM', 'cortex:held:' .. prev, ARGV[3]) end
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'conn', ARGV[2], 'state', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PUBLISH', 'cortex:events', ARGV[5])
return 1
"""
# A claim made again after this replica's lease lapsed: never over another connection's newer claim.
# KEYS[1] node hash, KEYS[2] held set of this replica. ARGV: rid, conn, name, state, message.
RECLAIM = """
local conn = redis.call('HGET', KEYS[1], 'conn')
if conn and conn ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'conn', ARGV[2], 'state', ARGV[4])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('PUBLISH', 'cortex:events', ARGV[5])
return 1
"""
# KEYS[1] node hash. ARGV: conn, state, message.
UPDATE = """
if redis.call('HGET', KEYS[1], 'conn') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
redis.call('PUBLISH', 'cortex:events', ARGV[3])
return 1
"""
# KEYS[1] node hash, KEYS[2] held set. ARGV: conn, name, message.
RELEASE = """
if redis.call('HGET', KEYS[1], 'conn') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
redis.call('PUBLISH', 'cortex:events', ARGV[3])
return 1
"""
# KEYS[1] held set of the dead replica, KEYS[2] its lease, KEYS[3] the replicas set. ARGV: dead rid.
REAP = """
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local names = redis.call('SMEMBERS', KEYS[1])
for _, n in ipairs(names) do
  local k = 'cortex:node:' .. n
  if redis.call('HGET', k, 'holder') == ARGV[1] then redis.call('DEL', k) end
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], ARGV[1])
return #names
"""
