"""The Redis limiter's Lua: every bucket of a tenant checked and charged in one atomic round trip.

Same semantics as ``local.py`` (sliding logs for RPM/TPM, a counter per budget period, leases for
concurrency), with the clock read inside the script (``TIME``), so replicas with skewed clocks still
agree. Key layout per tenant T (hash-tagged, so a Redis Cluster keeps them in one slot):
``rl:{T}:rpm`` zset of request ids by start ms; ``rl:{T}:tpm`` the same for tokens, with
``rl:{T}:tpm:amt`` (request id -> tokens, ``_sum``, and ``_ttl``: when the logs' TTLs were last set);
``rl:{T}:conc`` zset of request ids by lease expiry ms; ``rl:{T}:budget:{period}`` counter;
``rl:{T}:open`` request id -> tokens charged to the budget, so settling twice (a retry after a lost
reply) corrects the budget once. Reserving twice is harmless too: a request id already in a bucket is not
charged again.
"""

RESERVE = """
-- KEYS: rpm, tpm, tpm amounts, concurrency, budget, open
-- ARGV: request id, cost, rpm limit, tpm limit, concurrency limit, budget limit (0 = none),
--       window ms, lease ms, budget ttl s, ms until the budget resets
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rid, cost = ARGV[1], tonumber(ARGV[2])
local rpm, tpm, conc, bud = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local window, lease = tonumber(ARGV[7]), tonumber(ARGV[8])
local horizon = now - window
local reason, retry = '', 0

-- The same request again (a client retry re-sent a script whose reply was lost): charged already. One
-- bucket tells, the first one set: this script writes the id into every bucket set, at once.
local seen = false
if rpm > 0 then seen = redis.call('ZSCORE', KEYS[1], rid)
elseif tpm > 0 then seen = redis.call('HEXISTS', KEYS[3], rid) == 1
elseif conc > 0 then seen = redis.call('ZSCORE', KEYS[4], rid)
elseif bud > 0 then seen = redis.call('HEXISTS', KEYS[6], rid) == 1 end
if seen then
  return {1, '', 0, redis.call('ZCARD', KEYS[1]), window, tonumber(redis.call('HGET', KEYS[3], '_sum') or '0'), window,
          redis.call('ZCARD', KEYS[4]), tonumber(redis.call('GET', KEYS[5]) or '0')}
end

local function deny(r, ms)
  if r == 'request_too_large' or (reason ~= 'request_too_large' and (reason == '' or ms >= retry)) then
    reason = r
  end
  if ms > retry then retry = ms end
end

local function newest_reset(key)
  local e = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if e[2] then return tonumber(e[2]) + window - now end
  return 0
end

local rpm_used, rpm_reset = 0, 0
if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', horizon)
  rpm_used = redis.call('ZCARD', KEYS[1])
  if rpm_used >= rpm then
    local e = redis.call('ZRANGE', KEYS[1], rpm_used - rpm, rpm_used - rpm, 'WITHSCORES')
    deny('requests', tonumber(e[2]) + window - now)
  end
end

-- A sliding log's keys must outlive their newest entry by a window. Their TTLs are set to 1.25 windows,
-- and only when the last setting is a quarter window old (its time kept in the amounts hash): an entry
-- added meanwhile still has a full window. One HSET a quarter window, not three PEXPIREs a request.
local ttl, ttl_due = window + math.floor(window / 4), true
local tpm_used, tpm_reset = 0, 0
if tpm > 0 then
  while true do
    local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', horizon, 'LIMIT', 0, 500)
    if #old == 0 then break end
    local amounts = redis.call('HMGET', KEYS[3], unpack(old))
    local freed = 0
    for i = 1, #amounts do
      if amounts[i] then freed = freed + tonumber(amounts[i]) end
    end
    redis.call('HINCRBY', KEYS[3], '_sum', -freed)
    redis.call('HDEL', KEYS[3], unpack(old))
    redis.call('ZREM', KEYS[2], unpack(old))
  end
  local sum, ttl_set = unpack(redis.call('HMGET', KEYS[3], '_sum', '_ttl'))
  tpm_used = tonumber(sum or '0')
  ttl_due = not ttl_set or now - tonumber(ttl_set) >= window / 4
  if cost > tpm then
    deny('request_too_large', 0)
  elseif tpm_used + cost > tpm then
    local need, freed, offset, wait = tpm_used + cost - tpm, 0, 0, window
    while offset < 5000 do
      local e = redis.call('ZRANGE', KEYS[2], offset, offset + 199, 'WITHSCORES')
      if #e == 0 then break end
      local ids = {}
      for i = 1, #e, 2 do ids[#ids + 1] = e[i] end
      local amounts = redis.call('HMGET', KEYS[3], unpack(ids))
      local found = false
      for j = 1, #ids do
        freed = freed + tonumber(amounts[j] or '0')
        if freed >= need then
          wait = tonumber(e[2 * j]) + window - now
          found = true
          break
        end
      end
      if found then break end
      offset = offset + 200
    end
    deny('tokens', wait)
  end
end

local conc_used = 0
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now)
  conc_used = redis.call('ZCARD', KEYS[4])
  if conc_used >= conc then deny('concurrency', 1000) end
end

local bud_used = 0
if bud > 0 then
  bud_used = tonumber(redis.call('GET', KEYS[5]) or '0')
  if bud_used + cost > bud then deny('budget', tonumber(ARGV[10])) end
end

if reason ~= '' then
  -- (an admitted request resets each window in a full window: its own entry is the newest)
  if rpm > 0 then rpm_reset = newest_reset(KEYS[1]) end
  if tpm > 0 then tpm_reset = newest_reset(KEYS[2]) end
  return {0, reason, retry, rpm_used, rpm_reset, tpm_used, tpm_reset, conc_used, bud_used}
end

if rpm > 0 then
  redis.call('ZADD', KEYS[1], now, rid)
  if ttl_due then redis.call('PEXPIRE', KEYS[1], ttl) end
  rpm_used, rpm_reset = rpm_used + 1, window
end
if tpm > 0 then
  redis.call('ZADD', KEYS[2], now, rid)
  if ttl_due then
    redis.call('HSET', KEYS[3], rid, cost, '_ttl', now)
    redis.call('PEXPIRE', KEYS[2], ttl)
    redis.call('PEXPIRE', KEYS[3], ttl)
  else
    redis.call('HSET', KEYS[3], rid, cost)
  end
  redis.call('HINCRBY', KEYS[3], '_sum', cost)
  tpm_used, tpm_reset = tpm_used + cost, window
end
if conc > 0 then
  redis.call('ZADD', KEYS[4], now + lease, rid)
  redis.call('PEXPIRE', KEYS[4], lease)
  conc_used = conc_used + 1
end
if bud > 0 then
  bud_used = redis.call('INCRBY', KEYS[5], cost)
  redis.call('EXPIRE', KEYS[5], ARGV[9])
  redis.call('HSET', KEYS[6], rid, cost)
  redis.call('EXPIRE', KEYS[6], ARGV[9])
end
return {1, '', 0, rpm_used, rpm_reset, tpm_used, tpm_reset, conc_used, bud_used}
"""

SETTLE = """
-- KEYS: tpm amounts, concurrency, budget, open.  ARGV: request id, actual tokens, then whether the
-- reservation holds tokens, a concurrency slot, a budget charge ('0': no; absent: yes), so that a
-- bucket the tenant has no limit for is not looked at (two of the five calls, for a tenant with RPM/TPM)
local rid, actual = ARGV[1], tonumber(ARGV[2])
local tokens, conc, bud = ARGV[3] ~= '0', ARGV[4] ~= '0', ARGV[5] ~= '0'
if conc then redis.call('ZREM', KEYS[2], rid) end
local cur = tokens and redis.call('HGET', KEYS[1], rid)
if cur then
  redis.call('HSET', KEYS[1], rid, actual)
  redis.call('HINCRBY', KEYS[1], '_sum', actual - tonumber(cur))
end
local held = bud and redis.call('HGET', KEYS[4], rid)
if held then
  redis.call('HDEL', KEYS[4], rid)
  if redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('INCRBY', KEYS[3], actual - tonumber(held))
  end
end
return 1
"""

RENEW = """
-- KEYS[1]: concurrency zset. ARGV: lease ms, request ids still running on this replica
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

CHARGE = """
-- KEYS[1]: budget counter. ARGV: tokens, ttl s. Charges usage served while Redis was away.
local v = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return v
"""
