/**
 * The Lua scripts behind {@link RedisBackend}: one atomic decision on one bucket
 * ({@link BUCKET_SCRIPT}), or a list of them ({@link BATCH_SCRIPT}). Their arithmetic is
 * `bucket.ts` line for line (same operations, same order, IEEE doubles), so the memory and Redis
 * strategies decide identically; `test/lua-parity.test.ts` checks it on random sequences.
 *
 * A bucket is one string value: two little-endian IEEE doubles (`struct.pack('<dd')`), exact to
 * the last bit with no text formatting or parsing,
 *   tokens     may be negative: debt
 *   updatedAt  when `tokens` was computed, ms on the Redis server's clock
 * followed by up to {@link MAX_REMEMBERED} remembered decisions of {@link ENTRY_BYTES} bytes each:
 * a call's 16-byte id, then `struct.pack('<ddddd')` of when it may be forgotten (ms) and its reply
 * (allowed, remaining, wait, ms until full). A command re-sent after a lost reply finds its id
 * and gets its first reply back, charging nothing again. A 16-byte value (no decisions
 * remembered) is a bucket as earlier versions wrote it; a hash {t, u} is an older one still, read
 * as that bucket and replaced by the string on its next write.
 *
 * A missing key is a full bucket. Every write is one `SET key value PX ms`: ms = ceil(ms until
 * full), at least 1, and at least until the last remembered decision may be forgotten.
 */
import { createHash } from 'node:crypto';

/** Bytes of one remembered decision: a 16-byte call id and five doubles. */
export const ENTRY_BYTES = 56;
/** Most decisions a bucket remembers (one per client: a newer one replaces the client's older). */
export const MAX_REMEMBERED = 8;

/** Bytes of a decision's spec (BUCKET_SCRIPT's ARGV[1]): `struct.pack('<ddddd')` of mode, rate, capacity, cost, max wait. */
export const SPEC_BYTES = 40;
/** Bytes of one decision in a reply: `struct.pack('<dddd')` of allowed, remaining, wait, ms until full. */
export const DECISION_BYTES = 32;

/**
 * decideLua is the one copy of the decision in Lua: given `key, mode, rate, cap, cost, maxw, now,
 * id, forgetAt` (locals or parameters), it decides and ends with `done('allowed, remaining, wait,
 * reset')`: a return statement made by the caller. Mode: 0 try (take now or change nothing), 1
 * reserve (take into debt within the max wait), 2 refund (give `cost` back). A call whose `id` was
 * decided before gets that decision again and changes nothing. `id` nil: the decision is not
 * remembered (the batch script remembers its whole reply instead).
 *
 * The single script runs it inline and the batch script as a function: each Lua function call,
 * closure and string Redis makes on every decision costs CPU (a closure with its upvalues is a
 * handful of allocations), as does every number read from text, so the numbers arrive as binary
 * doubles and the library functions are locals.
 */
export const LUA_LOCALS =
  'local pack, unpack, floor, ceil, sub, find = struct.pack, struct.unpack, math.floor, math.ceil, string.sub, string.find';

function decideLua(done: (values: string) => string): string {
  return `local tokens, upd
local tail, keepUntil = '', 0
local v = redis.pcall('GET', key)
if type(v) == 'string' then
  local n = #v
  if n >= 16 then
    tokens, upd = unpack('<dd', v)
    if n > 16 then
      -- Decided before: answer as then, change nothing.
      local at = id and find(v, id, 17, true)
      while at and (at - 17) % ${ENTRY_BYTES} ~= 0 do at = find(v, id, at + 1, true) end
      if at then
        local _, a, r, w, s = unpack('<ddddd', v, at + 16)
        ${done('a, r, w, s')}
      end
      -- One remembered decision per client: this client's older one is replaced below; the
      -- usual value holds that one alone.
      local client = id and sub(id, 1, 8)
      if n ~= ${16 + ENTRY_BYTES} or sub(v, 17, 24) ~= client then
        local k = 0
        for o = 17, n - ${ENTRY_BYTES - 1}, ${ENTRY_BYTES} do
          if k < ${MAX_REMEMBERED - 1} and (client == nil or sub(v, o, o + 7) ~= client) then
            local forget = unpack('<d', v, o + 16)
            if forget >= now then
              k = k + 1
              tail = tail .. sub(v, o, o + ${ENTRY_BYTES - 1})
              if forget > keepUntil then keepUntil = forget end
            end
          end
        end
      end
    end
  end
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
-- math.min(cap, x) as bucket.ts has it: x when x <= cap (the two differ only on NaN).
tokens = tokens + elapsed * rate
if tokens > cap then tokens = cap end
local wait = 0
local allowed = 0
if mode == 2 then
  tokens = tokens + cost
  if tokens > cap then tokens = cap end
  allowed = 1
else
  local deficit = cost - tokens
  if deficit > cost * 1e-9 then
    wait = ceil(deficit / rate)
  end
  if mode == 0 then
    if wait == 0 then allowed = 1 end
  elseif maxw < 0 or wait <= maxw then
    allowed = 1
  end
  if allowed == 1 then tokens = tokens - cost end
end
local reset = ceil((cap - tokens) / rate)
if reset < 0 then reset = 0 end
local remaining = 0
if tokens > 0 then remaining = floor(tokens + 1e-9) end
if allowed == 1 then
  local value
  if id then
    value = pack('<ddc16ddddd', tokens, upd, id, forgetAt, 1, remaining, wait, reset)
    if forgetAt > keepUntil then keepUntil = forgetAt end
  else
    value = pack('<dd', tokens, upd)
  end
  if tail ~= '' then value = value .. tail end
  local ttl = reset
  if keepUntil - now > ttl then ttl = ceil(keepUntil - now) end
  if ttl < 1 then ttl = 1 end
  if ttl > 1e13 then ttl = 1e13 end
  -- An integer below 1e14 goes to Redis as its integer text.
  redis.call('SET', key, value, 'PX', ttl)
end
${done('allowed, remaining, wait, reset')}`;
}

/**
 * BUCKET_SCRIPT decides one call.
 *
 * KEYS[1]  the bucket's key, `<prefix>{<encoded key>}:<name>`
 * ARGV[1]  the decision's spec, {@link SPEC_BYTES} bytes: `struct.pack('<ddddd')` of the mode (0
 *          try, 1 reserve, 2 refund: see decideLua), tokens added per ms, capacity, cost, and
 *          the max wait ms for a reserve (negative: no limit). Binary doubles: exact to the last
 *          bit, and no text for Redis to parse.
 * ARGV[2]  the caller's deadline, ms on the server's clock, one binary double ('': none). A command
 *          that runs after it (held in an offline queue, re-sent after a reconnect, stuck behind
 *          DEBUG SLEEP or CLIENT PAUSE) changes nothing and answers allowed = -1: its caller has
 *          stopped waiting, so charging the bucket would only take a phantom token. A negative
 *          value -t: no deadline (the client does not know the server's clock yet), remember the
 *          call t ms.
 * ARGV[3]  the call's id, 16 bytes, the first 8 naming the client ('': not remembered). A charged
 *          decision is remembered in the bucket until the deadline, so the same command re-sent
 *          after a lost reply gets the first reply and is not charged again.
 * ARGV[4]  absent in production: a fixed `now` in ms (text) instead of the server's TIME (tests).
 *
 * Answers one string, `struct.pack('<ddddd')` of allowed (1|0, -1: past the deadline), remaining
 * (whole tokens left, floored, never negative), wait ms, ms until full, and the server's clock in
 * µs: one bulk reply costs Redis less than an array of five numbers.
 */
export const BUCKET_SCRIPT = `${LUA_LOCALS}
local now, nowus
if ARGV[4] then
  now = tonumber(ARGV[4])
  nowus = floor(now * 1000)
else
  local t = redis.call('TIME')
  local sec, us = tonumber(t[1]), tonumber(t[2])
  now = sec * 1000 + us / 1000
  nowus = sec * 1000000 + us
end
local forgetAt = now
if ARGV[2] ~= '' then
  local deadline = unpack('<d', ARGV[2])
  if deadline < 0 then
    forgetAt = now - deadline
  elseif now > deadline then
    return pack('<ddddd', -1, 0, 0, 0, nowus)
  else
    forgetAt = deadline
  end
end
local key, id = KEYS[1], ARGV[3]
if id == '' then id = nil end
local mode, rate, cap, cost, maxw = unpack('<ddddd', ARGV[1])
${decideLua((values) => `return pack('<ddddd', ${values}, nowus)`)}
`;

/**
 * BATCH_SCRIPT runs a list of decisions, in order, each exactly as {@link BUCKET_SCRIPT} would
 * (`test/redis-batch.test.ts` checks it on random sequences). All share one reading of TIME.
 *
 * KEYS[1..n]  the bucket of decision i (all in one Cluster slot)
 * KEYS[n+1]   where this script call's reply is remembered (a key of the same slot, unique to the
 *             call): run again after a lost reply, the call answers that and changes nothing
 * ARGV        runs of consecutive decisions that share their arguments, four entries a run: the
 *             spec and the deadline (as BUCKET_SCRIPT's ARGV[1] and ARGV[2]), now ('': the
 *             server's TIME; a fixed ms in tests only), and how many decisions (KEYS, in order)
 *             the run covers
 *
 * Answers one string: for each decision, in order, {@link DECISION_BYTES} bytes
 * (`struct.pack('<dddd')` of allowed (1|0, -1: past its deadline), remaining, wait ms, ms until
 * full, as BUCKET_SCRIPT answers them); then the server's now in µs, one double.
 */
export const BATCH_SCRIPT = `local tunpack = unpack
${LUA_LOCALS}
local function decide(key, mode, rate, cap, cost, maxw, now, id, forgetAt)
${decideLua((values) => `return ${values}`)}
end
local replyKey = KEYS[#KEYS]
local seen = redis.call('GET', replyKey)
if seen then return seen end
local out = {}
local i, j = 0, 0
local charged = false
local forgetAt = 0
local servernow, now
for r = 1, #ARGV, 4 do
  local mode, rate, cap, cost, maxw = unpack('<ddddd', ARGV[r])
  if ARGV[r + 2] ~= '' then
    now = tonumber(ARGV[r + 2])
  else
    if servernow == nil then
      local t = redis.call('TIME')
      servernow = t[1] * 1000 + t[2] / 1000
    end
    now = servernow
  end
  local late, f = false, now
  if ARGV[r + 1] ~= '' then
    local deadline = unpack('<d', ARGV[r + 1])
    if deadline < 0 then f = now - deadline else late, f = now > deadline, deadline end
  end
  for _ = 1, tonumber(ARGV[r + 3]) do
    i = i + 1
    if late then
      out[j + 1], out[j + 2], out[j + 3], out[j + 4] = -1, 0, 0, 0
    else
      local a, rem, w, s = decide(KEYS[i], mode, rate, cap, cost, maxw, now, nil, 0)
      out[j + 1], out[j + 2], out[j + 3], out[j + 4] = a, rem, w, s
      if a == 1 then
        charged = true
        if f > forgetAt then forgetAt = f end
      end
    end
    j = j + 4
  end
end
out[j + 1] = floor((now or 0) * 1000)
-- One pack of every number: a string per decision would cost Redis more than the decision.
local reply = pack('<' .. string.rep('d', j + 1), tunpack(out))
if charged then redis.call('SET', replyKey, reply, 'PX', math.max(1, ceil(forgetAt - now))) end
return reply
`;

const sha1 = (text: string): string => createHash('sha1').update(text).digest('hex');
/** What EVALSHA calls the single-decision script by. */
export const BUCKET_SHA = sha1(BUCKET_SCRIPT);
/** What EVALSHA calls the batch script by. */
export const BATCH_SHA = sha1(BATCH_SCRIPT);

/** decodeBucket reads a stored bucket's state; undefined when the value is not one. */
export function decodeBucket(value: Buffer | null): { tokens: number; updatedAt: number } | undefined {
  if (value === null || value.length < 16 || (value.length - 16) % ENTRY_BYTES !== 0) return undefined;
  return { tokens: value.readDoubleLE(0), updatedAt: value.readDoubleLE(8) };
}
