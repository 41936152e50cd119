/**
 * Processes inside a microVM, host side: the guest agent starts them (as the user, in the dir and
 * with the environment asked) and multiplexes their stdin, stdout, stderr, signals, terminal size
 * and exit over the virtio-serial port org.trenv.exec (frames: vmFrames.ts; protocol:
 * native/guest/PROTOCOL.md). A GuestProcess looks like a node ChildProcess (stdin, stdout,
 * stderr streams; 'spawn', 'error', 'exit', 'close'; kill) so code written for processes started
 * through trenv-enter in a container drives it the same way.
 *
 * Flow control both ways: a stdout/stderr reader that stops reading makes the guest stop reading
 * the command's output (X_HOLD / X_RELEASE, the command blocks on a full pipe); input waits for the
 * socket to drain, and the guest stops reading the port while it holds more than 8 MiB of input.
 */
import { EventEmitter } from 'node:events';
import type * as net from 'node:net';
import * as os from 'node:os';
import { Readable, Writable } from 'node:stream';
import { FramePort } from './vmFrames';

export const EXEC_PORT_NAME = 'org.trenv.exec';

const enum X {
  Spawn = 1,
  Stdin = 2,
  CloseStdin = 3,
  Signal = 4,
  Resize = 5,
  Hold = 6,
  Release = 7,
}
const enum G {
  Started = 1,
  Stdout = 2,
  Stderr = 3,
  Exit = 4,
}

export interface GuestSpawnOptions {
  argv: string[];
  /** the whole environment of the process (nothing is inherited from the guest agent) */
  env: Record<string, string>;
  cwd: string;
  uid: number;
  gid: number;
  stdin: boolean;
  pty?: { cols: number; rows: number };
  /** a small program (up to 64 KiB) the process reads from its fd 3 */
  fd3?: string;
  /** RLIMIT_NPROC: processes of its uid at most (the sandbox's pids limit) */
  nproc?: number;
}

export class GuestProcess extends EventEmitter {
  /** the process's pid inside the guest (set once it started) */
  pid: number | undefined;
  exitCode: number | null = null;
  signalCode: NodeJS.Signals | null = null;
  readonly stdout: Readable;
  readonly stderr: Readable;
  readonly stdin: Writable | null;
  private held = 0;
  ended = false;

  constructor(private readonly ch: GuestExec, readonly id: number, withStdin: boolean) {
    super();
    const out = (): Readable =>
      new Readable({
        highWaterMark: 256 * 1024,
        read: () => {
          if (this.held) {
            this.held = 0;
            this.ch.send(X.Release, this.id);
          }
        },
      });
    this.stdout = out();
    this.stderr = out();
    this.stdin = withStdin
      ? new Writable({
          write: (chunk: Buffer, _enc, cb) => {
            if (this.ended) return cb();
            if (this.ch.send(X.Stdin, this.id, chunk)) cb();
            else this.ch.drained(cb);
          },
          final: (cb) => {
            if (!this.ended) this.ch.send(X.CloseStdin, this.id);
            cb();
          },
        })
      : null;
  }

  /** Output from the guest; a full buffer asks the guest to stop reading the command's output. */
  output(which: 'stdout' | 'stderr', b: Buffer): void {
    if (!(which === 'stdout' ? this.stdout : this.stderr).push(Buffer.from(b)) && !this.held) {
      this.held = 1;
      this.ch.send(X.Hold, this.id);
    }
  }

  /** Signals the command's process group (its session) in the guest. */
  kill(sig: NodeJS.Signals | number = 'SIGTERM'): boolean {
    const n = typeof sig === 'number' ? sig : os.constants.signals[sig];
    if (this.ended || !n || n < 1 || n > 64) return false;
    this.ch.send(X.Signal, this.id, Buffer.from([n]));
    return true;
  }

  resize(cols: number, rows: number): void {
    const b = Buffer.alloc(4);
    b.writeUInt16BE(Math.min(Math.max(1, cols | 0), 1000), 0);
    b.writeUInt16BE(Math.min(Math.max(1, rows | 0), 1000), 2);
    if (!this.ended) this.ch.send(X.Resize, this.id, b);
  }

  /** The end: from the guest's exit report, or the channel closing (the VM stopped). */
  finish(code: number | null, signal: NodeJS.Signals | null, error?: Error): void {
    if (this.ended) return;
    this.ended = true;
    this.exitCode = code;
    this.signalCode = signal;
    if (error) this.emit('error', error);
    this.stdout.push(null);
    this.stderr.push(null);
    this.stdin?.destroy();
    this.emit('exit', code, signal);
    this.emit('close', code, signal);
  }
}

/** One VM's exec port: starts processes in the guest and routes their frames. */
export class GuestExec {
  private readonly port: FramePort;
  private readonly procs = new Map<number, GuestProcess>();
  private nextId = 1;
  private closed = false;
  private waiters: Array<() => void> = [];

  constructor(sock: net.Socket) {
    this.port = new FramePort(sock, (t, id, p) => this.onFrame(t, id, p), () => this.fail('the guest sent a malformed frame'));
    sock.on('close', () => this.fail('the VM stopped'));
    sock.on('drain', () => {
      const w = this.waiters;
      this.waiters = [];
      for (const cb of w) cb();
    });
  }

  send(type: X, id: number, payload?: Buffer): boolean {
    return this.closed ? true : this.port.send(type, id, payload);
  }

  drained(cb: () => void): void {
    if (this.closed) cb();
    else this.waiters.push(cb);
  }

  /** Starts a process in the guest ('spawn' once it runs, or 'error' and 'exit' when it cannot). */
  spawn(o: GuestSpawnOptions): GuestProcess {
    const id = this.nextId++;
    const p = new GuestProcess(this, id, o.stdin || !!o.pty);
    this.procs.set(id, p);
    if (this.closed) {
      setImmediate(() => p.finish(127, null, new Error('the VM stopped')));
      return p;
    }
    const env = Object.entries(o.env).map(([k, v]) => `${k}=${v}`);
    const req = { argv: o.argv, env, cwd: o.cwd, uid: o.uid, gid: o.gid, stdin: o.stdin, ...(o.pty ? { pty: o.pty } : {}), ...(o.fd3 !== undefined ? { fd3: o.fd3 } : {}), ...(o.nproc ? { nproc: o.nproc } : {}) };
    this.send(X.Spawn, id, Buffer.from(JSON.stringify(req)));
    return p;
  }

  get running(): number {
    return this.procs.size;
  }

  private onFrame(type: number, id: number, payload: Buffer): void {
    const p = this.procs.get(id);
    if (!p) return;
    if (type === G.Started) {
      const m = parse(payload);
      if (typeof m.pid === 'number') {
        p.pid = m.pid;
        p.emit('spawn');
      } else {
        this.procs.delete(id);
        p.finish(127, null, new Error(typeof m.error === 'string' ? m.error : 'the guest could not start the process'));
      }
    } else if (type === G.Stdout || type === G.Stderr) p.output(type === G.Stdout ? 'stdout' : 'stderr', payload);
    else if (type === G.Exit) {
      this.procs.delete(id);
      const st = String(parse(payload).status ?? '');
      const m = /^(exited|signaled):(\d+)$/.exec(st);
      if (m?.[1] === 'exited') p.finish(Number(m[2]), null);
      else p.finish(null, signalName(Number(m?.[2] ?? 9)));
    }
  }

  private fail(why: string): void {
    if (this.closed) return;
    this.closed = true;
    for (const p of this.procs.values()) p.finish(null, 'SIGKILL', p.pid ? undefined : new Error(why));
    this.procs.clear();
    const w = this.waiters;
    this.waiters = [];
    for (const cb of w) cb();
  }

  close(): void {
    this.fail('closed');
    this.port.sock.destroy();
  }
}

function parse(b: Buffer): Record<string, unknown> {
  try {
    const v = JSON.parse(b.toString('utf8')) as unknown;
    return v && typeof v === 'object' ? (v as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

function signalName(n: number): NodeJS.Signals {
  const e = Object.entries(os.constants.signals).find(([, v]) => v === n);
  return (e?.[0] ?? 'SIGKILL') as NodeJS.Signals;
}
