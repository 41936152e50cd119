'use strict';
/**
 * One Node agent instance in the mm_template guest tests and bench (kernel-modules/test).
 * Loads the agent through trenv's Node shim, then:
 *  - MMT_STATE=large: also builds a large initialised state before the snapshot, standing in for an
 *    agent that loads an in-memory index at init (150,000 document records + a 32 MiB Float32
 *    embedding table, ~150 MB of heap and array buffers); the handler's result then includes a
 *    digest of that state (must be the same in every instance);
 *  - MMT_TEMPLATE=1: stops itself (SIGSTOP) once initialised; the driver builds the template and
 *    CRIU checkpoints it here, and every clone continues from that line;
 *  - then reads its request /tmp/req/<name>.json (name = MMT_NAME, or the UTS hostname a clone was
 *    restored into), re-seeds (Math.random, crypto) with the request's seed, runs the handler,
 *    writes /tmp/res/<name>.json and stops itself again (so the driver can measure its memory).
 */
const fs = require('node:fs');
const os = require('node:os');
const shim = require('/opt/trenv/runtimes-node/trenv-shim.js');

async function main() {
  const handler = await shim.load('index.js:handler', '/app/agent');
  if (process.env.MMT_STATE === 'large') {
    const docs = [];
    for (let i = 0; i < 150000; i++) docs.push({ id: i, title: `document number ${i}`, terms: [`alpha${i % 97}`, `beta${i % 31}`, `gamma${i}`] });
    const emb = new Float32Array(8 << 20);
    for (let i = 0; i < emb.length; i++) emb[i] = ((i * 2654435761) % 1000) / 1000;
    global.trenvState = { docs, emb };
  }
  if (process.env.MMT_TEMPLATE === '1') {
    await shim.prepareSnapshot(); // as the shim does before a checkpoint (warms re-seeding, full GC, waits for the GC's sweeping)
    fs.writeFileSync('/tmp/tmpl-ready', String(process.pid));
    process.kill(process.pid, 'SIGSTOP');
  }
  const resumedAt = Date.now(); // a restored clone continues here
  const name = process.env.MMT_NAME || os.hostname();
  const req = JSON.parse(fs.readFileSync(`/tmp/req/${name}.json`, 'utf8'));
  const readAt = Date.now();
  if (req.seed) shim.reseed(req.seed);
  // wall clock: CRIU restores clones into a time namespace that continues the template's CLOCK_MONOTONIC
  const handlerStartMs = Date.now();
  const chan = { send() {} };
  const value = await handler(req.event, shim.makeContext({ invocationId: name, deadlineMs: null, agent: 'bench' }, chan));
  const crypto = require('node:crypto');
  if (global.trenvState) {
    const { docs, emb } = global.trenvState;
    const h = require('node:crypto').createHash('sha256');
    for (let i = 0; i < docs.length; i += 997) h.update(`${docs[i].id}:${docs[i].title}:${docs[i].terms.join(',')}`);
    for (let i = 0; i < emb.length; i += 4099) h.update(String(emb[i]));
    value.stateDigest = h.digest('hex');
  }
  const templateMaps = fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('/run/mm_template/')).length;
  const res = { name, pid: process.pid, resumedAt, readAt, handlerStartMs, value, random: Math.random(), uuid: crypto.randomUUID(), templateMaps };
  if (req.stress) {
    // garbage and full GCs: V8 frees and discards heap pages (MADV_FREE fails on template maps,
    // V8 falls back to MADV_DONTNEED, after which a page reads template bytes, not zeros);
    // then the handler again must give the same result
    let keep = [];
    for (let i = 0; i < 400; i++) { keep.push(new Array(4096).fill(i)); if (keep.length > 50) keep = []; }
    keep = null;
    global.gc(); global.gc();
    res.value2 = await handler(req.event, shim.makeContext({ invocationId: name, deadlineMs: null, agent: 'bench' }, chan));
  }
  fs.writeFileSync(`/tmp/res/${name}.json.tmp`, JSON.stringify(res));
  fs.renameSync(`/tmp/res/${name}.json.tmp`, `/tmp/res/${name}.json`);
  process.kill(process.pid, 'SIGSTOP');
}
main().catch((err) => { console.error(err); process.exit(1); });
