//! The server-side scripts, as Lua source: part of the contract, since they decide what
//! the device keys and catalog sets hold. Each touches one key only (so it runs on Redis
//! Cluster) and runs atomically, which is what the stale guard and the atomic `replace`
//! need.

/// Device upsert with the stale guard. `KEYS[1]` = device key, `ARGV[1]` = normalized JSON,
/// `ARGV[2]` = its `last_updated` in fixed-width UTC form, `ARGV[3]` = TTL seconds (0 = none).
///
/// The stored JSON always has `last_updated` as its first string field after the fixed
/// ones, in a fixed-width UTC form, so comparing the strings compares the instants. Returns
/// 1 when written, 0 when skipped as older than what is stored.
pub const UPSERT_DEVICE_LUA: &str = r#"
local current = redis.call('GET', KEYS[1])
if current then
  local stored = string.match(current, '"last_updated":"([^"]*)"')
  if stored and stored > ARGV[2] then
    return 0
  end
end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return 1
"#;

/// Atomic replace of a metric-name set, so readers never see it half replaced.
/// `KEYS[1]` = set key, `ARGV[1]` = TTL seconds (0 = none), `ARGV[2..]` = the names.
/// Names are added in slices because Lua's `unpack` has a stack limit.
pub const REPLACE_SET_LUA: &str = r#"
redis.call('DEL', KEYS[1])
local n = #ARGV
local i = 2
while i <= n do
  local j = math.min(i + 999, n)
  redis.call('SADD', KEYS[1], unpack(ARGV, i, j))
  i = j + 1
end
local ttl = tonumber(ARGV[1])
if ttl > 0 and n >= 2 then
  redis.call('EXPIRE', KEYS[1], ttl)
end
return n - 1
"#;

/// Writes the layout descriptor if there is none, atomically, and returns what was there
/// (an empty list when it wrote it), so that two daemons starting at once with different
/// layouts cannot both believe theirs is stored. `KEYS[1]` = `metacache:layout`,
/// `ARGV` = its fields and values, alternating.
pub const CLAIM_LAYOUT_LUA: &str = r#"
local stored = redis.call('HGETALL', KEYS[1])
if #stored == 0 then
  redis.call('HSET', KEYS[1], unpack(ARGV))
end
return stored
"#;
