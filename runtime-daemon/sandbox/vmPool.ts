/**
 * microVMs for invocations: cold boots, clones restored from a VM template, and a bounded pool of
 * clones restored ahead of time per template so an invoke takes one that is already running.
 * A VM serves one invocation and is destroyed afterwards: nothing of one agent's run is ever
 * handed to the next (a clone is cheap to make, and the pool refills in the background).
 */
import * as crypto from 'node:crypto';
import * as path from 'node:path';
import { EventEmitter } from 'node:events';
import type { LoadedAgent } from '../manifest/manifest';
import { agentFiles, VM_RUNTIMES, vmMemoryMb, vmShimEnv, VmTemplate, vmVcpus } from '../template/vmTemplates';
import { Accel, RootKind, Span, Vm, VmImage } from './vm';

export interface VmAcquired {
  vm: Vm;
  how: 'vm-boot' | 'vm-clone';
  /** a clone taken from the pool (restored before this invocation asked for it) */
  prewarmed: boolean;
  template?: VmTemplate;
}

export const DEFAULT_VM_POOL = 2;

export class VmPool extends EventEmitter {
  private readonly warm = new Map<string, Vm[]>();
  private readonly filling = new Set<string>();
  readonly all = new Set<Vm>();
  private closed = false;

  constructor(
    private readonly vmsDir: string,
    private readonly image: () => VmImage,
    private readonly accel: () => Promise<Accel>,
    /** warm clones kept per template (0 disables the pool) */
    public size = Number(process.env.TRENV_VM_POOL ?? DEFAULT_VM_POOL),
    private readonly log: (m: string) => void = () => undefined,
  ) {
    super();
  }

  private newId(): string {
    return `vm-${crypto.randomBytes(4).toString('hex')}`;
  }

  private track(vm: Vm): Vm {
    this.all.add(vm);
    vm.once('exit', () => {
      // a warm clone that died (killed from outside, guest panic) leaves the pool
      for (const list of this.warm.values()) {
        const i = list.indexOf(vm);
        if (i >= 0) list.splice(i, 1);
      }
      this.emit('changed');
    });
    this.emit('changed');
    return vm;
  }

  /** A clone of the template: RAM mapped private from its file, device state loaded, resumed. */
  async clone(t: VmTemplate): Promise<Vm> {
    const id = this.newId();
    const vm = this.track(
      new Vm({
        id,
        dir: path.join(this.vmsDir, id),
        image: this.image(),
        accel: t.meta.accel,
        memoryMb: t.meta.memoryMb,
        vcpus: t.meta.vcpus ?? 1,
        root: t.meta.root,
        ...(t.meta.mode === 'copy' ? {} : { ram: { path: t.ramPath, share: false } }),
        incoming: true,
      }),
    );
    vm.template = t.meta.name;
    try {
      await vm.restore(t.statePath, 60_000, t.meta.mode !== 'copy');
    } catch (e) {
      await this.release(vm);
      throw e;
    }
    return vm;
  }

  /** A cold VM of the guest image, booted (its agent answering), nothing else started. */
  async bootBare(memoryMb: number, vcpus: number, root: RootKind): Promise<Vm> {
    const id = this.newId();
    const vm = this.track(new Vm({ id, dir: path.join(this.vmsDir, id), image: this.image(), accel: await this.accel(), memoryMb, vcpus, root }));
    try {
      await vm.boot();
    } catch (e) {
      await this.release(vm);
      throw e;
    }
    return vm;
  }

  /** A cold VM: boot, copy the agent in, start its runtime shim (which loads the agent). */
  async boot(agent: LoadedAgent, root: RootKind): Promise<Vm> {
    const vm = await this.bootBare(vmMemoryMb(agent), vmVcpus(agent), root);
    try {
      const t0 = process.hrtime.bigint();
      await vm.chan.request('files', { dir: '/app', files: agentFiles(agent.dir) }, 30_000);
      vm.spans.push({ name: 'vm.files', startNs: t0, endNs: process.hrtime.bigint() });
    } catch (e) {
      await this.release(vm);
      throw e;
    }
    return vm;
  }

  startArgs(agent: LoadedAgent, env: Record<string, string>): Record<string, unknown> {
    return { argv: VM_RUNTIMES[agent.manifest.runtime], env: vmShimEnv(agent, env), cwd: '/app', uid: 10001, gid: 10001 };
  }

  /** A warm clone of the template, or a new one. Starts refilling the pool either way. */
  async acquire(t: VmTemplate): Promise<VmAcquired> {
    const list = this.warm.get(t.meta.name) ?? [];
    let vm: Vm | undefined;
    while (!vm && list.length) {
      const c = list.shift()!;
      if (!c.exited && !c.chan.closed) vm = c;
      else void this.release(c);
    }
    this.refill(t);
    if (vm) return { vm, how: 'vm-clone', prewarmed: true, template: t };
    return { vm: await this.clone(t), how: 'vm-clone', prewarmed: false, template: t };
  }

  /** Restores clones in the background (one at a time: restores compete for the same CPUs) up to `size`. */
  refill(t: VmTemplate): void {
    if (this.size <= 0 || this.closed || this.filling.has(t.meta.name)) return;
    this.filling.add(t.meta.name);
    void (async () => {
      try {
        for (;;) {
          const list = this.warm.get(t.meta.name) ?? [];
          this.warm.set(t.meta.name, list);
          if (this.closed || list.length >= this.size) break;
          const vm = await this.clone(t);
          if (this.closed) {
            await this.release(vm);
            break;
          }
          list.push(vm);
          this.emit('changed');
        }
      } catch (e) {
        this.log(`VM pool: restoring a clone of ${t.meta.name} failed: ${(e as Error).message}`);
      } finally {
        this.filling.delete(t.meta.name);
      }
    })();
  }

  warmCount(name?: string): number {
    if (name) return this.warm.get(name)?.length ?? 0;
    let n = 0;
    for (const l of this.warm.values()) n += l.length;
    return n;
  }

  isWarm(vm: Vm): boolean {
    for (const l of this.warm.values()) if (l.includes(vm)) return true;
    return false;
  }

  async release(vm: Vm): Promise<void> {
    await vm.destroy();
    this.all.delete(vm);
    this.emit('changed');
  }

  /** Destroys the warm clones of a template (deleted or rebuilt). */
  async drop(name: string): Promise<void> {
    const list = this.warm.get(name) ?? [];
    this.warm.delete(name);
    await Promise.all(list.map((vm) => this.release(vm)));
  }

  async closeAll(): Promise<void> {
    this.closed = true;
    this.warm.clear();
    await Promise.all([...this.all].map((vm) => this.release(vm)));
  }

  spansOf(vm: Vm): Span[] {
    return vm.spans;
  }
}
