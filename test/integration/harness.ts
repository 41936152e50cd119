/**
 * Integration-test harness: starts the real bundled daemon (dist/trenvd.js) as its own process with
 * a temporary state dir, connects to it like the CLI does, and cleans everything up.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { connect, DaemonClient } from '../../runtime-daemon/cli/client';
import { readInfo, StatePaths } from '../../runtime-daemon/daemon/state';
import type { InvocationRecord, InvokeParams } from '../../runtime-daemon/protocol/messages';
import { Methods } from '../../runtime-daemon/protocol/messages';

export const ROOT = path.resolve(__dirname, '../../..');
export const EXAMPLES = path.join(ROOT, 'examples');
export const PROBE = path.join(ROOT, 'test/fixtures/agents/probe');

export interface TestDaemon {
  stateDir: string;
  paths: StatePaths;
  proc: ChildProcess;
  client: DaemonClient;
  log(): string;
  invoke(p: InvokeParams): Promise<InvocationRecord>;
  stop(): Promise<void>;
  kill9(): Promise<void>;
}

export function tempStateDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-it-'));
}

export async function startDaemon(stateDir = tempStateDir()): Promise<TestDaemon> {
  const paths = new StatePaths(stateDir);
  fs.mkdirSync(stateDir, { recursive: true });
  const logFile = path.join(stateDir, 'trenvd.test.log');
  const fd = fs.openSync(logFile, 'a');
  const proc = spawn(process.execPath, [path.join(ROOT, 'dist/trenvd.js'), '--state-dir', stateDir], { stdio: ['ignore', fd, fd] });
  fs.closeSync(fd);
  let exitCode: number | null = null;
  proc.on('exit', (c) => (exitCode = c ?? -1));
  const until = Date.now() + 15_000;
  for (;;) {
    const info = readInfo(paths);
    if (info && info.pid === proc.pid) break;
    if (exitCode !== null) throw new Error(`daemon exited (${exitCode}):\n${fs.readFileSync(logFile, 'utf8')}`);
    if (Date.now() > until) throw new Error(`daemon not ready:\n${fs.readFileSync(logFile, 'utf8')}`);
    await new Promise((r) => setTimeout(r, 25));
  }
  const client = await connect(stateDir);
  const d: TestDaemon = {
    stateDir,
    paths,
    proc,
    client,
    log: () => fs.readFileSync(logFile, 'utf8'),
    invoke: (p) => client.rpc.sendRequest(Methods.invoke, p),
    async stop() {
      client.close();
      if (exitCode !== null) return;
      const gone = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGTERM');
      await gone;
    },
    async kill9() {
      client.close();
      const gone = new Promise((r) => proc.once('exit', r));
      proc.kill('SIGKILL');
      await gone;
    },
  };
  return d;
}

/** Copies an agent folder to a temp dir, optionally rewriting its manifest. */
export function copyAgent(src: string, patch: (m: Record<string, unknown>) => void = () => undefined): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-agent-'));
  fs.cpSync(src, dir, { recursive: true });
  fs.chmodSync(dir, 0o755); // mkdtemp makes 0700: the sandbox user must be able to read the code
  const mf = path.join(dir, 'trenv.json');
  const m = JSON.parse(fs.readFileSync(mf, 'utf8')) as Record<string, unknown>;
  patch(m);
  fs.writeFileSync(mf, JSON.stringify(m, null, 2));
  return dir;
}

/** Host pids whose cgroup path lies under this daemon's cgroup subtree. */
export function processesOfInstance(instanceId: string): number[] {
  const out: number[] = [];
  for (const p of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      if (fs.readFileSync(`/proc/${p}/cgroup`, 'utf8').includes(`/trenv/${instanceId}/`)) out.push(Number(p));
    } catch {
      /* exited */
    }
  }
  return out;
}

/** QEMU processes whose command line points into this state dir. */
export function qemusOf(stateDir: string): number[] {
  const out: number[] = [];
  for (const p of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const cmd = fs.readFileSync(`/proc/${p}/cmdline`, 'utf8');
      if (cmd.startsWith('qemu-system') && cmd.includes(stateDir)) out.push(Number(p));
    } catch {
      /* gone */
    }
  }
  return out;
}

export function cgroupDirsOfInstance(instanceId: string): string[] {
  const out: string[] = [];
  for (const base of ['/sys/fs/cgroup/memory', '/sys/fs/cgroup/pids', '/sys/fs/cgroup']) {
    const d = path.join(base, 'trenv', instanceId);
    try {
      for (const e of fs.readdirSync(d, { withFileTypes: true })) if (e.isDirectory()) out.push(path.join(d, e.name));
    } catch {
      /* none */
    }
  }
  return out;
}

export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export async function waitFor(cond: () => boolean, ms = 5000, what = 'condition'): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A TCP port on the host that leads to a unix socket (what `trenv-enter expose` is inside a sandbox). */
export function forward(socketPath: string): Promise<{ port: number; close(): void }> {
  const server = net.createServer((c) => {
    const u = net.createConnection(socketPath);
    c.pipe(u).pipe(c);
    u.on('error', () => c.destroy());
    c.on('error', () => u.destroy());
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({ port: (server.address() as net.AddressInfo).port, close: () => server.close() })));
}
