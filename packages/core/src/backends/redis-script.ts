/**
 * The Lua script behind {@link RedisBackend}: one atomic decision on one bucket. Its arithmetic
 * is `bucket.ts` line for line (same operations, same order, IEEE doubles), so the memory and
 * Redis strategies decide identically; `test/lua-parity.test.ts` checks it on random sequences.
 *
 * The bucket is one string value of 16 bytes: two little-endian IEEE doubles (`struct.pack('<dd')`),
 * so both survive the round trip to the last bit and cost no text formatting or parsing:
 *   tokens     may be negative: debt
 *   updatedAt  when `tokens` was computed, ms on the Redis server's clock
 * A missing key is a full bucket. Every write is one `SET key value PX ms`, ms = ceil(ms until
 * full), at least 1, so an idle bucket vanishes exactly when it would be full anyway.
 * (Until script tollgateBucketV2 a bucket was a hash {t, u} of %.17g text plus PEXPIRE; a key
 * still holding such a hash is read as that bucket and replaced by the string on its next write.
 * The older scripts cannot read the string: see README, "Decisions where DESIGN.md is silent".)
 *
 * KEYS[1]  the bucket's key, `<prefix>{<encoded key>}:<name>`
 * ARGV[1]  the decision, five fields joined by single spaces (see {@link decisionSpec}):
 *          `<mode> <tokens added per ms> <capacity> <cost> <max wait ms>`; mode 't' try (take
 *          now or change nothing), 'r' reserve (take into debt within max wait; negative: no
 *          limit), 'f' refund (give `cost` back)
 * ARGV[2]  the caller's deadline, ms on the server's clock ('' or absent: none). A command that
 *          runs after it (held in a client's offline queue, re-sent after a reconnect, stuck
 *          behind DEBUG SLEEP or CLIENT PAUSE) changes nothing and returns allowed = -1: its
 *          caller has stopped waiting, so charging the bucket would only take a phantom token.
 * ARGV[3]  tests only: a fixed `now` in ms instead of the server's TIME ('' or absent: TIME)
 *
 * Returns { allowed (1|0, -1: past the deadline), remaining (whole tokens left, floored, never
 * negative), wait ms, ms until full, now (the server's ms, %.17g string) }. The first four are
 * integers (a value beyond 2^53, possible only for a bucket deep in debt, goes as a %.17g string,
 * since Redis truncates a Lua number reply to a 64-bit integer and JavaScript's to 53 bits).
 */
/**
 * DECIDE_LUA defines `decide(key, mode, rate, cap, cost, maxw, now)`: the bucket arithmetic of
 * `bucket.ts`, and the write, shared by {@link BUCKET_SCRIPT} and the batch script (so there is
 * one copy of it in Lua). Returns allowed (1|0), remaining, wait ms, ms until full, each ready
 * to reply.
 */
export const DECIDE_LUA = `
local pack, unpack, floor, ceil, min = struct.pack, struct.unpack, math.floor, math.ceil, math.min
local function decide(key, mode, rate, cap, cost, maxw, now)
  local tokens, upd
  local v = redis.pcall('GET', key)
  if type(v) == 'string' then
    if #v == 16 then tokens, upd = unpack('<dd', v) end
  elseif type(v) == 'table' and v.err ~= nil then
    -- WRONGTYPE: a bucket written by an older Tollgate, as a hash {t, u}.
    local s = redis.call('HMGET', key, 't', 'u')
    tokens = tonumber(s[1])
    upd = tonumber(s[2])
  end
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
  tokens = min(cap, tokens + elapsed * rate)
  local wait = 0
  local allowed = 0
  if mode == 'f' then
    tokens = min(cap, tokens + cost)
    allowed = 1
  else
    local deficit = cost - tokens
    if deficit > cost * 1e-9 then
      wait = ceil(deficit / rate)
    end
    if mode == 't' then
      if wait == 0 then allowed = 1 end
    else
      if maxw < 0 or wait <= maxw then allowed = 1 end
    end
    if allowed == 1 then tokens = tokens - cost end
  end
  local reset = ceil((cap - tokens) / rate)
  if reset < 0 then reset = 0 end
  if allowed == 1 then
    local ttl = reset
    if ttl < 1 then ttl = 1 end
    if ttl > 1e13 then ttl = 1e13 end
    redis.call('SET', key, pack('<dd', tokens, upd), 'PX', string.format('%d', ttl))
  end
  -- Beyond 2^53 (only deep in debt), as text: Redis would truncate a Lua number reply to 64 bits
  -- and JavaScript reads 53. remaining is at most capacity (<= 1e15).
  if wait > 9007199254740991 then wait = string.format('%.17g', wait) end
  if reset > 9007199254740991 then reset = string.format('%.17g', reset) end
  local remaining = 0
  if tokens > 0 then remaining = floor(tokens + 1e-9) end
  return allowed, remaining, wait, reset
end
`;

export const BUCKET_SCRIPT = `${DECIDE_LUA}
local now
if ARGV[3] ~= nil and ARGV[3] ~= '' then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local deadline = tonumber(ARGV[2] or '')
if deadline ~= nil and now > deadline then
  return { -1, 0, 0, 0, string.format('%.17g', now) }
end
local mode, rate, cap, cost, maxw = string.match(ARGV[1], '^(%S+) (%S+) (%S+) (%S+) (%S+)$')
local allowed, remaining, wait, reset = decide(KEYS[1], mode, tonumber(rate), tonumber(cap), tonumber(cost), tonumber(maxw), now)
return { allowed, remaining, wait, reset, string.format('%.17g', now) }
`;

/**
 * decisionSpec is a decision's first script argument: `<mode> <rate per ms> <capacity> <cost>
 * <max wait ms>`. Numbers go as JavaScript's shortest round-trip text, which Lua's tonumber reads
 * back to the same double.
 */
export function decisionSpec(mode: 't' | 'r' | 'f', ratePerMs: number, capacity: number, cost: number, maxWaitMs: number): string {
  return `${mode} ${ratePerMs} ${capacity} ${cost} ${maxWaitMs}`;
}

/** decodeBucket reads a stored bucket (the 16-byte value); undefined when it is not one. */
export function decodeBucket(value: Buffer | null): { tokens: number; updatedAt: number } | undefined {
  if (value === null || value.length !== 16) return undefined;
  return { tokens: value.readDoubleLE(0), updatedAt: value.readDoubleLE(8) };
}
