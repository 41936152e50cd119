/**
 * Processes inside an E2B sandbox (envd's process.Process). Each one runs through trenv-enter,
 * which joins the sandbox's cgroups, namespaces and root and drops to the sandbox user, so a
 * command has exactly the sandbox's view and limits. Pipes for stdout/stderr/stdin, or a pty
 * (node-pty) when asked. In a microVM sandbox the guest agent starts the command (as the same
 * user, in its own session) and carries its streams, pty and signals (sandbox/vmExec.ts).
 * Pids are the daemon's own numbers per sandbox (not the in-sandbox pid).
 */
import { ChildProcess, spawn } from 'node:child_process';
import { EventEmitter, on } from 'node:events';
import { Code, ConnectError } from '@connectrpc/connect';
import * as os from 'node:os';
import { StringDecoder } from 'node:string_decoder';
import { procStatFields } from '../metrics/smaps';
import { SANDBOX_HOME } from '../sandbox/rootfs';
import type { GuestProcess } from '../sandbox/vmExec';
import { enterArgv, guestProcess, spawnInside } from './inside';
import type { E2bSandbox } from './sandboxes';

type Pty = {
  onData(cb: (d: string) => void): void;
  onExit(cb: (e: { exitCode: number; signal?: number }) => void): void;
  write(d: string): void;
  resize(c: number, r: number): void;
  kill(sig?: string): void;
  pid: number;
};

export interface ProcConfig {
  cmd: string;
  args: string[];
  envs: Record<string, string>;
  cwd?: string;
}

export type ProcEvent =
  | { case: 'start'; value: { pid: number } }
  | { case: 'data'; value: { output: { case: 'stdout' | 'stderr' | 'pty'; value: Uint8Array } } }
  | { case: 'end'; value: { exitCode: number; exited: boolean; status: string; error?: string } }
  | { case: 'keepalive'; value: object };

const SIGNALS: Record<number, string> = { 1: 'hangup', 2: 'interrupt', 9: 'killed', 15: 'terminated' };

export class SandboxProcess extends EventEmitter {
  child: ChildProcess | undefined;
  pty: Pty | undefined;
  end: Extract<ProcEvent, { case: 'end' }> | undefined;
  readonly startedAt = Date.now();

  constructor(readonly pid: number, readonly config: ProcConfig, readonly tag: string | undefined) {
    super();
    this.setMaxListeners(0);
  }

  get running(): boolean {
    return !this.end;
  }

  private pauses = 0;

  get outputPaused(): boolean {
    return this.pauses > 0;
  }

  /** A follower has too much unsent output: stop reading the command's output until it catches up. */
  pauseOutput(): void {
    if (this.pauses++ === 0) {
      this.child?.stdout?.pause();
      this.child?.stderr?.pause();
      (this.pty as { pause?: () => void } | undefined)?.pause?.();
    }
  }

  resumeOutput(): void {
    if (this.pauses > 0 && --this.pauses === 0) {
      this.child?.stdout?.resume();
      this.child?.stderr?.resume();
      (this.pty as { resume?: () => void } | undefined)?.resume?.();
    }
  }

  emitEvent(e: ProcEvent): void {
    if (e.case === 'end') this.end = e;
    this.emit('event', e);
  }

  /** Signals the command and what it started (see signalSession). */
  signal(sig: 'SIGKILL' | 'SIGTERM', sandboxPids: number[]): void {
    const g = guestProcess(this.child);
    if (g) {
      if (!this.end) g.kill(sig); // the guest signals the command's session
      return;
    }
    const leader = this.child?.pid ?? this.pty?.pid;
    if (!leader || this.end) return;
    signalSession(leader, sig, sandboxPids);
  }
}

/**
 * Signals the processes a trenv-enter started inside the sandbox: those of its session (it runs
 * detached or under a pty, so it leads one), but not trenv-enter itself, which would die of a
 * TERM or INT and take its child with it (PR_SET_PDEATHSIG) before the command could handle it.
 * SIGKILL also ends trenv-enter. `sandboxPids`: host pids of the sandbox's cgroup.
 */
export function signalSession(leader: number, sig: NodeJS.Signals, sandboxPids: number[]): void {
  for (const pid of sandboxPids) {
    if (pid === leader) continue;
    try {
      if (Number(procStatFields(pid)?.[3]) === leader) process.kill(pid, sig); // field 6: session id
    } catch {
      /* exited */
    }
  }
  if (sig === 'SIGKILL') {
    try {
      process.kill(leader, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}

export interface StartOptions {
  pty?: { cols: number; rows: number };
  tag?: string;
  stdin: boolean;
  /** 'root': root of a microVM's guest (envd.ts commandUser allows it only there) */
  user?: 'root';
}

function clamp(n: number | undefined, dflt: number, max: number): number {
  return Number.isInteger(n) && n! > 0 && n! <= max ? n! : dflt;
}

/** The processes of one sandbox. Disposed (everything killed) when the sandbox ends. */
export class ProcessTable {
  private readonly procs = new Map<number, SandboxProcess>();
  private nextPid = 1000;
  private standby: ChildProcess | undefined;
  private disposed = false;

  constructor(private readonly sb: E2bSandbox, private readonly enterPath: string, private readonly onProcess?: (p: SandboxProcess) => void) {}

  list(): SandboxProcess[] {
    return [...this.procs.values()].filter((p) => p.running);
  }

  find(sel: { case: 'pid'; value: number } | { case: 'tag'; value: string } | { case: undefined; value?: undefined } | undefined): SandboxProcess {
    let p: SandboxProcess | undefined;
    if (sel?.case === 'pid') p = this.procs.get(sel.value);
    else if (sel?.case === 'tag') p = [...this.procs.values()].find((x) => x.tag === sel.value && x.running) ?? [...this.procs.values()].find((x) => x.tag === sel.value);
    if (!p) throw new ConnectError(`process ${sel?.case === 'tag' ? `with tag "${sel.value}"` : `with pid ${sel?.value}`} not found`, Code.NotFound);
    return p;
  }

  /** Creates the process object (subscribe to it first), then `spawn` starts it. */
  create(config: ProcConfig, tag: string | undefined): SandboxProcess {
    // ended processes stay findable (Connect, wait) for a while: the oldest go beyond 256
    if (this.procs.size >= 256) {
      for (const [pid, old] of this.procs) {
        if (this.procs.size < 256) break;
        if (!old.running) this.procs.delete(pid);
      }
    }
    const p = new SandboxProcess(this.nextPid++, config, tag);
    this.procs.set(p.pid, p);
    this.onProcess?.(p);
    return p;
  }

  /**
   * The fixed environment trenv-enter (root, on the host until it has entered the sandbox) starts
   * with. Nothing a client chose goes here (LD_PRELOAD & co. would run as root on the host): the
   * sandbox's and the command's envs are set inside, by `env` or the standby's exports.
   */
  private baseEnv(pty: boolean): Record<string, string> {
    return {
      PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
      HOME: SANDBOX_HOME,
      USER: 'agent',
      LOGNAME: 'agent',
      LANG: 'C.UTF-8',
      E2B_SANDBOX: 'true',
      E2B_SANDBOX_ID: this.sb.id,
      ...(pty ? { TERM: 'xterm-256color' } : {}),
    };
  }

  /** The client-chosen envs of a command: the sandbox's, then the command's own (valid names only). */
  private userEnv(p: SandboxProcess): Array<[string, string]> {
    return Object.entries({ ...this.sb.envs, ...p.config.envs }).filter(([k]) => /^[A-Za-z_][A-Za-z0-9_]*$/.test(k));
  }

  /**
   * TrEnv's idea applied to commands: a shell that has already joined the sandbox (cgroups,
   * namespaces, root, user) waits for the next command, so joining is off the command's path.
   * It reads one NUL-terminated script (cd, exports, exec of the command) from stdin and execs it;
   * the rest of stdin is the command's input. One per sandbox, made again after each use.
   */
  prepareStandby(): void {
    if (this.disposed || this.standby || this.sb.state !== 'running' || this.sb.vm) return;
    const child = spawn(this.enterPath, enterArgv(this.sb, ['/usr/bin/bash', '--noprofile', '--norc', '-c', 'IFS= read -r -d "" s || exit 0; eval "$s"']), {
      env: this.baseEnv(false),
      cwd: '/',
      detached: true,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    child.on('error', () => undefined);
    child.stdin!.on('error', () => undefined);
    child.on('exit', () => {
      if (this.standby === child) this.standby = undefined;
    });
    this.standby = child;
  }

  private takeStandby(p: SandboxProcess, cwd: string): ChildProcess | undefined {
    const child = this.standby;
    this.standby = undefined;
    // the next standby is made once this command has answered (spawning blocks the event loop
    // for a moment: not while the first output is on its way)
    let done = false;
    const next = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      p.off('event', onEvent);
      setImmediate(() => this.prepareStandby());
    };
    const onEvent = (e: ProcEvent) => (e.case === 'data' || e.case === 'end') && next();
    const timer = setTimeout(next, 100);
    p.on('event', onEvent);
    if (!child?.pid || child.exitCode !== null || child.signalCode !== null) return undefined;
    const q = (s: string) => `'${s.replace(/\0/g, '').replace(/'/g, `'\\''`)}'`;
    const exports = this.userEnv(p)
      .map(([k, v]) => `export ${k}=${q(v)}; `)
      .join('');
    child.stdin!.write(`cd -- ${q(cwd)} || exit 1; ${exports}exec ${[p.config.cmd, ...p.config.args].map(q).join(' ')}\0`);
    return child;
  }

  spawn(p: SandboxProcess, o: StartOptions): void {
    const cwd = p.config.cwd || SANDBOX_HOME;
    const env = this.baseEnv(!!o.pty);
    if (this.sb.vm) {
      // the guest agent sets the environment and the dir itself: no shell in between
      const pty = o.pty ? { cols: clamp(o.pty.cols, 80, 1000), rows: clamp(o.pty.rows, 24, 1000) } : undefined;
      const root = o.user === 'root';
      const rootEnv: Record<string, string> = root ? { HOME: '/root', USER: 'root' } : {};
      const child = spawnInside(this.sb, this.enterPath, [p.config.cmd, ...p.config.args], {
        stdin: o.stdin,
        env: { ...env, ...rootEnv, ...Object.fromEntries(this.userEnv(p)) },
        cwd: root && !p.config.cwd ? '/' : cwd,
        ...(pty ? { pty } : {}),
        root,
      });
      if (pty) p.pty = guestPty(guestProcess(child)!);
      this.attach(p, child, false, pty ? 'pty' : undefined);
      return;
    }
    // inside the sandbox: a tiny sh changes to the asked dir (trenv-enter starts in /app), env sets the client's variables
    const argv = enterArgv(this.sb, [
      '/bin/sh', '-c', 'cd -- "$0" || exit 1; exec "$@"', cwd,
      '/usr/bin/env', '--', ...this.userEnv(p).map(([k, v]) => `${k}=${v}`), p.config.cmd, ...p.config.args,
    ]);
    const started = () => p.emitEvent({ case: 'start', value: { pid: p.pid } });
    const finish = (code: number | null, signal: string | number | null | undefined) => endProcess(p, code, signal);
    if (o.pty) {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const nodePty = require('node-pty') as { spawn(file: string, args: string[], o: object): Pty };
      const pty = nodePty.spawn(this.enterPath, argv, { name: 'xterm-256color', cols: clamp(o.pty.cols, 80, 1000), rows: clamp(o.pty.rows, 24, 1000), cwd: '/', env });
      p.pty = pty;
      started();
      pty.onData((d) => {
        const b = Buffer.from(d, 'utf8');
        p.emitEvent({ case: 'data', value: { output: { case: 'pty', value: b } } });
      });
      pty.onExit((e) => finish(e.signal ? null : e.exitCode, e.signal || null));
      return;
    }
    const ready = this.takeStandby(p, cwd);
    const child = ready ?? spawn(this.enterPath, argv, { env, cwd: '/', detached: true, stdio: [o.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'] });
    if (ready && !o.stdin) ready.stdin!.end();
    this.attach(p, child, !!ready);
  }

  /** Follows a started command's streams and exit (`outCase`: what its stdout is reported as). */
  private attach(p: SandboxProcess, child: ChildProcess, ready: boolean, outCase?: 'pty'): void {
    const started = () => p.emitEvent({ case: 'start', value: { pid: p.pid } });
    const finish = (code: number | null, signal: string | number | null | undefined, error?: string) => endProcess(p, code, signal, error);
    p.child = child;
    child.stdin?.on('error', () => undefined); // EPIPE when the command does not read its input
    let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    let open = 2;
    const maybeEnd = () => {
      if (exited && open === 0) finish(exited.code, exited.signal);
    };
    for (const [stream, name] of [[child.stdout!, 'stdout'], [child.stderr!, 'stderr']] as const) {
      stream.on('data', (b: Buffer) => {
        p.emitEvent({ case: 'data', value: { output: { case: outCase ?? name, value: b } } });
      });
      stream.on('close', () => {
        open--;
        maybeEnd();
      });
    }
    if (ready) started();
    else child.on('spawn', started);
    child.on('error', (e) => {
      if (!child.pid) {
        started();
        finish(127, null, this.sb.vm ? `cannot start ${p.config.cmd} in the microVM: ${e.message}` : `cannot start ${this.enterPath}: ${e.message}`);
      }
    });
    child.on('exit', (code, signal) => {
      exited = { code, signal };
      maybeEnd();
      // a background child of the command can keep the pipes open: the command has ended anyway
      // (but output held back for a slow reader is delivered first)
      const giveUp = () => {
        if (p.end) return;
        if (p.outputPaused) return void setTimeout(giveUp, 200).unref();
        child.stdout?.destroy();
        child.stderr?.destroy();
        finish(code, signal);
      };
      setTimeout(giveUp, 200).unref();
    });
  }

  /** Kills every process of the sandbox (it is ending). */
  dispose(): void {
    this.disposed = true;
    if (this.standby?.pid) {
      try {
        process.kill(-this.standby.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    this.standby = undefined;
    const pids = this.sb.hostPids();
    for (const p of this.procs.values()) p.signal('SIGKILL', pids);
  }
}

/** The end event of a command from its exit code or the signal that ended it. */
function endProcess(p: SandboxProcess, code: number | null, signal: string | number | null | undefined, error?: string): void {
  if (p.end) return;
  if (signal) {
    const n = typeof signal === 'number' ? signal : ({ SIGKILL: 9, SIGTERM: 15, SIGINT: 2, SIGHUP: 1 } as Record<string, number>)[signal] ?? 0;
    p.emitEvent({ case: 'end', value: { exitCode: -1, exited: false, status: `signal: ${SIGNALS[n] ?? signal}`, error } });
  } else {
    p.emitEvent({ case: 'end', value: { exitCode: code ?? -1, exited: true, status: `exit status ${code ?? -1}`, error } });
  }
}

/** A microVM command's terminal as the Pty the envd handlers drive (input, resize, signals). */
function guestPty(g: GuestProcess): Pty {
  const dec = new StringDecoder('utf8');
  return {
    pid: g.pid ?? 0,
    onData: (cb) => g.stdout.on('data', (b: Buffer) => cb(dec.write(b))),
    onExit: (cb) => g.on('exit', (code: number | null, sig: NodeJS.Signals | null) => cb({ exitCode: code ?? -1, signal: sig ? os.constants.signals[sig] : undefined })),
    write: (d) => void g.stdin?.write(Buffer.from(d, 'utf8')),
    resize: (c, r) => g.resize(c, r),
    kill: (sig) => void g.kill((sig as NodeJS.Signals | undefined) ?? 'SIGHUP'),
  };
}

/**
 * The events of one process for one stream (Start or Connect): start first, then what happens,
 * keepalives every `keepaliveS` seconds, the end, or an Unavailable error when the sandbox ends.
 */
export async function* follow(p: SandboxProcess, sb: E2bSandbox, signal: AbortSignal, keepaliveS: number): AsyncGenerator<ProcEvent> {
  // a client that reads slower than the command writes pauses the command's output (pipes fill,
  // the command blocks) instead of the daemon buffering without bound
  let holding = false;
  const mux = Object.assign(new EventEmitter(), {
    pause: () => {
      if (!holding) {
        holding = true;
        p.pauseOutput();
      }
    },
    resume: () => {
      if (holding) {
        holding = false;
        p.resumeOutput();
      }
    },
  });
  const ac = new AbortController();
  const abort = () => ac.abort();
  signal.addEventListener('abort', abort);
  const fwd = (e: ProcEvent) => mux.emit('e', e);
  const killed = (why: string) => mux.emit('e', { case: 'killed', why });
  const paused = () => mux.emit('e', { case: 'killed', why: 'paused' });
  p.on('event', fwd);
  sb.on('killed', killed);
  sb.on('paused', paused);
  const ka = setInterval(() => mux.emit('e', { case: 'keepalive', value: {} }), Math.max(1, keepaliveS) * 1000);
  try {
    const it = on(mux, 'e', { signal: ac.signal, highWaterMark: 64, lowWaterMark: 16 } as Parameters<typeof on>[2]);
    yield { case: 'start', value: { pid: p.pid } };
    if (p.end) {
      yield p.end;
      return;
    }
    for await (const [e] of it) {
      const ev = e as ProcEvent | { case: 'killed'; why: string };
      if (ev.case === 'killed') throw new ConnectError(`sandbox ${sb.id} ${ev.why === 'paused' ? 'was paused' : `ended (${ev.why})`} while the command was running`, Code.Unavailable);
      if (ev.case === 'start') continue;
      yield ev;
      if (ev.case === 'end') return;
    }
  } catch (e) {
    if (e instanceof ConnectError) throw e;
    if ((e as Error).name === 'AbortError') return;
    throw e;
  } finally {
    mux.resume();
    clearInterval(ka);
    signal.removeEventListener('abort', abort);
    p.off('event', fwd);
    sb.off('killed', killed);
    sb.off('paused', paused);
  }
}
