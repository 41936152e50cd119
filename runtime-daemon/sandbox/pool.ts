/**
 * The pool of cleaned sandboxes (TrEnv's repurposing). A finished sandbox is cleaned off the
 * critical path and kept idle under its key (runtime, network, writable layer size); the next
 * function with the same key takes it, gets its own memory/pids limits written to the cgroup if
 * they differ, and only swaps its app dir. Bounded in size, idle ones evicted after a TTL,
 * optionally pre-warmed.
 */
import { EventEmitter } from 'node:events';
import type { PoolConfig } from '../protocol/messages';
import { ContainerDriver, ContainerSandbox, poolKey, SandboxSpec } from './container';
import type { NativeSpan } from './sandboxd';

export interface Acquired {
  sandbox: ContainerSandbox;
  how: 'fresh' | 'repurposed';
  /** pool pick decision */
  pickNs: [bigint, bigint];
  spans: NativeSpan[];
}

export const DEFAULT_POOL: PoolConfig = { maxIdle: 16, idleTtlMs: 5 * 60_000, prewarm: [] };

export class SandboxPool extends EventEmitter {
  private readonly idle = new Map<string, ContainerSandbox[]>();
  /** cleanups in flight per key: settle when the sandbox is idle (or was discarded) */
  private readonly cleaning = new Map<string, Set<Promise<void>>>();
  readonly all = new Set<ContainerSandbox>();
  config: PoolConfig = { ...DEFAULT_POOL };
  private evictTimer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(private readonly driver: ContainerDriver, private readonly emptyApp: string) {
    super();
  }

  start(): void {
    this.evictTimer = setInterval(() => void this.evictExpired(), 5_000);
    this.evictTimer.unref();
  }

  private idleCount(): number {
    let n = 0;
    for (const l of this.idle.values()) n += l.length;
    return n;
  }

  private changed(): void {
    this.emit('changed');
  }

  /** Takes an idle sandbox of this key: one prepared for `prefer` (a template) first, else the warmest. */
  private pick(key: string, prefer?: string): ContainerSandbox | undefined {
    const list = this.idle.get(key);
    if (!list?.length) return undefined;
    const i = prefer ? list.map((s) => s.preparedFor).lastIndexOf(prefer) : -1;
    return i >= 0 ? list.splice(i, 1)[0] : list.pop();
  }

  async acquire(spec: SandboxSpec, appDir: string, opts: { fresh?: boolean; prefer?: string } = {}): Promise<Acquired> {
    if (this.closed) throw new Error('the daemon is shutting down');
    const p0 = process.hrtime.bigint();
    const key = poolKey(spec);
    let sb = opts.fresh ? undefined : this.pick(key, opts.prefer);
    if (!sb && !opts.fresh && this.cleaning.get(key)?.size) {
      // a sandbox of this key is being cleaned (about a millisecond): waiting for it beats
      // creating a fresh one (a cold cgroup attach alone can take 10+ ms here)
      await Promise.race(this.cleaning.get(key)!.values());
      sb = this.pick(key, opts.prefer);
    }
    const p1 = process.hrtime.bigint();
    if (sb) {
      sb.state = 'busy';
      try {
        this.driver.resize(sb, spec);
        const spans = await this.driver.swapApp(sb, appDir);
        sb.uses++;
        sb.lastUsed = Date.now();
        this.changed();
        return { sandbox: sb, how: 'repurposed', pickNs: [p0, p1], spans };
      } catch (e) {
        // a sandbox that cannot take a new app is broken: drop it and start fresh
        this.emit('warn', `repurposing ${sb.id} failed (${(e as Error).message}); starting a fresh sandbox`);
        await this.discard(sb);
      }
    }
    const { sandbox, spans } = await this.driver.create(spec, appDir);
    this.all.add(sandbox);
    sandbox.state = 'busy';
    sandbox.uses = 1;
    this.changed();
    return { sandbox, how: 'fresh', pickNs: [p0, p1], spans };
  }

  /**
   * Returns a finished sandbox: cleaned and kept when `reuse` and there is room, destroyed otherwise.
   * Resolves with the cleanup spans once the sandbox is idle (or destroyed).
   */
  /** Called with every sandbox that became idle after a cleanup (e.g. to prepare a template's waiter). */
  onIdle: ((sb: ContainerSandbox) => void) | undefined;

  async release(sb: ContainerSandbox, reuse: boolean): Promise<NativeSpan[]> {
    if (!reuse || this.closed || this.idleCount() >= this.config.maxIdle) {
      await this.discard(sb);
      return [];
    }
    sb.state = 'cleaning';
    this.changed();
    const key = sb.key;
    const cleaning = this.driver.clean(sb, this.emptyApp);
    const settled = cleaning.then(
      () => undefined,
      () => undefined,
    );
    if (!this.cleaning.has(key)) this.cleaning.set(key, new Set());
    this.cleaning.get(key)!.add(settled);
    try {
      const spans = await cleaning;
      if (this.closed || this.idleCount() >= this.config.maxIdle) {
        this.cleaning.get(key)?.delete(settled);
        await this.discard(sb);
        return spans;
      }
      sb.state = 'idle';
      sb.lastUsed = Date.now();
      if (!this.idle.has(key)) this.idle.set(key, []);
      this.onIdle?.(sb);
      this.idle.get(key)!.push(sb);
      this.cleaning.get(key)?.delete(settled);
      this.changed();
      return spans;
    } catch (e) {
      this.cleaning.get(key)?.delete(settled);
      this.emit('warn', `cleaning ${sb.id} failed (${(e as Error).message}); destroying it`);
      await this.discard(sb);
      return [];
    }
  }

  async discard(sb: ContainerSandbox): Promise<void> {
    for (const l of this.idle.values()) {
      const i = l.indexOf(sb);
      if (i >= 0) l.splice(i, 1);
    }
    this.all.delete(sb);
    try {
      await this.driver.destroy(sb);
    } catch (e) {
      this.emit('warn', `destroying ${sb.id}: ${(e as Error).message}`);
    }
    this.changed();
  }

  /** Creates idle sandboxes ahead of demand. */
  async prewarm(spec: SandboxSpec, count: number): Promise<number> {
    let made = 0;
    const have = this.idle.get(poolKey(spec))?.length ?? 0;
    for (let i = have; i < count && this.idleCount() < this.config.maxIdle; i++) {
      const { sandbox } = await this.driver.create(spec, this.emptyApp);
      this.all.add(sandbox);
      sandbox.appDir = undefined;
      if (!this.idle.has(sandbox.key)) this.idle.set(sandbox.key, []);
      this.idle.get(sandbox.key)!.push(sandbox);
      made++;
    }
    if (made) this.changed();
    return made;
  }

  async evictExpired(now = Date.now()): Promise<number> {
    let n = 0;
    for (const l of this.idle.values()) {
      for (const sb of [...l]) {
        if (now - sb.lastUsed > this.config.idleTtlMs) {
          await this.discard(sb);
          n++;
        }
      }
    }
    // shrink to the bound if it was lowered
    while (this.idleCount() > this.config.maxIdle) {
      const oldest = [...this.idle.values()].flat().sort((a, b) => a.lastUsed - b.lastUsed)[0];
      await this.discard(oldest);
      n++;
    }
    return n;
  }

  list(): ContainerSandbox[] {
    return [...this.all];
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.evictTimer) clearInterval(this.evictTimer);
    await Promise.all([...this.all].map((sb) => this.discard(sb)));
  }
}
