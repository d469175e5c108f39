/**
 * Where buckets live in Redis: the key of a (key, bucket name) pair, and its Redis Cluster slot.
 */

/** A UTF-16 surrogate not part of a pair: UTF-8 cannot hold it (it would become U+FFFD). */
export const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const NEEDS_ESCAPE = /[%{}\uD800-\uDFFF]/;
const ESCAPES = /[%{}]|[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/**
 * encodeKey makes a tenant's key safe inside a Redis Cluster hash tag, one-to-one: `%`, `{` and
 * `}` are percent-encoded (`%25`, `%7B`, `%7D`), so the encoded key holds no brace; a lone UTF-16
 * surrogate becomes `%uD800`-style, since UTF-8 (what ioredis sends) would turn every one of them
 * into the same U+FFFD and two tenants' keys into one.
 */
export function encodeKey(key: string): string {
  // Most keys (user ids) hold none of these characters.
  if (!NEEDS_ESCAPE.test(key)) return key;
  return key.replace(ESCAPES, (c) =>
    c === '%' ? '%25' : c === '{' ? '%7B' : c === '}' ? '%7D' : `%u${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
}

/**
 * redisKey is where the bucket (`key`, `name`) lives: `<prefix>{<encodeKey(key)>}:<encodeKey(name)>`.
 *
 * The hash tag holds the whole key, so every bucket of one user shares a Cluster slot; and since
 * the encoded key contains no `}`, the first `}` after the prefix ends it, so the Redis key
 * decodes to exactly one (key, name) pair: no tenant's id can reach another tenant's bucket.
 * (No bucket key holds a `{` after its tag, so `<bucket key>{…}` names other data of the slot.)
 */
export function redisKey(prefix: string, key: string, name: string): string {
  return `${prefix}{${encodeKey(key)}}:${encodeKey(name)}`;
}

/**
 * keySlot is the Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag — the text between
 * the first `{` and the next `}`, when not empty — or of the whole key, modulo 16384. Computed on
 * the key's UTF-8 bytes, as Redis does.
 */
export function keySlot(key: string): number {
  const bytes = Buffer.from(key, 'utf8');
  let start = 0;
  let end = bytes.length;
  const open = bytes.indexOf(0x7b);
  if (open !== -1) {
    const close = bytes.indexOf(0x7d, open + 1);
    if (close !== -1 && close !== open + 1) {
      start = open + 1;
      end = close;
    }
  }
  let crc = 0;
  for (let i = start; i < end; i++) {
    crc = ((crc << 8) & 0xffff) ^ (CRC16_TABLE[((crc >> 8) ^ (bytes[i] as number)) & 0xff] as number);
  }
  return crc & 16383;
}

const CRC16_TABLE = (() => {
  const t = new Uint16Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i << 8;
    for (let j = 0; j < 8; j++) c = c & 0x8000 ? ((c << 1) ^ 0x1021) & 0xffff : (c << 1) & 0xffff;
    t[i] = c;
  }
  return t;
})();

/**
 * masterOf is the 'host:port' of the Cluster master that owns `redisKey`'s slot, as `client` knows
 * it now; undefined for a standalone client (one shard) or a slot not yet known. Limiters keep a
 * circuit breaker per master, so one failing master fails only its own keys.
 */
export function masterOf(client: object, redisKey: string): string | undefined {
  const c = client as { isCluster?: boolean; slots?: string[][] };
  if (c.isCluster !== true || c.slots === undefined) return undefined;
  return c.slots[keySlot(redisKey)]?.[0];
}
