import { createHash } from 'node:crypto';

/**
 * POOL_SCRIPT is the Lua behind {@link RedisPools}: one atomic step on one shared pool. Its
 * arithmetic is `pool-math.ts` line for line (same operations in the same order on IEEE
 * doubles), so the memory and Redis pools decide identically; a test checks it on fixed instants.
 *
 * A pool is one hash, `<prefix>pool{<encoded pool>}:<encoded name>` (one Cluster slot):
 *   field '.'        struct.pack('<dddddd', tokens, updatedAt, vt, blockedUntil, limit, limitUntil)
 *   field 'k'..key   struct.pack('<dddd', counter, weight, until, turn), one per waiting key
 * Keys are visited in the hash's order, which for a small hash (listpack) is insertion order, as
 * pool-math's Map. A missing hash is a full, idle pool; every write sets PX to when the pool
 * would be full and idle again (or deletes it when it already is).
 *
 * KEYS[1]   the pool's hash
 * ARGV[1]   mode: 'r' reserve, 't' try, 'f' refund, 'o' observe, 'c' confirm a held grant
 * ARGV[2-5] the policy: tokens per ms, capacity, rate, per (ms)
 * ARGV[6]   the key (any bytes)
 * ARGV[7]   cost ('f': the amount given back)
 * ARGV[8]   weight
 * ARGV[9]   max wait ms (negative: none)
 * ARGV[10]  '1' when more callers of the asking process wait on the key behind this one
 * ARGV[11]  SHARE_GRACE_MS
 * ARGV[12]  the caller's deadline on the server's clock ('': none): a command run after it
 *           changes nothing and answers -1 (its caller has stopped waiting)
 * ARGV[13]  tests only: a fixed now in ms ('': TIME)
 * ARGV[14-17] 'o': limit, remaining, resetAfterMs, retryAfterMs (negative: not said)
 *
 * Returns { status (1 granted, 0 refused, 2 too long, 3 ask again; -1 past the deadline),
 * ms, remaining, ms until full, now (the server's ms, %.17g) }. 'c' (pool-math's pauseLeft)
 * reads the pool and writes nothing: { 1, ms until the pause ends (0: start now), 0, 0, now }.
 */
export const POOL_SCRIPT = `
local pack, unpack, ceil, floor, min = struct.pack, struct.unpack, math.ceil, math.floor, math.min
local INF = math.huge
local pkey, mode = KEYS[1], ARGV[1]
local rpm, cap, rate, per = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local key = 'k' .. ARGV[6]
local cost, weight, maxw = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local more, grace = ARGV[10] == '1', tonumber(ARGV[11])
local now
if ARGV[13] ~= nil and ARGV[13] ~= '' then
  now = tonumber(ARGV[13])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local nowText = string.format('%.17g', now)
if ARGV[12] ~= '' and now > tonumber(ARGV[12]) then return { -1, 0, 0, 0, nowText } end
if mode == 'c' then
  local st, left = redis.call('HGET', pkey, '.'), 0
  if st then
    local _, _, _, b = unpack('<dddddd', st)
    if b > now then left = ceil(b - now) end
  end
  return { 1, left, 0, 0, nowText }
end

local flat = redis.call('HGETALL', pkey)
local tokens, upd, vt, blockedUntil, limit, limitUntil
local names, vs, ws, untils, turns, n = {}, {}, {}, {}, {}, 0
for i = 1, #flat, 2 do
  local f = flat[i]
  if f == '.' then
    tokens, upd, vt, blockedUntil, limit, limitUntil = unpack('<dddddd', flat[i + 1])
  else
    n = n + 1
    names[n] = f
    vs[n], ws[n], untils[n], turns[n] = unpack('<dddd', flat[i + 1])
  end
end
if tokens == nil then
  tokens, upd, vt, blockedUntil, limit, limitUntil = cap, now, 0, 0, 0, 0
end

-- effective(): the observed limit while it holds
local erpm, ecap = rpm, cap
local function effective()
  if limit > 0 then
    if now < limitUntil then
      erpm = limit / per
      ecap = cap * (limit / rate)
      return
    end
    limit = 0
    limitUntil = 0
  end
  erpm, ecap = rpm, cap
end
local function refill()
  local elapsed = now - upd
  if elapsed > 0 then upd = now else elapsed = 0 end
  tokens = min(ecap, tokens + elapsed * erpm)
end
local function aheadMs()
  if upd > now then return ceil(upd - now) end
  return 0
end
local function waitMs(t, c)
  local deficit = c - t
  if deficit > c * 1e-9 then return ceil(deficit / erpm) end
  return 0
end
local alive = {}
local mi = 0
for i = 1, n do
  if names[i] == key then mi = i end
  alive[i] = true
end
local function drop(i)
  alive[i] = false
  redis.call('HDEL', pkey, names[i])
end

effective()
refill()
local status, ms = 1, 0
if mode == 'r' or mode == 't' then
  local least = INF
  for i = 1, n do
    if i ~= mi and alive[i] then
      if untils[i] > now then
        if vs[i] < least then least = vs[i] end
      elseif vs[i] <= vt then
        drop(i)
      end
    end
  end
  local lift
  if least == INF or least < vt then lift = vt else lift = least end
  local v
  if mi == 0 then
    v = lift
  elseif untils[mi] > now or vs[mi] > lift then
    v = vs[mi]
  else
    v = lift
  end
  local owed, lowerUntil, wsum = 0, 0, weight
  for i = 1, n do
    if i ~= mi and alive[i] and untils[i] > now then
      wsum = wsum + ws[i]
      if vs[i] < v then
        owed = owed + ws[i] * (v - vs[i])
        if untils[i] > lowerUntil then lowerUntil = untils[i] end
      end
    end
  end
  local blocked = 0
  if blockedUntil > now then blocked = ceil(blockedUntil - now) end
  local ahead = aheadMs()
  if owed <= 0 or tokens - owed >= cost then
    local w = ahead + waitMs(tokens, cost)
    if w < blocked then ms = blocked else ms = w end
    local ok
    if mode == 't' then ok = ms == 0 else ok = maxw < 0 or ms <= maxw end
    if ok then
      if ms > w then
        tokens = min(ecap, tokens + (now + ms - upd) * erpm)
        upd = now + ms
      end
      tokens = tokens - cost
      v = v + cost / weight
      local untilT = now + ms
      if more then untilT = untilT + grace end
      if mi > 0 and untils[mi] > untilT then untilT = untils[mi] end
      if untilT > now or least ~= INF then
        if mi > 0 then
          vs[mi], ws[mi], untils[mi] = v, weight, untilT
        else
          n = n + 1
          names[n], vs[n], ws[n], untils[n], turns[n], alive[n] = key, v, weight, untilT, 0, true
          mi = n
        end
        redis.call('HSET', pkey, key, pack('<dddd', vs[mi], ws[mi], untils[mi], turns[mi]))
      elseif mi > 0 then
        drop(mi)
      end
      status = 1
    elseif mode == 't' then status = 0 else status = 2 end
  else
    ms = ahead + waitMs(tokens - owed, cost)
    if ms < blocked then ms = blocked end
    if mode == 't' then
      status = 0
    elseif maxw >= 0 and ms > maxw then
      status = 2
    else
      local d = ahead + ceil((owed - tokens) / erpm)
      if lowerUntil - now < d then d = ceil(lowerUntil - now) end
      if d < 1 then d = 1 end
      if mi > 0 and turns[mi] > now then
        local nxt = ceil(turns[mi] - now + (cost * wsum) / weight / erpm)
        if nxt > d then d = nxt end
      end
      local untilT = now + d + grace
      if mi > 0 then
        if untils[mi] > untilT then untilT = untils[mi] end
        vs[mi], ws[mi], untils[mi], turns[mi] = v, weight, untilT, now + d
      else
        n = n + 1
        names[n], vs[n], ws[n], untils[n], turns[n], alive[n] = key, v, weight, untilT, now + d, true
        mi = n
      end
      redis.call('HSET', pkey, key, pack('<dddd', vs[mi], ws[mi], untils[mi], turns[mi]))
      ms = d
      status = 3
    end
  end
elseif mode == 'f' then
  tokens = min(ecap, tokens + cost)
  if mi > 0 then
    local v = vs[mi] - cost / ws[mi]
    if v < vt then v = vt end
    vs[mi] = v
    redis.call('HSET', pkey, key, pack('<dddd', vs[mi], ws[mi], untils[mi], turns[mi]))
  end
else
  local oLimit, oRemaining, oReset, oRetry = tonumber(ARGV[14]), tonumber(ARGV[15]), tonumber(ARGV[16]), tonumber(ARGV[17])
  if oLimit > 0 then
    if oLimit < rate then
      limit = oLimit
      if oReset > per then limitUntil = now + oReset else limitUntil = now + per end
    else
      limit = 0
      limitUntil = 0
    end
    effective()
    if tokens > ecap then tokens = ecap end
  end
  if oRemaining >= 0 and oRemaining < tokens then tokens = oRemaining end
  if oRetry > 0 and now + oRetry > blockedUntil then blockedUntil = now + oRetry end
  if blockedUntil > upd then
    local debt = 0
    if tokens < 0 then debt = -tokens end
    tokens = min(ecap, tokens + debt + (blockedUntil - upd) * erpm) - debt
    upd = blockedUntil
  end
  if limit > 0 and blockedUntil > now and blockedUntil + per > limitUntil then limitUntil = blockedUntil + per end
end

-- settleVt(), then keepFor()
local least = INF
for i = 1, n do
  if alive[i] and untils[i] > now and vs[i] < least then least = vs[i] end
end
if least == INF then
  for i = 1, n do
    if alive[i] then drop(i) end
  end
  vt = 0
else
  if least > vt then vt = least end
  for i = 1, n do
    if alive[i] and untils[i] <= now and vs[i] <= vt then drop(i) end
  end
end
local reset = ceil((ecap - tokens) / erpm)
if reset < 0 then reset = 0 end
reset = aheadMs() + reset
local untilAll = now + reset
for i = 1, n do
  if alive[i] and untils[i] > untilAll then untilAll = untils[i] end
end
if blockedUntil > untilAll then untilAll = blockedUntil end
if limit > 0 and limitUntil + cap / rpm > untilAll then untilAll = limitUntil + cap / rpm end
if untilAll > now then
  redis.call('HSET', pkey, '.', pack('<dddddd', tokens, upd, vt, blockedUntil, limit, limitUntil))
  redis.call('PEXPIRE', pkey, ceil(untilAll - now))
else
  redis.call('DEL', pkey)
end
local remaining = 0
if tokens > 0 then remaining = floor(tokens + 1e-9) end
return { status, ms, remaining, reset, nowText }
`;

/** POOL_SHA is the SHA-1 of {@link POOL_SCRIPT}, for EVALSHA. */
export const POOL_SHA = createHash('sha1').update(POOL_SCRIPT).digest('hex');
