/**
 * The E2B-compatible API with the real, unmodified SDKs from npm: `e2b` (current), `e2b-old`
 * (e2b 2.14 under an npm alias) and `@e2b/code-interpreter`, against a real daemon with real
 * container sandboxes. The SDKs are pointed at the daemon with the three variables `trenv e2b env`
 * prints, as a user would.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import * as E2B from 'e2b';
import * as E2BOld from 'e2b-old';
import { Sandbox as CodeSandbox } from '@e2b/code-interpreter';
import { Methods } from '../../runtime-daemon/protocol/messages';
import { checkExitEnvAndOutput, checkFileBasics } from './e2bChecks';
import { cgroupDirsOfInstance, EXAMPLES, processesOfInstance, ROOT, startDaemon, TestDaemon, waitFor } from './harness';

const { Sandbox, CommandExitError, AuthenticationError, SandboxError, NotFoundError, FileNotFoundError, TimeoutError } = E2B;

let d: TestDaemon;
let env: Record<string, string>;
const created: Array<{ kill(): Promise<unknown> }> = [];

function track<T extends { kill(): Promise<unknown> }>(s: T): T {
  created.push(s);
  return s;
}

/** no test may hang: an SDK call that never settles fails its test */
const T = 180_000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  process.env.TRENV_E2B_PORT = '0'; // the daemon picks a free port and records it (tests run next to other daemons)
  d = await startDaemon();
  const out = execFileSync(process.execPath, [path.join(ROOT, 'dist/trenv.js'), '--state-dir', d.stateDir, 'e2b', 'env'], { encoding: 'utf8' });
  env = Object.fromEntries([...out.matchAll(/(E2B_[A-Z_]+)=(\S+)/g)].map((m) => [m[1], m[2]]));
  Object.assign(process.env, env);
});

after(async () => {
  for (const s of created) await s.kill().catch(() => undefined);
  const instance = d?.paths.instanceId;
  await d?.stop();
  if (instance) {
    assert.deepEqual(processesOfInstance(instance), [], 'no process of the daemon survives its stop');
    assert.deepEqual(cgroupDirsOfInstance(instance), [], 'no cgroup of the daemon survives its stop');
    assert.equal(fs.existsSync(`/sys/fs/cgroup/freezer/trenv-e2b/${instance}`), false, 'no freezer group left');
  }
});

describe('setup', () => {
  test('`trenv e2b env` prints the three variables; the key is e2b_ + 40 hex in a 0600 file', () => {
    assert.match(env.E2B_API_KEY, /^e2b_[0-9a-f]{40}$/);
    assert.match(env.E2B_API_URL, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(env.E2B_SANDBOX_URL, env.E2B_API_URL);
    const st = fs.statSync(path.join(d.stateDir, 'e2b-api-key'));
    assert.equal(st.mode & 0o777, 0o600);
  });
});

describe('commands', () => {
  test('create from base; run streams stdout/stderr inside the sandbox as its user; non-zero exit is CommandExitError', { timeout: T }, async () => {
    const sb = track(await Sandbox.create());
    assert.match(sb.sandboxId, /^i[0-9a-f]+$/);
    const chunks: string[] = [];
    const r = await sb.commands.run('echo out1; echo err1 >&2; id -u; hostname; python3 -c "print(6*7)"; node -e "console.log(40+2)"', {
      onStdout: (s) => void chunks.push(s),
    });
    assert.equal(r.exitCode, 0);
    assert.equal(r.stderr, 'err1\n');
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines[0], 'out1');
    assert.equal(lines[1], '10001', 'runs as the sandbox user, not root');
    assert.match(lines[2], /^trenv-/, 'in the sandbox UTS namespace');
    assert.deepEqual(lines.slice(3), ['42', '42'], 'python3 and node are available');
    assert.equal(chunks.join(''), r.stdout, 'onStdout saw the same bytes');
    // and a lot of output, fast
    await checkExitEnvAndOutput(sb, 1_500_000);
    // user 'root' is refused in a container (it would be root of the host's kernel), with the reason;
    // the default name 'user' is the sandbox user; unknown names are refused
    await assert.rejects(sb.commands.run('id -u', { user: 'root' }), /user 'root' is not available in container sandboxes/);
    assert.equal((await sb.commands.run('id -u', { user: 'user' })).stdout, '10001\n');
    await assert.rejects(sb.commands.run('id -u', { user: 'mallory' as 'user' }), /unknown user 'mallory'/);
  });

  test('allowInternetAccess: a base sandbox with the slirp network (off by default)', { timeout: T }, async () => {
    const off = track(await Sandbox.create());
    assert.equal((await off.getInfo()).allowInternetAccess, false);
    const ifaces = async (sb: E2B.Sandbox) => (await sb.commands.run("tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '")).stdout.trim().split('\n').sort();
    assert.deepEqual(await ifaces(off), ['lo']);
    const on = track(await Sandbox.create({ allowInternetAccess: true }));
    assert.equal((await on.getInfo()).allowInternetAccess, true);
    assert.deepEqual(await ifaces(on), ['lo', 'tap0']);
  });

  test('background commands: list, kill; stdin; pty', { timeout: T }, async () => {
    const sb = track(await Sandbox.create({ envs: { SANDBOX_WIDE: 'yes' } }));
    const bg = await sb.commands.run('echo started; sleep 1000', { background: true });
    await waitFor(() => bg.stdout.includes('started'), 10_000, 'background output');
    const listed = await sb.commands.list();
    assert.ok(listed.some((p) => p.pid === bg.pid), 'listed while running');
    assert.equal(await bg.kill(), true);
    await assert.rejects(bg.wait(), CommandExitError);
    assert.ok(!(await sb.commands.list()).some((p) => p.pid === bg.pid), 'gone after kill');
    assert.equal(await sb.commands.kill(999_999), false, 'unknown pid');

    // Connect: a second handle on a running command gets its later output and its end
    const ticker = await sb.commands.run('for i in 1 2 3 4 5 6; do echo tick$i; sleep 0.2; done; exit 2', { background: true });
    const again = await sb.commands.connect(ticker.pid);
    const res = await again.wait().catch((e: unknown) => e);
    assert.ok(res instanceof CommandExitError && res.exitCode === 2, String(res));
    assert.match(res.stdout, /tick6\n$/);
    // SIGTERM through the API (sendSignal is what kill sends; here a trap shows it was TERM)
    const termed = await sb.commands.run("trap 'echo got-term; exit 0' TERM; echo ready; while true; do sleep 0.1; done", { background: true });
    await waitFor(() => termed.stdout.includes('ready'), 10_000, 'trap set');
    const sig = await fetch(`${env.E2B_SANDBOX_URL}/process.Process/SendSignal`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'e2b-sandbox-id': sb.sandboxId, 'e2b-sandbox-port': '49983', 'x-access-token': accessToken(sb) },
      body: JSON.stringify({ process: { pid: termed.pid }, signal: 'SIGNAL_SIGTERM' }),
    });
    assert.equal(sig.status, 200);
    const tr = await termed.wait();
    assert.match(tr.stdout, /got-term/);

    const cat = await sb.commands.run('cat; echo "[$SANDBOX_WIDE]"', { background: true, stdin: true });
    await sb.commands.sendStdin(cat.pid, 'hello stdin\n');
    await sb.commands.closeStdin(cat.pid);
    const r = await cat.wait();
    assert.equal(r.stdout, 'hello stdin\n[yes]\n');

    let out = '';
    const dec = new TextDecoder();
    const pty = await sb.pty.create({ cols: 91, rows: 27, onData: (b) => void (out += dec.decode(b)) });
    await sb.pty.sendInput(pty.pid, new TextEncoder().encode('stty size; [ -t 0 ] && echo "in a tty"; exit 3\n'));
    const end = await pty.wait().catch((e: unknown) => e);
    assert.match(out, /27 91/);
    // Update: resize a running pty
    let out2 = '';
    const pty2 = await sb.pty.create({ cols: 80, rows: 24, onData: (b) => void (out2 += dec.decode(b)) });
    await sb.pty.resize(pty2.pid, { cols: 120, rows: 40 });
    await sb.pty.sendInput(pty2.pid, new TextEncoder().encode('stty size; exit\n'));
    await pty2.wait();
    assert.match(out2, /40 120/);
    assert.match(out, /in a tty/);
    assert.ok(end instanceof CommandExitError && end.exitCode === 3, `pty exit: ${String(end)}`);
  });

  test('the sandbox being killed while a command streams ends the call with an SDK error, not a hang', { timeout: T }, async () => {
    const sb = await Sandbox.create();
    const t0 = Date.now();
    const run = sb.commands.run('echo go; sleep 1000', { timeoutMs: 60_000 }).then(
      () => 'finished',
      (e: unknown) => e,
    );
    await sleep(500);
    await Sandbox.kill(sb.sandboxId);
    const outcome = await run;
    assert.ok(outcome instanceof SandboxError, `an SDK error, got ${String(outcome)}`);
    assert.ok(Date.now() - t0 < 20_000);
    await assert.rejects(sb.commands.run('echo again'), (e: unknown) => e instanceof SandboxError);
  });
});

describe('files', () => {
  test('write/read/list/exists/makeDir/rename/remove, paths relative to home', { timeout: T }, async () => {
    const sb = track(await Sandbox.create());
    await checkFileBasics(sb);
    const info = await sb.files.getInfo('dir/sub/b.txt');
    assert.equal(info.size, 10);
    assert.equal(info.owner, 'agent');
    await sb.files.remove('dir');
    assert.equal(await sb.files.exists('dir'), false);
    await assert.rejects(sb.files.read('dir/sub/b.txt'), FileNotFoundError);
    await assert.rejects(sb.files.list('nowhere'), FileNotFoundError);
    await assert.rejects(sb.files.write('/usr/bin/evil', 'x'), (err: unknown) => err instanceof SandboxError && !(err instanceof FileNotFoundError));
    // the sandbox's own code may kill the file helper: the next file call starts a new one
    await sb.files.write('again.txt', 'still works');
    const killed = await sb.commands.run('pkill -x node; sleep 0.2; pgrep -x node || echo none');
    assert.equal(killed.stdout, 'none\n');
    assert.equal(await sb.files.read('again.txt'), 'still works');
  });

  test('paths resolve inside the sandbox root: .., absolute symlinks and /proc do not reach host files', { timeout: T }, async () => {
    const secret = `/tmp/trenv-e2b-secret-${crypto.randomBytes(4).toString('hex')}`;
    fs.writeFileSync(secret, 'host secret');
    try {
      const sb = track(await Sandbox.create());
      await assert.rejects(sb.files.read(secret), FileNotFoundError);
      await assert.rejects(sb.files.read(`../../../../..${secret}`), FileNotFoundError);
      await sb.commands.run(`ln -s ${secret} /home/agent/link; ln -s ../../../../../.. /home/agent/up`);
      await assert.rejects(sb.files.read('/home/agent/link'), FileNotFoundError);
      await assert.rejects(sb.files.read(`/home/agent/up${secret}`), FileNotFoundError);
      await assert.rejects(sb.files.read(`/proc/1/root${secret}`), (e: unknown) => e instanceof SandboxError);
      await sb.files.write('/tmp/x', 'inside');
      assert.equal(fs.readFileSync(secret, 'utf8'), 'host secret');
      assert.equal(fs.existsSync('/tmp/x') && fs.readFileSync('/tmp/x', 'utf8') === 'inside', false, 'a sandbox write does not land on the host');
    } finally {
      fs.rmSync(secret, { force: true });
    }
  });

  test('10 MB upload and download (multipart, octet-stream + gzip), byte-exact', { timeout: T }, async () => {
    const sb = track(await Sandbox.create());
    const data = crypto.randomBytes(10 * 1024 * 1024);
    const sha = (b: Uint8Array) => crypto.createHash('sha256').update(b).digest('hex');
    await sb.files.write('big.bin', data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) as ArrayBuffer);
    const back = await sb.files.read('big.bin', { format: 'bytes' });
    assert.equal(back.byteLength, data.length);
    assert.equal(sha(back), sha(data));
    await sb.files.write('big2.bin', new Blob([data]), { gzip: true });
    const back2 = await sb.files.read('big2.bin', { format: 'bytes', gzip: true });
    assert.equal(sha(back2), sha(data));
    const ls = await sb.commands.run('stat -c %s big.bin big2.bin');
    assert.equal(ls.stdout, `${data.length}\n${data.length}\n`);
  });

  test('watchDir streams events; the polling watcher (CreateWatcher/GetWatcherEvents/RemoveWatcher) too', { timeout: T }, async () => {
    const sb = track(await Sandbox.create());
    await sb.files.makeDir('w');
    const seen: Array<{ name: string; type: string }> = [];
    const h = await sb.files.watchDir('w', (e) => void seen.push({ name: e.name, type: e.type }));
    await sb.files.write('w/new.txt', 'x');
    await waitFor(() => seen.some((e) => e.name === 'new.txt' && e.type === 'create'), 10_000, `create event, got ${JSON.stringify(seen)}`);
    await sb.commands.run('rm w/new.txt');
    await waitFor(() => seen.some((e) => e.name === 'new.txt' && e.type === 'remove'), 10_000, 'remove event');
    await h.stop();

    // the polling watcher as the SDKs' generated client calls it (Connect JSON)
    const call = async (method: string, body: unknown) => {
      const r = await fetch(`${env.E2B_SANDBOX_URL}/filesystem.Filesystem/${method}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'e2b-sandbox-id': sb.sandboxId, 'e2b-sandbox-port': '49983', 'x-access-token': accessToken(sb) },
        body: JSON.stringify(body),
      });
      return { status: r.status, body: (await r.json()) as Record<string, unknown> };
    };
    const c = await call('CreateWatcher', { path: '/home/agent/w' });
    assert.equal(c.status, 200);
    await sb.files.write('w/polled.txt', 'y');
    let events: Array<{ name: string; type: string }> = [];
    async function poll() {
      const r = await call('GetWatcherEvents', { watcherId: c.body.watcherId });
      events = events.concat((r.body.events as typeof events) ?? []);
    }
    for (let i = 0; i < 50 && !events.some((e) => e.name === 'polled.txt'); i++) {
      await poll();
      await sleep(100);
    }
    assert.ok(events.some((e) => e.name === 'polled.txt' && e.type === 'EVENT_TYPE_CREATE'), JSON.stringify(events));
    assert.equal((await call('RemoveWatcher', { watcherId: c.body.watcherId })).status, 200);
    assert.equal((await call('GetWatcherEvents', { watcherId: c.body.watcherId })).status, 404);
  });
});

function accessToken(sb: unknown): string {
  return (sb as { envdAccessToken: string }).envdAccessToken;
}

describe('lifecycle', () => {
  test('list with metadata filter and paging, get, kill (twice), connect to an unknown id', { timeout: T }, async () => {
    const tag = crypto.randomBytes(4).toString('hex');
    const sbs = await Promise.all([0, 1, 2].map(() => Sandbox.create({ metadata: { tag } }).then(track)));
    const other = track(await Sandbox.create({ metadata: { tag: 'other' } }));
    const pager = Sandbox.list({ query: { metadata: { tag } }, limit: 2 });
    const first = await pager.nextItems();
    assert.equal(first.length, 2);
    assert.equal(pager.hasNext, true);
    const second = await pager.nextItems();
    assert.equal(second.length, 1);
    assert.equal(pager.hasNext, false);
    assert.deepEqual([...first, ...second].map((s) => s.sandboxId).sort(), sbs.map((s) => s.sandboxId).sort());
    assert.ok([...first, ...second].every((s) => s.state === 'running' && s.metadata.tag === tag && s.templateId === 'base'));
    const info = await Sandbox.getInfo(other.sandboxId);
    assert.equal(info.metadata.tag, 'other');
    assert.ok(info.endAt.getTime() > info.startedAt.getTime());
    assert.equal(await Sandbox.kill(other.sandboxId), true);
    assert.equal(await Sandbox.kill(other.sandboxId), false, 'killing twice answers false');
    await assert.rejects(Sandbox.getInfo(other.sandboxId), NotFoundError);
    await assert.rejects(Sandbox.connect('i0000000000000000dead'), NotFoundError);
    assert.equal(await sbs[0].isRunning(), true);
  });

  test('timeouts are enforced and extendable', { timeout: T }, async () => {
    const short = await Sandbox.create({ timeoutMs: 1500 });
    const extended = track(await Sandbox.create({ timeoutMs: 1500 }));
    await extended.setTimeout(60_000);
    await sleep(3000);
    await assert.rejects(Sandbox.getInfo(short.sandboxId), NotFoundError, 'the short one was killed at its timeout');
    assert.equal(await short.isRunning(), false);
    assert.equal((await extended.commands.run('echo alive')).stdout, 'alive\n');
  });

  test('pause freezes the sandbox, connect resumes it with its processes; autoPause pauses at the timeout', { timeout: T }, async () => {
    const sb = track(await Sandbox.create());
    const bg = await sb.commands.run('i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.05; done', { background: true });
    await sleep(300);
    assert.equal(await Sandbox.pause(sb.sandboxId), true);
    assert.equal((await Sandbox.getInfo(sb.sandboxId)).state, 'paused');
    assert.equal(await Sandbox.pause(sb.sandboxId), false, 'already paused');
    await assert.rejects(sb.commands.run('echo while paused', { requestTimeoutMs: 10_000 }), (e: unknown) => e instanceof SandboxError);
    const listedPaused = await Sandbox.list({ query: { state: ['paused'] } }).nextItems();
    assert.ok(listedPaused.some((s) => s.sandboxId === sb.sandboxId));
    const again = await Sandbox.connect(sb.sandboxId);
    assert.equal((await Sandbox.getInfo(sb.sandboxId)).state, 'running');
    const c1 = Number((await again.files.read('/tmp/count')).trim());
    await sleep(400);
    const c2 = Number((await again.files.read('/tmp/count')).trim());
    assert.ok(c2 > c1, `the loop runs on after resume (${c1} -> ${c2})`);
    assert.ok((await again.commands.list()).some((p) => p.pid === bg.pid));

    const ap = track(await Sandbox.create({ timeoutMs: 1500, lifecycle: { onTimeout: 'pause' } }));
    await ap.files.write('keep.txt', 'kept');
    await sleep(3000);
    assert.equal((await Sandbox.getInfo(ap.sandboxId)).state, 'paused');
    const back = await Sandbox.connect(ap.sandboxId, { timeoutMs: 60_000 });
    assert.equal(await back.files.read('keep.txt'), 'kept');
  });

  test('metrics report memory and disk of the sandbox', { timeout: T }, async () => {
    const sb = track(await Sandbox.create());
    await sb.commands.run('head -c 8000000 /dev/zero > /home/agent/f; python3 -c "x = bytearray(30 * 1024 * 1024); import time; time.sleep(0.5)" & sleep 0.3; true');
    const m = await sb.getMetrics();
    assert.ok(m.length >= 1);
    const last = m[m.length - 1];
    assert.ok(last.memUsed > 0 && last.memTotal === 512 * 1024 * 1024, JSON.stringify(last));
    assert.equal(last.diskTotal, 256 * 1024 * 1024, 'the writable layer of the base template');
    assert.ok(last.diskUsed >= 8_000_000, JSON.stringify(last));
    assert.ok(last.cpuCount >= 1);
    assert.ok(last.timestamp instanceof Date);
    // the batch form (GET /sandboxes/metrics?sandbox_ids=), as the API spec has it
    const r = await fetch(`${env.E2B_API_URL}/sandboxes/metrics?sandbox_ids=${sb.sandboxId},i-gone`, { headers: { 'x-api-key': env.E2B_API_KEY } });
    const batch = (await r.json()) as { sandboxes: Record<string, { memUsed: number; timestampUnix: number }> };
    assert.deepEqual(Object.keys(batch.sandboxes), [sb.sandboxId]);
    assert.ok(batch.sandboxes[sb.sandboxId].memUsed > 0 && batch.sandboxes[sb.sandboxId].timestampUnix > 0);
  });

  test('E2B sandboxes show in the daemon sandbox list (Sandboxes tree, trenv ps) and leave it when killed', { timeout: T }, async () => {
    const sb = await Sandbox.create();
    const listed = await d.client.rpc.sendRequest(Methods.listSandboxes);
    const mine = listed.find((s) => s.agent?.includes(sb.sandboxId));
    assert.ok(mine, JSON.stringify(listed.map((s) => s.agent)));
    assert.equal(mine.state, 'busy');
    assert.ok(mine.memory && mine.memory.rssKb >= 0);
    const ps = execFileSync(process.execPath, [path.join(ROOT, 'dist/trenv.js'), '--state-dir', d.stateDir, 'ps'], { encoding: 'utf8' });
    const rows = ps.split('\n').filter((l) => l.includes(sb.sandboxId));
    assert.equal(rows.length, 2, `trenv ps shows its record and its sandbox:\n${ps}`);
    assert.ok(rows.some((l) => l.includes(mine.id) && l.includes('busy')));
    await sb.kill();
    const after = await d.client.rpc.sendRequest(Methods.listSandboxes);
    assert.ok(!after.some((s) => s.agent?.includes(sb.sandboxId)));
  });
});

describe('records', () => {
  test('an E2B sandbox is recorded like an invocation: its start trace, command logs, memory; Stop from trenv ends it', { timeout: T }, async () => {
    const sb = await Sandbox.create();
    await sb.commands.run('echo recorded-out; echo recorded-err >&2');
    await assert.rejects(sb.commands.run('exit 5'), CommandExitError);
    await sb.getMetrics(); // takes a sample now
    const list = await d.client.rpc.sendRequest(Methods.listInvocations, { limit: 50 });
    const rec = list.find((r) => r.agent.includes(sb.sandboxId));
    assert.ok(rec, 'listed with the invocations (trenv ps, the Invocations tree)');
    assert.equal(rec.state, 'running');
    const det = await d.client.rpc.sendRequest(Methods.getInvocation, { id: rec.id });
    const text = det.logs.map((l) => `${l.stream}:${l.text}`).join('');
    assert.match(text, /system:\$ echo recorded-out; echo recorded-err >&2/);
    assert.match(text, /stdout:recorded-out/);
    assert.match(text, /stderr:recorded-err/);
    assert.match(text, /exit status 5/);
    assert.ok(det.trace.some((t) => t.name === 'pool.pick') && det.trace.some((t) => t.name === 'sandbox.ready'), det.trace.map((t) => t.name).join(','));
    assert.ok(det.memory.length >= 1 && det.memory[0].processes >= 1);
    const k = await d.client.rpc.sendRequest(Methods.kill, { id: rec.id });
    assert.equal(k.killed, true);
    const until = Date.now() + 10_000;
    while ((await sb.isRunning()) && Date.now() < until) await sleep(50);
    assert.equal(await sb.isRunning(), false, 'Stop on the record ended the sandbox');
    const after = await d.client.rpc.sendRequest(Methods.getInvocation, { id: rec.id });
    assert.equal(after.record.state, 'killed');
  });
});

describe('templates', () => {
  test('an agent template: the sandbox has the agent code at /app and its runtime; unknown templates are not found', { timeout: T }, async () => {
    const agentDir = path.join(EXAMPLES, 'py-text-stats');
    await d.client.rpc.sendRequest(Methods.buildTemplate, { agentDir });
    const sb = track(await Sandbox.create('py-text-stats'));
    const r = await sb.commands.run('cd /app && ls && python3 -c "import main; print(callable(main.handler))"');
    assert.match(r.stdout, /main\.py/);
    assert.match(r.stdout, /True\n$/);
    assert.equal((await sb.getInfo()).templateId, 'py-text-stats');
    assert.equal((await sb.getInfo()).memoryMB, 128, "the agent manifest's memory limit");
    // the limits hold for E2B commands: 400 MB in a 128 MB sandbox does not work
    const big = await sb.commands.run('python3 -c "b = bytearray(400 * 1024 * 1024); b[::4096] = b\"x\" * len(b[::4096]); print(\"allocated\")"').catch((e: unknown) => e);
    assert.ok(big instanceof CommandExitError, `expected the memory limit to stop it, got ${JSON.stringify(big)}`);
    assert.doesNotMatch(big.stdout, /allocated/);
    await assert.rejects(Sandbox.create('no-such-template'), (e: unknown) => e instanceof SandboxError && /not found/.test((e as Error).message));
  });
});

describe('code interpreter', () => {
  test('runCode keeps variables across calls, streams stdout, returns results and errors with tracebacks', { timeout: T }, async () => {
    const sb = track(await CodeSandbox.create());
    const a = await sb.runCode('x = 20\nprint("set")');
    assert.deepEqual(a.logs.stdout, ['set\n']);
    assert.equal(a.error, undefined);
    const b = await sb.runCode('x * 2 + 2');
    assert.equal(b.text, '42');
    const err = await sb.runCode('def f():\n    return 1 / 0\nf()');
    assert.equal(err.error?.name, 'ZeroDivisionError');
    assert.match(err.error?.traceback ?? '', /in f/);
    assert.match(err.error?.traceback ?? '', /ZeroDivisionError/);
    const ctx = await sb.createCodeContext({ cwd: '/tmp' });
    const c = await sb.runCode('import os\nprint(os.getcwd())\n"x" in dir()', { context: ctx });
    assert.deepEqual(c.logs.stdout, ['/tmp\n']);
    assert.equal(c.text, 'False', 'a new context has its own state');
    assert.equal((await sb.runCode('x')).text, '20', 'the default context still has x');
    // a run the client gives up on is interrupted (KeyboardInterrupt), the context lives on
    await assert.rejects(sb.runCode('import time\nwhile True: time.sleep(0.01)', { timeoutMs: 1500 }), (e: unknown) => e instanceof Error);
    assert.equal((await sb.runCode('x + 1')).text, '21', 'the interrupted context kept its state');
    // (requestTimeoutMs: the SDK leaves this timer running when a call fails; a short one lets the test process exit)
    await assert.rejects(sb.runCode('1', { language: 'r', requestTimeoutMs: 5_000 }), (e: unknown) => e instanceof Error);
    const ids = (await sb.listCodeContexts()).map((c) => c.id);
    assert.ok(ids.includes(ctx.id) && ids.includes('default'), JSON.stringify(ids));
    await sb.runCode('y = 5', { context: ctx });
    await sb.restartCodeContext(ctx);
    const lost = await sb.runCode('y', { context: ctx });
    assert.equal(lost.error?.name, 'NameError', 'a restarted context starts empty');
    await sb.removeCodeContext(ctx);
    assert.ok(!(await sb.listCodeContexts()).some((c) => c.id === ctx.id));
    await assert.rejects(sb.runCode('1', { context: ctx, requestTimeoutMs: 5_000 }), (e: unknown) => e instanceof Error);
  });
});

describe('code interpreter charts', () => {
  const hasMpl = (() => {
    try {
      execFileSync('/usr/bin/python3', ['-c', 'import matplotlib'], { stdio: 'ignore' });
      return true;
    } catch {
      return false;
    }
  })();
  test('a matplotlib figure comes back as a png result', { timeout: T, skip: hasMpl ? false : 'python3-matplotlib is not installed (apt-get install python3-matplotlib)' }, async () => {
    const sb = track(await CodeSandbox.create());
    const r = await sb.runCode('import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title("squares")\nprint("plotted")', { timeoutMs: 120_000 });
    assert.equal(r.error, undefined, String(r.error?.traceback));
    const png = r.results.find((x) => x.png);
    assert.ok(png, `results: ${JSON.stringify(r.results.map((x) => x.formats()))}`);
    assert.equal(Buffer.from(png.png!, 'base64').subarray(1, 4).toString(), 'PNG');
    assert.deepEqual(r.logs.stdout, ['plotted\n']);
  });
});

describe('security', () => {
  test('wrong API key, browser Origin, forged sandbox id, missing token, unknown sandbox: refused', { timeout: T }, async () => {
    await assert.rejects(Sandbox.create({ apiKey: `e2b_${'0'.repeat(40)}` }), AuthenticationError);
    await assert.rejects(Sandbox.list({ apiKey: `e2b_${'1'.repeat(40)}` }).nextItems(), AuthenticationError);
    const a = track(await Sandbox.create());
    const b = track(await Sandbox.create());
    await b.files.write('/home/agent/b-only.txt', 'b secret');
    const url = `${env.E2B_SANDBOX_URL}/files?path=/home/agent/b-only.txt`;
    const get = (h: Record<string, string>) => fetch(url, { headers: { 'e2b-sandbox-port': '49983', ...h } });
    assert.equal((await get({ 'e2b-sandbox-id': b.sandboxId, 'x-access-token': accessToken(b) })).status, 200, 'with its own token');
    assert.equal((await get({ 'e2b-sandbox-id': b.sandboxId, 'x-access-token': accessToken(a) })).status, 401, "another sandbox's token");
    assert.equal((await get({ 'e2b-sandbox-id': b.sandboxId })).status, 401, 'no token');
    assert.equal((await get({ 'e2b-sandbox-id': 'i00000000000000000000', 'x-access-token': accessToken(a) })).status, 502, 'unknown sandbox');
    const rpc = await fetch(`${env.E2B_SANDBOX_URL}/process.Process/List`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'e2b-sandbox-port': '49983', 'e2b-sandbox-id': b.sandboxId, 'x-access-token': accessToken(a) },
      body: '{}',
    });
    assert.equal(rpc.status, 401);
    const origin = await fetch(`${env.E2B_API_URL}/v2/sandboxes`, { headers: { 'x-api-key': env.E2B_API_KEY, origin: 'https://evil.example' } });
    assert.equal(origin.status, 403);
    // DNS rebinding: the request arrives on 127.0.0.1 but names another host
    const rebound = await new Promise<number>((resolve, reject) => {
      const u = new URL(env.E2B_API_URL);
      http
        .get({ host: '127.0.0.1', port: u.port, path: '/v2/sandboxes', headers: { host: `evil.example:${u.port}`, 'x-api-key': env.E2B_API_KEY } }, (res) => {
          res.resume();
          resolve(res.statusCode ?? 0);
        })
        .on('error', reject);
    });
    assert.equal(rebound, 403);
    // through the SDK: a handle with a forged token cannot run anything
    const forgedSb = new (Sandbox as unknown as new (o: object) => E2B.Sandbox)({ sandboxId: b.sandboxId, envdAccessToken: accessToken(a), envdVersion: '0.5.7' });
    await assert.rejects(forgedSb.commands.run('echo no'), (e: unknown) => e instanceof AuthenticationError || e instanceof SandboxError);
    await assert.rejects(forgedSb.files.read('/home/agent/b-only.txt'), (e: unknown) => e instanceof AuthenticationError || e instanceof SandboxError);
  });

  test('client-chosen envs never reach the root helper on the host (LD_PRELOAD of a host library)', { timeout: T }, async () => {
    const tag = crypto.randomBytes(4).toString('hex');
    const marker = `/tmp/trenv-e2b-preloaded-${tag}`;
    const src = `/tmp/trenv-e2b-preload-${tag}.c`;
    const so = `/tmp/trenv-e2b-preload-${tag}.so`;
    fs.writeFileSync(src, `#include <stdio.h>\n__attribute__((constructor)) static void hit(void) { FILE *f = fopen("${marker}", "a"); if (f) { fputs("x", f); fclose(f); } }\n`);
    execFileSync('gcc', ['-shared', '-fPIC', '-o', so, src]);
    try {
      const sb = track(await CodeSandbox.create({ envs: { LD_PRELOAD: so } }));
      for (let i = 0; i < 3; i++) await sb.commands.run('true', { envs: { LD_PRELOAD: so } });
      await sb.commands.run('true', { background: true }).then((h) => h.wait());
      const pty = await sb.pty.create({ cols: 80, rows: 24, onData: () => undefined, envs: { LD_PRELOAD: so } });
      await sb.pty.sendInput(pty.pid, new TextEncoder().encode('exit\n'));
      await pty.wait().catch(() => undefined);
      await sb.runCode('1');
      assert.equal(fs.existsSync(marker), false, 'the host library was loaded by a process on the host');
      const r = await sb.commands.run('echo "$LD_PRELOAD"');
      assert.equal(r.stdout.trim(), so, 'the variable is set inside the sandbox');
    } finally {
      for (const f of [marker, src, so]) fs.rmSync(f, { force: true });
    }
  });

  test('the listener is on loopback only', () => {
    assert.match(env.E2B_API_URL, /127\.0\.0\.1/);
    const ss = execFileSync('ss', ['-Hltn'], { encoding: 'utf8' });
    const port = new URL(env.E2B_API_URL).port;
    const lines = ss.split('\n').filter((l) => l.includes(`:${port} `));
    assert.ok(lines.length >= 1 && lines.every((l) => l.includes(`127.0.0.1:${port}`)), lines.join('\n'));
  });
});

describe('limits', () => {
  test('at most TRENV_E2B_MAX_SANDBOXES alive: one more is the SDK\'s RateLimitError; a kill makes room', { timeout: T }, async () => {
    const saved = { ...process.env };
    process.env.TRENV_E2B_MAX_SANDBOXES = '2';
    const d2 = await startDaemon();
    delete process.env.TRENV_E2B_MAX_SANDBOXES;
    try {
      const out = execFileSync(process.execPath, [path.join(ROOT, 'dist/trenv.js'), '--state-dir', d2.stateDir, 'e2b', 'env'], { encoding: 'utf8' });
      Object.assign(process.env, Object.fromEntries([...out.matchAll(/(E2B_[A-Z_]+)=(\S+)/g)].map((m) => [m[1], m[2]])));
      const a = await Sandbox.create();
      const b = await Sandbox.create();
      await assert.rejects(Sandbox.create(), (e: Error) => {
        assert.equal(e.name, 'RateLimitError', `${e.name}: ${e.message}`);
        assert.match(e.message, /2 E2B sandboxes are alive/);
        return true;
      });
      await a.kill();
      const c = await Sandbox.create();
      assert.equal((await c.commands.run('echo ok')).stdout, 'ok\n');
      await b.kill();
      await c.kill();
    } finally {
      for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
      Object.assign(process.env, saved);
      await d2.stop();
    }
  });
});

describe('older SDK', () => {
  test('e2b 2.14 (npm alias e2b-old): create, run, files, list, kill', { timeout: T }, async () => {
    const sb = await E2BOld.Sandbox.create();
    try {
      const r = await sb.commands.run('echo old-sdk; id -u');
      assert.equal(r.stdout, 'old-sdk\n10001\n');
      await assert.rejects(sb.commands.run('exit 4'), (e: unknown) => e instanceof E2BOld.CommandExitError && e.exitCode === 4);
      await sb.files.write('o.txt', 'old');
      assert.equal(await sb.files.read('o.txt'), 'old');
      const listed = await E2BOld.Sandbox.list().nextItems();
      assert.ok(listed.some((s) => s.sandboxId === sb.sandboxId));
    } finally {
      await sb.kill();
    }
    await assert.rejects(E2BOld.Sandbox.getInfo(sb.sandboxId), E2BOld.NotFoundError);
  });
});

void TimeoutError;
