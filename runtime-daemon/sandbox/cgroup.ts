/**
 * Sandbox cgroups. Uses cgroup v2 when its memory and pids controllers are available, else the v1
 * memory and pids hierarchies (this machine: v2 has only hugetlb). Everything lives under
 * `trenv/<instance>/` so that a daemon only ever touches its own groups; the host's hierarchies are
 * never remounted and other processes' groups never changed.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export type CgroupMode = 'v1' | 'v2';

export interface CgroupLimits {
  memoryBytes: number;
  pids: number;
}

export interface CgroupCounters {
  usageBytes: number;
  oomKills: number;
  pidsMaxEvents: number;
}

const ROOT = '/sys/fs/cgroup';

function readNum(file: string): number {
  try {
    return Number(fs.readFileSync(file, 'utf8').trim()) || 0;
  } catch {
    return 0;
  }
}

function readKeyed(file: string, key: string): number {
  try {
    for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
      const [k, v] = line.trim().split(/\s+/);
      if (k === key) return Number(v) || 0;
    }
  } catch {
    /* absent */
  }
  return 0;
}

function write(file: string, value: string): void {
  fs.writeFileSync(file, value);
}

export function detectCgroupMode(root = ROOT): CgroupMode {
  try {
    const ctrl = fs.readFileSync(path.join(root, 'cgroup.controllers'), 'utf8').split(/\s+/);
    if (ctrl.includes('memory') && ctrl.includes('pids')) return 'v2';
  } catch {
    /* not a pure v2 mount */
  }
  if (fs.existsSync(path.join(root, 'memory', 'memory.limit_in_bytes')) && fs.existsSync(path.join(root, 'pids'))) return 'v1';
  throw new Error(
    'no usable cgroup memory+pids controllers: need cgroup v2 with memory and pids enabled, or the v1 memory and pids hierarchies under /sys/fs/cgroup',
  );
}

/** One sandbox's group(s). */
export class SandboxCgroup {
  constructor(readonly mode: CgroupMode, readonly dirs: string[]) {}

  /** Files to write the sandbox init's pid into. */
  get procsFiles(): string[] {
    return this.dirs.map((d) => path.join(d, 'cgroup.procs'));
  }

  private get mem(): string {
    return this.dirs[0];
  }

  private get pids(): string {
    return this.mode === 'v2' ? this.dirs[0] : this.dirs[1];
  }

  setLimits(l: CgroupLimits): void {
    if (this.mode === 'v2') {
      write(path.join(this.mem, 'memory.max'), String(l.memoryBytes));
      try {
        write(path.join(this.mem, 'memory.swap.max'), '0');
      } catch {
        /* no swap accounting */
      }
      write(path.join(this.pids, 'pids.max'), String(l.pids));
      return;
    }
    // v1: memsw must be >= limit, so raise/lower them in the order the kernel accepts.
    const memsw = path.join(this.mem, 'memory.memsw.limit_in_bytes');
    const hasMemsw = fs.existsSync(memsw);
    const cur = readNum(path.join(this.mem, 'memory.limit_in_bytes'));
    if (hasMemsw && l.memoryBytes > cur) {
      write(memsw, String(l.memoryBytes));
      write(path.join(this.mem, 'memory.limit_in_bytes'), String(l.memoryBytes));
    } else {
      write(path.join(this.mem, 'memory.limit_in_bytes'), String(l.memoryBytes));
      if (hasMemsw) write(memsw, String(l.memoryBytes));
    }
    write(path.join(this.pids, 'pids.max'), String(l.pids));
  }

  counters(): CgroupCounters {
    if (this.mode === 'v2') {
      return {
        usageBytes: readNum(path.join(this.mem, 'memory.current')),
        oomKills: readKeyed(path.join(this.mem, 'memory.events'), 'oom_kill'),
        pidsMaxEvents: readKeyed(path.join(this.pids, 'pids.events'), 'max'),
      };
    }
    return {
      usageBytes: readNum(path.join(this.mem, 'memory.usage_in_bytes')),
      oomKills: readKeyed(path.join(this.mem, 'memory.oom_control'), 'oom_kill'),
      pidsMaxEvents: readKeyed(path.join(this.pids, 'pids.events'), 'max'),
    };
  }

  usageBytes(): number {
    return readNum(path.join(this.mem, this.mode === 'v2' ? 'memory.current' : 'memory.usage_in_bytes'));
  }

  /** Host pids of every process in the sandbox (init included). */
  pids_(): number[] {
    try {
      return fs
        .readFileSync(path.join(this.mem, 'cgroup.procs'), 'utf8')
        .split('\n')
        .filter(Boolean)
        .map(Number);
    } catch {
      return [];
    }
  }

  /**
   * Between functions: drop what the previous one left charged (page cache of its files) and reset
   * the peak counters, so the next function starts from clean numbers. Counters that cannot be reset
   * (oom_kill, pids max events) are read as a baseline by the caller instead.
   */
  resetCounters(): void {
    if (this.mode === 'v1') {
      for (const f of ['memory.max_usage_in_bytes', 'memory.failcnt', 'memory.memsw.max_usage_in_bytes']) {
        try {
          write(path.join(this.mem, f), '0');
        } catch {
          /* optional */
        }
      }
      try {
        write(path.join(this.mem, 'memory.force_empty'), '0');
      } catch {
        /* busy: fine, the next function's numbers include a little cache */
      }
    } else {
      try {
        write(path.join(this.mem, 'memory.reclaim'), '1G');
      } catch {
        /* older kernels */
      }
    }
  }

  /** Removes the groups. Processes must be gone already (the sandbox's init was killed). */
  remove(): void {
    for (const d of this.dirs) removeGroupDir(d);
  }
}

/** rmdir of a cgroup dir, killing what is left in it while it stays busy (tasks still exiting). */
export function removeGroupDir(dir: string): void {
  for (let i = 0; i < 50; i++) {
    try {
      fs.rmdirSync(dir);
      return;
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') return;
      if (code !== 'EBUSY') throw e;
      // tasks still exiting: kill what is left (only processes inside our own group) and retry
      for (const pid of readPids(dir)) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
      sleepSync(10); // rmdir becomes possible once the kernel has reaped them
    }
  }
  throw new Error(`cgroup ${dir} stays busy: processes in it could not be killed`);
}

/** Blocks this thread for `ms` (short waits on the kernel in synchronous cleanup paths). */
export function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function readPids(dir: string): number[] {
  try {
    return fs.readFileSync(path.join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** Creates and cleans up the daemon's cgroup subtree `trenv/<instance>`. */
export class CgroupManager {
  readonly mode: CgroupMode;
  private readonly bases: string[];

  constructor(instance: string, root = ROOT, mode?: CgroupMode) {
    this.mode = mode ?? detectCgroupMode(root);
    this.bases =
      this.mode === 'v2'
        ? [path.join(root, 'trenv', instance)]
        : [path.join(root, 'memory', 'trenv', instance), path.join(root, 'pids', 'trenv', instance)];
  }

  describe(): string {
    return `${this.mode} (${this.bases.join(', ')})`;
  }

  init(): void {
    for (const b of this.bases) fs.mkdirSync(b, { recursive: true });
    if (this.mode === 'v2') {
      // enable the controllers for children down the path we own
      const trenvDir = path.dirname(this.bases[0]);
      for (const d of [path.dirname(trenvDir), trenvDir, this.bases[0]]) {
        try {
          write(path.join(d, 'cgroup.subtree_control'), '+memory +pids');
        } catch {
          /* already on, or not allowed at the root: create() will fail loudly if it matters */
        }
      }
    }
  }

  create(sandboxId: string, limits: CgroupLimits): SandboxCgroup {
    const dirs = this.bases.map((b) => path.join(b, sandboxId));
    for (const d of dirs) fs.mkdirSync(d);
    const cg = new SandboxCgroup(this.mode, dirs);
    try {
      cg.setLimits(limits);
    } catch (e) {
      cg.remove();
      throw e;
    }
    return cg;
  }

  /** Removes every group a previous daemon left behind (after killing the processes still in them). */
  cleanupLeftovers(): string[] {
    const removed: string[] = [];
    for (const b of this.bases) {
      let names: string[] = [];
      try {
        names = fs.readdirSync(b, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
      } catch {
        continue;
      }
      for (const n of names) {
        removeGroupDir(path.join(b, n));
        removed.push(path.join(b, n));
      }
    }
    return removed;
  }

  /** Removes the instance dirs themselves (at shutdown, when empty). */
  removeInstance(): void {
    for (const b of this.bases) {
      try {
        fs.rmdirSync(b);
      } catch {
        /* busy or gone */
      }
    }
  }
}
