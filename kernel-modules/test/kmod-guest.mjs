// Node agent instances through /dev/mm_template, inside the test guest (run by node-tests.sh).
//   node kmod-guest.mjs test    same results as a cold start, different random values, template shared
//   node kmod-guest.mjs bench   N = 8, 16 instances: module (prefaulted / fault per page) vs CRIU private restore vs cold start
// Prints PASS/FAIL/METRIC lines for run-guest-tests.sh.
//
// Flow (see the README): the agent is started once (node-instance.js, MMT_TEMPLATE=1), initialises
// and stops itself. CRIU checkpoints it (--leave-running: the baseline image, private copies of every
// page); the daemon's templateFromStopped (mmTemplate.ts, trenv-mmt) copies its resident private anonymous memory into a template and remaps the
// process itself onto the template's file /run/mm_template/<id>; CRIU checkpoints it again (the
// module image: those regions are private FILE mappings whose pages CRIU does not copy). An
// instance = `criu restore` of one image into fresh pid/uts/mount namespaces; for the module image
// CRIU maps the template file itself (prefaulted by the module), so no template page is copied.
// Then SIGCONT; the instance re-seeds from its request and runs the handler.
import { spawn, spawnSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';

// the daemon's own module code (runtime-daemon/template/mmTemplate.ts, bundled by run-guest-tests.sh)
process.env.TRENV_MMT_HELPER = '/t/trenv-mmt';
const mmt = createRequire(import.meta.url)('/t/mmTemplate.js');

// CRIU run as the daemon runs it (runtime-daemon/template/criu.ts): trixie's loader with its library
// path, not through the prefix's wrapper script (a shell and two forks more per restore)
const P = '/opt/trenv/criu';
const CRIU = `${P}/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --library-path ${P}/usr/lib/x86_64-linux-gnu:${P}/lib/x86_64-linux-gnu ${P}/usr/sbin/criu`;
const INSTANCE = '/t/node-instance.js';
const ENV = { PATH: '/bin:/usr/bin', HOME: '/tmp', UV_USE_IO_URING: '0' };
const event = JSON.parse(fs.readFileSync('/app/agent/.trenv/events/default.json', 'utf8'));
const say = (s) => process.stdout.write(s + '\n');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const nowNs = () => process.hrtime.bigint();

function sh(cmd) {
  const r = spawnSync('/bin/sh', ['-c', cmd], { encoding: 'utf8', env: ENV });
  if (r.status !== 0) throw new Error(`${cmd}: exit ${r.status}\n${r.stdout}${r.stderr}`);
  return r.stdout;
}
const memFreeKb = () => Number(/MemFree:\s+(\d+)/.exec(fs.readFileSync('/proc/meminfo', 'utf8'))[1]);
const state = (pid) => { try { return fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1][0]; } catch { return 'gone'; } };

async function waitFor(pred, ms, what) {
  const end = Date.now() + ms;
  while (!pred()) { if (Date.now() > end) throw new Error(`timed out waiting for ${what}`); await sleep(5); }
}

/** node processes other than this driver: the instances */
function instancePids() {
  return fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d) && Number(d) !== process.pid).filter((d) => {
    try { return fs.readFileSync(`/proc/${d}/comm`, 'utf8').trim() === 'node'; } catch { return false; }
  }).map(Number);
}
function pssKb(pids) {
  let sum = 0;
  for (const p of pids) { try { sum += Number(/Pss:\s+(\d+)/.exec(fs.readFileSync(`/proc/${p}/smaps_rollup`, 'utf8'))[1]); } catch {} }
  return sum;
}

/** where a process's private memory is (diagnostics: MMT_DIAG=1) */
function privateByMapping(pid) {
  const by = new Map();
  let key = '';
  for (const line of fs.readFileSync(`/proc/${pid}/smaps`, 'utf8').split('\n')) {
    const h = /^[0-9a-f]+-[0-9a-f]+ (\S+) \S+ \S+ (\d+)\s*(.*)$/.exec(line);
    if (h) { key = `${h[1]} ${h[3] || (h[2] === '0' ? '[anon]' : '?')}`; continue; }
    const m = /^(Private_Dirty|Private_Clean):\s+(\d+)/.exec(line);
    if (m) by.set(key, (by.get(key) ?? 0) + Number(m[2]));
  }
  const st = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return [...by].filter(([, v]) => v >= 32).sort((a, b) => b[1] - a[1]).slice(0, 8).map(([k, v]) => `${k}=${v}kB`).join(', ') +
    ` | ${/VmPTE:\s+\d+ kB/.exec(st)?.[0]} threads ${/Threads:\s+(\d+)/.exec(st)?.[1]}`;
}

let tmpl; // { id, bytes, runs }
async function buildTemplate(kind = 'small') {
  fs.rmSync('/tmp/tmpl-ready', { force: true });
  fs.mkdirSync('/tmp/req', { recursive: true }); fs.mkdirSync('/tmp/res', { recursive: true }); fs.mkdirSync('/tmp/log', { recursive: true });
  for (const d of ['/tmp/img-criu', '/tmp/img-mod']) { fs.rmSync(d, { recursive: true, force: true }); fs.mkdirSync(d); }
  const t0 = nowNs();
  // no tty among its fds (CRIU would need --shell-job): stdio are files
  const errFd = fs.openSync('/tmp/log/template.err', 'w');
  const child = spawn('/usr/bin/node', ['--expose-gc', INSTANCE], { env: { ...ENV, MMT_TEMPLATE: '1', MMT_STATE: kind }, stdio: ['ignore', 'ignore', errFd], detached: true });
  await waitFor(() => fs.existsSync('/tmp/tmpl-ready') && state(child.pid) === 'T', 60000, 'the template process to initialise');
  say(`METRIC node.cold_init_ms ${(Number(nowNs() - t0) / 1e6).toFixed(1)}`);
  // the CRIU baseline's checkpoint: private copies of every page (the process stays stopped)
  const t1 = nowNs();
  sh(`${CRIU} dump -t ${child.pid} -D /tmp/img-criu -o /tmp/log/dump-criu.log -v2 --leave-running 2>&1 || { tail -20 /tmp/img-criu/dump-criu.log; exit 1; }`);
  say(`METRIC node.criu_dump_ms ${(Number(nowNs() - t1) / 1e6).toFixed(1)}`);
  await waitFor(() => state(child.pid) === 'T', 10000, 'the template process to be stopped again after the first dump');
  // the module's checkpoint: the daemon's templateFromStopped copies the process's memory into a
  // template and remaps the process itself onto the template's file, so CRIU records those regions
  // as private mappings of /run/mm_template/<id> (their pages are file pages, which it does not
  // copy) and a restore maps the file again: no template page is copied
  tmpl = mmt.templateFromStopped(child.pid, '/tmp/tmpl.map');
  say(`INFO template ${tmpl.id}: ${tmpl.bytes >> 10} KiB in ${tmpl.runs} runs, built and mapped in ${tmpl.buildMs} ms`);
  say(`METRIC node.template_kb ${tmpl.bytes >> 10}`);
  const t2 = nowNs();
  sh(`${CRIU} dump -t ${child.pid} -D /tmp/img-mod -o /tmp/log/dump-mod.log -v2 2>&1 || { tail -20 /tmp/img-mod/dump-mod.log; exit 1; }`);
  say(`METRIC node.module_dump_ms ${(Number(nowNs() - t2) / 1e6).toFixed(1)}`);
  const pagesKb = (dir) => fs.readdirSync(dir).filter((f) => f.startsWith('pages-')).reduce((a, f) => a + fs.statSync(`${dir}/${f}`).size, 0) >> 10;
  say(`METRIC node.criu_image_pages_kb ${pagesKb('/tmp/img-criu')}\nMETRIC node.module_image_pages_kb ${pagesKb('/tmp/img-mod')}`);
  await waitFor(() => state(child.pid) === 'gone' || state(child.pid) === 'Z', 10000, 'the dumped template to exit');
}

/** start one instance; resolves to { startMs, res } once its handler has run */
async function startInstance(mode, name, cg, stress = false, kind = 'small') {
  const join = `echo $$ > ${cg}/cgroup.procs || exit 1`;
  const seed = crypto.randomBytes(32).toString('hex');
  fs.writeFileSync(`/tmp/req/${name}.json`, JSON.stringify({ seed, event, stress }));
  let t0;
  if (mode === 'cold') {
    t0 = Date.now();
    spawn('/bin/sh', ['-c', `${join}; exec /usr/bin/node --expose-gc ${INSTANCE}`], { env: { ...ENV, MMT_NAME: name, MMT_STATE: kind }, stdio: ['ignore', 'ignore', 'inherit'], detached: true }).unref();
  } else {
    // The instance's sandbox (cgroup, fresh pid/uts/mount namespaces) is made BEFORE the clock
    // starts, as trenv's pool keeps sandboxes ready (a cold start does not pay for namespaces
    // either); the clock covers `criu restore` -> SIGCONT -> the handler's first line.
    const img = mode.startsWith('module') ? '/tmp/img-mod' : '/tmp/img-criu';
    const go = `/tmp/go/${name}`;
    fs.mkdirSync('/tmp/go', { recursive: true });
    fs.rmSync(go, { force: true }); fs.rmSync(`${go}.ready`, { force: true });
    sh(`mkfifo ${go}`);
    const script = `hostname ${name}
rm -f /tmp/log/${name}.pid
: > ${go}.ready
read x < ${go}
${CRIU} restore -D ${img} -d -o /tmp/log/${name}.log --pidfile /tmp/log/${name}.pid --display-stats >/tmp/log/${name}.stats 2>&1 || { echo "INFO criu restore of ${name} failed:"; tail -15 /tmp/log/${name}.log; : > /tmp/res/${name}.failed; exit 1; }
read P < /tmp/log/${name}.pid; kill -CONT $P
cat /tmp/batch.fifo >/dev/null`;
    const wrapped = `${join}; exec /bin/unshare -m -p -u -f --mount-proc /bin/sh -c '${script.replace(/'/g, `'\''`)}'`;
    spawn('/bin/sh', ['-c', wrapped], { env: ENV, stdio: ['ignore', 'inherit', 'inherit'], detached: true }).unref();
    await waitFor(() => fs.existsSync(`${go}.ready`), 30000, `the sandbox of ${name}`);
    t0 = Date.now();
    fs.writeFileSync(go, 'go\n'); // opens once the shell reads it
  }
  const file = `/tmp/res/${name}.json`; // or <file>.failed
  await waitFor(() => fs.existsSync(file) || fs.existsSync(`${file}.failed`), 120000, `instance ${name} (${mode})`);
  if (!fs.existsSync(file)) throw new Error(`instance ${name} (${mode}) did not start: its CRIU restore failed (log above)`);
  const res = JSON.parse(fs.readFileSync(file, 'utf8'));
  const out = { startMs: res.handlerStartMs - t0, res };
  if (mode !== 'cold') {
    // where a restored instance's start goes: CRIU's own restore time (its stats), the rest of the
    // way to the resumed process (spawning unshare/sh/criu, CRIU's start, kill -CONT), and the
    // instance's own work after it resumed (request, re-seed) up to the handler
    const st = fs.readFileSync(`/tmp/log/${name}.stats`, 'utf8');
    const us = (k) => Number(new RegExp(`${k}:\\s*(\\d+) us`).exec(st)?.[1] ?? NaN) / 1000;
    out.parts = { readMs: res.readAt - res.resumedAt, reseedMs: res.handlerStartMs - res.readAt, criuRestoreMs: us('Restore time'), criuForkingMs: us('Forking time'), toResumedMs: res.resumedAt - t0, afterResumeMs: res.handlerStartMs - res.resumedAt };
  }
  return out;
}

/** end every instance of a batch (cold ones by pid, restored ones by ending their namespaces) */
async function endBatch() {
  for (const p of instancePids()) { try { process.kill(p, 'SIGKILL'); } catch {} }
  // the namespaces' init shells block reading the FIFO: a writer that opens and closes it ends them
  const w = spawn('/bin/sh', ['-c', 'exec 3>/tmp/batch.fifo; exec 3>&-'], { stdio: 'ignore' });
  await Promise.race([new Promise((r) => w.on('exit', r)), sleep(2000)]);
  w.kill('SIGKILL');
  await waitFor(() => instancePids().length === 0, 10000, 'instances to exit');
  for (const d of ['/tmp/res', '/tmp/req']) for (const f of fs.readdirSync(d)) fs.rmSync(`${d}/${f}`);
}

/** MemFree once it stopped moving (exiting processes of the previous batch free memory late) */
async function settledFreeKb() {
  let prev = memFreeKb();
  for (let i = 0; i < 20; i++) {
    await sleep(300);
    const cur = memFreeKb();
    if (Math.abs(cur - prev) < 256) return cur;
    prev = cur;
  }
  return prev;
}

async function batch(mode, n, stress = false, kind = 'small') {
  fs.rmSync('/tmp/batch.fifo', { force: true }); sh('mkfifo /tmp/batch.fifo');
  // every instance (and for restores: unshare, CRIU, the remap) runs in the batch's cgroup: its
  // memory.current is what the N instances cost (user pages, page tables, kernel memory)
  const cg = `/sys/fs/cgroup/kmod-${mode}${n}`;
  fs.mkdirSync(cg, { recursive: true });
  const free0 = await settledFreeKb();
  const out = [];
  for (let i = 0; i < n; i++) out.push(await startInstance(mode, `${mode}${n}-${i}`, cg, stress, kind));
  const free1 = await settledFreeKb();
  const cgKb = Math.round(Number(fs.readFileSync(`${cg}/memory.current`, 'utf8')) / 1024) + (mode.startsWith('module') ? tmpl.bytes >> 10 : 0);
  const pids = instancePids();
  const usedKb = free0 - free1 + (mode.startsWith('module') ? tmpl.bytes >> 10 : 0); // the template: created before the batch
  const pss = pssKb(pids);
  if (process.env.MMT_DIAG && pids.length) say(`INFO ${mode} instance ${pids[0]}: ${privateByMapping(pids[0])}`);
  await endBatch();
  try { fs.rmdirSync(cg); } catch {}
  const starts = out.map((o) => o.startMs).sort((a, b) => a - b);
  return { out, usedKb, cgKb, pss, medianStartMs: starts[Math.floor(n / 2)], instances: pids.length };
}

function same(a, b) { return JSON.stringify(a) === JSON.stringify(b); }

async function test() {
  // the daemon's detection: module loaded, its filesystem mounted, the helper there
  const status = mmt.detectMmTemplate();
  if (status.path === 'kernel-module') say('PASS daemon_detects_module'); else say(`FAIL daemon_detects_module: ${status.message}`);
  await buildTemplate();
  const cold = await batch('cold', 1);
  const criu = await batch('criu', 1);
  const faults = () => Number(/faults (\d+)/.exec(fs.readFileSync('/sys/kernel/debug/mm_template/stats', 'utf8'))[1]);
  const f0 = faults();
  const mod = await batch('module', 3, true);
  // maps are prefaulted: a fault on one means the page's entry was zapped (MADV_DONTNEED by V8 or
  // glibc) and the page then read again, i.e. the discard path was exercised
  say(`METRIC node.template_refaults ${faults() - f0}`);
  const ref = cold.out[0].res.value;
  const values = [...criu.out, ...mod.out].map((o) => o.res.value);
  if (values.every((v) => same(v, ref))) say('PASS node_module_same_result_as_cold');
  else say(`FAIL node_module_same_result_as_cold: ${JSON.stringify(values[values.length - 1]).slice(0, 300)} vs ${JSON.stringify(ref).slice(0, 300)}`);
  if (mod.out.every((o) => same(o.res.value2, ref))) say('PASS node_module_same_result_after_gc');
  else say(`FAIL node_module_same_result_after_gc: ${JSON.stringify(mod.out.map((o) => o.res.value2)).slice(0, 300)}`);
  const randoms = mod.out.map((o) => `${o.res.random}/${o.res.uuid}`);
  if (new Set(randoms).size === randoms.length) say('PASS node_module_reseeded');
  else say(`FAIL node_module_reseeded: ${randoms.join(' ')}`);
  say(`METRIC node.module3.cgroup_kb ${mod.cgKb}\nMETRIC node.module3.pss_kb ${mod.pss}`);
  // CRIU mapped the template's file itself: the instances' maps name it
  const named = mod.out.filter((o) => o.res.templateMaps > 0).length;
  if (named === mod.out.length) say(`PASS node_module_restored_from_template_file (${mod.out[0].res.templateMaps} maps each)`);
  else say(`FAIL node_module_restored_from_template_file: ${named} of ${mod.out.length} instances map /run/mm_template`);
  say(`INFO start parts (ms) criu: ${JSON.stringify(criu.out[0].parts)} module: ${JSON.stringify(mod.out[0].parts)}`);
  say(`METRIC node.module.start_ms ${mod.medianStartMs.toFixed(1)}\nMETRIC node.criu.start_ms ${criu.medianStartMs.toFixed(1)}\nMETRIC node.cold.start_ms ${cold.medianStartMs.toFixed(1)}`);
  // the template outlives its mappers until deleted; deleting it now must leave nothing behind
  mmt.deleteTemplate('/tmp/tmpl.map');
  const stats = fs.readFileSync('/sys/kernel/debug/mm_template/stats', 'utf8');
  if (/templates_live 0\n/.test(stats)) say('PASS node_template_freed'); else say(`FAIL node_template_freed: ${stats}`);
}

function benchLine(kind, mode, n, r) {
  const med = (k) => { const v = r.out.map((o) => o.parts?.[k]).filter((x) => Number.isFinite(x)).sort((a, b) => a - b); return v.length ? +v[Math.floor(v.length / 2)].toFixed(1) : undefined; };
  const parts = mode === 'cold' ? undefined : { readMs: med('readMs'), reseedMs: med('reseedMs'), criuRestoreMs: med('criuRestoreMs'), criuForkingMs: med('criuForkingMs'), toResumedMs: med('toResumedMs'), afterResumeMs: med('afterResumeMs') };
  say(`BENCH ${JSON.stringify({ state: kind, mode, n, parts, medianStartMs: +r.medianStartMs.toFixed(1), usedKb: r.usedKb, cgKb: r.cgKb, pssKb: r.pss, instances: r.instances, starts: r.out.map((o) => +o.startMs.toFixed(1)) })}`);
  return r;
}

async function bench() {
  // the example agent as it is (a small initialised state)
  await buildTemplate('small');
  for (const n of [8, 16]) {
    // one fault per page vs prefaulted: compared at N = 16 (the bench's time budget)
    for (const mode of n === 8 ? ['cold', 'criu', 'module'] : ['cold', 'criu', 'module', 'module_fault']) {
      // module_fault: the restore's maps of the template file fault page by page
      fs.writeFileSync('/sys/module/mm_template/parameters/file_prefault', mode === 'module_fault' ? '0' : '1');
      benchLine('small', mode, n, await batch(mode, n));
    }
  }
  fs.writeFileSync('/sys/module/mm_template/parameters/file_prefault', '1');
  mmt.deleteTemplate('/tmp/tmpl.map');
  // the same agent holding a large initialised state (~150 MB): every instance must still see it
  await buildTemplate('large');
  const digests = new Set();
  for (const [mode, n] of [['cold', 8], ['criu', 8], ['module', 8], ['criu', 16], ['module', 16]]) {
    fs.writeFileSync('/sys/module/mm_template/parameters/file_prefault', mode === 'module_fault' ? '0' : '1');
    const r = benchLine('large', mode, n, await batch(mode, n, false, 'large'));
    for (const o of r.out) digests.add(o.res.value.stateDigest);
  }
  fs.writeFileSync('/sys/module/mm_template/parameters/file_prefault', '1');
  if (digests.size === 1 && !digests.has(undefined)) say('PASS node_large_state_same_in_every_instance');
  else say(`FAIL node_large_state_same_in_every_instance: ${[...digests].join(' ')}`);
  mmt.deleteTemplate('/tmp/tmpl.map');
}

const what = process.argv[2];
(what === 'bench' ? bench() : test()).then(() => process.exit(0), (err) => { say(`FAIL node_${what}: ${err.stack}`); process.exit(1); });
