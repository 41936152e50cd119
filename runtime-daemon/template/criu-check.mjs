#!/usr/bin/env node
// Runnable check of CRIU templates (runtime-daemon/template/criu.ts). As root, after
// `scripts/setup-criu.sh`, `make -C runtime-daemon/native` and `npx tsc -p .`:
//   node runtime-daemon/template/criu-check.mjs [--n 5] [--keep]
// For a Node agent (examples/node-json-transform) and a Python agent (examples/py-text-stats):
// builds a template (runtime loaded, waiting for its event, in a trenv-sandboxd sandbox), dumps it,
// restores it N times into fresh sandboxes (Use A) and twice into one used+reset sandbox (Use B),
// checks every result equals a cold run's, prints restore time P50/max and per-instance PSS/RSS
// against N cold processes at the same point; then checks that restored clones get different
// random values (Node: with the shim's re-seed; Python: reported as observed).
// Exits non-zero on a failed check. Cleans up every sandbox, cgroup and temp dir it made.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../..');
const out = path.join(repo, 'out/runtime-daemon');
const criu = await import(path.join(out, 'template/criu.js'));
const { Sandboxd } = await import(path.join(out, 'sandbox/sandboxd.js'));
const { ensureBaseRootfs, baseBinds, SANDBOX_UID, SANDBOX_GID } = await import(path.join(out, 'sandbox/rootfs.js'));

const argv = process.argv.slice(2);
const N = Number(argv[argv.indexOf('--n') + 1]) || 5;
const KEEP = argv.includes('--keep');
let failures = 0;
const check = (cond, what, extra = '') => {
  console.log(`  ${cond ? 'ok  ' : 'FAIL'} ${what}${!cond && extra ? `\n       ${extra}` : ''}`);
  if (!cond) failures++;
};
const pct = (xs, p) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor((p / 100) * xs.length))];
const f1 = (x) => x.toFixed(1);
const mb = (kb) => (kb / 1024).toFixed(1);
const canon = (v) => JSON.stringify(v, (k, x) => (x && typeof x === 'object' && !Array.isArray(x) ? Object.fromEntries(Object.entries(x).sort()) : x));

if (process.getuid() !== 0) {
  console.error('criu-check: run as root');
  process.exit(2);
}
const avail = await criu.criuAvailable();
console.log(`criu: ${criu.criuPath()} ${avail.ok ? `ok (${avail.version})` : `NOT available: ${avail.reason}`}`);
if (!avail.ok) process.exit(2);

// ---------------------------------------------------------------- environment
const work = fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-criu-check-'));
const rootfs = path.join(work, 'rootfs');
const mnt = path.join(work, 'mnt');
fs.mkdirSync(mnt, { mode: 0o700 });
ensureBaseRootfs(rootfs);
const binds = baseBinds(path.join(repo, 'runtime-daemon/runtimes'));
const sd = new Sandboxd(path.join(repo, 'runtime-daemon/native/build/trenv-sandboxd'), path.join(work, 'sandboxd.log'));
sd.start();
const cgBase = `trenv/criu-check-${process.pid}`;
const CG = ['memory', 'pids'].map((c) => path.join('/sys/fs/cgroup', c, cgBase));
const live = new Map(); // id -> { initPid, cgroupProcs, dirs }
let seq = 0;

async function mkSandbox(app, memMb = 256) {
  const id = `cc${++seq}`;
  const dirs = CG.map((d) => path.join(d, id));
  for (const d of dirs) fs.mkdirSync(d, { recursive: true });
  fs.writeFileSync(path.join(dirs[0], 'memory.limit_in_bytes'), String(memMb << 20));
  fs.writeFileSync(path.join(dirs[1], 'pids.max'), '256');
  const cgroupProcs = dirs.map((d) => path.join(d, 'cgroup.procs'));
  const r = await sd.create(id, { hostname: id, lower: rootfs, mnt, rwBytes: 64 << 20, rbinds: binds, app, cgroupProcs, net: 'none' });
  const sb = { id, initPid: r.initPid, cgroupProcs, dirs };
  live.set(id, sb);
  return sb;
}
async function rmSandbox(sb) {
  if (!live.has(sb.id)) return;
  live.delete(sb.id);
  await sd.destroy(sb.id).catch(() => undefined);
  for (const d of sb.dirs) {
    for (let i = 0; i < 50; i++) {
      try {
        fs.rmdirSync(d);
        break;
      } catch {
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }
}
async function cleanup() {
  for (const sb of [...live.values()]) await rmSandbox(sb);
  await sd.stop().catch(() => undefined);
  for (const d of CG) {
    try {
      fs.rmdirSync(d);
    } catch {}
  }
  if (!KEEP) fs.rmSync(work, { recursive: true, force: true });
  else console.log(`kept ${work}`);
}

// a cold run through sandboxd (the normal path): fresh sandbox, `run`, event on stdin
function coldRun(sb, argvIn, env, event) {
  return new Promise((resolve, reject) => {
    let chan = '';
    const t0 = process.hrtime.bigint();
    sd.run(sb.id, `r${++seq}`, { argv: argvIn, env: Object.entries(env).map(([k, v]) => `${k}=${v}`), cwd: '/app', uid: SANDBOX_UID, gid: SANDBOX_GID, stdin: Buffer.from(JSON.stringify(event)) }, {
      onStarted() {},
      onData(stream, _ns, d) {
        if (stream === 'chan') chan += d;
      },
      onExit(status) {
        const msgs = chan.split('\n').filter(Boolean).map((l) => JSON.parse(l));
        resolve({ status, msgs, fin: msgs.find((m) => m.t === 'result' || m.t === 'error'), ms: Number(process.hrtime.bigint() - t0) / 1e6 });
      },
      onError: (m) => reject(new Error(m)),
    });
  });
}

const RUNTIMES = {
  node: { argv: ['/usr/bin/node', '/opt/trenv/runtimes/node/trenv-shim.js'], envelope: true },
  python: { argv: ['/usr/bin/python3', '-B', '/opt/trenv/runtimes/python/trenv_shim.py'], envelope: false },
};
const baseEnv = (handler, agent) => ({ PATH: '/usr/bin:/bin', LANG: 'C.UTF-8', HOME: '/home/agent', TRENV_HANDLER: handler, TRENV_AGENT: agent, TRENV_INVOCATION_ID: 'template' });

async function buildTemplate(name, rt, app, handler, imagesDir) {
  const sb = await mkSandbox(app);
  try {
    const t = await criu.launchForCheckpoint(sb, { argv: RUNTIMES[rt].argv, env: baseEnv(handler, name), cwd: '/app', uid: SANDBOX_UID, gid: SANDBOX_GID, envelope: RUNTIMES[rt].envelope });
    const d = await criu.dump(t.hostPid, imagesDir, { target: sb, envelope: RUNTIMES[rt].envelope, runtime: rt });
    t.close();
    return { readyMs: t.readyMs, ...d };
  } finally {
    await rmSandbox(sb);
  }
}

// ---------------------------------------------------------------- one agent
async function checkAgent(name, rt, handler) {
  const app = path.join(repo, 'examples', name);
  const event = JSON.parse(fs.readFileSync(path.join(app, '.trenv/events/default.json'), 'utf8'));
  console.log(`\n== ${name} (${rt})`);

  // cold reference result
  const sb0 = await mkSandbox(app);
  const cold = await coldRun(sb0, RUNTIMES[rt].argv, baseEnv(handler, name), event);
  await rmSandbox(sb0);
  check(cold.fin?.t === 'result', `cold run gives a result (${f1(cold.ms)} ms, ${cold.status})`, JSON.stringify(cold.fin));
  const want = canon(cold.fin?.value);

  // cold processes at the template point (loaded, waiting), N alive at once, for memory
  const colds = [];
  for (let i = 0; i < N; i++) {
    const sb = await mkSandbox(app);
    const t = await criu.launchForCheckpoint(sb, { argv: RUNTIMES[rt].argv, env: baseEnv(handler, name), cwd: '/app', uid: SANDBOX_UID, gid: SANDBOX_GID });
    colds.push({ sb, t });
  }
  const coldMem = colds.map((c) => criu.memoryOf(c.t.hostPid));
  const coldReady = colds.map((c) => c.t.readyMs);
  for (const c of colds) {
    c.t.close();
    await rmSandbox(c.sb);
  }

  // template
  const images = path.join(work, `img-${name}`);
  const tpl = await buildTemplate(name, rt, app, handler, images);
  console.log(`  template: ready ${f1(tpl.readyMs)} ms, dump ${f1(tpl.ms)} ms, images ${mb(tpl.bytes / 1024)} MiB, pid ${tpl.meta.nsPid}`);

  // Use A: N fresh sandboxes, all restored and alive at once, then invoked
  const factory = { create: () => mkSandbox(app), destroy: rmSandbox };
  const inst = [];
  for (let i = 0; i < N; i++) inst.push(await criu.restoreFresh(images, factory));
  const mem = inst.map((r) => r.instance.memory());
  // in the sandbox's namespaces, root and cgroups?
  const r0 = inst[0];
  const nsSame = ['mnt', 'net', 'uts', 'ipc', 'pid'].every((n) => fs.readlinkSync(`/proc/${r0.instance.hostPid}/ns/${n}`) === fs.readlinkSync(`/proc/${r0.sandbox.initPid}/ns/${n}`));
  check(nsSame, 'restored process is in its sandbox mnt/net/uts/ipc/pid namespaces');
  const cg = fs.readFileSync(`/proc/${r0.instance.hostPid}/cgroup`, 'utf8');
  check(cg.includes(`memory:/${cgBase}/${r0.sandbox.id}`) && cg.includes(`pids:/${cgBase}/${r0.sandbox.id}`), "restored process is in its sandbox's memory and pids cgroups", cg);
  check(fs.readlinkSync(`/proc/${r0.instance.hostPid}/root`) === '/root', "restored process sees the sandbox's root");
  const st = fs.readFileSync(`/proc/${r0.instance.hostPid}/status`, 'utf8');
  check(/Uid:\s+10001\s/.test(st) && /CapEff:\s+0+\n/.test(st) && /NoNewPrivs:\s+1/.test(st), 'restored process keeps uid 10001, no capabilities, no_new_privs');
  const results = await Promise.all(inst.map((r) => r.instance.invoke(event, { env: { TRENV_INVOCATION_ID: `inv-${r.sandbox.id}` } })));
  results.forEach((res, i) => check(res.ok && canon(res.value) === want, `Use A restore #${i + 1}: result equals the cold run's`, JSON.stringify(res.error ?? res.value).slice(0, 300)));
  const restoreMs = inst.map((r) => r.instance.restoreMs);
  const totalMs = inst.map((r) => r.totalMs);
  const createMs = inst.map((r) => r.createMs);
  for (const r of inst) await rmSandbox(r.sandbox);

  console.log(`  Use A restore (fifos + criu restore + find pid), ms: P50 ${f1(pct(restoreMs, 50))} max ${f1(Math.max(...restoreMs))}` +
    `   [+ fresh sandbox ${f1(pct(createMs, 50))}; total P50 ${f1(pct(totalMs, 50))} max ${f1(Math.max(...totalMs))}]` +
    `   criu span P50 ${f1(pct(inst.map((r) => r.instance.spans.criu), 50))}`);
  console.log(`  invoke after restore, ms: P50 ${f1(pct(results.map((r) => r.ms), 50))}   cold start to ready, ms: P50 ${f1(pct(coldReady, 50))}`);
  const avg = (xs, k) => xs.reduce((s, x) => s + x[k], 0) / xs.length;
  console.log(`  memory per instance at the template point (${N} alive): restored RSS ${mb(avg(mem, 'rssKb'))} MiB PSS ${mb(avg(mem, 'pssKb'))} MiB (anon ${mb(avg(mem, 'pssAnonKb'))})` +
    `   cold RSS ${mb(avg(coldMem, 'rssKb'))} MiB PSS ${mb(avg(coldMem, 'pssKb'))} MiB (anon ${mb(avg(coldMem, 'pssAnonKb'))})`);

  // Use B: an existing sandbox that already ran something and was reset; restore twice into it
  const sbB = await mkSandbox(app);
  const pre = await coldRun(sbB, RUNTIMES[rt].argv, baseEnv(handler, name), event);
  await sd.reset(sbB.id);
  const bTimes = [];
  for (let k = 0; k < 2; k++) {
    const ib = await criu.restoreInto(images, sbB);
    bTimes.push(ib.restoreMs);
    const ok = ['mnt', 'net', 'uts', 'ipc', 'pid'].every((n) => fs.readlinkSync(`/proc/${ib.hostPid}/ns/${n}`) === fs.readlinkSync(`/proc/${sbB.initPid}/ns/${n}`));
    const res = await ib.invoke(event);
    check(pre.fin?.t === 'result' && ok && res.ok && canon(res.value) === want, `Use B restore #${k + 1} into a used+reset sandbox: same namespaces, result equals the cold run's`);
    ib.kill();
  }
  console.log(`  Use B restore ms: ${bTimes.map(f1).join(', ')}`);
  await rmSandbox(sbB);
  return { restoreMs, mem, coldMem };
}

// ---------------------------------------------------------------- randomness of clones
const RAND = {
  node: ['index.js:handler', 'index.js', `const crypto = require('node:crypto');
const atLoad = { math: Math.random(), uuid: crypto.randomUUID() }; // touches V8's and Node's caches before the checkpoint
exports.handler = async () => ({ math: Math.random(), uuid: crypto.randomUUID(), webUuid: globalThis.crypto.randomUUID(),
  bytes: crypto.randomBytes(8).toString('hex'), nocache: crypto.randomUUID({ disableEntropyCache: true }), atLoad,
  x25519: crypto.generateKeyPairSync('x25519').publicKey.export({ type: 'spki', format: 'der' }).toString('hex') }); // OpenSSL-internal RNG
`],
  python: ['main.py:handler', 'main.py', `import os, random, uuid, secrets
AT_LOAD = random.random()
RNG = random.Random()  # made before the checkpoint
def handler(event, context):
    return {"random": random.random(), "own_rng": RNG.random(), "uuid4": str(uuid.uuid4()),
            "urandom": os.urandom(8).hex(), "secrets": secrets.token_hex(8), "at_load": AT_LOAD}
`],
};

async function checkRandom(rt) {
  const [handler, file, code] = RAND[rt];
  const app = path.join(work, `rand-${rt}`);
  fs.mkdirSync(app, { recursive: true });
  fs.writeFileSync(path.join(app, file), code);
  fs.chmodSync(app, 0o755);
  const images = path.join(work, `img-rand-${rt}`);
  await buildTemplate(`rand-${rt}`, rt, app, handler, images);
  const factory = { create: () => mkSandbox(app), destroy: rmSandbox };
  const runTwo = async (opts) => {
    const vals = [];
    for (let i = 0; i < 2; i++) {
      const r = await criu.restoreFresh(images, factory);
      const res = await r.instance.invoke({}, opts);
      vals.push(res);
      await rmSandbox(r.sandbox);
    }
    return vals;
  };
  console.log(`\n== randomness of restored clones (${rt})`);
  if (rt === 'node') {
    const [a, b] = await runTwo({ reseed: false });
    const same = (k) => canon(a.value?.[k]) === canon(b.value?.[k]);
    console.log(`  without re-seed: equal across 2 clones: ${['math', 'uuid', 'webUuid', 'bytes', 'nocache', 'x25519'].map((k) => `${k}=${same(k)}`).join(' ')}`);
    const [c, d] = await runTwo({});
    const log = c.messages.find((m) => m.t === 'log' && m.msg === 'trenv: re-seeded');
    console.log(`  re-seed step: ${JSON.stringify(log?.fields)}`);
    for (const k of ['math', 'uuid', 'webUuid', 'bytes', 'nocache']) check(c.ok && d.ok && canon(c.value[k]) !== canon(d.value[k]), `with re-seed, two clones differ in ${k}`, `${c.value?.[k]} vs ${d.value?.[k]}`);
    check(canon(c.value.atLoad) === canon(d.value.atLoad), 'values computed before the checkpoint stay the same (expected: part of the template)');
    console.log(`  NOT fixed by the shim: OpenSSL-internal randomness (x25519 key generation) equal across re-seeded clones: ${c.value.x25519 === d.value.x25519}`);
  } else {
    const [a, b] = await runTwo({});
    check(a.ok && b.ok, 'python clones give results', JSON.stringify(a.error ?? b.error));
    const same = Object.keys(a.value ?? {}).map((k) => `${k}=${canon(a.value[k]) === canon(b.value[k]) ? 'SAME' : 'differs'}`);
    console.log(`  observed across 2 clones (the Python shim does not re-seed yet): ${same.join(' ')}`);
  }
}

// ---------------------------------------------------------------- main
let code = 0;
try {
  await checkAgent('node-json-transform', 'node', 'index.js:handler');
  await checkAgent('py-text-stats', 'python', 'main.py:handler');
  await checkRandom('node');
  await checkRandom('python');
} catch (e) {
  console.error(`criu-check: ${e.stack ?? e}`);
  code = 1;
} finally {
  await cleanup();
}
console.log(failures || code ? `\nFAILED: ${failures} check(s) failed${code ? ', and the run stopped on an error' : ''}` : '\nall checks passed');
process.exit(failures || code ? 1 : 0);
