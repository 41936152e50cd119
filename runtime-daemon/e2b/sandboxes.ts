/**
 * E2B sandboxes: what the E2B control plane creates, lists, pauses and kills. Each one holds a
 * container sandbox taken from the daemon's pool (so create costs what a repurposed start costs)
 * for its whole life, or a microVM of its own (template "base-vm", or metadata
 * {"trenv.sandbox": "microvm"}), plus its own processes, watchers and interpreter contexts. One
 * owner: every E2B sandbox is ended here (kill, timeout, daemon stop), which kills its processes
 * and gives the container back to the pool, cleaned, or destroys the microVM.
 */
import * as crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { ContainerSandbox, SandboxSpec } from '../sandbox/container';
import type { SandboxPool } from '../sandbox/pool';
import type { TemplateInfo } from '../protocol/messages';
import { loadAgent } from '../manifest/manifest';
import { procStatFields, sampleProcesses } from '../metrics/smaps';
import { Vm } from '../sandbox/vm';
import { agentFiles } from '../template/vmTemplates';
import { Freezer } from './freezer';
import type { NativeSpan } from '../sandbox/sandboxd';
import type { SandboxRecord } from './records';

/** envd features the SDKs switch on by version: stdin (0.3.0), no default user (0.4.0), closeStdin (0.5.2), octet-stream upload (0.5.7). */
export const ENVD_VERSION = '0.5.7';

export const BUILTIN_TEMPLATES = ['base', 'code-interpreter-v1', 'base-vm'];

/** Built-in templates that run in a microVM (any other template does with metadata {"trenv.sandbox": "microvm"}). */
export const VM_TEMPLATES = ['base-vm'];
export const SANDBOX_KIND_KEY = 'trenv.sandbox';

/** Limits of the built-in templates (an agent template uses its manifest's). */
const BUILTIN_SPEC: SandboxSpec = { runtime: 'python', memoryMb: 512, pids: 256, tmpfsMb: 256, network: 'none' };

export class E2bError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

export interface Disposable {
  dispose(why: string): void | Promise<void>;
}

export class E2bSandbox extends EventEmitter {
  state: 'running' | 'paused' | 'killed' = 'running';
  endAt: number;
  /** started without the pool: its container is destroyed at the end, not kept */
  cold = false;
  /** how the container was obtained (for the record's trace) */
  acquired: { how: 'fresh' | 'repurposed' | 'vm-boot'; pickNs: [bigint, bigint]; spans: NativeSpan[]; t0: bigint; t1: bigint } | undefined;
  record: SandboxRecord | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** things living in the sandbox (processes, watchers, interpreters): disposed when it ends */
  readonly owned = new Set<Disposable>();
  /** cpu ticks of the sandbox's processes at the last metrics sample */
  cpuMark: { at: number; ticks: number } | undefined;
  readonly samples: Array<{ at: number; memUsed: number; cpuPct: number; diskUsed: number; diskTotal: number }> = [];

  constructor(
    readonly id: string,
    readonly templateId: string,
    readonly alias: string | undefined,
    backing: ContainerSandbox | Vm,
    readonly token: string,
    readonly metadata: Record<string, string>,
    readonly envs: Record<string, string>,
    readonly autoPause: boolean,
    readonly startedAt: number,
    timeoutMs: number,
  ) {
    super();
    this.endAt = startedAt + timeoutMs;
    if (backing instanceof Vm) this.vm = backing;
    else this.container = backing;
  }

  /** what runs the sandbox: a container from the pool, or a microVM of its own */
  readonly container: ContainerSandbox | undefined;
  readonly vm: Vm | undefined;
  /** a microVM's processes of the sandbox user at most (RLIMIT_NPROC; a container has its pids cgroup) */
  pidsMax: number | undefined;

  get kind(): 'container' | 'microvm' {
    return this.vm ? 'microvm' : 'container';
  }

  /** The container's id or the microVM's. */
  get backingId(): string {
    return this.vm ? this.vm.cfg.id : this.container!.id;
  }

  get memoryMb(): number {
    return this.vm ? this.vm.cfg.memoryMb : this.container!.spec.memoryMb;
  }

  /** Host processes of the sandbox: the container's cgroup, or the microVM's QEMU. */
  hostPids(): number[] {
    return this.vm ? (this.vm.exited ? [] : [this.vm.pid]) : this.container!.cgroup.pids_();
  }

  /** Host memory charged to the sandbox: the container's cgroup usage, or QEMU's RSS. */
  usageBytes(): number {
    if (this.container) return this.container.cgroup.usageBytes();
    return sampleProcesses(this.hostPids()).rssKb * 1024;
  }

  armTimer(onExpire: () => void): void {
    if (this.timer) clearTimeout(this.timer);
    // setTimeout caps at ~24.8 days: longer timeouts re-arm
    const ms = Math.min(Math.max(0, this.endAt - Date.now()), 2 ** 31 - 1);
    this.timer = setTimeout(() => (Date.now() >= this.endAt ? onExpire() : this.armTimer(onExpire)), ms);
    this.timer.unref();
  }

  stopTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}

export interface CreateParams {
  templateID?: unknown;
  timeout?: unknown;
  metadata?: unknown;
  envVars?: unknown;
  autoPause?: unknown;
  allow_internet_access?: unknown;
}

/** microVMs for E2B sandboxes (the daemon's VM pool): cold boots of the guest image, destroyed at the end. */
export interface E2bVms {
  boot(memoryMb: number): Promise<Vm>;
  release(vm: Vm): Promise<void>;
  /** why microVMs cannot start here (no guest image, no QEMU), or undefined */
  unavailable(): string | undefined;
}

export interface SandboxesDeps {
  pool: SandboxPool;
  vms?: E2bVms;
  emptyApp: string;
  templates(): TemplateInfo[];
  freezer: Freezer;
  /** alive (running or paused) E2B sandboxes at most; more answer 429 */
  maxSandboxes: number;
  log(m: string): void;
}

const MAX_TIMEOUT_S = 24 * 3600;

function strRecord(v: unknown, what: string): Record<string, string> {
  if (v === undefined || v === null) return {};
  if (typeof v !== 'object' || Array.isArray(v) || Object.values(v).some((x) => typeof x !== 'string')) {
    throw new E2bError(400, `"${what}" must be an object of string values`);
  }
  return { ...(v as Record<string, string>) };
}

function timeoutSeconds(v: unknown, dflt: number): number {
  if (v === undefined || v === null) return dflt;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < 0) throw new E2bError(400, '"timeout" must be a number of seconds >= 0');
  if (v > MAX_TIMEOUT_S) throw new E2bError(400, `"timeout" is at most ${MAX_TIMEOUT_S} s (24 h)`);
  return v;
}

export class E2bSandboxes extends EventEmitter {
  private readonly byId = new Map<string, E2bSandbox>();
  private closed = false;
  private creating = 0;

  constructor(private readonly d: SandboxesDeps) {
    super();
  }

  /** A built-in template, or a trenv template / agent name: the container's spec and code dir. */
  resolveTemplate(templateId: string): { spec: SandboxSpec; appDir: string; alias?: string } {
    if (BUILTIN_TEMPLATES.includes(templateId)) return { spec: BUILTIN_SPEC, appDir: this.d.emptyApp };
    const t = this.d.templates().find((x) => x.name === templateId && x.kind !== 'vm') ?? this.d.templates().find((x) => x.name === templateId);
    if (!t) {
      throw new E2bError(
        404,
        `template "${templateId}" not found: use "base", "code-interpreter-v1", "base-vm" (a microVM) or a trenv template name (trenv template ls; build one with trenv template build <agent-dir>)`,
      );
    }
    const agent = loadAgent(t.agentDir);
    const m = agent.manifest;
    return { spec: { runtime: m.runtime, memoryMb: m.limits.memoryMb, pids: m.limits.pids, tmpfsMb: m.limits.tmpfsMb, network: m.network }, appDir: agent.dir, alias: m.name };
  }

  async create(p: CreateParams, opts: { fresh?: boolean } = {}): Promise<E2bSandbox> {
    if (this.closed) throw new E2bError(503, 'the trenv daemon is shutting down');
    if (this.byId.size + this.creating >= this.d.maxSandboxes) {
      throw new E2bError(429, `${this.d.maxSandboxes} E2B sandboxes are alive (paused ones count): kill some, or raise TRENV_E2B_MAX_SANDBOXES`);
    }
    const templateId = p.templateID === undefined || p.templateID === null ? 'base' : p.templateID;
    if (typeof templateId !== 'string' || !templateId) throw new E2bError(400, '"templateID" must be a non-empty string');
    const timeout = timeoutSeconds(p.timeout, 300);
    const metadata = strRecord(p.metadata, 'metadata');
    const envs = strRecord(p.envVars, 'envVars');
    const t = this.resolveTemplate(templateId);
    const { appDir, alias } = t;
    // built-in templates have no network unless asked (allow_internet_access: true → slirp egress);
    // an agent template keeps its manifest's choice, which a request can only narrow
    const spec: SandboxSpec = { ...t.spec };
    if (p.allow_internet_access === true && BUILTIN_TEMPLATES.includes(templateId)) spec.network = 'egress';
    if (p.allow_internet_access === false) spec.network = 'none';
    // trenv extension for comparisons: metadata {"trenv.start": "cold"} = new namespaces, cgroup and
    // mounts for this sandbox, destroyed at its end (what a start without the pool costs)
    const cold = opts.fresh === true || metadata['trenv.start'] === 'cold';
    const kind = metadata[SANDBOX_KIND_KEY] ?? (VM_TEMPLATES.includes(templateId) ? 'microvm' : 'container');
    if (kind !== 'container' && kind !== 'microvm') throw new E2bError(400, `metadata "${SANDBOX_KIND_KEY}" must be "container" or "microvm"`);
    if (kind === 'microvm') return this.createVm(templateId, t, timeout, metadata, envs, p.autoPause === true);
    let container: ContainerSandbox;
    let acquired: E2bSandbox['acquired'];
    this.creating++;
    try {
      const t0 = process.hrtime.bigint();
      const a = await this.d.pool.acquire(spec, appDir, { fresh: cold });
      container = a.sandbox;
      acquired = { how: a.how, pickNs: a.pickNs, spans: a.spans, t0, t1: process.hrtime.bigint() };
    } catch (e) {
      throw new E2bError(500, `could not start a sandbox for template "${templateId}": ${(e as Error).message}`);
    } finally {
      this.creating--;
    }
    if (this.closed) {
      await this.d.pool.release(container, false);
      throw new E2bError(503, 'the trenv daemon is shutting down');
    }
    const sb = new E2bSandbox(newSandboxId(), templateId, alias, container, crypto.randomBytes(24).toString('hex'), metadata, envs, p.autoPause === true, Date.now(), timeout * 1000);
    sb.cold = cold;
    sb.acquired = acquired;
    container.lastTemplate = `e2b:${templateId}`;
    return this.register(sb, timeout);
  }

  private register(sb: E2bSandbox, timeout: number): E2bSandbox {
    this.byId.set(sb.id, sb);
    sb.armTimer(() => void this.expire(sb));
    this.d.log(`e2b: sandbox ${sb.id} (${sb.templateId}) in ${sb.backingId}, timeout ${timeout} s`);
    this.emit('created', sb);
    this.emit('changed');
    return sb;
  }

  /**
   * A microVM sandbox: a cold boot of the guest image (no network device: allow_internet_access is
   * not honoured), the template's agent files (if any) copied to /app. Its processes and files go
   * through the guest agent (sandbox/vmExec.ts).
   */
  private async createVm(templateId: string, t: { spec: SandboxSpec; appDir: string; alias?: string }, timeout: number, metadata: Record<string, string>, envs: Record<string, string>, autoPause: boolean): Promise<E2bSandbox> {
    const vms = this.d.vms;
    const why = vms ? vms.unavailable() : 'this daemon has no microVM support';
    if (!vms || why) throw new E2bError(500, `could not start a microVM sandbox for template "${templateId}": ${why}`);
    let vm: Vm;
    let acquired: E2bSandbox['acquired'];
    this.creating++;
    try {
      const t0 = process.hrtime.bigint();
      vm = await vms.boot(t.spec.memoryMb);
      await vm.chan.request('hostname', { name: `trenv-${vm.cfg.id}` });
      if (t.appDir !== this.d.emptyApp) await vm.chan.request('files', { dir: '/app', files: agentFiles(t.appDir) }, 30_000);
      const t1 = process.hrtime.bigint();
      acquired = { how: 'vm-boot', pickNs: [t0, t0], spans: [], t0, t1 };
    } catch (e) {
      throw new E2bError(500, `could not start a microVM sandbox for template "${templateId}": ${(e as Error).message}`);
    } finally {
      this.creating--;
    }
    if (this.closed) {
      await vms.release(vm);
      throw new E2bError(503, 'the trenv daemon is shutting down');
    }
    const sb = new E2bSandbox(newSandboxId(), templateId, t.alias, vm, crypto.randomBytes(24).toString('hex'), metadata, envs, autoPause, Date.now(), timeout * 1000);
    sb.acquired = acquired;
    sb.pidsMax = t.spec.pids;
    // QEMU gone (killed from outside, guest panic): the sandbox is over
    vm.once('exit', () => void this.kill(sb, 'the microVM stopped'));
    return this.register(sb, timeout);
  }

  get(id: string): E2bSandbox | undefined {
    const sb = this.byId.get(id);
    return sb && sb.state !== 'killed' ? sb : undefined;
  }

  /** Only this sandbox's token opens it: a forged id without the token is refused like a wrong one. */
  authorize(id: string | undefined, token: string | undefined): E2bSandbox {
    const sb = id ? this.byId.get(id) : undefined;
    if (!sb || sb.state === 'killed') throw new E2bError(502, `sandbox "${id ?? ''}" not found: it was killed, timed out, or never existed`);
    const a = Buffer.from(sb.token);
    const b = Buffer.from(token ?? '');
    if (a.length !== b.length || !crypto.timingSafeEqual(a, b)) throw new E2bError(401, `missing or wrong access token for sandbox ${id}`);
    if (sb.state === 'paused') throw new E2bError(502, `sandbox ${id} is paused: connect to it (Sandbox.connect) to resume it`);
    return sb;
  }

  list(): E2bSandbox[] {
    return [...this.byId.values()].filter((s) => s.state !== 'killed');
  }

  /** The container and microVM ids held by E2B sandboxes (for the editor's sandbox list). */
  backingIds(): Map<string, E2bSandbox> {
    return new Map(this.list().map((s) => [s.backingId, s]));
  }

  setTimeout(sb: E2bSandbox, seconds: unknown): void {
    const s = timeoutSeconds(seconds, 300);
    sb.endAt = Date.now() + s * 1000;
    if (sb.state === 'running') sb.armTimer(() => void this.expire(sb));
    this.emit('changed');
  }

  private async expire(sb: E2bSandbox): Promise<void> {
    if (sb.state !== 'running') return;
    if (sb.autoPause) {
      this.d.log(`e2b: sandbox ${sb.id} timed out: pausing it (autoPause)`);
      await this.pause(sb).catch((e) => this.d.log(`e2b: pausing ${sb.id}: ${(e as Error).message}`));
      return;
    }
    this.d.log(`e2b: sandbox ${sb.id} timed out: killing it`);
    await this.kill(sb, 'timeout');
  }

  async pause(sb: E2bSandbox): Promise<void> {
    if (sb.state === 'paused') throw new E2bError(409, `sandbox ${sb.id} is already paused`);
    if (sb.state !== 'running') throw new E2bError(404, `sandbox ${sb.id} not found`);
    sb.stopTimer();
    if (sb.vm) await sb.vm.qmp.cmd('stop');
    else this.d.freezer.freeze(sb.id, sb.container!.cgroup.pids_().filter((p) => p !== sb.container!.initPid));
    sb.state = 'paused';
    sb.record?.note(sb.vm ? 'paused (QEMU stop: the vCPUs halt, memory stays)' : 'paused (cgroup freezer)');
    sb.emit('paused');
    this.emit('changed');
  }

  /** Resumes a paused sandbox (true) or only extends a running one (false). */
  resume(sb: E2bSandbox, timeout: unknown): boolean {
    const wasPaused = sb.state === 'paused';
    if (wasPaused) {
      if (sb.vm) {
        const vm = sb.vm;
        // the guest's wall clock stood still while it was stopped: set it again once it runs
        void vm.qmp
          .cmd('cont')
          .then(() => vm.chan.request('clock', { epoch_ns: (BigInt(Date.now()) * 1_000_000n).toString() }))
          .catch((e: Error) => this.d.log(`e2b: resuming ${sb.id}: ${e.message}`));
      } else this.d.freezer.thaw(sb.id);
      sb.state = 'running';
      sb.record?.note('resumed');
    }
    if (timeout !== undefined && timeout !== null) sb.endAt = Math.max(sb.endAt, Date.now() + timeoutSeconds(timeout, 300) * 1000);
    else if (wasPaused) sb.endAt = Date.now() + 300_000;
    sb.armTimer(() => void this.expire(sb));
    this.emit('changed');
    return wasPaused;
  }

  async kill(sb: E2bSandbox, why = 'killed'): Promise<void> {
    if (sb.state === 'killed') return;
    const wasPaused = sb.state === 'paused';
    sb.state = 'killed';
    sb.stopTimer();
    this.byId.delete(sb.id);
    sb.emit('killed', why);
    this.emit('ending', sb, why); // gone for the API from here: its record ends now, not after the cleanup
    for (const o of [...sb.owned]) {
      try {
        await o.dispose(why);
      } catch (e) {
        this.d.log(`e2b: ending ${sb.id}: ${(e as Error).message}`);
      }
    }
    sb.owned.clear();
    if (sb.vm) await this.d.vms?.release(sb.vm);
    else {
      // frozen tasks cannot die: thaw first, then the pool's clean kills everything in the sandbox
      if (wasPaused || this.d.freezer.has(sb.id)) this.d.freezer.thaw(sb.id);
      await this.d.pool.release(sb.container!, !this.closed && !sb.cold);
      try {
        this.d.freezer.remove(sb.id);
      } catch (e) {
        this.d.log(`e2b: removing the freezer group of ${sb.id}: ${(e as Error).message}`);
      }
    }
    this.d.log(`e2b: sandbox ${sb.id} ended (${why})`);
    this.emit('changed');
  }

  async closeAll(): Promise<void> {
    this.closed = true;
    await Promise.all(this.list().map((sb) => this.kill(sb, 'daemon stopping')));
  }
}

function newSandboxId(): string {
  return `i${crypto.randomBytes(10).toString('hex')}`;
}

/** Sum of utime+stime (clock ticks) of these host pids. */
export function cpuTicks(pids: number[]): number {
  let t = 0;
  for (const p of pids) {
    const f = procStatFields(p);
    if (f) t += Number(f[11]) + Number(f[12]); // else exited
  }
  return t;
}

/** Disk of the sandbox's writable layer: the tmpfs under its overlay root (`/rw` next to `/root` in init's view, see native/PROTOCOL.md). */
export function diskOf(initPid: number): { used: number; total: number } {
  try {
    const s = fs.statfsSync(path.join('/proc', String(initPid), 'root', 'rw'));
    return { used: (s.blocks - s.bfree) * s.bsize, total: s.blocks * s.bsize };
  } catch {
    return { used: 0, total: 0 };
  }
}
