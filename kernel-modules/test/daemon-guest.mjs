// The daemon end to end with the mm_template module (run by daemon-guest.sh inside the guest, whose
// root is the host's / read-only): trenvd detects the module and mounts its filesystem, builds Node
// templates whose memory goes into module templates, restores instances that map
// /run/mm_template/<id> (same results as cold, re-seeded), deletes them on `template rm`, and leaves
// nothing behind when it stops; with TRENV_MMT=0 it leaves the module alone (private copies).
// Prints PASS/FAIL lines for run-guest-tests.sh.
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

const REPO = process.argv[2];
const STATE = '/tmp/trenv-state';
const env = { ...process.env, TRENV_STATE_DIR: STATE };
const say = (s) => process.stdout.write(s + '\n');
const pass = (name, detail = '') => say(`PASS ${name}${detail ? ` (${detail})` : ''}`);
const fail = (name, detail) => say(`FAIL ${name}: ${String(detail).replace(/\n/g, ' | ').slice(0, 1500)}`);
const check = (ok, name, detail) => (ok ? pass(name, typeof detail === 'string' ? detail : '') : fail(name, detail));

function trenv(...args) {
  const t0 = Date.now();
  const r = spawnSync('/usr/bin/node', [path.join(REPO, 'dist/trenv.js'), ...args], { env, encoding: 'utf8', timeout: 240_000 });
  return { code: r.status, out: r.stdout ?? '', err: r.stderr ?? '', ms: Date.now() - t0 };
}
function invoke(dir, ...flags) {
  const r = trenv('invoke', dir, '--event', `@${dir}/.trenv/events/default.json`, '--json', '--trace', ...(invokeFlags[dir] ?? []), ...flags);
  let j;
  try { j = JSON.parse(r.out); } catch { throw new Error(`trenv invoke ${dir} ${flags.join(' ')} gave no JSON (exit ${r.code}): ${r.err.slice(-800)} ${r.out.slice(-800)}`); }
  return { ...j, ms: r.ms };
}
/** per agent dir: extra `trenv invoke` flags (the tool agent's model server: see main) */
const invokeFlags = { '/tmp/agents/node-tool-agent': ['--env', 'OPENAI_BASE_URL=http://10.0.2.2:18080/v1'] };
const restoreSpan = (inv) => (inv.trace ?? []).find((s) => s.name === 'template.restore');
const mmtIds = () => { try { return fs.readdirSync('/run/mm_template'); } catch { return null; } };
const log = () => { try { return fs.readFileSync(path.join(STATE, 'run/trenvd.log'), 'utf8'); } catch { return ''; } };

async function main() {
  fs.mkdirSync('/tmp/agents', { recursive: true });
  // the Node example agents (the tool agent's LLM and the browser agent's product pages: the same
  // local test servers as the demo), and a test agent that reports its template maps
  // (separate processes: this driver blocks in spawnSync while an agent runs)
  const servers = [['llm-server.mjs', 18080], ['web-server.mjs', 18089]].map(([f, port]) =>
    spawn('/usr/bin/node', [path.join(REPO, 'test/fixtures', f), '--port', String(port)], { stdio: 'ignore', env }));
  const up = (port) => spawnSync('/usr/bin/node', ['-e', `require('net').connect(${port}, '127.0.0.1').on('connect', () => process.exit(0)).on('error', () => process.exit(1))`]).status === 0;
  for (let i = 0; i < 200 && !(up(18080) && up(18089)); i++) spawnSync('/bin/sleep', ['0.1']);
  const agents = {};
  const names = { example: 'node-json-transform', tool: 'node-tool-agent', browser: 'node-web-extract', maps: 'kmod-maps' };
  for (const [what, name] of Object.entries(names)) {
    agents[what] = `/tmp/agents/${name}`;
    fs.cpSync(path.join(REPO, what === 'maps' ? 'kernel-modules/test/agent-maps' : `examples/${name}`), agents[what], { recursive: true });
    // under TCG everything is 10-30x slower than on the host: the first browser call also starts
    // Chromium (it hit the example's 30 s limit once in CI), so the copies get 120 s
    const mf = path.join(agents[what], 'trenv.json');
    const m = JSON.parse(fs.readFileSync(mf, 'utf8'));
    m.limits = { ...m.limits, timeoutMs: Math.max(m.limits?.timeoutMs ?? 0, 120_000) };
    fs.writeFileSync(mf, JSON.stringify(m, null, 2));
  }

  const start = trenv('daemon', 'start');
  if (start.code !== 0) {
    // run it in the foreground for what it says
    const fg = spawnSync('/usr/bin/node', [path.join(REPO, 'dist/trenvd.js'), '--state-dir', STATE], { env, encoding: 'utf8', timeout: 30_000 });
    return fail('daemon_guest_start', `${start.err}${start.out}\n${log().slice(-2000)}\nforeground: exit ${fg.status} ${fg.signal ?? ''} ${fg.stdout} ${fg.stderr}`);
  }
  pass('daemon_guest_start', `${start.ms} ms`);
  check(/kernel module mm_template is loaded .*Node templates map their initialised memory from it/.test(log()), 'daemon_guest_detects_module', log().split('\n').filter((l) => /mm_template|kernel module/.test(l)).join(' / ') || log().slice(-600));
  const mounts = fs.readFileSync('/proc/mounts', 'utf8');
  check(mounts.split('\n').some((l) => l.split(' ')[1] === '/run/mm_template' && l.split(' ')[2] === 'mm_template'), 'daemon_guest_mounted_mmt_fs', mounts.split('\n').filter((l) => l.includes('/run')).join(' / '));

  const digests = {};
  const restoreMs = [];
  for (const [what, dir] of Object.entries(agents)) {
    const cold = invoke(dir, '--no-template');
    if (cold.record?.state !== 'succeeded') { fail(`daemon_guest_${what}_cold`, JSON.stringify(cold.record)); continue; }
    digests[what] = cold.record.result.digest;
    say(`INFO ${what}: cold invocation ${cold.record.durationMs} ms`);
    const before = new Set(mmtIds());
    const build = trenv('template', 'build', dir);
    const out = `${build.out}${build.err}`;
    if (build.code !== 0) { fail(`daemon_guest_${what}_template_build`, out); continue; }
    let id = /MiB of initialised memory in mm_template template (\d+)/.exec(out)?.[1];
    check(id && mmtIds()?.includes(id) && !before.has(id), `daemon_guest_${what}_template_in_module`, id ? `template ${id}, ${build.ms} ms` : out);
    const runs = [invoke(dir), invoke(dir)];
    runs.forEach((r, i) => {
      const span = restoreSpan(r);
      if (what === 'maps') restoreMs.push(span?.attrs?.restoreMs);
      const same = what === 'maps'
        ? r.record?.result?.digest === cold.record.result.digest && r.record?.result?.sum === cold.record.result.sum
        : JSON.stringify(r.record?.result) === JSON.stringify(cold.record.result);
      check(r.record?.state === 'succeeded' && same, `daemon_guest_${what}_restored_${i}_same_as_cold`, r.record?.state === 'succeeded' ? `${r.ms} ms` : JSON.stringify(r.record).slice(0, 800));
      check(span?.attrs?.memPath === 'kernel-module' && /mapped from mm_template template \d+/.test(span?.attrs?.memory ?? ''), `daemon_guest_${what}_restore_${i}_span_says_kernel_module`, JSON.stringify(span?.attrs ?? r.trace?.map((s) => s.name)));
    });
    if (what === 'maps') {
      check(cold.record.result.templateMaps === 0 && runs.every((r) => r.record?.result?.templateMaps > 0), 'daemon_guest_instances_map_the_template_file', `cold ${cold.record.result.templateMaps}, restored ${runs.map((r) => r.record?.result?.templateMaps).join('/')}`);
      const rnd = runs.map((r) => `${r.record?.result?.random}/${r.record?.result?.uuid}`);
      check(new Set(rnd).size === rnd.length, 'daemon_guest_instances_reseeded', rnd.join(' '));
    }
    if (id && what === 'maps') {
      // as after a reboot or a module reload: the module template disappears behind the daemon's
      // back; the next invoke must see it, rebuild, and not leave the dead template's map file
      const tdir = path.join(STATE, 'templates', 'kmod-maps');
      const mapFile = fs.readdirSync(tdir).find((f) => /^mmt-.*\.map$/.test(f));
      const del = spawnSync(path.join(REPO, 'runtime-daemon/native/build/trenv-mmt'), ['delete', path.join(tdir, mapFile ?? 'none')], { encoding: 'utf8' });
      const again = invoke(dir);
      const logs = (again.logs ?? []).map((l) => l.text).join(' | ');
      const span = restoreSpan(again);
      const maps = fs.readdirSync(tdir).filter((f) => /^mmt-.*\.map$/.test(f));
      check(del.status === 0 && again.record?.state === 'succeeded' && new RegExp(`was rebuilt: its kernel-module template ${id} is gone`).test(logs) &&
        span?.attrs?.memPath === 'kernel-module' && again.record.result.templateMaps > 0 && again.record.result.digest === digests.maps && maps.length === 1 && maps[0] !== mapFile,
        'daemon_guest_template_gone_rebuilt', JSON.stringify({ del: del.status, state: again.record?.state, logs: logs.slice(0, 600), span: span?.attrs, maps }));
      id = /mm_template template (\d+)/.exec(span?.attrs?.memory ?? '')?.[1] ?? id;
    }
    if (id) {
      const rm = trenv('template', 'rm', names[what]);
      check(rm.code === 0 && !mmtIds()?.includes(id), `daemon_guest_${what}_template_rm_deletes_module_template`, `${rm.out}${rm.err} ids now: ${mmtIds()}`);
    }
  }
  const stop = trenv('daemon', 'stop');
  check(stop.code === 0, 'daemon_guest_stop', `${stop.out}${stop.err}`);
  const stats = fs.readFileSync('/sys/kernel/debug/mm_template/stats', 'utf8');
  check(/templates_live 0\n/.test(stats) && (mmtIds() ?? []).length === 0, 'daemon_guest_no_templates_left', stats.replace(/\n/g, ' '));

  // TRENV_MMT=0: the module is left alone, the same agent gets private copies (the userspace path)
  env.TRENV_MMT = '0';
  const off = trenv('daemon', 'start');
  if (off.code !== 0) return fail('daemon_guest_mmt_off', `${off.err}${off.out}`);
  check(/turned off by TRENV_MMT=0; using userspace templates/.test(log()), 'daemon_guest_mmt_off_said', log().split('\n').filter((l) => /mm_template|kernel module/.test(l)).pop());
  const build = trenv('template', 'build', agents.maps);
  const priv = invoke(agents.maps);
  const span = restoreSpan(priv);
  check(build.code === 0 && !/mm_template template/.test(build.out) && span?.attrs?.memPath === 'userspace' && priv.record?.result?.templateMaps === 0 && priv.record?.result?.digest === digests.maps,
    'daemon_guest_mmt_off_private_copies', JSON.stringify({ build: build.code, span: span?.attrs, result: priv.record?.result }));
  say(`INFO daemon-path restore of kmod-maps in this guest (TCG): module ${restoreMs.join('/')} ms, private copy ${span?.attrs?.restoreMs} ms`);
  trenv('template', 'rm', 'kmod-maps');
  const stop2 = trenv('daemon', 'stop');
  check(stop2.code === 0 && (mmtIds() ?? []).length === 0, 'daemon_guest_mmt_off_stop', `${stop2.out}${stop2.err}`);
  // the daemon's cgroups (v1 here, as on this host): nothing left under trenv/ in any hierarchy
  const left = [];
  for (const h of fs.readdirSync('/sys/fs/cgroup')) {
    const d = `/sys/fs/cgroup/${h}/trenv`;
    if (fs.existsSync(d)) for (const e of fs.readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) left.push(`${h}/trenv/${e.name}`);
  }
  check(left.length === 0, 'daemon_guest_no_cgroups_left', left.join(' '));
  for (const p of servers) p.kill();
}
main().catch((e) => { fail('daemon_guest_driver', e.stack); process.exitCode = 1; });
