#!lua name=pretrade
-- pretrade's Redis library: the lot log (docs/redis-schema.md, "The lot log").
--
-- pretrade_lots writes lots of one account and logs which lots it wrote, in
-- one atomic call, so that pretrade re-reads only those lots instead of every
-- lot of the account. It logs how many keyspace events its writes raised on
-- the four per-lot hashes: pretrade counts the events it hears and re-reads
-- the whole account when they are more (a write that did not go through
-- here), so nothing is missed.
--
-- FCALL pretrade_lots 6 lotlog:{ACC} tickers_by_lot:{ACC} quantities_by_lot:{ACC}
--       prices_by_lot:{ACC} orders_by_lot:{ACC} version:{ACC} op [op ...]
-- op: SET <lot> <symbol> <quantity> <price> <order id, "" for none>
--     DEL <lot>
-- Returns the account's new version (INCR version:{ACC}), for an order's
-- min_state_version.
--
-- pretrade loads it (FUNCTION LOAD REPLACE) on every primary at every
-- (re)connect.

local MAX_OPS = 1000
local LOG_LENGTH = 4096

-- HDEL one field; the events it raised: hdel, and del when the hash emptied.
local function remove(key, lot)
  if redis.call('HDEL', key, lot) == 0 then
    return 0
  end
  if redis.call('EXISTS', key) == 0 then
    return 2
  end
  return 1
end

-- The sequence of the log's last entry ever added (0: no log), or nil and why not.
local function last_sequence(key)
  local kind = redis.call('TYPE', key)['ok']
  if kind == 'none' then
    return 0
  end
  if kind ~= 'stream' then
    return nil, 'ERR pretrade_lots: ' .. key .. ' is a ' .. kind .. ', not a stream'
  end
  -- The stream's last id, not its newest entry's: entries may have been
  -- deleted or trimmed, and an id at or below the last one cannot be added.
  local info = redis.call('XINFO', 'STREAM', key)
  for at = 1, #info, 2 do
    if info[at] == 'last-generated-id' then
      local last = string.match(info[at + 1], '^0%-(%d+)$')
      if last ~= nil and #last < 16 then
        return tonumber(last)
      end
    end
  end
  return nil, 'ERR pretrade_lots: ' .. key .. ' holds entries not written by pretrade_lots'
end

local HASHES = {'tickers_by_lot:', 'quantities_by_lot:', 'prices_by_lot:', 'orders_by_lot:',
  'version:'}

local function lots(keys, args)
  local tag = #keys == 6 and string.match(keys[1], '^lotlog:({[^{}]+})$')
  local ours = tag and true
  for k = 2, 6 do
    ours = ours and keys[k] == HASHES[k - 1] .. tag
  end
  if not ours then
    return redis.error_reply('ERR pretrade_lots takes 6 keys of one account {ACC}: '
      .. 'lotlog:{ACC}, tickers_by_lot:{ACC}, quantities_by_lot:{ACC}, prices_by_lot:{ACC}, '
      .. 'orders_by_lot:{ACC} and version:{ACC}')
  end
  -- Every op is checked before anything is written.
  local ops, at = {}, 1
  while at <= #args do
    local op = string.upper(args[at])
    if op == 'SET' then
      if at + 5 > #args then
        return redis.error_reply('ERR pretrade_lots: SET takes lot, symbol, quantity, '
          .. 'price and order id ("" for none)')
      end
      ops[#ops + 1] = {args[at + 1], args[at + 2], args[at + 3], args[at + 4], args[at + 5]}
      at = at + 6
    elseif op == 'DEL' then
      if at + 1 > #args then
        return redis.error_reply('ERR pretrade_lots: DEL takes a lot')
      end
      ops[#ops + 1] = {args[at + 1]}
      at = at + 2
    else
      return redis.error_reply('ERR pretrade_lots: an op is SET or DEL, not ' .. args[at])
    end
    if #ops > MAX_OPS then
      return redis.error_reply('ERR pretrade_lots: at most ' .. MAX_OPS .. ' ops per call')
    end
  end
  if #ops == 0 then
    return redis.error_reply('ERR pretrade_lots: no op')
  end
  local last, why = last_sequence(keys[1])
  if last == nil then
    return redis.error_reply(why .. '; delete it')
  end
  local seq = last + 1
  -- The entry: events, then the lots numbered 1, 2, ... (field names are unique).
  local events, entry = 0, {}
  for n, op in ipairs(ops) do
    local lot = op[1]
    if #op == 5 then
      redis.call('HSET', keys[2], lot, op[2])
      redis.call('HSET', keys[3], lot, op[3])
      redis.call('HSET', keys[4], lot, op[4])
      events = events + 3
      if op[5] ~= '' then
        redis.call('HSET', keys[5], lot, op[5])
        events = events + 1
      else
        events = events + remove(keys[5], lot)
      end
    else
      for k = 2, 5 do
        events = events + remove(keys[k], lot)
      end
    end
    entry[#entry + 1] = tostring(n)
    entry[#entry + 1] = lot
  end
  redis.call('XADD', keys[1], 'MAXLEN', '~', LOG_LENGTH, string.format('0-%d', seq),
    'events', events, unpack(entry))
  return redis.call('INCR', keys[6])
end

redis.register_function('pretrade_lots', lots)
