/**
 * A Python fork zygote: the initialised interpreter of one template (shim + preloaded system
 * modules), running as root in the host namespaces, that forks one child per instance; the child
 * joins the target sandbox and drops privileges before any agent code runs (see
 * runtimes/python/trenv_zygote.py). Owner of that process: start, readiness, memory, stop.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as readline from 'node:readline';
import { readRollup, Rollup } from '../metrics/smaps';

export interface ZygoteReady {
  pid: number;
  python?: string;
  preloaded?: string[];
  skipped?: Array<{ module: string; reason: string }> | Record<string, string>;
  load_ms?: number;
}

export class ZygoteError extends Error {}

export class Zygote {
  private proc: ChildProcess | undefined;
  ready: ZygoteReady | undefined;
  private stderrTail: string[] = [];
  onExit: ((why: string) => void) | undefined;

  constructor(
    readonly socketPath: string,
    private readonly script: string,
    private readonly preload: string[],
    private readonly python = '/usr/bin/python3',
  ) {}

  get pid(): number | undefined {
    return this.proc?.pid;
  }

  get alive(): boolean {
    return !!this.proc && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  async start(timeoutMs = 30_000): Promise<ZygoteReady> {
    fs.rmSync(this.socketPath, { force: true });
    const args = ['-I', '-S', '-B', this.script, '--socket', this.socketPath];
    if (this.preload.length) args.push('--preload', this.preload.join(','));
    // stdin stays a pipe we hold: when the daemon dies, the zygote sees EOF and exits
    const proc = spawn(this.python, args, { stdio: ['pipe', 'pipe', 'pipe'], env: { PATH: '/usr/bin:/bin', LANG: 'C.UTF-8' } });
    this.proc = proc;
    proc.stderr!.on('data', (d: Buffer) => {
      this.stderrTail.push(...d.toString().split('\n').filter(Boolean));
      this.stderrTail = this.stderrTail.slice(-20);
    });
    proc.stdin!.on('error', () => undefined);
    const ready = await new Promise<ZygoteReady>((resolve, reject) => {
      const t = setTimeout(() => {
        proc.kill('SIGKILL');
        reject(new ZygoteError(`the template's zygote did not become ready within ${timeoutMs} ms: ${this.stderrTail.join(' | ')}`));
      }, timeoutMs);
      const rl = readline.createInterface({ input: proc.stdout! });
      rl.on('line', (line) => {
        if (!line.startsWith('ready ')) return;
        clearTimeout(t);
        try {
          resolve(JSON.parse(line.slice(6)) as ZygoteReady);
        } catch {
          resolve({ pid: proc.pid! });
        }
      });
      proc.once('exit', (code, sig) => {
        clearTimeout(t);
        reject(new ZygoteError(`the template's zygote exited during start (${sig ?? code}): ${this.stderrTail.join(' | ') || 'no output'}`));
      });
    });
    this.ready = ready;
    proc.once('exit', (code, sig) => this.onExit?.(`zygote exited (${sig ?? code}) ${this.stderrTail.slice(-3).join(' | ')}`));
    return ready;
  }

  memory(): Rollup | undefined {
    return this.pid ? readRollup(this.pid) : undefined;
  }

  async stop(): Promise<void> {
    const p = this.proc;
    if (!p || !this.alive) return;
    this.onExit = undefined;
    const gone = new Promise<void>((r) => p.once('exit', () => r()));
    p.stdin!.end();
    p.kill('SIGTERM');
    const t = setTimeout(() => p.kill('SIGKILL'), 2000);
    await gone;
    clearTimeout(t);
    fs.rmSync(this.socketPath, { force: true });
  }
}
