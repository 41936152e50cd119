#!/usr/bin/env node
// Smoke test for Python memory templates via the fork zygote (runtimes/python/trenv_zygote.py) and
// sandboxd's `spawn` command (PROTOCOL.md). Run as root after `make -C runtime-daemon/native`:
//   node runtime-daemon/native/test-zygote.mjs [path/to/trenv-sandboxd]
// Exits non-zero on any failed check; prints memory and latency numbers. Creates cgroups under
// /sys/fs/cgroup/{memory,pids}/trenv-zygote-smoke and removes them; ends only processes it started.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { check, failureCount, fail, Daemon, ms, spans, nsMembers, alive, childrenOf, sleep, makeLower } from './test-helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const BIN = process.argv[2] || path.join(here, 'build', 'trenv-sandboxd');
const RUNTIMES = path.resolve(here, '../runtimes');
const ZYGOTE = path.join(RUNTIMES, 'python/trenv_zygote.py');
const PY = '/usr/bin/python3';
const PRELOAD = 'json,decimal,email.parser,http.client,asyncio,sqlite3';
const UID = 200001;
const N_MEM = 8;

// ---------- fixtures ----------
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-zyg-'));
const lower = path.join(tmp, 'lower');
makeLower(lower, UID);
const mnt = path.join(tmp, 'mnt');
fs.mkdirSync(mnt);
const app = path.join(tmp, 'agent');
fs.mkdirSync(app);
fs.writeFileSync(path.join(app, 'main.py'), `
import json, decimal, email.parser, http.client, asyncio, sqlite3
import os, random, socket, subprocess, time, uuid

def handler(event, context):
    tag = event.get("tag", "x")
    with open(f"/tmp/mark-{tag}", "w") as f:
        f.write(tag)
    print("hello from", tag)
    if event.get("bg"):
        subprocess.Popen(["/usr/bin/sleep", "1000"], start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if event.get("sleep"):
        time.sleep(event["sleep"])
    return {
        "pid": os.getpid(), "ppid": os.getppid(), "host": socket.gethostname(),
        "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
        "random": random.random(), "uuid": str(uuid.uuid4()), "urandom": os.urandom(16).hex(),
        "procs": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "tmp": sorted(os.listdir("/tmp")), "cwd": os.getcwd(), "root": sorted(os.listdir("/")),
        "status": [l.split()[1] for l in open("/proc/self/status") if l.startswith(("CapEff", "NoNewPrivs"))],
        "fds": sorted(int(f) for f in os.listdir("/proc/self/fd")),
        "env": dict(os.environ), "argv": __import__("sys").argv,
        "environ_raw": open("/proc/self/environ", "rb").read().decode("latin-1"),
    }
`);

// A second app for the swap-after-prepare check.
const app2 = path.join(tmp, 'agent2');
fs.mkdirSync(app2);
fs.writeFileSync(path.join(app2, 'main.py'), `
import os
def handler(event, context):
    return {"app": 2, "files": sorted(os.listdir("/app")), "tmp": sorted(os.listdir("/tmp"))}
`);

const CG = ['/sys/fs/cgroup/memory/trenv-zygote-smoke/x', '/sys/fs/cgroup/pids/trenv-zygote-smoke/x'];
for (const c of CG) fs.mkdirSync(c, { recursive: true });
fs.writeFileSync(`${CG[0]}/memory.limit_in_bytes`, String(2 * 1024 ** 3));
fs.writeFileSync(`${CG[1]}/pids.max`, '512');

const createOpts = (host) => [
  `lower=${lower}`, `mnt=${mnt}`, `rwsize=${64 << 20}`, 'rbind=/usr:/usr', `rbind=${RUNTIMES}:/opt/trenv`, `app=${app}`,
  `cgroup=${CG[0]}/cgroup.procs`, `cgroup=${CG[1]}/cgroup.procs`, `hostname=${host}`,
];
const ENV = (inv) => [
  'PATH=/usr/bin:/bin', 'HOME=/home', 'LANG=C.UTF-8', 'TRENV_HANDLER=main.py:handler',
  `TRENV_INVOCATION_ID=${inv}`, `TRENV_DEADLINE_MS=${Date.now() + 60000}`, 'TRENV_AGENT=zyg',
];
const sock = path.join(tmp, 'zygote.sock');
const spawnArgs = (inv, event, extra = {}) => [
  `zygote=${extra.zygote ?? sock}`, ...ENV(inv).map((e) => `env=${e}`), 'cwd=/app',
  `uid=${extra.uid ?? UID}`, `gid=${extra.gid ?? UID}`, Buffer.from(`stdin=${JSON.stringify(event)}`),
];
const runArgs = (inv, event) => [
  `arg=${PY}`, 'arg=/opt/trenv/python/trenv_shim.py', ...ENV(inv).map((e) => `env=${e}`), 'cwd=/app',
  `uid=${UID}`, `gid=${UID}`, Buffer.from(`stdin=${JSON.stringify(event)}`),
];
const chanMsgs = (r) => r.chan.split('\n').filter(Boolean).map((l) => JSON.parse(l));
const resultOf = (r) => chanMsgs(r).find((m) => m.t === 'result')?.value;

function smaps(pid) {
  const out = {};
  for (const l of fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8').split('\n')) {
    const m = l.match(/^(\w+):\s+(\d+) kB/);
    if (m) out[m[1]] = Number(m[2]);
  }
  out.Private = (out.Private_Clean || 0) + (out.Private_Dirty || 0);
  return out;
}
const ppidOf = (pid) => Number(fs.readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /, '').split(' ')[1]);
const mib = (kb) => (kb / 1024).toFixed(1);
const median = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];

function startZygote(sockPath, preload = PRELOAD) {
  const p = spawn(PY, ['-I', '-S', '-B', ZYGOTE, '--socket', sockPath, '--preload', preload], {
    stdio: ['pipe', 'pipe', 'inherit'],
    env: { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8', TRENV_TEST_SECRET: 'daemon-secret-must-not-leak' },
  });
  const exited = new Promise((res) => p.on('exit', (code, sig) => res({ code, sig })));
  const ready = new Promise((res, rej) => {
    let buf = '';
    p.stdout.on('data', (d) => {
      buf += d;
      const i = buf.indexOf('\n');
      if (i >= 0) res(buf.slice(0, i));
    });
    exited.then((e) => rej(new Error(`zygote exited before ready: ${JSON.stringify(e)}`)));
    setTimeout(() => rej(new Error('zygote not ready in 10 s')), 10000);
  });
  return { p, exited, ready };
}

const d = new Daemon(BIN);
let z;
const seenPids = new Set(); // every C1/C2 host pid and zygote pid we saw: all must be gone at the end
const inits = [];
try {
  let m;
  console.log('# zygote start');
  z = startZygote(sock);
  const readyLine = await z.ready;
  console.log(`  ${readyLine}`);
  const info = JSON.parse(readyLine.replace(/^ready /, ''));
  seenPids.add(info.pid);
  check(info.preloaded.length === 6 && info.skipped.length === 0, `preloaded ${info.preloaded.join(',')} in ${info.load_ms} ms`);
  const st = fs.statSync(sock);
  check(st.isSocket() && (st.mode & 0o777) === 0o600 && st.uid === 0, 'socket is 0600, owned by root');
  check(!fs.readFileSync(`/proc/${info.pid}/environ`, 'latin1').includes('daemon-secret'), "daemon's environment wiped from the zygote's memory");
  check(fs.readdirSync(`/proc/${info.pid}/task`).length === 1, 'zygote is single-threaded');

  console.log('# a zygote refuses preloads from outside the system Python');
  {
    const z2 = startZygote(path.join(tmp, 'z2.sock'), 'json,nosuch_module_xyz,../evil,site');
    const line = await z2.ready;
    const i2 = JSON.parse(line.replace(/^ready /, ''));
    check(i2.skipped.map((s) => s.module).join(',') === 'nosuch_module_xyz,../evil', `skipped: ${JSON.stringify(i2.skipped)}`);
    z2.p.kill('SIGTERM');
    const ex = await Promise.race([z2.exited, sleep(3000).then(() => null)]);
    check(ex && ex.code === 0, `SIGTERM -> zygote exits 0 (${JSON.stringify(ex)})`);
    check(!fs.existsSync(path.join(tmp, 'z2.sock')), 'SIGTERM removes the socket file');
  }

  console.log('# two sandboxes, one instance each');
  const sb = {};
  for (const [name, host] of [['za', 'zyg-a'], ['zb', 'zyg-b']]) {
    d.send('create', name, ...createOpts(host));
    const m = await d.next((m) => m[1] === name);
    check(m[0] === 'created', `create ${name}`, JSON.stringify(m));
    if (m[0] !== 'created') throw new Error('cannot continue');
    sb[name] = Number(m[2]);
    inits.push(sb[name]);
  }
  const results = {};
  for (const [name, tag] of [['za', 'a'], ['zb', 'b']]) {
    d.send('spawn', name, `s-${tag}`, ...spawnArgs(`inv-${tag}`, { tag }));
    const r = await d.collect(name, `s-${tag}`);
    const kinds = r.events.map((e) => e[0]);
    check(kinds[0] === 'started' && kinds.at(-1) === 'exit' && kinds.slice(1, -1).every((k) => k === 'data'),
      `${name}: started, data..., exit`, JSON.stringify(r.events.map((e) => e.slice(0, 4).map(String))) + r.err);
    check(r.events.at(-1)[3] === 'exited:0', `${name}: exit status ${r.events.at(-1)[3]}`, r.err);
    const started = r.events[0];
    seenPids.add(Number(started[5]));
    const msgs = chanMsgs(r);
    check(msgs.map((m) => m.t).join(',') === 'loaded,start,result', `${name}: chan loaded,start,result`, r.chan + r.err);
    check(r.out === `hello from ${tag}\n`, `${name}: stdout data`, JSON.stringify(r.out));
    const v = resultOf(r) || {};
    results[name] = v;
    console.log(`       | pid ${v.pid} ppid ${v.ppid} host ${v.host} uid ${v.uid}/${v.gid} procs ${JSON.stringify(v.procs)} fds ${JSON.stringify(v.fds)} cwd ${v.cwd} status ${JSON.stringify(v.status)}`);
    check(v.host === (name === 'za' ? 'zyg-a' : 'zyg-b'), `${name}: hostname is the sandbox's (${v.host})`);
    check(v.uid === UID && v.gid === UID && v.groups.length === 0, `${name}: uid/gid ${v.uid}/${v.gid}, no groups`);
    check(JSON.stringify(v.status) === JSON.stringify(['0000000000000000', '1']), `${name}: no capabilities, NoNewPrivs=1`);
    check(v.pid < 10 && String(v.pid) === started[3] && v.ppid === 0, `${name}: pid ${v.pid} in the sandbox's pid namespace (parent outside it)`);
    check(JSON.stringify(v.procs) === JSON.stringify([1, v.pid]), `${name}: /proc shows only init and itself`);
    check(JSON.stringify(v.fds.slice(0, 4)) === '[0,1,2,3]' && v.fds.length <= 5, `${name}: only fds 0-3 (+ listdir's own)`, JSON.stringify(v.fds));
    check(v.cwd === '/app' && v.root.includes('app') && !v.root.includes('work'), `${name}: chrooted into the sandbox root, cwd /app`);
    check(JSON.stringify(Object.keys(v.env).sort()) === JSON.stringify(ENV('x').map((e) => e.split('=')[0]).sort()),
      `${name}: environment is exactly the given one`, JSON.stringify(v.env));
    check(!v.environ_raw.includes('daemon-secret'), `${name}: no daemon environment in /proc/self/environ`);
    check(v.tmp.includes(`mark-${tag}`) && !v.tmp.some((f) => f !== `mark-${tag}`), `${name}: /tmp has only its own file (${v.tmp})`);
    check(!alive(Number(started[5])), `${name}: instance process gone after exit`);
    check((nsMembers(sb[name]) || ['?']).length === 0, `${name}: nothing left in the sandbox`);
  }
  const [a, b] = [results.za, results.zb];
  check(a.random !== b.random && a.uuid !== b.uuid && a.urandom !== b.urandom,
    `instances do not share RNG state (random ${a.random?.toFixed(6)} vs ${b.random?.toFixed(6)})`);

  console.log('# errors');
  d.send('spawn', 'za', 'e1', ...spawnArgs('e1', {}, { uid: 0 }));
  let r = await d.collect('za', 'e1');
  check(r.events.length === 1 && r.events[0][0] === 'error' && /root/.test(r.events[0][3]), `uid 0 refused: ${r.events[0][3]}`);
  d.send('spawn', 'za', 'e2', ...spawnArgs('e2', {}, { zygote: path.join(tmp, 'nope.sock') }));
  r = await d.collect('za', 'e2');
  check(r.events.length === 1 && r.events[0][0] === 'error', `missing zygote socket: ${r.events[0][3]}`);
  d.send('spawn', 'za', 'e3', ...spawnArgs('e3', { tag: 'e3' }).map((f) => (String(f) === 'cwd=/app' ? 'cwd=/nonexistent' : f)));
  r = await d.collect('za', 'e3');
  check(r.events.length === 1 && r.events[0][0] === 'error' && /chdir/.test(r.events[0][3]), `bad cwd: ${r.events[0][3]}`);
  d.send('spawn', 'za', 'e4', 'arg=/bin/true', ...spawnArgs('e4', {}));
  r = await d.collect('za', 'e4');
  check(r.events.length === 1 && r.events[0][0] === 'error', `arg= rejected: ${r.events[0][3]}`);

  console.log('# background process is killed when the instance exits');
  d.send('spawn', 'za', 'bg', ...spawnArgs('bg', { tag: 'bg', bg: true }));
  r = await d.collect('za', 'bg');
  check(r.events.at(-1)[3] === 'exited:0', `exit ${r.events.at(-1)[3]}`, r.err);
  check((nsMembers(sb.za) || ['?']).length === 0, 'background sleep gone before `exit`');

  console.log('# latency: cold run vs zygote spawn vs spawn after prepare (same agent, same imports)');
  // Every command is >100 ms after the previous cgroup migration, so the v1 cgroup.procs
  // write really waits for its RCU grace period (back-to-back calls would hide it).
  const KINDS = ['run', 'spawn', 'prepared'];
  const lat = Object.fromEntries(KINDS.map((k) => [k, { started: [], start: [], spans: {} }]));
  const prepSpans = {};
  for (let i = 0; i < 7; i++) {
    for (const kind of KINDS) {
      const id = `${kind}${i}`;
      await sleep(120);
      if (kind === 'prepared') {
        d.send('prepare', 'zb', `zygote=${sock}`);
        const pm = await d.next((m) => m[1] === 'zb' && (m[0] === 'prepared' || m[0] === 'error'));
        if (pm[0] !== 'prepared') {
          fail(`prepare zb: ${JSON.stringify(pm)}`);
          continue;
        }
        for (const [name, [a, b]] of Object.entries(spans(pm[2]))) (prepSpans[name] ??= []).push(ms(a, b));
        await sleep(120);
      }
      const t0 = process.hrtime.bigint();
      if (kind === 'run') d.send('run', 'zb', id, ...runArgs(id, { tag: id }));
      else d.send('spawn', 'zb', id, ...spawnArgs(id, { tag: id }));
      r = await d.collect('zb', id);
      if (r.events[0][0] !== 'started' || r.events.at(-1)[3] !== 'exited:0') {
        fail(`${id}: ${JSON.stringify(r.events.map((e) => e.slice(0, 4).map(String)))} ${r.err}`);
        continue;
      }
      const L = lat[kind];
      if (kind !== 'run') {
        seenPids.add(Number(r.events[0][5]));
        const sp = spans(r.events[0][6]);
        const path = 'prepared' in sp ? 'prepared' : 'cgroup' in sp ? 'spawn' : '?';
        if (path !== kind) fail(`${id}: took the ${path} path (spans ${r.events[0][6]})`);
        for (const [name, [a, b]] of Object.entries(sp)) (L.spans[name] ??= []).push(ms(a, b));
      }
      const startMsg = chanMsgs(r).find((m) => m.t === 'start');
      L.started.push(ms(t0, BigInt(r.events[0][4])));
      L.start.push(ms(t0, BigInt(startMsg.mono_ns)));
    }
  }
  const fmt = (a) => `median ${median(a).toFixed(2)} ms (min ${Math.min(...a).toFixed(2)}, max ${Math.max(...a).toFixed(2)})`;
  const fmtSp = (o) => Object.entries(o).map(([n, a]) => `${n} ${median(a).toFixed(2)}`).join(', ');
  const label = { run: 'run (cold)           ', spawn: 'spawn (no prepare)   ', prepared: 'spawn after prepare  ' };
  for (const kind of KINDS) {
    if (!lat[kind].start.length) continue;
    console.log(`  ${label[kind]} command -> started    ${fmt(lat[kind].started)}`);
    console.log(`  ${label[kind]} command -> chan start ${fmt(lat[kind].start)}`);
    if (kind !== 'run') console.log(`  ${label[kind]} spans (median ms): ${fmtSp(lat[kind].spans)}`);
  }
  console.log(`  prepare (off the critical path) spans (median ms): ${fmtSp(prepSpans)}`);
  const med = (k) => median(lat[k].start);
  check(med('spawn') < med('run'), `zygote start is faster than cold (${(med('run') / med('spawn')).toFixed(1)}x)`);
  check(med('prepared') < med('spawn'), `prepared start is faster than a plain spawn (${(med('run') / med('prepared')).toFixed(1)}x faster than cold, ${(med('spawn') / med('prepared')).toFixed(1)}x than spawn)`);

  console.log('# prepare: waiter outside the pid namespace, replaced twice, used by the next spawn');
  const zygKids = () => childrenOf(info.pid);
  const waitGone = async (pids, n = 1000) => {
    for (let t = 0; t < n && pids.some(alive); t += 10) await sleep(10);
    return !pids.some(alive);
  };
  // prepare <sbx>; returns { m, pid } (pid: the new waiter, a child of the zygote).
  const prepare = async (sbx, zyg = sock) => {
    const before = new Set(zygKids());
    d.send('prepare', sbx, `zygote=${zyg}`);
    const m = await d.next((m) => m[1] === sbx && m[2] !== undefined && (m[0] === 'prepared' || (m[0] === 'error' && m[2] === '-')));
    const pid = zygKids().find((p) => !before.has(p));
    if (pid) seenPids.add(pid);
    return { m, pid };
  };
  let w1 = await prepare('za');
  check(w1.m[0] === 'prepared' && /^spans=fork:\d+:\d+,request:.*cgroup:.*setns:.*warm:/.test(w1.m[2]), `prepared: ${w1.m[2] && fmtSp(Object.fromEntries(Object.entries(spans(w1.m[2])).map(([n, [a, b]]) => [n, [ms(a, b)]])))}`, JSON.stringify(w1.m));
  check(w1.pid && alive(w1.pid), `waiter ${w1.pid} is a child of the zygote`);
  check((nsMembers(sb.za) || ['?']).length === 0, 'no process in the sandbox\'s pid namespace while prepared');
  const cgOf = (pid) => fs.readFileSync(`/proc/${pid}/cgroup`, 'utf8');
  check(w1.pid && CG.every((c) => cgOf(w1.pid).includes(c.replace('/sys/fs/cgroup/memory', '').replace('/sys/fs/cgroup/pids', ''))), 'waiter is in the sandbox\'s cgroups');
  check(w1.pid && fs.readlinkSync(`/proc/${w1.pid}/ns/net`) === fs.readlinkSync(`/proc/${sb.za}/ns/net`) &&
    fs.readlinkSync(`/proc/${w1.pid}/ns/mnt`) === fs.readlinkSync(`/proc/${sb.za}/ns/mnt`) &&
    fs.readlinkSync(`/proc/${w1.pid}/ns/pid`) !== fs.readlinkSync(`/proc/${sb.za}/ns/pid`) &&
    fs.readlinkSync(`/proc/${w1.pid}/ns/pid_for_children`) === fs.readlinkSync(`/proc/${sb.za}/ns/pid`),
  'waiter: sandbox net/mnt namespaces, host pid namespace, sandbox pid namespace for children');
  const w2 = await prepare('za');
  check(w2.m[0] === 'prepared' && w2.pid && w2.pid !== w1.pid, `prepare again -> new waiter ${w2.pid}`);
  // Third prepare right behind a fourth: the third is replaced while it is still joining.
  const before34 = new Set(zygKids());
  d.send('prepare', 'za', `zygote=${sock}`);
  d.send('prepare', 'za', `zygote=${sock}`);
  const r3 = await d.next((m) => m[1] === 'za' && (m[0] === 'prepared' || (m[0] === 'error' && m[2] === '-')));
  const r4 = await d.next((m) => m[1] === 'za' && (m[0] === 'prepared' || (m[0] === 'error' && m[2] === '-')));
  await sleep(50);
  for (const p of zygKids()) if (!before34.has(p)) seenPids.add(p);
  check((r3[0] === 'prepared' || /replaced/.test(r3[3])) && r4[0] === 'prepared', `back-to-back prepares: ${r3[0]} ${r3[3] ?? ''} / ${r4[0]}`);
  check(await waitGone([w1.pid, w2.pid]), 'replaced waiters exited');
  const left = zygKids();
  check(left.length === 1, `exactly one waiter left (${JSON.stringify(left)})`);
  d.send('spawn', 'za', 'p1', ...spawnArgs('p1', { tag: 'p1' }));
  r = await d.collect('za', 'p1');
  check(r.events[0][0] === 'started' && 'prepared' in spans(r.events[0][6]) && !('cgroup' in spans(r.events[0][6])),
    `spawn used the waiter (spans ${r.events[0][6]})`, JSON.stringify(r.events.map((e) => e.slice(0, 4).map(String))) + r.err);
  check(r.events.at(-1)[3] === 'exited:0' && resultOf(r)?.pid < 10 && resultOf(r)?.uid === UID, `prepared instance ran: exit ${r.events.at(-1)[3]}`, r.err);
  check(await waitGone([left[0]]), 'the waiter (C1) is gone with its instance');
  d.send('spawn', 'za', 'p2', ...spawnArgs('p2', { tag: 'p2' }));
  r = await d.collect('za', 'p2');
  check(r.events[0][0] === 'started' && 'cgroup' in spans(r.events[0][6]) && r.events.at(-1)[3] === 'exited:0', 'next spawn without prepare takes the full path');

  console.log('# prepare + swap: the instance sees the NEW /app');
  w1 = await prepare('za');
  check(w1.m[0] === 'prepared', 'prepared');
  d.send('swap', 'za', `app=${app2}`);
  m = await d.next((m) => m[1] === 'za');
  check(m[0] === 'swapped', `swap after prepare: ${m[0]}`);
  check(alive(w1.pid), 'swap keeps the waiter');
  d.send('spawn', 'za', 'sw1', ...spawnArgs('sw1', {}));
  r = await d.collect('za', 'sw1');
  check(r.events[0][0] === 'started' && 'prepared' in spans(r.events[0][6]), 'spawn used the waiter');
  check(resultOf(r)?.app === 2 && JSON.stringify(resultOf(r)?.files) === '["main.py"]', `instance ran the new app (${JSON.stringify(resultOf(r))})`, r.err + r.chan);
  d.send('swap', 'za', `app=${app}`);
  m = await d.next((m) => m[1] === 'za');
  check(m[0] === 'swapped', 'swap back');

  console.log('# reset discards the waiter');
  w1 = await prepare('za');
  check(w1.m[0] === 'prepared' && alive(w1.pid), 'prepared');
  d.send('reset', 'za', `app=${app}`);
  m = await d.next((m) => m[1] === 'za');
  check(m[0] === 'reset-done', `reset: ${m[0]}`, JSON.stringify(m));
  // reset waits for the waiter to close its connection, which it does while exiting: give the
  // kernel the moment it needs to finish that exit
  check(await waitGone([w1.pid], 1000), 'waiter gone when reset-done arrives (no leftover process)');
  // children of earlier steps may still be exiting (the zygote reaps them asynchronously)
  for (let t = 0; t < 2000 && zygKids().length; t += 20) await sleep(20);
  check(zygKids().length === 0, `zygote has no children left (${JSON.stringify(zygKids())})`);
  d.send('spawn', 'za', 'rs1', ...spawnArgs('rs1', {}));
  r = await d.collect('za', 'rs1');
  check(r.events[0][0] === 'started' && 'cgroup' in spans(r.events[0][6]) && r.events.at(-1)[3] === 'exited:0', 'spawn after reset takes the full path');
  d.send('reset', 'za', `app=${app}`);
  m = await d.next((m) => m[1] === 'za');
  w1 = await prepare('za');
  d.send('spawn', 'za', 'rs2', ...spawnArgs('rs2', { tag: 'rs2' }));
  r = await d.collect('za', 'rs2');
  check(r.events[0][0] === 'started' && 'prepared' in spans(r.events[0][6]) && r.events.at(-1)[3] === 'exited:0' &&
    JSON.stringify(resultOf(r)?.tmp) === '["mark-rs2"]', `reset, prepare, spawn: fresh root (/tmp ${JSON.stringify(resultOf(r)?.tmp)})`, r.err);

  console.log('# prepare errors');
  d.send('prepare', 'za', `zygote=${path.join(tmp, 'nope.sock')}`);
  m = await d.next((m) => m[1] === 'za');
  check(m[0] === 'error' && m[2] === '-', `missing zygote socket: ${m[3]}`);
  d.send('prepare', 'nosuch', `zygote=${sock}`);
  m = await d.next((m) => m[1] === 'nosuch');
  check(m[0] === 'error', `unknown sandbox: ${m[3]}`);
  d.send('prepare', 'za', 'zygote=relative.sock');
  m = await d.next((m) => m[1] === 'za');
  check(m[0] === 'error', `relative socket path: ${m[3]}`);

  console.log('# kill');
  d.send('spawn', 'za', 'k1', ...spawnArgs('k1', { tag: 'k1', sleep: 60 }));
  m = await d.next((m) => m[1] === 'za' && m[2] === 'k1');
  check(m[0] === 'started', 'long instance started');
  seenPids.add(Number(m[5]));
  await d.next((m) => m[0] === 'data' && m[1] === 'za' && m[2] === 'k1' && m[3] === 'chan' && m[5].includes('"start"'));
  const tk = process.hrtime.bigint();
  d.send('kill', 'za', 'k1');
  r = await d.collect('za', 'k1');
  check(r.events.at(-1)[0] === 'exit' && r.events.at(-1)[3] === 'signaled:9',
    `kill -> exit ${r.events.at(-1)[3]} in ${ms(tk, process.hrtime.bigint()).toFixed(2)} ms`);
  check(!alive(Number(m[5])) && (nsMembers(sb.za) || ['?']).length === 0, 'instance and sandbox processes gone');
  d.send('spawn', 'za', 'k2', ...spawnArgs('k2', { tag: 'k2', sleep: 60 }));
  d.send('kill', 'za', 'k2'); // before `started`: must still end the instance
  r = await d.collect('za', 'k2');
  const k2 = r.events.map((e) => `${e[0]}${e[0] === 'exit' ? ` ${e[3]}` : ''}`);
  check(r.events.at(-1)[0] === 'exit' && r.events.at(-1)[3] === 'signaled:9', `kill right after spawn -> ${k2.join(', ')}`);
  d.send('spawn', 'za', 'k3', ...spawnArgs('k3', { tag: 'k3' }));
  r = await d.collect('za', 'k3');
  check(r.events.at(-1)[3] === 'exited:0', 'sandbox usable after kill');
  w1 = await prepare('za');
  d.send('spawn', 'za', 'k4', ...spawnArgs('k4', { tag: 'k4', sleep: 60 }));
  m = await d.next((m) => m[1] === 'za' && m[2] === 'k4');
  check(m[0] === 'started' && 'prepared' in spans(m[6]), 'prepared long instance started');
  seenPids.add(Number(m[5]));
  await d.next((m) => m[0] === 'data' && m[1] === 'za' && m[2] === 'k4' && m[3] === 'chan' && m[5].includes('"start"'));
  d.send('kill', 'za', 'k4');
  r = await d.collect('za', 'k4');
  check(r.events.at(-1)[0] === 'exit' && r.events.at(-1)[3] === 'signaled:9', `kill of a prepared-then-spawned run -> exit ${r.events.at(-1)[3]}`);
  check(await waitGone([Number(m[5]), w1.pid]) && (nsMembers(sb.za) || ['?']).length === 0, 'instance, its waiter and sandbox processes gone');

  console.log(`# memory: ${N_MEM} instances alive at once vs ${N_MEM} cold python3 processes`);
  const msb = [];
  for (let i = 0; i < N_MEM; i++) {
    d.send('create', `m${i}`, ...createOpts(`mem-${i}`));
    m = await d.next((m) => m[1] === `m${i}`);
    check(m[0] === 'created', `create m${i}`, JSON.stringify(m));
    msb.push(`m${i}`);
    inits.push(Number(m[2]));
  }
  const startedP = msb.map((s) => d.next((m) => m[1] === s && m[2] === 'mem' && m[0] !== 'data', 20000));
  const chanStartP = msb.map((s) => d.next((m) => m[0] === 'data' && m[1] === s && m[2] === 'mem' && m[3] === 'chan' && m[5].includes('"start"'), 20000));
  for (const s of msb) d.send('spawn', s, 'mem', ...spawnArgs(`mem-${s}`, { tag: s, sleep: 3 }));
  const startedMsgs = await Promise.all(startedP);
  await Promise.all(chanStartP);
  check(startedMsgs.every((m) => m[0] === 'started'), 'all instances started');
  const inst = startedMsgs.map((m) => {
    const c2 = Number(m[5]);
    const c1 = ppidOf(c2);
    seenPids.add(c1);
    seenPids.add(c2);
    return { c1, c2, s2: smaps(c2), s1: smaps(c1) };
  });
  const zs = smaps(info.pid);
  const sum = (arr, f) => arr.reduce((acc, x) => acc + f(x), 0);
  const avg = (f) => sum(inst, f) / inst.length;
  console.log(`  zygote:             RSS ${mib(zs.Rss)} MiB, PSS ${mib(zs.Pss)} MiB`);
  console.log(`  instance (C2) avg:  RSS ${mib(avg((x) => x.s2.Rss))} MiB, PSS ${mib(avg((x) => x.s2.Pss))} MiB, private ${mib(avg((x) => x.s2.Private))} MiB`);
  console.log(`  its C1 (waiter) avg: RSS ${mib(avg((x) => x.s1.Rss))} MiB, PSS ${mib(avg((x) => x.s1.Pss))} MiB, private ${mib(avg((x) => x.s1.Private))} MiB`);
  const zygTotal = zs.Pss + sum(inst, (x) => x.s1.Pss + x.s2.Pss);
  // Drain the instances' results while we start the baseline.
  const memDone = Promise.all(msb.map((s) => d.collect(s, 'mem', 20000)));

  const cold = [];
  for (let i = 0; i < N_MEM; i++) {
    const p = spawn(PY, ['-c', 'import json,decimal,email.parser,http.client,asyncio,sqlite3,time,sys; print("ready", flush=True); time.sleep(3)'], {
      stdio: ['ignore', 'pipe', 'inherit'], env: { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8' },
    });
    cold.push({ p, ready: new Promise((res) => p.stdout.once('data', res)), exited: new Promise((res) => p.on('exit', res)) });
  }
  await Promise.all(cold.map((c) => c.ready));
  const cs = cold.map((c) => smaps(c.p.pid));
  const coldTotal = sum(cs, (x) => x.Pss);
  console.log(`  cold python3 avg:   RSS ${mib(sum(cs, (x) => x.Rss) / N_MEM)} MiB, PSS ${mib(coldTotal / N_MEM)} MiB, private ${mib(sum(cs, (x) => x.Private) / N_MEM)} MiB`);
  console.log(`  total PSS for ${N_MEM}: zygote + ${N_MEM} x (C1 + C2) = ${mib(zygTotal)} MiB  vs  ${N_MEM} cold = ${mib(coldTotal)} MiB  (${((1 - zygTotal / coldTotal) * 100).toFixed(0)}% less)`);
  check(zygTotal < coldTotal, 'zygote instances use less memory in total');
  const memRuns = await memDone;
  check(memRuns.every((x) => x.events.at(-1)[3] === 'exited:0'), 'all memory instances exited 0');
  await Promise.all(cold.map((c) => c.exited));

  console.log('# destroy with a spawned run active');
  d.send('spawn', 'zb', 'dz', ...spawnArgs('dz', { tag: 'dz', sleep: 60 }));
  m = await d.next((m) => m[1] === 'zb' && m[2] === 'dz');
  check(m[0] === 'started', 'started');
  seenPids.add(Number(m[5]));
  d.send('destroy', 'zb');
  r = await d.collect('zb', 'dz');
  check(r.events.at(-1)[0] === 'exit', `run ends with exit ${r.events.at(-1)[3]}`);
  m = await d.next((m) => m[1] === 'zb');
  check(m[0] === 'destroyed', 'then destroyed');

  console.log('# destroy with a prepared waiter');
  d.send('create', 'zc', ...createOpts('zyg-c'));
  m = await d.next((m) => m[1] === 'zc');
  check(m[0] === 'created', 'create zc');
  inits.push(Number(m[2]));
  w1 = await prepare('zc');
  check(w1.m[0] === 'prepared' && alive(w1.pid), 'prepared');
  d.send('destroy', 'zc');
  m = await d.next((m) => m[1] === 'zc');
  check(m[0] === 'destroyed' && !alive(w1.pid), `destroyed, waiter gone (${m[0]})`);
  // A waiter outlives its zygote (like a running C1); sandboxd's exit must still end it.
  const lastWaiter = await prepare('m0');
  check(lastWaiter.m[0] === 'prepared', 'prepared m0 (kept until sandboxd exits)');

  console.log('# zygote dies when its stdin closes');
  const zpid = info.pid;
  z.p.stdin.end();
  const ex = await Promise.race([z.exited, sleep(3000).then(() => null)]);
  check(ex && ex.code === 0, `zygote exited (${JSON.stringify(ex)})`);
  check(!fs.existsSync(sock), 'socket file removed');
  check(!alive(zpid), 'zygote process gone');
  d.send('spawn', 'za', 'after', ...spawnArgs('after', {}));
  r = await d.collect('za', 'after');
  check(r.events.length === 1 && r.events[0][0] === 'error', `spawn without a zygote -> error (${r.events[0][3]})`);

  console.log('# nothing left behind');
  const members = inits.flatMap((p) => nsMembers(p) || []);
  d.p.stdin.end();
  const dex = await Promise.race([d.exited, sleep(5000).then(() => null)]);
  check(dex && dex.code === 0, 'sandboxd exited 0 on stdin EOF');
  // the waiter exits on its connection's EOF; its parent (the zygote) reaps it a moment later
  check(await waitGone([lastWaiter.pid], 2000), `prepared waiter ${lastWaiter.pid} gone when sandboxd exited`);
  await sleep(100);
  const survivors = [...seenPids, ...inits, ...members].filter(alive);
  check(survivors.length === 0, `no zygote, C1, instance or init processes remain (${seenPids.size + inits.length} checked)`, JSON.stringify(survivors));
} catch (e) {
  fail(e.stack);
} finally {
  if (z && z.p.exitCode === null && z.p.signalCode === null) z.p.kill('SIGKILL');
  if (d.p.exitCode === null && d.p.signalCode === null) d.p.kill('SIGKILL');
  await sleep(200);
  for (const c of CG) {
    try {
      fs.rmdirSync(c);
      fs.rmdirSync(path.dirname(c));
    } catch (e) {
      fail(`rmdir ${c}: ${e.message}`);
    }
  }
  fs.rmSync(tmp, { recursive: true, force: true });
}
const failures = failureCount();
console.log(failures ? `\n${failures} check(s) FAILED` : '\nall checks passed');
process.exit(failures ? 1 : 0);
