/**
 * E2B sandboxes backed by microVMs, with the real, unmodified `e2b` SDK from npm against a real
 * daemon: template "base-vm" (or metadata {"trenv.sandbox": "microvm"}) boots a QEMU guest whose
 * agent runs the commands and the file helper (sandbox/vmExec.ts). Needs the guest images of
 * scripts/setup-vm.sh (TRENV_VM_DIR); skipped without them. QEMU runs under TCG here: few VMs.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as path from 'node:path';
import * as E2B from 'e2b';
import { Sandbox as CodeSandbox } from '@e2b/code-interpreter';
import { findImage } from '../../runtime-daemon/sandbox/vm';
import { checkExitEnvAndOutput, checkFileBasics } from './e2bChecks';
import { qemusOf, ROOT, startDaemon, TestDaemon, waitFor } from './harness';

const { Sandbox, CommandExitError, SandboxError, FileNotFoundError, NotFoundError } = E2B;

let vmSkip: string | false = false;
try {
  findImage();
  execFileSync('qemu-system-x86_64', ['--version'], { stdio: 'ignore' });
} catch (e) {
  vmSkip = `no microVM support here: ${(e as Error).message.split('\n')[0]}`;
}

let d: TestDaemon;
const created: Array<{ kill(): Promise<unknown> }> = [];
const T = 240_000;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function track<T extends { kill(): Promise<unknown> }>(s: T): T {
  created.push(s);
  return s;
}

function ps(): { sandboxes: Array<{ id: string; kind: string; agent?: string; state: string }> } {
  return JSON.parse(execFileSync(process.execPath, [path.join(ROOT, 'dist/trenv.js'), '--state-dir', d.stateDir, 'ps', '--json'], { encoding: 'utf8' }));
}

before(async () => {
  if (vmSkip) return;
  process.env.TRENV_E2B_PORT = '0';
  d = await startDaemon();
  const out = execFileSync(process.execPath, [path.join(ROOT, 'dist/trenv.js'), '--state-dir', d.stateDir, 'e2b', 'env'], { encoding: 'utf8' });
  Object.assign(process.env, Object.fromEntries([...out.matchAll(/(E2B_[A-Z_]+)=(\S+)/g)].map((m) => [m[1], m[2]])));
});

after(async () => {
  if (vmSkip) return;
  for (const s of created) await s.kill().catch(() => undefined);
  const dir = d?.stateDir;
  await d?.stop();
  if (dir) assert.deepEqual(qemusOf(dir), [], 'no QEMU of the daemon survives its stop');
});

describe('E2B sandboxes in microVMs', { skip: vmSkip }, () => {
  let sb: E2B.Sandbox;

  test('create base-vm: commands run in the guest as its user, output streams, a non-zero exit is CommandExitError; trenv ps shows it', { timeout: T }, async () => {
    const t0 = Date.now();
    sb = track(await Sandbox.create('base-vm'));
    const bootMs = Date.now() - t0;
    const chunks: string[] = [];
    const r = await sb.commands.run('echo out1; echo err1 >&2; id -u; hostname; uname -r; cat /proc/1/comm; python3 -c "print(6*7)"; ulimit -u', { onStdout: (s) => void chunks.push(s) });
    assert.equal(r.exitCode, 0);
    assert.equal(r.stderr, 'err1\n');
    const lines = r.stdout.trim().split('\n');
    assert.equal(lines[0], 'out1');
    assert.equal(lines[1], '10001', 'the sandbox user, not root');
    assert.match(lines[2], /^trenv-vm-[0-9a-f]{8}$/, "the guest's hostname: its VM's id");
    assert.equal(lines[3], findImage().kernel, 'the guest kernel, not the host one');
    assert.equal(lines[4], 'trenv-guest', 'PID 1 is the guest agent');
    assert.equal(lines[5], '42');
    assert.equal(lines[6], '256', "the template's pids limit is the sandbox user's RLIMIT_NPROC");
    assert.equal(chunks.join(''), r.stdout, 'onStdout saw the same bytes');
    await checkExitEnvAndOutput(sb, 200_000);
    // user 'root': root of the guest (the VM is the boundary), its home; the sandbox user again after
    const peek = 'head -c1 /proc/1/environ >/dev/null 2>&1 && echo can-read-pid1 || echo denied';
    const root = await sb.commands.run(`id -u; echo $HOME; pwd; ${peek}`, { user: 'root' });
    assert.equal(root.stdout, '0\n/root\n/\ncan-read-pid1\n');
    assert.equal((await sb.commands.run(peek)).stdout, 'denied\n', 'the sandbox user cannot');
    assert.equal((await sb.commands.run('id -u')).stdout, '10001\n');
    const info = await sb.getInfo();
    assert.equal(info.templateId, 'base-vm');
    const row = ps().sandboxes.find((s) => s.agent?.includes(sb.sandboxId));
    assert.ok(row, 'trenv ps lists the VM of the E2B sandbox');
    assert.equal(row.kind, 'vm');
    assert.equal(`trenv-${row.id}`, lines[2]);
    console.log(`# base-vm create (cold boot under ${process.env.TRENV_VM_ACCEL ?? 'probed accel'}): ${bootMs} ms`);
  });

  test('background command + kill, stdin, SIGTERM, pty', { timeout: T }, async () => {
    const bg = await sb.commands.run('echo started; sleep 1000', { background: true });
    await waitFor(() => bg.stdout.includes('started'), 20_000, 'background output');
    assert.ok((await sb.commands.list()).some((p) => p.pid === bg.pid), 'listed while running');
    assert.equal(await bg.kill(), true);
    await assert.rejects(bg.wait(), CommandExitError);
    assert.ok(!(await sb.commands.list()).some((p) => p.pid === bg.pid), 'gone after kill');
    const left = await sb.commands.run('pgrep -x sleep || echo none');
    assert.equal(left.stdout, 'none\n', 'the kill reached the command in the guest');

    // SIGTERM through envd's SendSignal reaches the command's own trap
    const termed = await sb.commands.run("trap 'echo got-term; exit 0' TERM; echo ready; while true; do sleep 0.1; done", { background: true });
    await waitFor(() => termed.stdout.includes('ready'), 20_000, 'trap set');
    const sig = await fetch(`${process.env.E2B_SANDBOX_URL}/process.Process/SendSignal`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'e2b-sandbox-id': sb.sandboxId, 'e2b-sandbox-port': '49983', 'x-access-token': (sb as unknown as { envdAccessToken: string }).envdAccessToken },
      body: JSON.stringify({ process: { pid: termed.pid }, signal: 'SIGNAL_SIGTERM' }),
    });
    assert.equal(sig.status, 200);
    assert.match((await termed.wait()).stdout, /got-term/);

    const cat = await sb.commands.run('cat; echo "[$X]"', { background: true, stdin: true, envs: { X: 'y' } });
    await sb.commands.sendStdin(cat.pid, 'hello stdin\n');
    await sb.commands.closeStdin(cat.pid);
    assert.equal((await cat.wait()).stdout, 'hello stdin\n[y]\n');

    let out = '';
    const dec = new TextDecoder();
    const pty = await sb.pty.create({ cols: 91, rows: 27, onData: (b) => void (out += dec.decode(b)) });
    await sb.pty.resize(pty.pid, { cols: 100, rows: 30 });
    await sb.pty.sendInput(pty.pid, new TextEncoder().encode('stty size; [ -t 0 ] && echo "in a tty"; exit 3\n'));
    const end = await pty.wait().catch((e: unknown) => e);
    assert.match(out, /30 100/);
    assert.match(out, /in a tty/);
    assert.ok(end instanceof CommandExitError && end.exitCode === 3, `pty exit: ${String(end)}`);
  });

  test('files: write/read/list/exists/rename/remove; 10 MB upload and download byte-exact', { timeout: T }, async () => {
    await checkFileBasics(sb);
    assert.equal((await sb.files.getInfo('dir/sub/b.txt')).owner, 'agent');
    assert.equal((await sb.commands.run('cat dir/sub/b.txt')).stdout, 'hello file', 'the file is in the guest');
    // watchDir: the file helper's fs.watch is inotify in the guest
    const seen: string[] = [];
    const h = await sb.files.watchDir('dir', (e) => void seen.push(`${e.type}:${e.name}`));
    await sb.commands.run('echo x > dir/watched.txt');
    await waitFor(() => seen.includes('create:watched.txt'), 20_000, `a create event, got ${JSON.stringify(seen)}`);
    await h.stop();
    await sb.files.remove('dir');
    assert.equal(await sb.files.exists('dir'), false);
    await assert.rejects(sb.files.read('dir/sub/b.txt'), FileNotFoundError);
    await assert.rejects(sb.files.write('/usr/bin/evil', 'x'), (e: unknown) => e instanceof SandboxError && !(e instanceof FileNotFoundError));
    // host files are out of reach: the guest has its own root
    await assert.rejects(sb.files.read(path.join(d.stateDir, 'e2b-api-key')), FileNotFoundError);

    const data = crypto.randomBytes(10 * 1024 * 1024);
    const sha = (b: Uint8Array) => crypto.createHash('sha256').update(b).digest('hex');
    const t0 = Date.now();
    await sb.files.write('/tmp/big.bin', data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength) as ArrayBuffer);
    const back = await sb.files.read('/tmp/big.bin', { format: 'bytes' });
    assert.equal(back.byteLength, data.length);
    assert.equal(sha(back), sha(data));
    assert.equal((await sb.commands.run('sha256sum /tmp/big.bin')).stdout.split(' ')[0], sha(data), 'the guest holds the same bytes');
    console.log(`# 10 MB up + down through the guest: ${Date.now() - t0} ms`);
  });

  test('kill ends the QEMU process; metadata {"trenv.sandbox":"microvm"} with the code interpreter; pause/resume; timeout', { timeout: T }, async () => {
    const running = qemusOf(d.stateDir).length;
    assert.ok(running >= 1, 'the base-vm sandbox has a QEMU');
    await sb.kill();
    await waitFor(() => qemusOf(d.stateDir).length === running - 1, 10_000, 'QEMU gone after kill');
    await assert.rejects(Sandbox.getInfo(sb.sandboxId), NotFoundError);
    assert.ok(!ps().sandboxes.some((s) => s.agent?.includes(sb.sandboxId)), 'no longer in trenv ps');

    const m = track(await CodeSandbox.create({ metadata: { 'trenv.sandbox': 'microvm' }, timeoutMs: 120_000 }));
    assert.match((await m.commands.run('hostname')).stdout, /^trenv-vm-/);
    // the code interpreter's python runs in the guest too, its state kept across cells
    await m.runCode('import socket; x = 6');
    const cell = await m.runCode('print(socket.gethostname()); x * 7');
    assert.match(cell.logs.stdout.join(''), /^trenv-vm-/);
    assert.equal(cell.text, '42');
    const bg = await m.commands.run('i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done', { background: true });
    await sleep(1000);
    assert.equal(await Sandbox.pause(m.sandboxId), true);
    assert.equal((await Sandbox.getInfo(m.sandboxId)).state, 'paused');
    const again = await Sandbox.connect(m.sandboxId);
    const c1 = Number((await again.files.read('/tmp/count')).trim());
    await sleep(1500);
    const c2 = Number((await again.files.read('/tmp/count')).trim());
    assert.ok(c2 > c1, `the loop runs on after resume (${c1} -> ${c2})`);
    await bg.kill();
    await assert.rejects(Sandbox.create('base', { metadata: { 'trenv.sandbox': 'floppy' } }), SandboxError);
    await again.setTimeout(1000);
    let alive = true;
    for (let i = 0; i < 100 && alive; i++) {
      await sleep(200);
      alive = (await Sandbox.list().nextItems()).some((s) => s.sandboxId === m.sandboxId);
    }
    assert.equal(alive, false, 'killed at its timeout');
    await waitFor(() => qemusOf(d.stateDir).length === 0, 10_000, 'no QEMU left after the timeout');
  });
});
