/**
 * Lua scripts of the mailbox actor. Every key of one user shares the hash tag `{u:<address>}`, so
 * each operation is one atomic script and runs unchanged on Redis Cluster.
 *
 * Layout (K = <prefix>{u:<address>}):
 *   K:folders            HASH folder name -> folder id
 *   K:fseq               counter of folder ids
 *   K:f:<id>             HASH name, uidvalidity, uidnext, modseq, exists, unseen, special, subscribed
 *   K:f:<id>:uids        ZSET uid (score = member = uid), ascending UIDs
 *   K:f:<id>:m:<uid>     HASH flags (space separated), size, idate, blob, modseq, and st: the MIME
 *                        structure parsed at append (encoded pb.MimeStructure, a few hundred bytes;
 *                        absent for messages stored before it was kept). Per message rather than per
 *                        body: see services/core/mime-structure.ts for the reasons and the figures.
 *   K:lastuv             last UIDVALIDITY given
 *   K:f:<id>:ms          ZSET uid scored by its MODSEQ (CONDSTORE CHANGEDSINCE, RFC 7162 3.1.4.1)
 *   K:f:<id>:sum         HASH uid -> "uid modseq size idate flags": the summary index that SELECT and
 *                        FETCH of flags read thousands at a time with one HMGET, instead of one
 *                        HMGET per message hash. Every script that adds, removes or changes a
 *                        message keeps it, and moves the folder's `sumseq` with its `modseq`;
 *                        when they differ (a folder stored before the index was kept, or changed
 *                        by an older replica during an upgrade) SUMMARIES rebuilds it or, for a
 *                        folder bigger than one rebuild, reads the message hashes.
 *   K:f:<id>:x           ZSET expunged uid scored by the MODSEQ of its expunge (QRESYNC, RFC 7162 3.2.5)
 *   K:idem               HASH idempotency key -> "<folder id>:<uid>" (a redelivered append is a no-op)
 *   K:idemt              ZSET idempotency key scored by when it was used: keys older than a week
 *                        are dropped, a few per append (JetStream redelivers within minutes; a
 *                        week bounds the hash without ever forgetting a key that can come back)
 *   K:usage              HASH bytes, msgs: the user's storage in use (QUOTA, RFC 9208)
 *   K:brefs              HASH blob -> number of this user's messages that refer to it
 *   K:bdirty             HASH blob -> version: blobs whose "held by this user" bit changed and has not
 *                        yet been copied to the blob's own record (see blob-refs.ts)
 *   K:bver               counter of those versions
 *
 * UIDs are strictly ascending per folder (uidnext only grows); UIDVALIDITY changes only when a
 * folder of that name is created anew; MODSEQ per folder only grows (RFC 7162), and every change
 * of a message (append, flags, expunge) takes a MODSEQ of its own, so a message's MODSEQ is unique
 * within its folder.
 *
 * Journal trimming policy: the expunge journal of a folder keeps the newest JOURNAL_MAX entries
 * (ARGV given by the store, default 10,000). Trimmed entries raise the folder's `xfloor` to the
 * highest MODSEQ dropped; a QRESYNC client whose known MODSEQ is below `xfloor` gets null from
 * expungedSince and must resynchronise with a full UID FETCH (RFC 7162 3.2.5.2 allows the server
 * to answer with a full list instead). Flag changes need no journal beyond the per-message MODSEQ
 * index (K:f:<id>:ms), which is exact for every live message and never trimmed.
 */

const COMMON = `
local K = KEYS[1]
local function folder_id(name)
  if string.upper(name) == 'INBOX' then name = 'INBOX' end
  return redis.call('HGET', K .. ':folders', name)
end
local function mark_blob(blob)
  local v = redis.call('INCR', K .. ':bver')
  redis.call('HSET', K .. ':bdirty', blob, v)
end
local function ref_blob(blob, size, delta)
  local n = redis.call('HINCRBY', K .. ':brefs', blob, delta)
  if n <= 0 then redis.call('HDEL', K .. ':brefs', blob) end
  if (delta > 0 and n == delta) or n <= 0 then mark_blob(blob) end
  redis.call('HINCRBY', K .. ':usage', 'bytes', delta * tonumber(size))
  redis.call('HINCRBY', K .. ':usage', 'msgs', delta)
end
-- QUOTA (RFC 9208 5.2, 5.3): a limit of 0 means none; messages * count more octets must fit.
local function over_quota(bytes, count, lbytes, lmsgs)
  local u = redis.call('HMGET', K .. ':usage', 'bytes', 'msgs')
  local ub, um = tonumber(u[1] or '0'), tonumber(u[2] or '0')
  if tonumber(lbytes) > 0 and ub + bytes > tonumber(lbytes) then return true end
  if tonumber(lmsgs) > 0 and um + count > tonumber(lmsgs) then return true end
  return false
end
local function has_flag(flags, flag)
  for f in string.gmatch(flags, '%S+') do
    if string.lower(f) == string.lower(flag) then return true end
  end
  return false
end
local function split(s)
  local t = {}
  for f in string.gmatch(s, '%S+') do t[#t + 1] = f end
  return t
end
-- UIDVALIDITY: the clock in seconds, but always above any value this user had, so a folder
-- deleted and created again within one second still gets a new one (RFC 3501 2.3.1.1).
local function next_uidvalidity(now)
  local last = tonumber(redis.call('GET', K .. ':lastuv') or '0')
  local uv = math.max(tonumber(now), last + 1)
  redis.call('SET', K .. ':lastuv', uv)
  return uv
end
local function new_folder(name, now, special, subscribed)
  local id = redis.call('INCR', K .. ':fseq')
  local uidvalidity = next_uidvalidity(now)
  redis.call('HSET', K .. ':folders', name, id)
  redis.call('HSET', K .. ':f:' .. id, 'name', name, 'uidvalidity', uidvalidity, 'uidnext', 1, 'modseq', 1, 'sumseq', 1,
    'exists', 0, 'unseen', 0, 'special', special, 'subscribed', subscribed)
  return id
end
-- Creates the INBOX and the RFC 6154 special-use folders on first use.
local function ensure(uidvalidity)
  if redis.call('EXISTS', K .. ':folders') == 1 then return end
  new_folder('INBOX', uidvalidity, '', 1)
  new_folder('Drafts', uidvalidity, '\\\\Drafts', 1)
  new_folder('Sent', uidvalidity, '\\\\Sent', 1)
  new_folder('Trash', uidvalidity, '\\\\Trash', 1)
  new_folder('Junk', uidvalidity, '\\\\Junk', 1)
  new_folder('Archive', uidvalidity, '\\\\Archive', 1)
end
local function folder_reply(id)
  return redis.call('HMGET', K .. ':f:' .. id, 'name', 'uidvalidity', 'uidnext', 'exists', 'unseen', 'modseq', 'special', 'subscribed')
end
-- The summary index (K:f:<id>:sum) is in step with its folder while the folder's sumseq equals
-- its modseq: every change made by these scripts moves both; a change made without the index (a
-- replica of an older version, during an upgrade) moves only modseq, and the index is then not
-- trusted until SUMMARIES rebuilds it.
local function bump_modseq(fk)
  local before = redis.call('HMGET', fk, 'modseq', 'sumseq')
  local modseq = redis.call('HINCRBY', fk, 'modseq', 1)
  if before[1] == before[2] then redis.call('HSET', fk, 'sumseq', modseq) end
  return modseq
end
-- The summary index entry of a message (K:f:<id>:sum): flags last, they hold spaces.
local function summary(uid, modseq, size, idate, flags)
  return uid .. ' ' .. modseq .. ' ' .. size .. ' ' .. idate .. ' ' .. flags
end
-- Adds a message to a folder (st: its MIME structure, '' or false for none); returns its uid.
local function add_message(fid, blob, size, flags, idate, st)
  local fk = K .. ':f:' .. fid
  local uid = redis.call('HINCRBY', fk, 'uidnext', 1) - 1
  local modseq = bump_modseq(fk)
  redis.call('ZADD', fk .. ':uids', uid, uid)
  redis.call('ZADD', fk .. ':ms', modseq, uid)
  redis.call('HSET', fk .. ':m:' .. uid, 'flags', flags, 'size', size, 'idate', idate, 'blob', blob, 'modseq', modseq)
  if st and st ~= '' then redis.call('HSET', fk .. ':m:' .. uid, 'st', st) end
  redis.call('HSET', fk .. ':sum', uid, summary(uid, modseq, size, idate, flags))
  redis.call('HINCRBY', fk, 'exists', 1)
  if not has_flag(flags, '\\\\Seen') then redis.call('HINCRBY', fk, 'unseen', 1) end
  ref_blob(blob, size, 1)
  return uid
end
-- Removes a message; with a journal size, records the expunge at a MODSEQ of its own.
local function remove_message(fid, uid, jmax)
  local fk = K .. ':f:' .. fid
  local mk = fk .. ':m:' .. uid
  local m = redis.call('HMGET', mk, 'flags', 'blob', 'size')
  if not m[1] then return false end
  redis.call('DEL', mk)
  redis.call('HDEL', fk .. ':sum', uid)
  redis.call('ZREM', fk .. ':uids', uid)
  redis.call('ZREM', fk .. ':ms', uid)
  redis.call('HINCRBY', fk, 'exists', -1)
  if not has_flag(m[1], '\\\\Seen') then redis.call('HINCRBY', fk, 'unseen', -1) end
  ref_blob(m[2], m[3], -1)
  if jmax then
    local modseq = bump_modseq(fk)
    redis.call('ZADD', fk .. ':x', modseq, uid)
    local over = redis.call('ZCARD', fk .. ':x') - tonumber(jmax)
    if over > 0 then
      local dropped = redis.call('ZPOPMIN', fk .. ':x', over)
      redis.call('HSET', fk, 'xfloor', dropped[#dropped])
    end
  end
  return true
end
`;

/** ARGV: uidvalidity. Returns a flat list of folder replies. */
export const LIST_FOLDERS = `${COMMON}
ensure(ARGV[1])
local out = {}
local all = redis.call('HGETALL', K .. ':folders')
for i = 1, #all, 2 do out[#out + 1] = folder_reply(all[i + 1]) end
return out
`;

/** ARGV: uidvalidity, folder. Returns the folder reply or an error. */
export const STATUS = `${COMMON}
ensure(ARGV[1])
local fid = folder_id(ARGV[2])
if not fid then return redis.error_reply('NONEXISTENT no such folder') end
return folder_reply(fid)
`;

/** Message row: {uid, flags, size, idate, blob, modseq} and, when `st` is set, the structure ('' if none). */
const ROW = `
local function row(fk, uid, st)
  if st then
    local m = redis.call('HMGET', fk .. ':m:' .. uid, 'flags', 'size', 'idate', 'blob', 'modseq', 'st')
    if not m[1] then return nil end
    return { tonumber(uid), m[1], m[2], m[3], m[4], m[5], m[6] or '' }
  end
  local m = redis.call('HMGET', fk .. ':m:' .. uid, 'flags', 'size', 'idate', 'blob', 'modseq')
  if not m[1] then return nil end
  return { tonumber(uid), m[1], m[2], m[3], m[4], m[5] }
end
`;

/**
 * ARGV: uidvalidity, folder, with structure (1|0), uid... Returns {folder, row...} for the uids
 * that exist.
 */
export const MESSAGES = `${COMMON}${ROW}
ensure(ARGV[1])
local fid = folder_id(ARGV[2])
if not fid then return redis.error_reply('NONEXISTENT no such folder') end
local fk = K .. ':f:' .. fid
local out = { folder_reply(fid) }
local st = ARGV[3] == '1'
for i = 4, #ARGV do
  local r = row(fk, ARGV[i], st)
  if r then out[#out + 1] = r end
end
return out
`;

/**
 * ARGV: uidvalidity, folder, first uid, last uid, limit, with structure (1|0). One page of a UID
 * range, ascending: returns {folder, row...}; the caller asks again from the last UID + 1 while a
 * page comes back full.
 */
export const MESSAGES_RANGE = `${COMMON}${ROW}
ensure(ARGV[1])
local fid = folder_id(ARGV[2])
if not fid then return redis.error_reply('NONEXISTENT no such folder') end
local fk = K .. ':f:' .. fid
local out = { folder_reply(fid) }
local st = ARGV[6] == '1'
for _, uid in ipairs(redis.call('ZRANGEBYSCORE', fk .. ':uids', ARGV[3], ARGV[4], 'LIMIT', 0, ARGV[5])) do
  local r = row(fk, uid, st)
  if r then out[#out + 1] = r end
end
return out
`;

/** Folders up to this many messages get their summary index rebuilt in one script (a few ms of Redis). */
const SUMMARY_REBUILD_MAX = 5000;

/**
 * ARGV: uidvalidity, folder, first uid, last uid, limit, byte budget, uid... The summaries of
 * messages (SELECT, FETCH of flags and sizes): everything but the blob and the structure, packed
 * in one string so that a page of thousands of messages is one bulk reply, not six per message.
 * With uids, those that exist; without, one page of the UID range first..last, ascending, of at
 * most `limit` messages and about `byte budget` octets (the caller goes on from the last UID + 1
 * until a page comes back empty). Returns {folder, packed}: rows `uid modseq size idate flags`
 * joined by LF (flags are space-separated atoms, never holding CR or LF).
 *
 * Read from the summary index (K:f:<id>:sum) with one HMGET while it is in step with the folder
 * (sumseq = modseq). Otherwise the index is rebuilt first, when the folder is small enough for one
 * script; a bigger folder is read from its message hashes (exact, slower).
 */
export const SUMMARIES = `${COMMON}
ensure(ARGV[1])
local fid = folder_id(ARGV[2])
if not fid then return redis.error_reply('NONEXISTENT no such folder') end
local fk = K .. ':f:' .. fid
local ranged = #ARGV <= 6
local uids
if ranged then
  uids = redis.call('ZRANGEBYSCORE', fk .. ':uids', ARGV[3], ARGV[4], 'LIMIT', 0, ARGV[5])
else
  uids = {}
  for i = 7, #ARGV do uids[#uids + 1] = ARGV[i] end
end
if #uids == 0 then return { folder_reply(fid), '' } end
local rows = {}
local f = redis.call('HMGET', fk, 'modseq', 'sumseq', 'exists')
local synced = f[1] == f[2]
if not synced and tonumber(f[3] or '0') <= ${SUMMARY_REBUILD_MAX} then
  -- Rebuilt whole in this one script, so it is exact at this modseq.
  redis.call('DEL', fk .. ':sum')
  for _, uid in ipairs(redis.call('ZRANGE', fk .. ':uids', 0, -1)) do
    local m = redis.call('HMGET', fk .. ':m:' .. uid, 'flags', 'modseq', 'size', 'idate')
    if m[1] then redis.call('HSET', fk .. ':sum', uid, summary(uid, m[2], m[3], m[4], m[1])) end
  end
  redis.call('HSET', fk, 'sumseq', f[1])
  synced = true
end
local sums
if synced then
  sums = redis.call('HMGET', fk .. ':sum', unpack(uids))
else
  sums = {}
  for i, uid in ipairs(uids) do
    local m = redis.call('HMGET', fk .. ':m:' .. uid, 'flags', 'modseq', 'size', 'idate')
    sums[i] = m[1] and summary(uid, m[2], m[3], m[4], m[1]) or false
  end
end
local budget = tonumber(ARGV[6])
local bytes = 0
for i = 1, #uids do
  local v = sums[i]
  if v then
    rows[#rows + 1] = v
    bytes = bytes + #v + 1
    if ranged and bytes >= budget then break end
  end
end
return { folder_reply(fid), table.concat(rows, '\\n') }
`;

/**
 * ARGV: uidvalidity, folder, most messages. Every summary of a folder at once, in one atomic read
 * (SELECT of a whole folder): {folder, packed} with the rows in the index's own order (not by
 * UID: the caller sorts), or {folder, false} when the index is not in step with the folder or the
 * folder holds more than `most` messages, and the caller reads it in pages (SUMMARIES). One HVALS
 * of the index instead of a range of UIDs and an HMGET of them page by page: a 20,000-message
 * folder is one call of a few milliseconds.
 */
export const SUMMARIES_ALL = `${COMMON}
ensure(ARGV[1])
local fid = folder_id(ARGV[2])
if not fid then return redis.error_reply('NONEXISTENT no such folder') end
local fk = K .. ':f:' .. fid
local f = redis.call('HMGET', fk, 'modseq', 'sumseq', 'exists')
if f[1] ~= f[2] or tonumber(f[3] or '0') > tonumber(ARGV[3]) then return { folder_reply(fid), false } end
return { folder_reply(fid), table.concat(redis.call('HVALS', fk .. ':sum'), '\\n') }
`;

/**
 * ARGV: uidvalidity, folder, modseq, limit, uid... CONDSTORE CHANGEDSINCE (RFC 7162 3.1.4.1).
 * Without uids, one page in MODSEQ order (MODSEQs are unique per message, so the next page starts
 * above the last one returned); with uids, those among them changed since. Returns {row...}.
 */
export const CHANGED = `${COMMON}${ROW}
ensure(ARGV[1])
local fid = folder_id(ARGV[2])
if not fid then return redis.error_reply('NONEXISTENT no such folder') end
local fk = K .. ':f:' .. fid
local out = {}
if #ARGV > 4 then
  for i = 5, #ARGV do
    local ms = redis.call('ZSCORE', fk .. ':ms', ARGV[i])
    if ms and tonumber(ms) > tonumber(ARGV[3]) then out[#out + 1] = row(fk, ARGV[i]) end
  end
else
  for _, uid in ipairs(redis.call('ZRANGEBYSCORE', fk .. ':ms', '(' .. ARGV[3], '+inf', 'LIMIT', 0, ARGV[4])) do
    out[#out + 1] = row(fk, uid)
  end
end
return out
`;

/**
 * ARGV: uidvalidity, folder, modseq. QRESYNC (RFC 7162 3.2.5): {1, uid...} expunged with a MODSEQ
 * above the given one, or {0} when the journal was trimmed past it.
 */
export const EXPUNGED = `${COMMON}
ensure(ARGV[1])
local fid = folder_id(ARGV[2])
if not fid then return redis.error_reply('NONEXISTENT no such folder') end
local fk = K .. ':f:' .. fid
local floor = tonumber(redis.call('HGET', fk, 'xfloor') or '0')
if tonumber(ARGV[3]) < floor then return { 0 } end
local out = { 1 }
for _, uid in ipairs(redis.call('ZRANGEBYSCORE', fk .. ':x', '(' .. ARGV[3], '+inf')) do out[#out + 1] = tonumber(uid) end
return out
`;

/** ARGV: uidvalidity. Returns {bytes, messages} in use. */
export const USAGE = `${COMMON}
ensure(ARGV[1])
local u = redis.call('HMGET', K .. ':usage', 'bytes', 'msgs')
return { tonumber(u[1] or '0'), tonumber(u[2] or '0') }
`;

/**
 * ARGV: uidvalidity, folder, idempotency key, blob, size, flags, internal date, byte limit, message
 * limit, MIME structure ('' for none). Returns {uid, uidvalidity, created (1) or already there (0), modseq}.
 */
export const APPEND = `${COMMON}
ensure(ARGV[1])
local fid = folder_id(ARGV[2])
if not fid then return redis.error_reply('NONEXISTENT no such folder') end
if ARGV[3] ~= '' then
  local prev = redis.call('HGET', K .. ':idem', ARGV[3])
  if prev then
    local pf, pu = string.match(prev, '^(%d+):(%d+)$')
    return { tonumber(pu), tonumber(redis.call('HGET', K .. ':f:' .. pf, 'uidvalidity') or 0), 0, 0 }
  end
end
if over_quota(tonumber(ARGV[5]), 1, ARGV[8], ARGV[9]) then return redis.error_reply('OVERQUOTA mailbox is full') end
local uid = add_message(fid, ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[10])
if ARGV[3] ~= '' then
  redis.call('HSET', K .. ':idem', ARGV[3], fid .. ':' .. uid)
  redis.call('ZADD', K .. ':idemt', ARGV[1], ARGV[3])
end
local old = redis.call('ZRANGEBYSCORE', K .. ':idemt', '-inf', tonumber(ARGV[1]) - 604800, 'LIMIT', 0, 16)
if #old > 0 then
  redis.call('HDEL', K .. ':idem', unpack(old))
  redis.call('ZREM', K .. ':idemt', unpack(old))
end
local f = redis.call('HMGET', K .. ':f:' .. fid, 'uidvalidity', 'modseq')
return { uid, tonumber(f[1]), 1, tonumber(f[2]) }
`;

/**
 * ARGV: uidvalidity, folder, op (add|remove|replace), flags (space separated), unchangedsince
 * (-1: unconditional), uid... Returns {modseq, {uid, flags, modseq, size, idate, blob}..., {failed uid...}}.
 * UNCHANGEDSINCE (RFC 7162 3.1.3): a message whose MODSEQ is above it is left alone and reported.
 */
export const STORE_FLAGS = `${COMMON}
ensure(ARGV[1])
local fid = folder_id(ARGV[2])
if not fid then return redis.error_reply('NONEXISTENT no such folder') end
local fk = K .. ':f:' .. fid
local op = ARGV[3]
local given = split(ARGV[4])
local since = tonumber(ARGV[5])
local out, failed = {}, {}
local modseq = tonumber(redis.call('HGET', fk, 'modseq'))
for i = 6, #ARGV do
  local uid = ARGV[i]
  local mk = fk .. ':m:' .. uid
  local cur = redis.call('HMGET', mk, 'flags', 'modseq')
  local old = cur[1]
  if old and since >= 0 and tonumber(cur[2]) > since then
    failed[#failed + 1] = tonumber(uid)
  elseif old then
    local set, order = {}, {}
    if op ~= 'replace' then
      for _, f in ipairs(split(old)) do
        if not set[string.lower(f)] then set[string.lower(f)] = f; order[#order + 1] = string.lower(f) end
      end
    end
    for _, f in ipairs(given) do
      local lf = string.lower(f)
      if op == 'remove' then
        set[lf] = nil
      elseif not set[lf] then
        set[lf] = f; order[#order + 1] = lf
      end
    end
    local list = {}
    for _, lf in ipairs(order) do if set[lf] then list[#list + 1] = set[lf]; set[lf] = nil end end
    local new = table.concat(list, ' ')
    local mmod = cur[2]
    local m = redis.call('HMGET', mk, 'size', 'idate', 'blob')
    if new ~= old then
      modseq = bump_modseq(fk)
      mmod = modseq
      redis.call('HSET', mk, 'flags', new, 'modseq', modseq)
      redis.call('ZADD', fk .. ':ms', modseq, uid)
      redis.call('HSET', fk .. ':sum', uid, summary(uid, modseq, m[1], m[2], new))
      local was, now = has_flag(old, '\\\\Seen'), has_flag(new, '\\\\Seen')
      if was and not now then redis.call('HINCRBY', fk, 'unseen', 1) end
      if now and not was then redis.call('HINCRBY', fk, 'unseen', -1) end
    end
    out[#out + 1] = { tonumber(uid), new, mmod, m[1], m[2], m[3] }
  end
end
return { modseq, out, failed }
`;

/**
 * ARGV: uidvalidity, folder, force (1|0), journal size, uid...
 * Removes the messages (only those flagged \\Deleted unless force). Returns {modseq, expunged uids}.
 */
export const EXPUNGE = `${COMMON}
ensure(ARGV[1])
local fid = folder_id(ARGV[2])
if not fid then return redis.error_reply('NONEXISTENT no such folder') end
local fk = K .. ':f:' .. fid
local force = ARGV[3] == '1'
local gone = {}
for i = 5, #ARGV do
  local uid = ARGV[i]
  local flags = redis.call('HGET', fk .. ':m:' .. uid, 'flags')
  if flags and (force or has_flag(flags, '\\\\Deleted')) then
    remove_message(fid, uid, ARGV[4])
    gone[#gone + 1] = tonumber(uid)
  end
end
return { tonumber(redis.call('HGET', fk, 'modseq')), gone }
`;

/**
 * ARGV: uidvalidity, folder, target, move (1|0), journal size, byte limit, message limit, uid...
 * Returns {target uidvalidity, source uids, target uids, target modseq, source modseq}.
 * COPY counts against the quota, MOVE does not (RFC 9208 5.2; RFC 6851 3.3).
 */
export const COPY = `${COMMON}
ensure(ARGV[1])
local fid = folder_id(ARGV[2])
if not fid then return redis.error_reply('NONEXISTENT no such folder') end
local tid = folder_id(ARGV[3])
if not tid then return redis.error_reply('TRYCREATE no such target folder') end
local fk = K .. ':f:' .. fid
local move = ARGV[4] == '1'
if not move then
  local bytes, count = 0, 0
  for i = 8, #ARGV do
    local size = redis.call('HGET', fk .. ':m:' .. ARGV[i], 'size')
    if size then bytes = bytes + tonumber(size); count = count + 1 end
  end
  if over_quota(bytes, count, ARGV[6], ARGV[7]) then return redis.error_reply('OVERQUOTA mailbox is full') end
end
local src, dst = {}, {}
for i = 8, #ARGV do
  local uid = ARGV[i]
  local m = redis.call('HMGET', fk .. ':m:' .. uid, 'flags', 'size', 'idate', 'blob', 'st')
  if m[1] then
    local nuid = add_message(tid, m[4], m[2], m[1], m[3], m[5])
    src[#src + 1] = tonumber(uid)
    dst[#dst + 1] = nuid
    if move then remove_message(fid, uid, ARGV[5]) end
  end
end
local t = redis.call('HMGET', K .. ':f:' .. tid, 'uidvalidity', 'modseq')
return { tonumber(t[1]), src, dst, tonumber(t[2]), tonumber(redis.call('HGET', fk, 'modseq')) }
`;

/** ARGV: uidvalidity, folder. */
export const CREATE_FOLDER = `${COMMON}
ensure(ARGV[1])
if folder_id(ARGV[2]) then return redis.error_reply('ALREADYEXISTS folder exists') end
new_folder(ARGV[2], ARGV[1], '', 1)
return 1
`;

/** ARGV: uidvalidity, folder. Deletes the folder and its children with their messages; returns the count of messages removed. */
export const DELETE_FOLDER = `${COMMON}
ensure(ARGV[1])
local name = ARGV[2]
if string.upper(name) == 'INBOX' then return redis.error_reply('CANNOT the INBOX cannot be deleted') end
if not folder_id(name) then return redis.error_reply('NONEXISTENT no such folder') end
local all = redis.call('HGETALL', K .. ':folders')
local count = 0
for i = 1, #all, 2 do
  local n, id = all[i], all[i + 1]
  if n == name or string.sub(n, 1, #name + 1) == name .. '/' then
    local fk = K .. ':f:' .. id
    for _, uid in ipairs(redis.call('ZRANGE', fk .. ':uids', 0, -1)) do
      remove_message(id, uid, nil)
      count = count + 1
    end
    redis.call('DEL', fk, fk .. ':uids', fk .. ':ms', fk .. ':x', fk .. ':sum')
    redis.call('HDEL', K .. ':folders', n)
  end
end
return count
`;

/** ARGV: (unused clock), max entries. Blobs whose holding by this user changed: {blob, version, held (1|0)}... */
export const BLOB_DIRTY = `${COMMON}
local out = {}
local r = redis.call('HSCAN', K .. ':bdirty', 0, 'COUNT', ARGV[2])
local kv = r[2]
for i = 1, #kv, 2 do
  local held = redis.call('HEXISTS', K .. ':brefs', kv[i])
  out[#out + 1] = { kv[i], kv[i + 1], held }
end
return out
`;

/** ARGV: (unused clock), blob, version. Clears the dirty mark if it was not changed since; returns how many marks are left. */
export const BLOB_CLEAN = `${COMMON}
if redis.call('HGET', K .. ':bdirty', ARGV[2]) == ARGV[3] then redis.call('HDEL', K .. ':bdirty', ARGV[2]) end
return redis.call('HLEN', K .. ':bdirty')
`;

/** ARGV: uidvalidity, folder, target. Renames the folder and its children (RFC 3501 6.3.5). */
export const RENAME_FOLDER = `${COMMON}
ensure(ARGV[1])
local from, to = ARGV[2], ARGV[3]
if not folder_id(from) then return redis.error_reply('NONEXISTENT no such folder') end
if folder_id(to) then return redis.error_reply('ALREADYEXISTS target exists') end
local all = redis.call('HGETALL', K .. ':folders')
for i = 1, #all, 2 do
  local n, id = all[i], all[i + 1]
  local nn
  if n == from then nn = to elseif string.sub(n, 1, #from + 1) == from .. '/' then nn = to .. string.sub(n, #from + 1) end
  if nn then
    redis.call('HDEL', K .. ':folders', n)
    redis.call('HSET', K .. ':folders', nn, id)
    redis.call('HSET', K .. ':f:' .. id, 'name', nn)
  end
end
-- RENAME of INBOX moves its messages to the new folder and leaves INBOX empty (RFC 3501 6.3.5).
if from == 'INBOX' then
  new_folder('INBOX', ARGV[1], '', 1)
end
return 1
`;

/** ARGV: uidvalidity, folder, subscribed (1|0). */
export const SUBSCRIBE = `${COMMON}
ensure(ARGV[1])
local fid = folder_id(ARGV[2])
if not fid then return redis.error_reply('NONEXISTENT no such folder') end
redis.call('HSET', K .. ':f:' .. fid, 'subscribed', ARGV[3])
return 1
`;
