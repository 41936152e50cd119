'use strict';
/**
 * Benchmark: generate N JSON records, serialise, parse back, compress with gzip, deflate and
 * brotli (node:zlib) and decompress again.
 *
 * Event: { "records": 3000, "seed": 42, "level": 6, "brotliQuality": 5 }. Records come from a
 * linear congruential generator (the same one as py-json-compress), so the JSON is the same on
 * every machine. Returns the sizes, the SHA-256 of the JSON text and whether everything round-trips.
 */
const zlib = require('node:zlib');
const crypto = require('node:crypto');

const CITIES = ['Berlin', 'Lisbon', 'Osaka', 'Lagos', 'Lima', 'Oslo', 'Pune', 'Quito'];

function records(n, seed) {
  let x = seed & 0x7fffffff;
  const out = [];
  for (let i = 0; i < n; i++) {
    x = Number((1103515245n * BigInt(x) + 12345n) & 0x7fffffffn);
    out.push({
      id: i,
      user: `user${String(x % 5000).padStart(4, '0')}`,
      city: CITIES[x % CITIES.length],
      score: (x % 10007) / 100,
      active: Boolean(x & 4),
      tags: [4, 9, 14].map((s) => CITIES[(x >>> s) % CITIES.length].toLowerCase()),
      point: { lat: ((x >>> 3) % 18000) / 100 - 90, lon: ((x >>> 5) % 36000) / 100 - 180 },
    });
  }
  return out;
}

exports.handler = (event = {}) => {
  const n = Number(event.records ?? 3000);
  if (!Number.isInteger(n) || n < 0 || n > 500000) throw new RangeError('records must be 0..500000');
  const level = Number(event.level ?? 6);
  const data = records(n, Number(event.seed ?? 42));
  const text = JSON.stringify(data);
  const parsed = JSON.parse(text);
  const raw = Buffer.from(text, 'utf8');
  const gz = zlib.gzipSync(raw, { level });
  const df = zlib.deflateSync(raw, { level });
  const br = zlib.brotliCompressSync(raw, {
    params: {
      [zlib.constants.BROTLI_PARAM_QUALITY]: Number(event.brotliQuality ?? 5),
      [zlib.constants.BROTLI_PARAM_SIZE_HINT]: raw.length,
    },
  });
  const roundtrip =
    parsed.length === n &&
    zlib.gunzipSync(gz).equals(raw) &&
    zlib.inflateSync(df).equals(raw) &&
    zlib.brotliDecompressSync(br).equals(raw);
  return {
    records: parsed.length,
    jsonBytes: raw.length,
    gzipBytes: gz.length,
    deflateBytes: df.length,
    brotliBytes: br.length,
    roundtrip,
    sha256: crypto.createHash('sha256').update(raw).digest('hex'),
  };
};
