// The Node shim's preparation for a snapshot (runtime-daemon/runtimes/node/trenv-shim.js): its wait
// for background threads, and re-seeding more than once (a warmed template, then each clone).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as crypto from 'node:crypto';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const shim = require(path.join(__dirname, '../../../runtime-daemon/runtimes/node/trenv-shim.js'));

/** a worker thread that burns CPU for `ms` (its own thread: its ticks are "background") */
function spin(ms: number): Worker {
  return new Worker(`const end = Date.now() + ${ms}; while (Date.now() < end);`, { eval: true });
}

test('settleBackgroundThreads waits while another thread uses CPU, and returns once it is quiet', async () => {
  const w = spin(500);
  await new Promise((r) => w.once('online', r));
  const t0 = Date.now();
  const r = await shim.settleBackgroundThreads({ quietMs: 60, maxMs: 5000 });
  const took = Date.now() - t0;
  await w.terminate();
  assert.equal(r.settled, true);
  assert.ok(took >= 350, `returned after ${took} ms while the worker was still spinning`);
  assert.ok(took < 4000, `did not notice the worker had finished (${took} ms)`);
});

test('settleBackgroundThreads gives up after maxMs and says so', async () => {
  const w = spin(3000);
  await new Promise((r) => w.once('online', r));
  const r = await shim.settleBackgroundThreads({ quietMs: 60, maxMs: 400 });
  await w.terminate();
  assert.equal(r.settled, false);
  assert.ok(r.ms >= 400 && r.ms < 2500, `waited ${r.ms} ms`);
});

test('re-seeding twice wraps Node\'s own functions once (a warmed template, then the clone)', async () => {
  const nodeUUID = crypto.randomUUID;
  const settled = await shim.prepareSnapshot({ quietMs: 30, maxMs: 2000 });
  assert.equal(typeof settled.settled, 'boolean');
  assert.ok(['openssl', 'js-only'].includes(settled.reseed), JSON.stringify(settled));
  const first = crypto.randomUUID;
  assert.notEqual(first, nodeUUID, 'the template\'s warm-up re-seeded');
  shim.reseed('00112233445566778899aabbccddeeff');
  assert.notEqual(crypto.randomUUID, first, 'the clone\'s reseed replaced the warm-up\'s functions');
  assert.match(crypto.randomUUID(), /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  // validation still comes from Node's originals
  assert.throws(() => crypto.randomInt(5, 2), { code: 'ERR_OUT_OF_RANGE' });
  assert.throws(() => (crypto.randomUUID as (o: unknown) => string)(5), { code: 'ERR_INVALID_ARG_TYPE' });
  const a = Array.from({ length: 4 }, () => Math.random());
  shim.reseed('ffeeddccbbaa99887766554433221100');
  assert.notDeepEqual(a, Array.from({ length: 4 }, () => Math.random()));
});
