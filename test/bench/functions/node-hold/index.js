'use strict';
// Benchmark agent: loads what a typical agent loads, does a little work, then stays alive.
const crypto = require('node:crypto');
const http = require('node:http');
const zlib = require('node:zlib');
const { URL } = require('node:url');

exports.handler = async (event) => {
  const rows = Array.from({ length: 200 }, (_, i) => ({ id: crypto.randomUUID(), v: i * 0.5 }));
  const packed = zlib.gzipSync(JSON.stringify(rows));
  await new Promise((r) => setTimeout(r, Number(event.hold_ms ?? 0)));
  return { total: rows.reduce((a, r) => a + r.v, 0), gz: packed.length > 0, status: http.STATUS_CODES[200], host: new URL('http://x.test/').host };
};
