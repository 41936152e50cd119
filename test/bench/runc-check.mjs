/**
 * Check of the runc baseline (test/bench/runc.ts, compiled to out/test/bench/runc.js).
 *
 *  1. Runs every example agent in examples/ that needs no network, and every benchmark function
 *     in test/bench/functions/, RUNS (5) times through `runc run` (a fresh OCI container each
 *     time, deleted after) and once directly through its shim on the host; every runc result
 *     must equal the direct one. Prints the timings of every run and the medians.
 *  2. Runs a probe agent that reports what it sees (uid, hostname, network interfaces,
 *     writable paths, capabilities) while the host reads its cgroup limits, then the limits
 *     themselves: memory (an allocation over memoryMb is OOM-killed) and pids.
 *  3. Cleans up (runc delete -f, temp dirs, the empty trenv-bench cgroup dirs) and checks that
 *     nothing is left. Exits non-zero if anything failed.
 *
 * As root:  npx tsc -p . ; node test/bench/runc-check.mjs [--runs N] [--examples-only] [--json]
 */
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve, basename } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual } from 'node:util';
import assert from 'node:assert/strict';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '../..');
const argv = process.argv.slice(2);
const RUNS = Number(argv.includes('--runs') ? argv[argv.indexOf('--runs') + 1] : 5);
const EXAMPLES_ONLY = argv.includes('--examples-only');
const JSON_OUT = argv.includes('--json');
const RUNTIMES = join(ROOT, 'runtime-daemon/runtimes');

// ---- the compiled module ------------------------------------------------------------------------

const SRC = join(HERE, 'runc.ts');
const OUT = join(ROOT, 'out/test/bench/runc.js');
if (!existsSync(OUT) || statSync(OUT).mtimeMs < statSync(SRC).mtimeMs) {
  console.log('compiling (npx tsc -p .) ...');
  spawnSync('npx', ['tsc', '-p', '.'], { cwd: ROOT, stdio: 'ignore' }); // other files' errors do not stop the emit
  if (!existsSync(OUT) || statSync(OUT).mtimeMs < statSync(SRC).mtimeMs) {
    console.error(`${OUT} is missing or stale: run npx tsc -p . in ${ROOT}`);
    process.exit(1);
  }
}
const runc = createRequire(import.meta.url)(OUT);

// ---- helpers --------------------------------------------------------------------------------------

const median = (xs) => {
  const s = xs.filter(Number.isFinite).sort((a, b) => a - b);
  return s.length ? s[Math.floor((s.length - 1) / 2)] : NaN;
};
const f1 = (x) => (Number.isFinite(x) ? x.toFixed(1) : '-');
let failed = 0;
const report = { runc: '', agents: {}, isolation: {}, leftovers: [] };
function fail(what, err) {
  failed++;
  console.log(`FAIL ${what}: ${err?.stack ?? err}`);
}

function agentsToRun() {
  const list = [];
  for (const name of readdirSync(join(ROOT, 'examples')).sort()) {
    const dir = join(ROOT, 'examples', name);
    if (!existsSync(join(dir, 'trenv.json'))) continue;
    const m = runc.readManifest(dir);
    if (m.network === 'egress') {
      console.log(`skip ${name} (network: egress; the baseline container has only lo)`);
      continue;
    }
    list.push(dir);
  }
  if (!EXAMPLES_ONLY) {
    const fdir = join(HERE, 'functions');
    for (const name of readdirSync(fdir).sort()) if (existsSync(join(fdir, name, 'trenv.json'))) list.push(join(fdir, name));
  }
  return list;
}

const PROBE = `
import os, socket, time
def _writable(p):
    try:
        with open(p, "w") as f:
            f.write("x")
        os.unlink(p)
        return True
    except OSError:
        return False
def _status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return line.split()[1]
def handler(event, context):
    if event.get("alloc_mb"):
        blocks = [b"x" * (1 << 20) for _ in range(event["alloc_mb"])]  # touches every page
        return {"allocated_mb": len(blocks)}
    if event.get("threads"):
        import threading
        stop = threading.Event()
        started = 0
        try:
            for _ in range(event["threads"]):
                threading.Thread(target=stop.wait, daemon=True).start()
                started += 1
        except RuntimeError as exc:
            stop.set()
            return {"threads": started, "error": str(exc)}
        stop.set()
        return {"threads": started, "error": None}
    try:
        socket.create_connection(("1.1.1.1", 80), timeout=1).close()
        net = "reachable"
    except OSError as exc:
        net = type(exc).__name__ + ": " + str(exc)
    out = {
        "uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid(), "hostname": socket.gethostname(),
        "ifaces": sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:]),
        "cwd": os.getcwd(), "app": sorted(os.listdir("/app")),
        "write": {p: _writable(p) for p in ("/app/x", "/usr/x", "/x", "/etc/x", "/tmp/x", "/dev/shm/x")},
        "cap_eff": _status("CapEff"), "no_new_privs": _status("NoNewPrivs"),
        "net": net, "user": os.environ.get("HOME"), "id": context.invocation_id,
    }
    time.sleep(event.get("sleep", 0))
    return out
`;

// ---- main ---------------------------------------------------------------------------------------

let work;
try {
  report.runc = runc.ensureRunc();
  console.log(`${report.runc}; runc root ${runc.RUNC_ROOT}; cgroups under /sys/fs/cgroup/*/${runc.CGROUP_PARENT}/<id>`);
  const before = runc.benchCgroupDirs();
  work = mkdtempSync(join(tmpdir(), 'trenv-runc-check-'));
  const skeleton = runc.buildRootfsSkeleton(join(work, 'rootfs'));
  const tag = `rc${process.pid}`;

  // 1. agents: direct vs runc
  const agents = agentsToRun();
  console.log(`\nagent                 run  start(loaded)  handler-start  handler  e2e    delete   [ms, from spawn of runc run]`);
  for (const dir of agents) {
    const name = basename(dir);
    try {
      const event = JSON.parse(readFileSync(join(dir, '.trenv/events/default.json'), 'utf8'));
      const directs = [];
      for (let i = 0; i < RUNS; i++) {
        const d = await runc.runDirect(dir, event, { runtimesDir: RUNTIMES, id: `${tag}-direct-${i}` });
        assert.ok(d.ok, `direct run failed: ${JSON.stringify(d.error)}`);
        if (directs.length) assert.ok(isDeepStrictEqual(d.result, directs[0].result), 'direct runs differ (not deterministic)');
        directs.push(d);
      }
      const dmed = (k) => median(directs.map((r) => r[k]));
      const direct = { result: directs[0].result, startMs: dmed('startMs'), handlerStartMs: dmed('handlerStartMs'), handlerMs: dmed('handlerMs'), e2eMs: dmed('e2eMs') };
      const bundle = runc.makeAgentBundle({ bundleDir: join(work, `bundle-${name}`), rootfsSkeleton: skeleton, appDir: dir, runtimesDir: RUNTIMES });
      const runs = [];
      for (let i = 0; i < RUNS; i++) {
        const r = await runc.runInvocation(bundle, `${tag}-${name}-${i}`, event, { timeoutMs: runc.readManifest(dir).limits?.timeoutMs });
        assert.ok(r.ok, `runc run ${i + 1} failed (exit ${r.exitCode}): ${JSON.stringify(r.error)} ${r.stderr.slice(0, 500)}`);
        assert.ok(isDeepStrictEqual(r.result, direct.result), `runc run ${i + 1} result differs from the direct shim run:\n  runc:   ${JSON.stringify(r.result).slice(0, 300)}\n  direct: ${JSON.stringify(direct.result).slice(0, 300)}`);
        runs.push(r);
        console.log(`${name.padEnd(20)}  ${String(i + 1).padStart(3)}  ${f1(r.startMs).padStart(13)}  ${f1(r.handlerStartMs).padStart(13)}  ${f1(r.handlerMs).padStart(7)}  ${f1(r.e2eMs).padStart(5)}  ${f1(r.deleteMs).padStart(6)}`);
      }
      const med = (k) => median(runs.map((r) => r[k]));
      const summary = {
        runc: { startMs: med('startMs'), handlerStartMs: med('handlerStartMs'), handlerMs: med('handlerMs'), e2eMs: med('e2eMs'), deleteMs: med('deleteMs') },
        direct: { startMs: direct.startMs, handlerStartMs: direct.handlerStartMs, handlerMs: direct.handlerMs, e2eMs: direct.e2eMs },
        result: direct.result,
      };
      report.agents[name] = summary;
      console.log(`ok   ${name}: median runc handler-start ${f1(summary.runc.handlerStartMs)} ms, e2e ${f1(summary.runc.e2eMs)} ms, delete ${f1(summary.runc.deleteMs)} ms | direct host process (median): handler-start ${f1(direct.handlerStartMs)} ms, e2e ${f1(direct.e2eMs)} ms | ${RUNS}/${RUNS} results = direct`);
    } catch (err) {
      fail(name, err);
    }
  }

  // 2. isolation and limits
  console.log('');
  const probeDir = join(work, 'probe');
  mkdirSync(probeDir);
  writeFileSync(join(probeDir, 'main.py'), PROBE);
  writeFileSync(join(probeDir, 'trenv.json'), JSON.stringify({ name: 'runc-probe', runtime: 'python', handler: 'main.py:handler', limits: { memoryMb: 128, pids: 32, timeoutMs: 10000 } }));
  const probeBundle = runc.makeAgentBundle({ bundleDir: join(work, 'bundle-probe'), rootfsSkeleton: skeleton, appDir: probeDir, runtimesDir: RUNTIMES });
  try {
    const id = `${tag}-probe`;
    const seen = {};
    const cg = (ctl, file) => join('/sys/fs/cgroup', ctl, runc.CGROUP_PARENT, id, file);
    const poll = setInterval(() => {
      try {
        seen.memory = Number(readFileSync(cg('memory', 'memory.limit_in_bytes'), 'utf8')) / 2 ** 20;
        seen.memsw = Number(readFileSync(cg('memory', 'memory.memsw.limit_in_bytes'), 'utf8')) / 2 ** 20;
        seen.pids = readFileSync(cg('pids', 'pids.max'), 'utf8').trim();
        seen.procs = readFileSync(cg('pids', 'cgroup.procs'), 'utf8').trim().split('\n').length;
      } catch {}
    }, 20);
    const r = await runc.runInvocation(probeBundle, id, { sleep: 0.4 });
    clearInterval(poll);
    assert.ok(r.ok, `probe failed: ${JSON.stringify(r.error)} ${r.stderr}`);
    const v = r.result;
    report.isolation.probe = { ...v, cgroup: seen };
    assert.equal(v.uid, 10001);
    assert.equal(v.gid, 10001);
    assert.equal(v.pid, 1, 'the shim is pid 1 of a new pid namespace');
    assert.equal(v.hostname, 'trenv-bench');
    assert.deepEqual(v.ifaces, ['lo'], 'new network namespace with only lo');
    assert.match(v.net, /OSError|unreachable/i, 'no route out');
    assert.equal(v.cwd, '/app');
    assert.deepEqual(v.write, { '/app/x': false, '/usr/x': false, '/x': false, '/etc/x': false, '/tmp/x': true, '/dev/shm/x': true });
    assert.equal(v.cap_eff, '0000000000000000');
    assert.equal(v.no_new_privs, '1');
    assert.equal(v.id, id, 'TRENV_INVOCATION_ID set per invocation');
    assert.equal(seen.memory, 128, 'memory.limit_in_bytes = memoryMb');
    assert.equal(seen.pids, '32', 'pids.max = limits.pids');
    console.log(`ok   isolation: uid ${v.uid}, pid ${v.pid}, host ${v.hostname}, ifaces ${v.ifaces}, net "${v.net}", writable ${Object.entries(v.write).filter(([, w]) => w).map(([p]) => p).join(' ')}, CapEff ${v.cap_eff}, cgroup memory ${seen.memory} MiB (memsw ${seen.memsw}), pids.max ${seen.pids}`);

    const oom = await runc.runInvocation(probeBundle, `${tag}-oom`, { alloc_mb: 400 });
    report.isolation.oom = { ok: oom.ok, exitCode: oom.exitCode, e2eMs: oom.e2eMs };
    assert.ok(!oom.ok && oom.result === undefined, `400 MiB in a 128 MiB container must fail, got ${JSON.stringify(oom.result)}`);
    assert.equal(oom.exitCode, 137, 'killed by SIGKILL (OOM killer)');
    console.log(`ok   memory limit: allocating 400 MiB in 128 MiB -> exit ${oom.exitCode} (OOM-killed) after ${f1(oom.e2eMs)} ms`);

    const pids = await runc.runInvocation(probeBundle, `${tag}-pids`, { threads: 100 });
    report.isolation.pids = pids.result;
    assert.ok(pids.ok && pids.result.error && pids.result.threads < 32, `pids limit: ${JSON.stringify(pids.result ?? pids.error)}`);
    console.log(`ok   pids limit: ${pids.result.threads} threads started of 100, then "${pids.result.error}"`);
  } catch (err) {
    fail('isolation', err);
  }

  // 3. cleanup
  const left = runc.cleanupAll();
  const containers = runc.listContainers();
  report.leftovers = [...left, ...containers];
  if (before.length === 0 && (left.length || containers.length)) fail('cleanup', `left behind: ${report.leftovers.join(', ')}`);
  else console.log(`ok   cleanup: no containers in ${runc.RUNC_ROOT}, no ${runc.CGROUP_PARENT} cgroups left in any hierarchy`);
} catch (err) {
  fail('runc-check', err);
} finally {
  try {
    runc.cleanupAll();
  } catch {}
  if (work) rmSync(work, { recursive: true, force: true });
}
if (JSON_OUT) console.log(JSON.stringify(report, null, 2));
console.log(failed ? `\n${failed} failed` : '\nall passed');
process.exitCode = failed ? 1 : 0;
