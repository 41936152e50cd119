/**
 * Pausing E2B sandboxes with the cgroup v1 freezer: the sandbox's processes (not its init, which
 * sandboxd talks to) move into `freezer/trenv-e2b/<instance>/<sandbox>` and are frozen; thawing
 * lets them run on. The sandbox's memory and pids groups are untouched. (cgroup v2's cgroup.freeze
 * is not used yet: on a v2-only machine pause answers with a clear error.)
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { removeGroupDir, sleepSync } from '../sandbox/cgroup';

const V1_ROOT = '/sys/fs/cgroup/freezer';

export class Freezer {
  private readonly base: string | undefined;

  constructor(instanceId: string) {
    this.base = fs.existsSync(path.join(V1_ROOT, 'freezer.state')) || fs.existsSync(path.join(V1_ROOT, 'cgroup.procs'))
      ? path.join(V1_ROOT, 'trenv-e2b', instanceId)
      : undefined;
  }

  get available(): boolean {
    return !!this.base;
  }

  /** Removes groups a previous daemon left (their processes died with its sandboxes). */
  cleanupLeftovers(): void {
    if (!this.base) return;
    try {
      for (const d of fs.readdirSync(this.base, { withFileTypes: true })) if (d.isDirectory()) this.remove(d.name);
    } catch {
      /* none */
    }
  }

  /** At daemon stop: the instance's own dir (empty by then). */
  removeInstance(): void {
    if (!this.base) return;
    this.cleanupLeftovers();
    try {
      fs.rmdirSync(this.base);
    } catch {
      /* gone, or a group is still busy (logged by its remove) */
    }
  }

  has(id: string): boolean {
    return !!this.base && fs.existsSync(path.join(this.base, id));
  }

  freeze(id: string, pids: number[]): void {
    if (!this.base) throw new Error('pause needs the cgroup v1 freezer (/sys/fs/cgroup/freezer), which this machine does not have');
    const dir = path.join(this.base, id);
    fs.mkdirSync(dir, { recursive: true });
    // children forked while we move their parents land in the parent's group: a second pass catches them
    for (let pass = 0; pass < 2; pass++) {
      for (const p of pids) {
        try {
          fs.writeFileSync(path.join(dir, 'cgroup.procs'), `${p}\n`);
        } catch {
          /* exited meanwhile */
        }
      }
    }
    fs.writeFileSync(path.join(dir, 'freezer.state'), 'FROZEN');
    for (let i = 0; i < 100; i++) {
      if (fs.readFileSync(path.join(dir, 'freezer.state'), 'utf8').trim() === 'FROZEN') return;
      sleepSync(5);
    }
    throw new Error(`the freezer did not freeze sandbox ${id}`);
  }

  thaw(id: string): void {
    if (!this.base) return;
    try {
      fs.writeFileSync(path.join(this.base, id, 'freezer.state'), 'THAWED');
    } catch {
      /* no group: nothing frozen */
    }
  }

  /** Removes the group once its processes are gone (they were killed with the sandbox). */
  remove(id: string): void {
    if (!this.base) return;
    this.thaw(id);
    removeGroupDir(path.join(this.base, id));
  }
}
