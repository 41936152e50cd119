/**
 * Client of trenv-sandboxd, the native sandbox manager (native/PROTOCOL.md). Owns the child process:
 * starts it, correlates replies with commands, dispatches run streams, and reports its death.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import { encodeFrame, FrameDecoder, parseSpans, splitFields } from './frames';

export interface NativeSpan {
  name: string;
  startNs: bigint;
  endNs: bigint;
}

export interface CreateOptions {
  hostname: string;
  lower: string;
  mnt: string;
  rwBytes: number;
  rbinds: Array<[src: string, dst: string]>;
  app: string;
  cgroupProcs: string[];
  net: 'none' | 'slirp';
  slirpPath?: string;
}

export interface RunOptions {
  argv: string[];
  env: string[];
  cwd: string;
  uid: number;
  gid: number;
  stdin: Buffer;
}

export interface RunHandlers {
  /** `spans`: how a spawned instance got ready (sandboxd/zygote steps), when reported */
  onStarted(pid: number, monoNs: bigint, spans?: NativeSpan[]): void;
  onData(stream: 'out' | 'err' | 'chan', monoNs: bigint, data: Buffer): void;
  onExit(status: string, monoNs: bigint): void;
  onError(message: string): void;
}

type Waiter = { resolve: (fields: string[]) => void; reject: (e: Error) => void; expect: string };

export class SandboxdError extends Error {}

export class Sandboxd extends EventEmitter {
  private proc: ChildProcess | undefined;
  private readonly decoder = new FrameDecoder();
  /** pending create/reset/destroy/swap replies, keyed by sandbox id (one at a time per sandbox) */
  private readonly waiters = new Map<string, Waiter>();
  private readonly runs = new Map<string, RunHandlers>();
  private pingSeq = 0;
  private closed = false;

  constructor(private readonly binary: string, private readonly stderrLog?: string) {
    super();
  }

  start(): void {
    if (!fs.existsSync(this.binary)) {
      throw new SandboxdError(`native sandbox manager not found at ${this.binary}: build it with "npm run build:native" (needs gcc and make)`);
    }
    const errOut = this.stderrLog ? fs.openSync(this.stderrLog, 'a') : 'inherit';
    this.proc = spawn(this.binary, [], { stdio: ['pipe', 'pipe', errOut] });
    if (typeof errOut === 'number') fs.closeSync(errOut);
    this.proc.stdout!.on('data', (chunk: Buffer) => this.onChunk(chunk));
    this.proc.stdin!.on('error', () => undefined); // EPIPE after its death is reported by 'exit'
    this.proc.on('exit', (code, signal) => {
      this.closed = true;
      const why = new SandboxdError(`native sandbox manager exited (${signal ?? code}); its sandboxes are gone`);
      for (const w of this.waiters.values()) w.reject(why);
      this.waiters.clear();
      for (const r of this.runs.values()) r.onError(why.message);
      this.runs.clear();
      this.emit('exit', why);
    });
  }

  get pid(): number | undefined {
    return this.proc?.pid;
  }

  get alive(): boolean {
    return !!this.proc && !this.closed;
  }

  private send(fields: Array<string | Buffer>): void {
    if (!this.proc || this.closed) throw new SandboxdError('native sandbox manager is not running');
    this.proc.stdin!.write(encodeFrame(fields));
  }

  private expectReply(sbx: string, expect: string): Promise<string[]> {
    if (this.waiters.has(sbx)) return Promise.reject(new SandboxdError(`sandbox ${sbx} is busy with another operation`));
    return new Promise((resolve, reject) => this.waiters.set(sbx, { resolve, reject, expect }));
  }

  private onChunk(chunk: Buffer): void {
    let frames: Buffer[];
    try {
      frames = this.decoder.push(chunk);
    } catch (e) {
      this.emit('protocolError', e);
      this.proc?.kill('SIGKILL');
      return;
    }
    for (const f of frames) this.onFrame(f);
  }

  private onFrame(body: Buffer): void {
    const head = splitFields(body, 2)[0].toString();
    if (head === 'data') {
      const [, sbx, run, stream, mono, data] = splitFields(body, 6);
      const h = this.runs.get(`${sbx}/${run}`);
      h?.onData(stream.toString() as 'out' | 'err' | 'chan', BigInt(mono.toString()), Buffer.from(data));
      return;
    }
    const fields = splitFields(body, 64).map((b) => b.toString());
    const [kind, sbx, a, b, c] = fields;
    switch (kind) {
      case 'started': {
        this.runs.get(`${sbx}/${a}`)?.onStarted(Number(b), BigInt(c), parseSpans(fields.find((x) => x.startsWith('spans='))));
        return;
      }
      case 'prepared': {
        this.emit('prepared', sbx, parseSpans(fields.find((x) => x.startsWith('spans='))));
        return;
      }
      case 'exit': {
        const key = `${sbx}/${a}`;
        const h = this.runs.get(key);
        this.runs.delete(key);
        h?.onExit(b, BigInt(c));
        return;
      }
      case 'created':
      case 'reset-done':
      case 'swapped':
      case 'destroyed': {
        const w = this.waiters.get(sbx);
        if (w && w.expect === kind) {
          this.waiters.delete(sbx);
          w.resolve(fields);
        }
        return;
      }
      case 'pong': {
        this.emit(`pong:${sbx}`);
        return;
      }
      case 'died': {
        this.emit('died', sbx, a);
        return;
      }
      case 'error': {
        // error <sbx> <run|-> <message>
        const message = fields.slice(3).join(' ');
        if (a && a !== '-') {
          // about a run: only that run may hear it (a late kill of a finished run is harmless)
          const h = this.runs.get(`${sbx}/${a}`);
          this.runs.delete(`${sbx}/${a}`);
          if (h) h.onError(message);
          else this.emit('runError', sbx, a, message);
          return;
        }
        if (/^(prepare: |connect to zygote)/.test(message)) {
          // prepare is best effort and has no waiter: never let its error answer another command
          this.emit('prepareError', sbx, message);
          return;
        }
        const w = sbx && sbx !== '-' ? this.waiters.get(sbx) : undefined;
        if (w) {
          this.waiters.delete(sbx);
          w.reject(new SandboxdError(message));
          return;
        }
        this.emit('protocolError', new SandboxdError(message));
        return;
      }
      default:
        this.emit('protocolError', new SandboxdError(`unknown reply "${kind}"`));
    }
  }

  async create(sbx: string, o: CreateOptions): Promise<{ initPid: number; spans: NativeSpan[] }> {
    const fields: string[] = ['create', sbx, `hostname=${o.hostname}`, `lower=${o.lower}`, `mnt=${o.mnt}`, `rwsize=${o.rwBytes}`];
    for (const [s, d] of o.rbinds) fields.push(`rbind=${s}:${d}`);
    fields.push(`app=${o.app}`);
    for (const c of o.cgroupProcs) fields.push(`cgroup=${c}`);
    fields.push(`net=${o.net}`);
    if (o.slirpPath) fields.push(`slirp=${o.slirpPath}`);
    const p = this.expectReply(sbx, 'created');
    this.send(fields);
    const r = await p;
    return { initPid: Number(r[2]), spans: parseSpans(r.find((f) => f.startsWith('spans='))) };
  }

  /** Kills leftovers and resets the writable layer; with `app` also swaps the app dir. */
  async reset(sbx: string, app?: string): Promise<NativeSpan[]> {
    const p = this.expectReply(sbx, 'reset-done');
    this.send(app ? ['reset', sbx, `app=${app}`] : ['reset', sbx]);
    const r = await p;
    return parseSpans(r.find((f) => f.startsWith('spans=')));
  }

  /** Swaps only the app dir (the hot path of a repurposed start). */
  async swapApp(sbx: string, app: string): Promise<NativeSpan[]> {
    const p = this.expectReply(sbx, 'swapped');
    this.send(['swap', sbx, `app=${app}`]);
    const r = await p;
    return parseSpans(r.find((f) => f.startsWith('spans=')));
  }

  async destroy(sbx: string): Promise<void> {
    const p = this.expectReply(sbx, 'destroyed');
    this.send(['destroy', sbx]);
    await p;
  }

  run(sbx: string, run: string, o: RunOptions, h: RunHandlers): void {
    this.startRun(['run', sbx, run, ...o.argv.map((a) => `arg=${a}`)], sbx, run, o, h);
  }

  /** Like run, but the process is forked by a template's zygote and joins this sandbox. */
  spawn(sbx: string, run: string, zygoteSocket: string, o: Omit<RunOptions, 'argv'>, h: RunHandlers): void {
    this.startRun(['spawn', sbx, run, `zygote=${zygoteSocket}`], sbx, run, o, h);
  }

  private startRun(head: string[], sbx: string, run: string, o: Omit<RunOptions, 'argv'>, h: RunHandlers): void {
    const key = `${sbx}/${run}`;
    if (this.runs.has(key)) throw new SandboxdError(`run ${run} already active in ${sbx}`);
    const fields: Array<string | Buffer> = [...head, ...o.env.map((e) => `env=${e}`), `cwd=${o.cwd}`, `uid=${o.uid}`, `gid=${o.gid}`];
    fields.push(Buffer.concat([Buffer.from('stdin='), o.stdin]));
    this.runs.set(key, h);
    try {
      this.send(fields);
    } catch (e) {
      this.runs.delete(key);
      throw e;
    }
  }

  /**
   * Asks the template's zygote to fork a waiter that joins this sandbox now, so that the next
   * `spawn` skips the slow part (cgroup attach, setns). Best effort: the answer comes as a
   * `prepared` or `prepareError` event; nothing waits for it.
   */
  prepare(sbx: string, zygoteSocket: string): void {
    if (this.alive) this.send(['prepare', sbx, `zygote=${zygoteSocket}`]);
  }

  kill(sbx: string, run: string): void {
    if (this.alive) this.send(['kill', sbx, run]);
  }

  ping(timeoutMs = 2000): Promise<void> {
    const token = String(++this.pingSeq);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new SandboxdError('native sandbox manager did not answer a ping')), timeoutMs);
      this.once(`pong:${token}`, () => {
        clearTimeout(t);
        resolve();
      });
      this.send(['ping', token]);
    });
  }

  /** Closing stdin makes sandboxd kill every sandbox and exit. */
  async stop(timeoutMs = 3000): Promise<void> {
    if (!this.proc || this.closed) return;
    const exited = new Promise<void>((r) => this.proc!.once('exit', () => r()));
    this.proc.stdin!.end();
    const t = setTimeout(() => this.proc?.kill('SIGKILL'), timeoutMs);
    await exited;
    clearTimeout(t);
  }
}
