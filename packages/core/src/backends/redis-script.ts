/**
 * The Lua script behind {@link RedisBackend}: one atomic decision on one bucket. Its arithmetic
 * is `bucket.ts` line for line (same operations, same order, IEEE doubles), so the memory and
 * Redis strategies decide identically; `test/lua-parity.test.ts` checks it on random sequences.
 *
 * The bucket is a hash with two fields, written with %.17g so a double survives the round trip:
 *   t  tokens (may be negative: debt)
 *   u  when `t` was computed, ms on the Redis server's clock
 * A missing hash is a full bucket. Every write sets PEXPIRE to ceil(ms until full), at least 1,
 * so an idle bucket vanishes exactly when it would be full anyway.
 *
 * KEYS[1]  the bucket's hash, `<prefix>{<encoded key>}:<name>`
 * ARGV[1]  mode: 't' try (take now or change nothing), 'r' reserve (take into debt within
 *          ARGV[5]), 'f' refund (give ARGV[4] back)
 * ARGV[2]  tokens added per ms (policy.rate / policy.perMs)
 * ARGV[3]  capacity
 * ARGV[4]  cost (t, r) or amount (f)
 * ARGV[5]  r: the longest acceptable wait in ms; negative: no limit
 * ARGV[6]  '' (always, outside tests): now = the server's TIME; tests pass a fixed ms instant
 * ARGV[7]  the caller's deadline, ms on the server's clock ('' or absent: none). A command that
 *          runs after it (held in a client's offline queue, re-sent after a reconnect, stuck
 *          behind DEBUG SLEEP or CLIENT PAUSE) changes nothing and returns allowed = -1: its
 *          caller has stopped waiting, so charging the bucket would only take a phantom token.
 *
 * Returns { allowed (1|0, -1: past the deadline), tokens after (%.17g string), wait ms (string),
 * ms until full (string), now (the server's ms, %.17g string) }.
 * Numbers go back as strings: Redis would truncate a Lua number reply to an integer.
 */
/**
 * DECIDE_LUA defines `decide(key, mode, rate, cap, cost, maxw, now)`: the bucket arithmetic of
 * `bucket.ts`, and the write, shared by {@link BUCKET_SCRIPT} and the batch script (so there is
 * one copy of it in Lua). Returns allowed (1|0), tokens after, wait ms, ms until full.
 */
export const DECIDE_LUA = `
-- %.17g of the last instant written: the decisions of one batch mostly write the same 'u'.
local lastupd
local lastupdstr
local function decide(key, mode, rate, cap, cost, maxw, now)
  local s = redis.call('HMGET', key, 't', 'u')
  local tokens = tonumber(s[1])
  local upd = tonumber(s[2])
  if tokens == nil or upd == nil then
    tokens = cap
    upd = now
  end
  local elapsed = now - upd
  if elapsed > 0 then
    upd = now
  else
    elapsed = 0
  end
  tokens = math.min(cap, tokens + elapsed * rate)
  local wait = 0
  local allowed = 0
  if mode == 'f' then
    tokens = math.min(cap, tokens + cost)
    allowed = 1
  else
    local deficit = cost - tokens
    if deficit > cost * 1e-9 then
      wait = math.ceil(deficit / rate)
    end
    if mode == 't' then
      if wait == 0 then allowed = 1 end
    else
      if maxw < 0 or wait <= maxw then allowed = 1 end
    end
    if allowed == 1 then tokens = tokens - cost end
  end
  local reset = math.ceil((cap - tokens) / rate)
  if reset < 0 then reset = 0 end
  if allowed == 1 then
    if upd ~= lastupd then
      lastupd = upd
      lastupdstr = string.format('%.17g', upd)
    end
    redis.call('HSET', key, 't', string.format('%.17g', tokens), 'u', lastupdstr)
    local ttl = reset
    if ttl < 1 then ttl = 1 end
    if ttl > 1e13 then ttl = 1e13 end
    redis.call('PEXPIRE', key, string.format('%d', ttl))
  end
  return allowed, tokens, wait, reset
end
`;

export const BUCKET_SCRIPT = `${DECIDE_LUA}
local now
if ARGV[6] ~= '' then
  now = tonumber(ARGV[6])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local deadline = tonumber(ARGV[7] or '')
if deadline ~= nil and now > deadline then
  return { -1, '0', '0', '0', string.format('%.17g', now) }
end
local allowed, tokens, wait, reset = decide(KEYS[1], ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), now)
return { allowed, string.format('%.17g', tokens), string.format('%.17g', wait), string.format('%.17g', reset), string.format('%.17g', now) }
`;
