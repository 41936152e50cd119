/**
 * Container sandboxes: the driver that creates, cleans, repurposes and destroys them through
 * trenv-sandboxd, with their cgroups. One owner: every sandbox made here is destroyed here (or by
 * sandboxd dying with the daemon, then by cleanupLeftovers at the next start).
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { CgroupManager, SandboxCgroup } from './cgroup';
import { baseBinds, ensureBaseRootfs } from './rootfs';
import { NativeSpan, RunHandlers, RunOptions, Sandboxd } from './sandboxd';

export interface SandboxSpec {
  runtime: string;
  memoryMb: number;
  pids: number;
  tmpfsMb: number;
  network: 'none' | 'egress';
}

/**
 * What a repurposed sandbox must already have: its namespaces and mounts (network mode, the size
 * of its writable layer). Memory and pids limits are not part of it: they are cgroup values, set
 * again when a sandbox is handed to an agent with other limits (ContainerDriver.resize).
 */
export function poolKey(s: SandboxSpec): string {
  return `${s.runtime}|tmp=${s.tmpfsMb}|net=${s.network}`;
}

export type SandboxState = 'creating' | 'idle' | 'busy' | 'cleaning' | 'destroyed';

export class ContainerSandbox {
  state: SandboxState = 'creating';
  uses = 0;
  appDir: string | undefined;
  lastUsed = Date.now();
  readonly createdAt = Date.now();
  initPid = 0;
  /** the zygote socket of the template whose waiter was asked to join this sandbox */
  preparedFor: string | undefined;
  /** the template the last instance in this sandbox came from (any kind) */
  lastTemplate: string | undefined;
  /** the zygote the last instance in this sandbox came from: the next one likely does too */
  lastZygote: string | undefined;
  /** counters that cannot be reset in the cgroup: read at each run's start */
  baseline = { oomKills: 0, pidsMaxEvents: 0 };

  constructor(readonly id: string, public spec: SandboxSpec, readonly cgroup: SandboxCgroup) {}

  get key(): string {
    return poolKey(this.spec);
  }

  /** Host pids of the sandbox's processes other than its init. */
  workerPids(): number[] {
    return this.cgroup.pids_().filter((p) => p !== this.initPid);
  }
}

export interface DriverOptions {
  sandboxdPath: string;
  stateRoot: string;
  rootfsDir: string;
  mntDir: string;
  runtimesDir: string;
  instanceId: string;
  sandboxdLog?: string;
  slirpPath?: string;
}

export class ContainerDriver {
  readonly native: Sandboxd;
  readonly cgroups: CgroupManager;
  private readonly binds: Array<[string, string]>;
  private seq = 0;

  constructor(private readonly o: DriverOptions) {
    this.cgroups = new CgroupManager(o.instanceId);
    this.native = new Sandboxd(o.sandboxdPath, o.sandboxdLog);
    this.binds = baseBinds(o.runtimesDir);
  }

  /** Removes what a killed predecessor left, prepares the base root and starts sandboxd. */
  start(): { leftovers: string[] } {
    this.cgroups.init();
    const leftovers = this.cgroups.cleanupLeftovers();
    ensureBaseRootfs(this.o.rootfsDir);
    fs.mkdirSync(this.o.mntDir, { recursive: true, mode: 0o700 });
    this.native.start();
    return { leftovers };
  }

  private newId(): string {
    return `sb${(++this.seq).toString(36)}${crypto.randomBytes(3).toString('hex')}`;
  }

  async create(spec: SandboxSpec, appDir: string): Promise<{ sandbox: ContainerSandbox; spans: NativeSpan[] }> {
    const id = this.newId();
    const t0 = process.hrtime.bigint();
    const cg = this.cgroups.create(id, { memoryBytes: spec.memoryMb * 1024 * 1024, pids: spec.pids });
    const t1 = process.hrtime.bigint();
    const sb = new ContainerSandbox(id, spec, cg);
    try {
      const r = await this.native.create(id, {
        hostname: `trenv-${id}`,
        lower: this.o.rootfsDir,
        mnt: this.o.mntDir,
        rwBytes: spec.tmpfsMb * 1024 * 1024,
        rbinds: this.binds,
        app: appDir,
        cgroupProcs: cg.procsFiles,
        net: spec.network === 'egress' ? 'slirp' : 'none',
        slirpPath: this.o.slirpPath,
      });
      sb.initPid = r.initPid;
      sb.appDir = appDir;
      sb.state = 'idle';
      return { sandbox: sb, spans: [{ name: 'cgroup.create', startNs: t0, endNs: t1 }, ...r.spans] };
    } catch (e) {
      sb.state = 'destroyed';
      try {
        cg.remove();
      } catch {
        /* reported by the create error */
      }
      throw e;
    }
  }

  /**
   * Gives a repurposed sandbox another agent's memory and pids limits (its cgroup values; the
   * pool key guarantees the rest matches). Throws when the kernel refuses, e.g. a lower memory
   * limit than what the cgroup still holds and cannot reclaim: the pool then starts a fresh one.
   */
  resize(sb: ContainerSandbox, spec: SandboxSpec): void {
    if (sb.spec.memoryMb === spec.memoryMb && sb.spec.pids === spec.pids) return;
    sb.cgroup.setLimits({ memoryBytes: spec.memoryMb * 1024 * 1024, pids: spec.pids });
    sb.spec = { ...sb.spec, memoryMb: spec.memoryMb, pids: spec.pids };
  }

  /** The hot path of a repurposed start: mount the next function's code at /app. */
  async swapApp(sb: ContainerSandbox, appDir: string): Promise<NativeSpan[]> {
    const spans = await this.native.swapApp(sb.id, appDir);
    sb.appDir = appDir;
    return spans;
  }

  /**
   * After a run: kill leftovers, throw the writable layer away, unmount the finished function's
   * code (an empty dir takes its place), reset cgroup counters. Off the critical path.
   */
  async clean(sb: ContainerSandbox, emptyApp: string): Promise<NativeSpan[]> {
    sb.preparedFor = undefined; // reset discards the waiter
    const spans = await this.native.reset(sb.id, emptyApp);
    sb.appDir = undefined;
    const t0 = process.hrtime.bigint();
    sb.cgroup.resetCounters();
    spans.push({ name: 'cgroup.reset', startNs: t0, endNs: process.hrtime.bigint() });
    return spans;
  }

  run(sb: ContainerSandbox, runId: string, o: RunOptions, h: RunHandlers): void {
    const c = sb.cgroup.counters();
    sb.baseline = { oomKills: c.oomKills, pidsMaxEvents: c.pidsMaxEvents };
    this.native.run(sb.id, runId, o, h);
  }

  spawn(sb: ContainerSandbox, runId: string, zygoteSocket: string, o: Omit<RunOptions, 'argv'>, h: RunHandlers): void {
    sb.preparedFor = undefined; // a waiter is used once
    sb.lastZygote = zygoteSocket;
    const c = sb.cgroup.counters();
    sb.baseline = { oomKills: c.oomKills, pidsMaxEvents: c.pidsMaxEvents };
    this.native.spawn(sb.id, runId, zygoteSocket, o, h);
  }

  prepare(sb: ContainerSandbox, zygoteSocket: string): void {
    sb.preparedFor = zygoteSocket;
    this.native.prepare(sb.id, zygoteSocket);
  }

  kill(sb: ContainerSandbox, runId: string): void {
    this.native.kill(sb.id, runId);
  }

  async destroy(sb: ContainerSandbox): Promise<void> {
    if (sb.state === 'destroyed') return;
    sb.state = 'destroyed';
    try {
      if (this.native.alive) await this.native.destroy(sb.id);
    } finally {
      sb.cgroup.remove();
    }
  }

  async stop(): Promise<void> {
    await this.native.stop();
    this.cgroups.cleanupLeftovers();
    this.cgroups.removeInstance();
  }
}
