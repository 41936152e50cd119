#!/usr/bin/env node
// Smoke test for trenv-sandboxd (see PROTOCOL.md). Run as root after `make -C runtime-daemon/native`:
//   node runtime-daemon/native/test-sandboxd.mjs [path/to/trenv-sandboxd]
// Exits non-zero on any failed check. Creates cgroups under /sys/fs/cgroup/{memory,pids}/trenv-smoke
// and removes them at the end; ends only the processes it started.
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  check, failureCount, fail, Daemon, spans, ms, fmtSpans, nsMembers, alive, childrenOf, sleep, makeLower,
} from './test-helpers.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const BIN = process.argv[2] || path.join(here, 'build', 'trenv-sandboxd');
const UID = 200000;

// ---------- fixtures ----------
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-smoke-'));
const lower = path.join(tmp, 'lower');
makeLower(lower, UID);
const mnt = path.join(tmp, 'mnt');
fs.mkdirSync(mnt);
const app1 = path.join(tmp, 'app1');
const app2 = path.join(tmp, 'app2');
fs.mkdirSync(app1);
fs.mkdirSync(app2);
fs.writeFileSync(path.join(app1, 'main.py'), 'print("app one")\n');
fs.writeFileSync(path.join(app2, 'main.py'), 'print("app two")\n');

const CG = ['/sys/fs/cgroup/memory/trenv-smoke/x', '/sys/fs/cgroup/pids/trenv-smoke/x'];
for (const c of CG) fs.mkdirSync(c, { recursive: true });
fs.writeFileSync(`${CG[0]}/memory.limit_in_bytes`, String(128 << 20));
fs.writeFileSync(`${CG[1]}/pids.max`, '32');

const PY = '/usr/bin/python3';
const ENV = ['env=PATH=/usr/bin:/bin', 'env=HOME=/home', 'env=LANG=C.UTF-8'];
const runArgs = (args, extra = []) => [...args.map((a) => `arg=${a}`), ...ENV, 'cwd=/', `uid=${UID}`, `gid=${UID}`, ...extra];
const createOpts = (extra = []) => [
  `lower=${lower}`, `mnt=${mnt}`, `rwsize=${64 << 20}`, 'rbind=/usr:/usr', `app=${app1}`,
  `cgroup=${CG[0]}/cgroup.procs`, `cgroup=${CG[1]}/cgroup.procs`, 'hostname=smoke-one', ...extra,
];

const d = new Daemon(BIN);
let httpServer;
try {
  console.log('# framing');
  d.send('ping', 'tok\0en');
  let m = await d.next((m) => m[0] === 'pong');
  check(m[1] === 'tok' && m[2] === 'en', 'ping -> pong with the token (NUL inside last field preserved)', JSON.stringify(m));
  d.send('bogus', 'x');
  m = await d.next((m) => m[0] === 'error');
  check(m[1] === '-' && m[2] === '-', `malformed frame -> error - - (${m[3]})`);
  d.send('run', 'nosuch', 'r0', 'arg=/bin/true', 'uid=1', 'gid=1');
  m = await d.next((m) => m[0] === 'error');
  check(m[1] === 'nosuch' && m[2] === 'r0', `run on unknown sandbox -> error (${m[3]})`);

  console.log('# create');
  d.send('create', 's1', ...createOpts());
  m = await d.next((m) => m[1] === 's1' && (m[0] === 'created' || m[0] === 'error'));
  check(m[0] === 'created', 'create s1', JSON.stringify(m));
  if (m[0] !== 'created') throw new Error('cannot continue');
  const init1 = Number(m[2]);
  console.log(`  create: ${fmtSpans(spans(m[3]))}`);
  const procs = fs.readFileSync(`${CG[0]}/cgroup.procs`, 'utf8').split('\n').map(Number);
  check(procs.includes(init1), 'init is in the memory cgroup');
  const hasSysResource = (BigInt("0x" + fs.readFileSync("/proc/self/status", "utf8").match(/CapEff:\s*(\w+)/)[1]) >> 24n) & 1n;
  const oomAdj = fs.readFileSync(`/proc/${init1}/oom_score_adj`, "utf8").trim();
  if (hasSysResource) check(oomAdj === "-1000", "init oom_score_adj is -1000");
  else console.log(`  note: no CAP_SYS_RESOURCE here, init oom_score_adj stays ${oomAdj}`);

  console.log('# run 1');
  const script1 = `
import os, socket, subprocess, sys
print("host", socket.gethostname())
print("pid", os.getpid())
print("uid", os.getuid(), os.getgid(), os.getgroups())
print("ls", sorted(os.listdir("/")))
print("app", open("/app/main.py").read().strip())
print("stdin", len(sys.stdin.buffer.read()))
open("/tmp/x", "w").write("hello")
try:
    open("/usr/x", "w"); print("usr WRITABLE")
except OSError as e:
    print("usr", e.errno)
print("usr-ro", bool(os.statvfs("/usr").f_flag & os.ST_RDONLY))
s = socket.socket(); s.settimeout(2)
try:
    s.connect(("1.1.1.1", 80)); print("net CONNECTED")
except OSError as e:
    print("net", type(e).__name__)
print("status", [l.split()[1] for l in open("/proc/self/status") if l.startswith(("CapEff", "NoNewPrivs"))])
subprocess.Popen(["/bin/sh", "-c", "sleep 1000 & sleep 1000"], start_new_session=True,
                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
os.write(3, b"chan-hello")
print("done", flush=True)
sys.stderr.write("to-stderr\\n")
`;
  const t0 = process.hrtime.bigint();
  d.send('run', 's1', 'r1', ...runArgs([PY, '-c', script1]), Buffer.from('stdin=hello\0world'));
  let r = await d.collect('s1', 'r1');
  const kinds = r.events.map((e) => e[0]);
  check(kinds[0] === 'started' && kinds.at(-1) === 'exit' && kinds.slice(1, -1).every((k) => k === 'data'),
    'replies in order started, data..., exit', JSON.stringify(kinds) + ' ' + JSON.stringify(r.events.find((e) => e[0] === 'error')));
  const started = r.events[0];
  check(BigInt(started[4]) >= t0, 'started timestamp is CLOCK_MONOTONIC (same clock as hrtime)');
  const exit1 = r.events.at(-1);
  check(exit1[3] === 'exited:0', `exit status ${exit1[3]}`, r.err);
  const out = r.out;
  console.log(out.replace(/^/gm, '       | '));
  check(/^host smoke-one$/m.test(out), 'hostname');
  check(/^pid \d+$/m.test(out) && Number(out.match(/^pid (\d+)$/m)[1]) < 10, 'pid is small (own pid namespace)');
  check(out.includes(`uid ${UID} ${UID} []`), 'uid/gid/groups');
  check(out.includes("'app'") && out.includes("'usr'") && out.includes("'bin'"), 'ls / shows the skeleton');
  check(out.includes('app print("app one")'), '/app is app1');
  check(/^stdin 11$/m.test(out), 'stdin delivered (with NUL byte) and closed');
  check(/^usr (13|30)$/m.test(out), '/usr/x write fails');
  check(/^usr-ro True$/m.test(out), '/usr mounted read-only');
  check(/^net (OSError|TimeoutError)/m.test(out) && !out.includes('CONNECTED'), 'no network with net=none');
  check(out.includes("status ['0000000000000000', '1']"), 'no capabilities, NoNewPrivs=1');
  check(r.chan === 'chan-hello', 'fd 3 (chan) data');
  check(r.err === 'to-stderr\n', 'stderr data');
  check(/^done$/m.test(out), 'script finished');
  const left = nsMembers(init1);
  check(left && left.length === 0, 'background sleeps are gone after exit', JSON.stringify(left));

  console.log('# exact fds');
  d.send('run', 's1', 'rfd', ...runArgs(['/usr/bin/ls', '-l', '/proc/self/fd/']));
  r = await d.collect('s1', 'rfd');
  const fdl = r.out.split('\n').filter((l) => l.includes(' -> ')).map((l) => l.replace(/.* (\d+) -> /, '$1 -> '));
  check(fdl.length === 5 && fdl.slice(0, 4).every((l, i) => l.startsWith(`${i} -> pipe:`)) && fdl[4].startsWith('4 -> /proc/'),
    'exec\'d process has exactly fds 0-3, all pipes (4 is ls\'s own directory fd)', JSON.stringify(fdl));

  console.log('# big stdin through cat');
  const big = Buffer.alloc(1 << 20);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7) & 0xff;
  d.send('run', 's1', 'rcat', ...runArgs(['/usr/bin/cat']), Buffer.concat([Buffer.from('stdin='), big]));
  r = await d.collect('s1', 'rcat');
  check(r.outBuf.equals(big), `1 MiB stdin echoed back intact (${r.events.filter((e) => e[0] === 'data').length} chunks)`);
  check(r.events.filter((e) => e[0] === 'data').every((e) => e[5].length <= 65536), 'chunks <= 64 KiB');

  console.log('# big argv (spec > 64 KiB goes through a memfd)');
  const bigArg = 'a'.repeat(100000);
  d.send('run', 's1', 'rargv', ...runArgs([PY, '-c', 'import sys; print(len(sys.argv[1]))', bigArg]));
  r = await d.collect('s1', 'rargv');
  check(r.out.trim() === '100000', `100 KB argument delivered (${r.out.trim() || r.events.at(-1)[3]})`);

  console.log('# OOM under memory.limit_in_bytes=128M');
  d.send('run', 's1', 'room', ...runArgs([PY, '-c', 'x = bytearray(400 << 20); print("survived")']));
  r = await d.collect('s1', 'room');
  check(r.events.at(-1)[0] === 'exit' && r.events.at(-1)[3] === 'signaled:9' && !r.out.includes('survived'),
    `400 MB allocation killed (${r.events.at(-1)[3]})`, r.err);
  check(alive(init1), 'init survived the OOM');

  console.log('# exec failure');
  d.send('run', 's1', 'rbad', ...runArgs(['/nonexistent']));
  r = await d.collect('s1', 'rbad');
  check(r.events.length === 1 && r.events[0][0] === 'error', `exec failure -> error only (${r.events[0][3]})`);

  console.log('# reset');
  const resetTimes = [];
  for (let i = 0; i < 5; i++) {
    d.send('reset', 's1', `app=${i % 2 ? app1 : app2}`, `hostname=smoke-r${i}`);
    m = await d.next((m) => m[1] === 's1' && (m[0] === 'reset-done' || m[0] === 'error'));
    check(m[0] === 'reset-done', `reset ${i}`, JSON.stringify(m));
    resetTimes.push(spans(m[2]));
  }
  for (const sp of resetTimes) console.log(`  reset: ${fmtSpans(sp)}`);
  d.send('reset', 's1', `app=${app2}`, 'hostname=smoke-two');
  m = await d.next((m) => m[1] === 's1' && (m[0] === 'reset-done' || m[0] === 'error'));
  check(m[0] === 'reset-done', 'reset to app2');
  const script2 = `
import os, socket
print("tmpx", os.path.exists("/tmp/x"))
print("app", open("/app/main.py").read().strip())
print("host", socket.gethostname())
print("dev", sorted(os.listdir("/dev")))
open("/dev/shm/y", "w").write("y")
try:
    open("/app/new", "w"); print("app WRITABLE")
except OSError as e:
    print("appw", e.errno)
`;
  d.send('run', 's1', 'r2', ...runArgs([PY, '-c', script2]));
  r = await d.collect('s1', 'r2');
  check(r.events.at(-1)[3] === 'exited:0', `run 2 exit ${r.events.at(-1)[3]}`, r.err);
  console.log(r.out.replace(/^/gm, '       | '));
  check(/^tmpx False$/m.test(r.out), '/tmp/x is gone after reset');
  check(r.out.includes('app print("app two")'), 'new app at /app');
  check(/^host smoke-two$/m.test(r.out), 'hostname changed by reset');
  check(/^appw 30$/m.test(r.out), '/app is read-only');

  console.log('# kill');
  d.send('run', 's1', 'r3', ...runArgs(['/usr/bin/sleep', '1000']));
  m = await d.next((m) => m[1] === 's1' && m[2] === 'r3');
  check(m[0] === 'started', 'sleep started');
  const tk = process.hrtime.bigint();
  d.send('kill', 's1', 'r3');
  r = await d.collect('s1', 'r3');
  check(r.events.at(-1)[0] === 'exit' && r.events.at(-1)[3] === 'signaled:9', `kill -> exit ${r.events.at(-1)[3]} in ${ms(tk, process.hrtime.bigint()).toFixed(2)} ms`);
  d.send('run', 's1', 'r3b', ...runArgs(['/usr/bin/true']));
  r = await d.collect('s1', 'r3b');
  check(r.events.at(-1)[3] === 'exited:0', 'sandbox usable after kill');

  console.log('# fork bomb under pids.max=32');
  d.send('run', 's1', 'r4', ...runArgs(['/bin/sh', '-c', 'b(){ b | b & }; b; sleep 1000']));
  m = await d.next((m) => m[1] === 's1' && m[2] === 'r4');
  check(m[0] === 'started', 'bomb started');
  let maxPids = 0;
  for (let i = 0; i < 10; i++) {
    await sleep(100);
    maxPids = Math.max(maxPids, Number(fs.readFileSync(`${CG[1]}/pids.current`, 'utf8')));
  }
  check(maxPids <= 32, `pids.current stayed <= 32 (max seen ${maxPids})`);
  d.send('ping', 'still-alive');
  m = await d.next((m) => m[0] === 'pong', 5000);
  check(m[1] === 'still-alive', 'sandboxd responsive during the bomb');
  d.send('kill', 's1', 'r4');
  r = await d.collect('s1', 'r4');
  check(r.events.at(-1)[0] === 'exit', `bomb killed: ${r.events.at(-1)[3]}`);
  check(Number(fs.readFileSync(`${CG[1]}/pids.current`, 'utf8')) === 1, 'only init left in the pids cgroup');

  console.log('# destroy');
  d.send('destroy', 's1');
  m = await d.next((m) => m[1] === 's1');
  check(m[0] === 'destroyed', 'destroyed s1');
  check(!alive(init1), 'init of s1 is gone');

  console.log('# died (init killed from outside during a run)');
  d.send('create', 's3', ...createOpts(['hostname=smoke-died']));
  m = await d.next((m) => m[1] === 's3');
  check(m[0] === 'created', 'create s3');
  const init3 = Number(m[2]);
  d.send('run', 's3', 'r7', ...runArgs(['/bin/sh', '-c', 'echo before; exec sleep 1000']));
  m = await d.next((m) => m[1] === 's3' && m[2] === 'r7');
  check(m[0] === 'started', 'sleep started in s3');
  await d.next((m) => m[0] === 'data' && m[1] === 's3');
  process.kill(init3, 'SIGKILL'); // a sandbox init this test created (by pid)
  r = await d.collect('s3', 'r7');
  check(r.events.at(-1)[0] === 'exit' && r.events.at(-1)[3] === 'signaled:9', `run gets exit first (${r.events.at(-1)[3]})`);
  m = await d.next((m) => m[1] === 's3');
  check(m[0] === 'died' && m[2] === 'signaled:9', `then died (${m.join(' ')})`);
  d.send('destroy', 's3');
  m = await d.next((m) => m[1] === 's3');
  check(m[0] === 'error', `destroy after died -> error (${m[3]})`);

  console.log('# create/destroy timing x5 (no slirp)');
  for (let i = 0; i < 5; i++) {
    d.send('create', `t${i}`, ...createOpts());
    m = await d.next((m) => m[1] === `t${i}`);
    check(m[0] === 'created', `create t${i}`, JSON.stringify(m));
    if (m[0] === 'created') console.log(`  create: ${fmtSpans(spans(m[3]))}`);
    d.send('destroy', `t${i}`);
    await d.next((m) => m[1] === `t${i}` && m[0] === 'destroyed');
  }

  console.log('# net=slirp');
  httpServer = http.createServer((req, res) => res.end('hello-from-host'));
  await new Promise((res) => httpServer.listen(0, '127.0.0.1', res));
  const port = httpServer.address().port;
  d.send('create', 's2', ...createOpts(['net=slirp', 'hostname=smoke-net']));
  m = await d.next((m) => m[1] === 's2', 20000);
  check(m[0] === 'created', 'create s2 with slirp', JSON.stringify(m));
  const init2 = Number(m[2]);
  if (m[0] === 'created') console.log(`  create(slirp): ${fmtSpans(spans(m[3]))}`);
  const script3 = `
import urllib.request
print(urllib.request.urlopen("http://10.0.2.2:${port}/", timeout=5).read().decode())
`;
  d.send('run', 's2', 'r5', ...runArgs([PY, '-c', script3]));
  r = await d.collect('s2', 'r5');
  check(r.out.trim() === 'hello-from-host', 'sandbox reached host HTTP server via 10.0.2.2', r.out + r.err);

  console.log('# stdin EOF cleanup');
  const kids = childrenOf(d.p.pid);
  check(kids.length >= 2, `sandboxd children before EOF: ${kids.join(',')} (init + slirp4netns)`);
  d.send('run', 's2', 'r6', ...runArgs(['/usr/bin/sleep', '1000']));
  await d.next((m) => m[1] === 's2' && m[2] === 'r6');
  const members = nsMembers(init2);
  d.p.stdin.end();
  const ex = await Promise.race([d.exited, sleep(5000).then(() => null)]);
  check(ex && ex.code === 0, `sandboxd exited 0 on stdin EOF (${JSON.stringify(ex)})`);
  await sleep(100);
  const survivors = [init2, ...kids, ...(members || [])].filter(alive);
  check(survivors.length === 0, 'no sandbox processes remain', JSON.stringify(survivors));
} catch (e) {
  fail(e.stack);
} finally {
  httpServer?.close();
  if (d.p.exitCode === null && d.p.signalCode === null) d.p.kill('SIGKILL');
  await sleep(100);
  for (const c of CG) {
    try {
      fs.rmdirSync(c);
      fs.rmdirSync(path.dirname(c));
    } catch (e) {
      console.log(`  warn: rmdir ${c}: ${e.message}`);
    }
  }
  fs.rmSync(tmp, { recursive: true, force: true });
}
const failures = failureCount();
console.log(failures ? `\n${failures} check(s) FAILED` : '\nall checks passed');
process.exit(failures ? 1 : 0);
