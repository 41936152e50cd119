/**
 * Memory templates for Node agents: CRIU checkpoints of the initialised shim, restored INTO the
 * sandbox the pool gives each invocation (real daemon, real sandboxes, real CRIU).
 * Skipped (with the reason) only when scripts/setup-criu.sh cannot make CRIU work here.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { pathToFileURL } from 'node:url';
import { InvocationDetail, Methods, TraceSpan } from '../../runtime-daemon/protocol/messages';
import { criuPath } from '../../runtime-daemon/template/criu';
import { copyAgent, EXAMPLES, ROOT, processesOfInstance, startDaemon, TestDaemon, waitFor } from './harness';

function criuWorks(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root';
  const check = () => spawnSync(criuPath(), ['check'], { encoding: 'utf8', timeout: 30_000 });
  let c = fs.existsSync(criuPath()) ? check() : undefined;
  if (!c || !/Looks good/.test(`${c.stdout}${c.stderr}`)) {
    const s = spawnSync(path.join(ROOT, 'scripts/setup-criu.sh'), [], { encoding: 'utf8', timeout: 600_000 });
    if (s.status !== 0) return `scripts/setup-criu.sh failed: ${`${s.stdout}${s.stderr}`.trim().split('\n').slice(-3).join(' | ')}`;
    c = check();
    if (!/Looks good/.test(`${c.stdout}${c.stderr}`)) return `criu check fails after scripts/setup-criu.sh: ${`${c.stdout}${c.stderr}`.trim().split('\n').slice(-3).join(' | ')}`;
  }
  return undefined;
}
const skipWhy = criuWorks();
if (skipWhy) console.log(`# template-node: SKIPPED, CRIU does not work here: ${skipWhy}`);
const opts = { skip: skipWhy ? `CRIU unavailable: ${skipWhy}` : false };

let d: TestDaemon;
let llm: { port: number; requests: unknown[]; close(): Promise<void> | void };
const tmpAgents: string[] = [];
const JSON_T = path.join(EXAMPLES, 'node-json-transform');
const event = (a: string) => JSON.parse(fs.readFileSync(path.join(EXAMPLES, a, '.trenv/events/default.json'), 'utf8'));
const detail = (id: string): Promise<InvocationDetail> => d.client.rpc.sendRequest(Methods.getInvocation, { id });
const spanNames = (det: InvocationDetail) => det.trace.map((s: TraceSpan) => s.name);
const build = (agentDir: string) => d.client.rpc.sendRequest(Methods.buildTemplate, { agentDir });
const report: string[] = [];

/** A copy of node-json-transform with an extra handler file. */
function agentWith(name: string, file: string, code: string, limits?: Record<string, number>): string {
  const dir = copyAgent(JSON_T, (m) => {
    m.name = name;
    m.handler = `${file}:handler`;
    if (limits) m.limits = { ...(m.limits as object), ...limits };
  });
  fs.writeFileSync(path.join(dir, file), code);
  fs.chmodSync(path.join(dir, file), 0o644);
  tmpAgents.push(dir);
  return dir;
}

before(async () => {
  if (skipWhy) return;
  d = await startDaemon();
  const mod = await import(pathToFileURL(path.join(ROOT, 'test/fixtures/llm-server.mjs')).href);
  llm = await mod.startLlmServer({ port: 0 });
});
after(async () => {
  if (report.length) console.log(report.map((l) => `# ${l}`).join('\n'));
  await d?.stop();
  await llm?.close();
  for (const a of tmpAgents) fs.rmSync(a, { recursive: true, force: true });
});

test('a Node template is a CRIU checkpoint; an instance restored from it gives the cold result, with restore spans', opts, async () => {
  const t = await build(JSON_T);
  assert.equal(t.kind, 'criu');
  assert.equal(t.live, true);
  const tdir = path.join(d.stateDir, 'templates', 'node-json-transform');
  const meta = JSON.parse(fs.readFileSync(path.join(tdir, 'meta.json'), 'utf8'));
  for (const k of ['agentHash', 'runtimeVersion', 'builtAt', 'buildMs', 'kind']) assert.ok(meta[k] !== undefined, `meta.${k}`);
  assert.ok(fs.existsSync(path.join(tdir, 'images', 'inventory.img')), 'CRIU images under <state>/templates/<name>/images');
  report.push(`build node-json-transform: ${meta.buildMs} ms (shim ready ${meta.criu.readyMs} ms, dump ${meta.criu.dumpMs} ms, images ${(meta.criu.imagesBytes / 1048576).toFixed(1)} MiB)`);

  const cold = await d.invoke({ agentDir: JSON_T, event: event('node-json-transform'), template: false });
  assert.equal(cold.state, 'succeeded', JSON.stringify(cold.error));
  assert.equal(cold.template, undefined);
  const runs = [];
  for (let i = 0; i < 3; i++) runs.push(await d.invoke({ agentDir: JSON_T, event: event('node-json-transform') }));
  for (const warm of runs) {
    assert.equal(warm.state, 'succeeded', JSON.stringify(warm.error));
    assert.equal(warm.template, 'node-json-transform');
    assert.deepEqual(warm.result, cold.result);
    const det = await detail(warm.id);
    const names = spanNames(det);
    for (const n of ['template.pick', 'template.restore', 'template.restore.fifo', 'template.restore.criu', 'template.restore.find', 'handler.start', 'handler.run']) {
      assert.ok(names.includes(n), `${n} in ${names}`);
    }
    assert.ok(!names.includes('process.start') && !names.includes('runtime.load'), `no cold start: ${names}`);
    assert.ok(det.logs.some((l) => /invocation succeeded/.test(l.text)));
    const ms = (n: string) => det.trace.find((s) => s.name === n)!.durationMs.toFixed(1);
    report.push(
      `restore (${warm.start}): template.restore ${ms('template.restore')} ms = fifo ${ms('template.restore.fifo')} + criu ${ms('template.restore.criu')} + find ${ms('template.restore.find')}; handler.start ${ms('handler.start')} ms; invocation ${warm.durationMs} ms (cold ${cold.durationMs} ms)`,
    );
  }
  const cd = await detail(cold.id);
  report.push(`cold trace: ${cd.trace.map((s) => `${s.name} ${s.durationMs.toFixed(1)}`).join(', ')}`);
});

test('restored instances are re-seeded: Math.random(), crypto.randomUUID(), and OpenSSL-internal randomness (EC keys, ECDH, HMAC keys) differ', opts, async () => {
  const dir = agentWith(
    'node-rand',
    'rand.js',
    `'use strict';\nconst crypto = require('node:crypto');\nconst atLoad = Math.random();\n` +
      // fills Node's JS-side randomUUID/randomInt caches and keeps a reference before the checkpoint
      `const early = crypto.randomUUID() + crypto.randomInt(10);\nconst { randomBytes: rb } = crypto;\n` +
      `exports.handler = async (event, ctx) => ({ random: Math.random(), uuid: crypto.randomUUID(), bytes: crypto.randomBytes(8).toString('hex'), atLoad, id: process.env.TRENV_INVOCATION_ID, ctxId: ctx.invocationId,\n` +
      `  ecKey: crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' }).toString('hex'),\n` +
      `  ecdh: crypto.createECDH('prime256v1').generateKeys('hex'), hmacKey: crypto.generateKeySync('hmac', { length: 256 }).export().toString('hex'),\n` +
      `  asyncBytes: await new Promise((ok, no) => crypto.randomBytes(16, (e, b) => (e ? no(e) : ok(b.toString('hex'))))),\n` +
      `  int: crypto.randomInt(2 ** 47), earlyRef: rb(16).toString('hex'), early });\n`,
  );
  await build(dir);
  const [a, b] = await Promise.all([d.invoke({ agentDir: dir, event: {} }), d.invoke({ agentDir: dir, event: {} })]);
  for (const r of [a, b]) {
    assert.equal(r.state, 'succeeded', JSON.stringify(r.error));
    assert.equal(r.template, 'node-rand');
  }
  const ra = a.result as Record<string, unknown>;
  const rb = b.result as Record<string, unknown>;
  for (const k of ['random', 'uuid', 'bytes', 'ecKey', 'ecdh', 'hmacKey', 'asyncBytes', 'int', 'earlyRef']) assert.notEqual(ra[k], rb[k], `${k} differs between clones`);
  assert.equal(ra.atLoad, rb.atLoad, 'values computed before the checkpoint are part of the template');
  assert.equal(ra.early, rb.early);
  assert.equal(ra.id, a.id, 'per-invocation env reaches the handler');
  assert.equal(ra.ctxId, a.id);
});

test('an egress agent works from a template; user env (OPENAI_BASE_URL) reaches the handler', opts, async () => {
  const agentDir = path.join(EXAMPLES, 'node-tool-agent');
  const t = await build(agentDir);
  assert.equal(t.kind, 'criu');
  const env = { OPENAI_BASE_URL: `http://10.0.2.2:${llm.port}/v1` };
  const before = llm.requests.length;
  const r = await d.invoke({ agentDir, event: event('node-tool-agent'), env });
  assert.equal(r.state, 'succeeded', JSON.stringify(r.error));
  assert.equal(r.template, 'node-tool-agent');
  assert.ok(llm.requests.length > before + 1, 'the fake LLM server saw the calls');
  const cold = await d.invoke({ agentDir, event: event('node-tool-agent'), env, template: false });
  assert.equal(cold.state, 'succeeded', JSON.stringify(cold.error));
  assert.deepEqual(r.result, cold.result);
  const dur = async (id: string, n: string) => (await detail(id)).trace.find((s) => s.name === n)?.durationMs.toFixed(1);
  report.push(
    `node-tool-agent: template.restore ${await dur(r.id, 'template.restore')} ms + handler.start ${await dur(r.id, 'handler.start')} ms vs cold process.start ${await dur(cold.id, 'process.start')} + runtime.load ${await dur(cold.id, 'runtime.load')} + handler.start ${await dur(cold.id, 'handler.start')} ms`,
  );
});

test('memory of a restored instance vs a cold one (PSS)', opts, async () => {
  const dir = agentWith('node-mem', 'mem.js', `'use strict';\nrequire('node:zlib');\nexports.handler = async () => { await new Promise((r) => setTimeout(r, 700)); return { ok: true }; };\n`);
  await build(dir);
  const pss = async (template: boolean) => {
    const rs = await Promise.all([1, 2, 3].map(() => d.invoke({ agentDir: dir, event: {}, template })));
    const out = [];
    for (const r of rs) {
      assert.equal(r.state, 'succeeded', JSON.stringify(r.error));
      assert.equal(r.template, template ? 'node-mem' : undefined);
      const m = (await detail(r.id)).memory.filter((s) => s.processes > 0);
      const mid = m[Math.floor(m.length / 2)];
      out.push(mid);
    }
    return out;
  };
  const warm = await pss(true);
  const cold = await pss(false);
  const avg = (xs: Array<{ pssKb: number; rssKb: number }>, k: 'pssKb' | 'rssKb') => (xs.reduce((a, x) => a + x[k], 0) / xs.length / 1024).toFixed(1);
  report.push(`memory, 3 concurrent instances, mid-handler: restored PSS ${avg(warm, 'pssKb')} MiB RSS ${avg(warm, 'rssKb')} MiB; cold PSS ${avg(cold, 'pssKb')} MiB RSS ${avg(cold, 'rssKb')} MiB`);
});

test('stale, missing and corrupt templates: rebuilt, rebuilt, cold fallback in the same invocation', opts, async () => {
  const agent = copyAgent(JSON_T, (m) => (m.name = 'node-stale'));
  tmpAgents.push(agent);
  const tdir = path.join(d.stateDir, 'templates', 'node-stale');
  const t1 = await build(agent);
  // stale: the agent's files changed
  fs.appendFileSync(path.join(agent, 'index.js'), '\n// changed\n');
  const r1 = await d.invoke({ agentDir: agent, event: event('node-json-transform') });
  assert.equal(r1.state, 'succeeded', JSON.stringify(r1.error));
  assert.equal(r1.template, 'node-stale');
  assert.ok((await detail(r1.id)).logs.some((l) => /was rebuilt: the agent's files changed/.test(l.text)));
  const t2 = (await d.client.rpc.sendRequest(Methods.listTemplates)).find((t) => t.name === 'node-stale')!;
  assert.ok(t2.builtAt > t1.builtAt);
  // missing images: rebuilt from the recipe
  fs.rmSync(path.join(tdir, 'images'), { recursive: true, force: true });
  assert.equal((await d.client.rpc.sendRequest(Methods.listTemplates)).find((t) => t.name === 'node-stale')!.live, false);
  const r2 = await d.invoke({ agentDir: agent, event: event('node-json-transform') });
  assert.equal(r2.state, 'succeeded', JSON.stringify(r2.error));
  assert.equal(r2.template, 'node-stale');
  assert.ok((await detail(r2.id)).logs.some((l) => /was rebuilt: its CRIU images are missing/.test(l.text)));
  // corrupt images: the restore fails, the same invocation starts cold and says so
  const img = fs.readdirSync(path.join(tdir, 'images')).find((f) => /^core-\d+\.img$/.test(f))!;
  fs.writeFileSync(path.join(tdir, 'images', img), 'garbage');
  const r3 = await d.invoke({ agentDir: agent, event: event('node-json-transform') });
  assert.equal(r3.state, 'succeeded', JSON.stringify(r3.error));
  assert.equal(r3.template, undefined, 'not from the template');
  assert.deepEqual(r3.result, r1.result);
  const det3 = await detail(r3.id);
  const rs = det3.trace.find((s) => s.name === 'template.restore')!;
  assert.equal(rs.attrs?.result, 'failed');
  assert.ok(String(rs.attrs?.error ?? '').length > 0);
  assert.ok(spanNames(det3).includes('process.start') && spanNames(det3).includes('runtime.load'), `cold start spans: ${spanNames(det3)}`);
  assert.ok(det3.logs.some((l) => /restoring template node-stale failed .*starting the runtime cold/.test(l.text)));
  // the next invoke rebuilds it
  const r4 = await d.invoke({ agentDir: agent, event: event('node-json-transform') });
  assert.equal(r4.template, 'node-stale');
  assert.ok((await detail(r4.id)).logs.some((l) => /was rebuilt: the last restore from it failed/.test(l.text)));
  // delete: nothing left, cold starts
  assert.equal((await d.client.rpc.sendRequest(Methods.deleteTemplate, { name: 'node-stale' })).deleted, true);
  assert.ok(!fs.existsSync(tdir));
  const r5 = await d.invoke({ agentDir: agent, event: event('node-json-transform') });
  assert.equal(r5.state, 'succeeded');
  assert.equal(r5.template, undefined);
});

test('time limit, kill and OOM of a restored handler', opts, async () => {
  const dir = agentWith(
    'node-limits',
    'slow.js',
    `'use strict';\nexports.handler = async (e) => { if (e.mb) { const a = []; for (let i = 0; i < e.mb; i++) a.push(Buffer.alloc(1 << 20, i)); return a.length; } await new Promise((r) => setTimeout(r, e.ms)); return 'late'; };\n`,
    // a limit that a loaded machine cannot hit by accident while the kill or the OOM is under way
    { timeoutMs: 4000, memoryMb: 96 },
  );
  await build(dir);
  const t = await d.invoke({ agentDir: dir, event: { ms: 20_000 } });
  assert.equal(t.state, 'timeout', JSON.stringify(t));
  assert.equal(t.template, 'node-limits');
  assert.ok(t.durationMs! < 12_000, `ended at the limit, not at the handler's 20 s: ${t.durationMs} ms`);
  // trenv/kill (the handler would sleep past the limit; only the kill ends it as 'killed')
  const p = d.invoke({ agentDir: dir, event: { ms: 20_000 } });
  let id: string | undefined;
  for (let i = 0; i < 200 && !id; i++) {
    const l = await d.client.rpc.sendRequest(Methods.listInvocations, { limit: 5 });
    id = l.find((x) => x.agent === 'node-limits' && x.state === 'running')?.id;
    if (!id) await new Promise((r) => setTimeout(r, 10));
  }
  assert.ok(id, 'the invocation runs');
  assert.equal((await d.client.rpc.sendRequest(Methods.kill, { id })).killed, true);
  const k = await p;
  assert.equal(k.state, 'killed', JSON.stringify(k));
  // OOM: the restored process is in the sandbox's memory cgroup
  const o = await d.invoke({ agentDir: dir, event: { mb: 400 } });
  assert.equal(o.state, 'oom', JSON.stringify(o));
  assert.equal(o.template, 'node-limits');
});

test('out of disk: a template build that cannot fit fails with a clear error, leaves nothing behind, and the agent still runs cold', opts, async () => {
  const dir = agentWith('node-disk', 'disk.js', `'use strict';\nexports.handler = async () => ({ ok: 1 });\n`);
  // the template's own dir on a 4 MiB file system: the images of a node process need ~40 MiB
  const tdir = path.join(d.stateDir, 'templates', 'node-disk');
  fs.mkdirSync(tdir, { recursive: true, mode: 0o700 });
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m,mode=0700', 'trenv-test-full', tdir]);
  try {
    await assert.rejects(build(dir), (e: Error) => {
      assert.match(e.message, /not enough disk space for the CRIU images of node-disk: about \d+ MiB needed, \d+ MiB free/);
      return true;
    });
    assert.deepEqual(fs.readdirSync(tdir), [], 'no half-written images or meta left behind');
    const r = await d.invoke({ agentDir: dir, event: {} });
    assert.equal(r.state, 'succeeded', JSON.stringify(r.error));
    assert.equal(r.template, undefined, 'started cold');
    assert.deepEqual(r.result, { ok: 1 });
  } finally {
    execFileSync('umount', [tdir]);
  }
  const t = await build(dir);
  assert.equal(t.kind, 'criu', 'with space back, the build works');
  const r = await d.invoke({ agentDir: dir, event: {} });
  assert.equal(r.template, 'node-disk');
});

const ksmOpts = { skip: opts.skip || (fs.existsSync('/sys/kernel/mm/ksm/run') ? false : 'this kernel has no KSM') };
test('TRENV_KSM=1: restored instances are mergeable and ksmd merges their equal pages; the daemon puts ksmd back when it stops', ksmOpts, async () => {
  const ksm = '/sys/kernel/mm/ksm';
  const runBefore = fs.readFileSync(`${ksm}/run`, 'utf8').trim();
  const pagesBefore = fs.readFileSync(`${ksm}/pages_to_scan`, 'utf8').trim();
  const dir = agentWith('node-ksm', 'ksm.js', `'use strict';\nrequire('node:zlib');\nexports.handler = async (e) => { await new Promise((r) => setTimeout(r, e.ms)); return { ok: true }; };\n`);
  process.env.TRENV_KSM = '1';
  process.env.TRENV_KSM_PAGES_TO_SCAN = '2000';
  const k = await startDaemon();
  delete process.env.TRENV_KSM;
  delete process.env.TRENV_KSM_PAGES_TO_SCAN;
  try {
    assert.equal(fs.readFileSync(`${ksm}/run`, 'utf8').trim(), '1', 'ksmd runs');
    await k.client.rpc.sendRequest(Methods.buildTemplate, { agentDir: dir });
    const runs = [1, 2, 3].map(() => k.invoke({ agentDir: dir, event: { ms: 20_000 } }));
    // the restored processes (their pid is in the template.restore span)
    const pids: number[] = [];
    for (let i = 0; i < 150 && pids.length < 3; i++) {
      await new Promise((r) => setTimeout(r, 100));
      pids.length = 0;
      for (const r of await k.client.rpc.sendRequest(Methods.listInvocations, { limit: 3 })) {
        const det: InvocationDetail = await k.client.rpc.sendRequest(Methods.getInvocation, { id: r.id });
        const s = det.trace.find((x) => x.name === 'template.restore');
        if (s?.attrs?.pid) pids.push(Number(s.attrs.pid));
        if (s) assert.match(String(s.attrs?.memory), /mergeable for KSM/);
      }
    }
    assert.equal(pids.length, 3, 'three restored instances');
    const stat = (pid: number) => fs.readFileSync(`/proc/${pid}/ksm_stat`, 'utf8');
    for (const pid of pids) assert.match(stat(pid), /ksm_merge_any: yes/, `instance ${pid} is mergeable`);
    await waitFor(() => pids.every((pid) => Number(/ksm_merging_pages (\d+)/.exec(stat(pid))?.[1] ?? 0) > 100), 15_000, 'ksmd merged pages of every instance');
    for (const l of await k.client.rpc.sendRequest(Methods.listInvocations, { limit: 3 })) await k.client.rpc.sendRequest(Methods.kill, { id: l.id });
    for (const r of await Promise.all(runs)) assert.equal(r.state, 'killed');
    // merged pages are copy-on-write: the template still gives the cold result
    const r = await k.invoke({ agentDir: dir, event: { ms: 1 } });
    assert.equal(r.state, 'succeeded', JSON.stringify(r.error));
    assert.equal(r.template, 'node-ksm');
    await k.client.rpc.sendRequest(Methods.deleteTemplate, { name: 'node-ksm' });
  } finally {
    await k.stop();
  }
  assert.equal(fs.readFileSync(`${ksm}/run`, 'utf8').trim(), runBefore, 'ksmd is back as it was');
  assert.equal(fs.readFileSync(`${ksm}/pages_to_scan`, 'utf8').trim(), pagesBefore);
});

test('templates survive a daemon restart (nothing to restart: the images are the template)', opts, async () => {
  await d.stop();
  d = await startDaemon(d.stateDir);
  const list = await d.client.rpc.sendRequest(Methods.listTemplates);
  assert.ok(list.some((t) => t.name === 'node-json-transform' && t.kind === 'criu' && t.live));
  const r = await d.invoke({ agentDir: JSON_T, event: event('node-json-transform') });
  assert.equal(r.state, 'succeeded', JSON.stringify(r.error));
  assert.equal(r.template, 'node-json-transform');
  assert.ok(!(await detail(r.id)).logs.some((l) => /was rebuilt/.test(l.text)), 'used as it is');
});

test('no leftovers: only sandbox inits in the cgroups, no images of deleted templates', opts, async () => {
  for (const n of ['node-rand', 'node-mem', 'node-limits', 'node-tool-agent', 'node-disk']) {
    assert.equal((await d.client.rpc.sendRequest(Methods.deleteTemplate, { name: n })).deleted, true, n);
  }
  const names = fs.readdirSync(path.join(d.stateDir, 'templates'));
  assert.deepEqual(names.sort(), ['node-json-transform'].sort(), `templates dir: ${names}`);
  assert.deepEqual(
    fs.readdirSync(path.join(d.stateDir, 'templates', 'node-json-transform')).filter((f) => f.startsWith('images.')),
    [],
    'no half-built image dirs',
  );
  const instance = d.paths.instanceId;
  await new Promise((r) => setTimeout(r, 300)); // sandbox cleanup runs after the record ends
  const inits = new Set((await d.client.rpc.sendRequest(Methods.listSandboxes)).map((s) => s.hostPid));
  await waitFor(() => processesOfInstance(instance).every((p) => inits.has(p)), 5000, 'only sandbox inits in the cgroups');
  await d.stop();
  await waitFor(() => processesOfInstance(instance).length === 0, 5000, 'no processes after stop');
});
