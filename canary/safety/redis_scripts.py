"""The Lua scripts of ``canary.safety.redis_limiter``: what each key holds, and the rules.

Keys per backend (one hash tag, one node): ``slots`` (hash: replica -> slots reserved),
``alive`` (sorted set: replica -> expiry of its reservation), ``starts`` (list of
``"expiry count"`` entries, newest first) and ``started`` (the sum of their counts).
A negative count (a return that raced with a lapse) counts as none.
"""

from __future__ import annotations

from typing import Final

# ARGV = [replica, max_concurrency, slots wanted, n, period, hold, starts wanted, ttl, share
# divisor]. Concurrency check before the QPS check, both before any write.
ACQUIRE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local me, concurrency, want_slots = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local n, period, hold = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local want_starts, ttl, div = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local slots, mine = 0, 0
if want_slots > 0 then
  local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
  if #dead > 0 then
    redis.call('HDEL', KEYS[1], unpack(dead))
    redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  end
  local held = redis.call('HGETALL', KEYS[1])
  local total = 0
  for i = 1, #held, 2 do
    local c = tonumber(held[i + 1])
    if c > 0 then total = total + c end
    if held[i] == me then mine = c end
  end
  local free = concurrency - total
  if free < 1 then return {0, '0', 1} end
  slots = math.min(want_slots, free, math.max(1, math.floor(free / div)))
end
local starts, total = 0, 0
if want_starts > 0 then
  total = tonumber(redis.call('GET', KEYS[4]) or '0')
  local popped = false
  local oldest = redis.call('LINDEX', KEYS[3], -1)
  while oldest do
    local sp = string.find(oldest, ' ')
    if tonumber(string.sub(oldest, 1, sp - 1)) > now then break end
    redis.call('RPOP', KEYS[3])
    total = total - tonumber(string.sub(oldest, sp + 1))
    popped = true
    oldest = redis.call('LINDEX', KEYS[3], -1)
  end
  local free = n - total
  if free < 1 then
    if popped then
      redis.call('SET', KEYS[4], total, 'PX', math.ceil((period + hold) * 1000) + 1000)
    end
    local log = redis.call('LRANGE', KEYS[3], -64, -1)
    local left = total
    for i = #log, 1, -1 do
      local sp = string.find(log[i], ' ')
      left = left - tonumber(string.sub(log[i], sp + 1))
      if left < n then
        local due = tonumber(string.sub(log[i], 1, sp - 1)) - now
        return {0, string.format('%.6f', due), 2}
      end
    end
    return {0, string.format('%.6f', period), 2}
  end
  starts = math.min(want_starts, free, math.max(1, math.floor(free / div)))
end
if starts > 0 then
  local life = period
  if starts > 1 then life = period + hold end
  local ms = math.ceil((period + hold) * 1000) + 1000
  redis.call('LPUSH', KEYS[3], string.format('%.6f %d', now + life, starts))
  redis.call('SET', KEYS[4], total + starts, 'PX', ms)
  redis.call('PEXPIRE', KEYS[3], ms)
end
if slots > 0 then
  if mine < 0 then
    redis.call('HSET', KEYS[1], me, slots)
  else
    redis.call('HINCRBY', KEYS[1], me, slots)
  end
  local ms = math.ceil(ttl * 1000) + 1000
  redis.call('ZADD', KEYS[2], now + ttl, me)
  redis.call('PEXPIRE', KEYS[1], ms)
  redis.call('PEXPIRE', KEYS[2], ms)
end
return {1, slots, starts}
"""

# KEYS = [slots, alive], ARGV = [replica, ttl, slots in use]. XX: renewed only if alive; a
# reservation that lapsed is taken again for the slots in use. Returns 1 when it had lapsed.
RENEW: Final = """
local t = redis.call('TIME')
local ttl = tonumber(ARGV[2])
local expiry = tonumber(t[1]) + tonumber(t[2]) / 1000000 + ttl
local lapsed = 0
if redis.call('ZADD', KEYS[2], 'XX', 'CH', expiry, ARGV[1]) == 0 then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  redis.call('ZADD', KEYS[2], expiry, ARGV[1])
  lapsed = 1
end
local ms = math.ceil(ttl * 1000) + 1000
redis.call('PEXPIRE', KEYS[1], ms)
redis.call('PEXPIRE', KEYS[2], ms)
return lapsed
"""
