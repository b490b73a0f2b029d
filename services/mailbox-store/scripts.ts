/**
 * Lua scripts of the mailbox actor. Every key of one user shares the hash tag `{u:<address>}`, so
 * each operation is one atomic script and runs unchanged on Redis Cluster.
 *
 * Layout (K = <prefix>{u:<address>}):
 *   K:folders            HASH folder name -> folder id
 *   K:fseq               counter of folder ids
 *   K:f:<id>             HASH name, uidvalidity, uidnext, modseq, exists, unseen, special, subscribed
 *   K:f:<id>:uids        ZSET uid (score = member = uid), ascending UIDs
 *   K:f:<id>:m:<uid>     HASH flags (space separated), size, idate, blob, modseq
 *   K:lastuv             last UIDVALIDITY given
 *   K:idem               HASH idempotency key -> "<folder id>:<uid>" (a redelivered append is a no-op)
 *
 * UIDs are strictly ascending per folder (uidnext only grows); UIDVALIDITY changes only when a
 * folder of that name is created anew; MODSEQ per folder only grows (RFC 7162).
 */

const COMMON = `
local K = KEYS[1]
local function folder_id(name)
  if string.upper(name) == 'INBOX' then name = 'INBOX' end
  return redis.call('HGET', K .. ':folders', name)
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
  redis.call('HSET', K .. ':f:' .. id, 'name', name, 'uidvalidity', uidvalidity, 'uidnext', 1, 'modseq', 1,
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
-- Adds a message to a folder; returns its uid.
local function add_message(fid, blob, size, flags, idate)
  local fk = K .. ':f:' .. fid
  local uid = redis.call('HINCRBY', fk, 'uidnext', 1) - 1
  local modseq = redis.call('HINCRBY', fk, 'modseq', 1)
  redis.call('ZADD', fk .. ':uids', uid, uid)
  redis.call('HSET', fk .. ':m:' .. uid, 'flags', flags, 'size', size, 'idate', idate, 'blob', blob, 'modseq', modseq)
  redis.call('HINCRBY', fk, 'exists', 1)
  if not has_flag(flags, '\\\\Seen') then redis.call('HINCRBY', fk, 'unseen', 1) end
  return uid
end
local function remove_message(fid, uid)
  local fk = K .. ':f:' .. fid
  local mk = fk .. ':m:' .. uid
  local flags = redis.call('HGET', mk, 'flags')
  if not flags then return false end
  redis.call('DEL', mk)
  redis.call('ZREM', fk .. ':uids', uid)
  redis.call('HINCRBY', fk, 'exists', -1)
  if not has_flag(flags, '\\\\Seen') then redis.call('HINCRBY', fk, 'unseen', -1) end
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

/** ARGV: uidvalidity, folder, uid... (none = all). Returns {folder, {uid, flags, size, idate, blob, modseq}...}. */
export const MESSAGES = `${COMMON}
ensure(ARGV[1])
local fid = folder_id(ARGV[2])
if not fid then return redis.error_reply('NONEXISTENT no such folder') end
local fk = K .. ':f:' .. fid
local uids
if #ARGV > 2 then
  uids = {}
  for i = 3, #ARGV do uids[#uids + 1] = ARGV[i] end
else
  uids = redis.call('ZRANGE', fk .. ':uids', 0, -1)
end
local out = { folder_reply(fid) }
for _, uid in ipairs(uids) do
  local m = redis.call('HMGET', fk .. ':m:' .. uid, 'flags', 'size', 'idate', 'blob', 'modseq')
  if m[1] then out[#out + 1] = { uid, m[1], m[2], m[3], m[4], m[5] } end
end
return out
`;

/**
 * ARGV: uidvalidity, folder, idempotency key, blob, size, flags, internal date.
 * Returns {uid, uidvalidity, created (1) or already there (0)}.
 */
export const APPEND = `${COMMON}
ensure(ARGV[1])
local fid = folder_id(ARGV[2])
if not fid then return redis.error_reply('NONEXISTENT no such folder') end
if ARGV[3] ~= '' then
  local prev = redis.call('HGET', K .. ':idem', ARGV[3])
  if prev then
    local pf, pu = string.match(prev, '^(%d+):(%d+)$')
    return { tonumber(pu), tonumber(redis.call('HGET', K .. ':f:' .. pf, 'uidvalidity') or 0), 0 }
  end
end
local uid = add_message(fid, ARGV[4], ARGV[5], ARGV[6], ARGV[7])
if ARGV[3] ~= '' then redis.call('HSET', K .. ':idem', ARGV[3], fid .. ':' .. uid) end
return { uid, tonumber(redis.call('HGET', K .. ':f:' .. fid, 'uidvalidity')), 1 }
`;

/**
 * ARGV: uidvalidity, folder, op (add|remove|replace), flags (space separated), uid...
 * Returns {modseq, {uid, flags, modseq, size, idate, blob}...} for every existing message among the uids.
 */
export const STORE_FLAGS = `${COMMON}
ensure(ARGV[1])
local fid = folder_id(ARGV[2])
if not fid then return redis.error_reply('NONEXISTENT no such folder') end
local fk = K .. ':f:' .. fid
local op = ARGV[3]
local given = split(ARGV[4])
local out = {}
local modseq = tonumber(redis.call('HGET', fk, 'modseq'))
for i = 5, #ARGV do
  local uid = ARGV[i]
  local mk = fk .. ':m:' .. uid
  local old = redis.call('HGET', mk, 'flags')
  if old then
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
    local mmod = redis.call('HGET', mk, 'modseq')
    if new ~= old then
      modseq = redis.call('HINCRBY', fk, 'modseq', 1)
      mmod = modseq
      redis.call('HSET', mk, 'flags', new, 'modseq', modseq)
      local was, now = has_flag(old, '\\\\Seen'), has_flag(new, '\\\\Seen')
      if was and not now then redis.call('HINCRBY', fk, 'unseen', 1) end
      if now and not was then redis.call('HINCRBY', fk, 'unseen', -1) end
    end
    local m = redis.call('HMGET', mk, 'size', 'idate', 'blob')
    out[#out + 1] = { uid, new, mmod, m[1], m[2], m[3] }
  end
end
return { modseq, out }
`;

/**
 * ARGV: uidvalidity, folder, force (1|0), uid...
 * Removes the messages (only those flagged \\Deleted unless force). Returns {modseq, expunged uids, blobs}.
 */
export const EXPUNGE = `${COMMON}
ensure(ARGV[1])
local fid = folder_id(ARGV[2])
if not fid then return redis.error_reply('NONEXISTENT no such folder') end
local fk = K .. ':f:' .. fid
local force = ARGV[3] == '1'
local gone, blobs = {}, {}
for i = 4, #ARGV do
  local uid = ARGV[i]
  local m = redis.call('HMGET', fk .. ':m:' .. uid, 'flags', 'blob')
  if m[1] and (force or has_flag(m[1], '\\\\Deleted')) then
    remove_message(fid, uid)
    gone[#gone + 1] = tonumber(uid)
    blobs[#blobs + 1] = m[2]
  end
end
local modseq = tonumber(redis.call('HGET', fk, 'modseq'))
if #gone > 0 then modseq = redis.call('HINCRBY', fk, 'modseq', 1) end
return { modseq, gone, blobs }
`;

/**
 * ARGV: uidvalidity, folder, target, move (1|0), uid...
 * Returns {target uidvalidity, source uids, target uids}.
 */
export const COPY = `${COMMON}
ensure(ARGV[1])
local fid = folder_id(ARGV[2])
if not fid then return redis.error_reply('NONEXISTENT no such folder') end
local tid = folder_id(ARGV[3])
if not tid then return redis.error_reply('TRYCREATE no such target folder') end
local fk = K .. ':f:' .. fid
local src, dst = {}, {}
for i = 5, #ARGV do
  local uid = ARGV[i]
  local m = redis.call('HMGET', fk .. ':m:' .. uid, 'flags', 'size', 'idate', 'blob')
  if m[1] then
    local nuid = add_message(tid, m[4], m[2], m[1], m[3])
    src[#src + 1] = tonumber(uid)
    dst[#dst + 1] = nuid
    if ARGV[4] == '1' then remove_message(fid, uid) end
  end
end
if ARGV[4] == '1' and #src > 0 then redis.call('HINCRBY', fk, 'modseq', 1) end
return { tonumber(redis.call('HGET', K .. ':f:' .. tid, 'uidvalidity')), src, dst }
`;

/** ARGV: uidvalidity, folder. */
export const CREATE_FOLDER = `${COMMON}
ensure(ARGV[1])
if folder_id(ARGV[2]) then return redis.error_reply('ALREADYEXISTS folder exists') end
new_folder(ARGV[2], ARGV[1], '', 1)
return 1
`;

/** ARGV: uidvalidity, folder. Deletes the folder and its children; returns the blobs no longer referenced here. */
export const DELETE_FOLDER = `${COMMON}
ensure(ARGV[1])
local name = ARGV[2]
if string.upper(name) == 'INBOX' then return redis.error_reply('CANNOT the INBOX cannot be deleted') end
if not folder_id(name) then return redis.error_reply('NONEXISTENT no such folder') end
local all = redis.call('HGETALL', K .. ':folders')
local blobs = {}
for i = 1, #all, 2 do
  local n, id = all[i], all[i + 1]
  if n == name or string.sub(n, 1, #name + 1) == name .. '/' then
    local fk = K .. ':f:' .. id
    for _, uid in ipairs(redis.call('ZRANGE', fk .. ':uids', 0, -1)) do
      blobs[#blobs + 1] = redis.call('HGET', fk .. ':m:' .. uid, 'blob')
      redis.call('DEL', fk .. ':m:' .. uid)
    end
    redis.call('DEL', fk, fk .. ':uids')
    redis.call('HDEL', K .. ':folders', n)
  end
end
return blobs
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
