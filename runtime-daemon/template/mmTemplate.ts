/**
 * The mm_template kernel module (kernel-modules/mm_template): is it usable here, and which path do
 * restores take?
 *
 * The module gives true copy-on-write templates of any runtime: N instances share one copy of the
 * initialised memory. The flow for Node (CRIU checkpoints):
 *   1. the agent is loaded in the build sandbox and waits for its first request;
 *   2. `templateFromStopped`: stop it, copy its resident private anonymous memory (V8 heap, malloc
 *      heap, ...) into a template (trenv-mmt build), remap those runs of the process itself onto the
 *      template's file /run/mm_template/<id> (trenv-mmt remap; MAP_PRIVATE|MAP_FIXED, prefaulted),
 *      continue it;
 *   3. CRIU checkpoints it: those regions are private FILE mappings now, whose pages CRIU does not
 *      copy into its images (only pages written since); every restore maps the file again, so the
 *      restored instance reads the template's pages and copies only what it writes.
 * Nothing else changes: restores are the usual CRIU restores of those images.
 *
 * It cannot be loaded on the host this project is developed on (no module support): there the
 * daemon says once that it is not loaded and uses the userspace paths (fork zygote, CRIU private
 * copies, VM memory files); every restore span says which path it took. The flow itself is tested in
 * a QEMU guest (kernel-modules/test), which calls `templateFromStopped` from this file.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { procStatFields } from '../metrics/smaps';
import { sleepSync } from '../sandbox/cgroup';

export const MMT_DEVICE = '/dev/mm_template';
/** where the module's filesystem shows templates as files (MMT_FS_DIR in mm_template.h) */
export const MMT_FS_DIR = '/run/mm_template';
/** must match MMT_ABI_VERSION in kernel-modules/mm_template/mm_template.h */
export const MMT_ABI_VERSION = 2;

export type MemPath = 'kernel-module' | 'userspace';

export interface MmTemplateStatus {
  /** /dev/mm_template exists (a character device) */
  loaded: boolean;
  /** the path new CRIU templates take in this daemon */
  path: MemPath;
  /** one line for the log */
  message: string;
}

export interface MmtProbe {
  isCharDevice(p: string): boolean;
  /** the mount table (/proc/self/mounts) */
  mounts(): string;
  /** mount the module's filesystem at dir (throws with the reason) */
  mount(dir: string): void;
  helperExists(p: string): boolean;
}

const realProbe: MmtProbe = {
  isCharDevice: (p) => {
    try {
      return fs.statSync(p).isCharacterDevice();
    } catch {
      return false;
    }
  },
  mounts: () => fs.readFileSync('/proc/self/mounts', 'utf8'),
  mount: (dir) => {
    fs.mkdirSync(dir, { recursive: true, mode: 0o755 });
    execFileSync('mount', ['-t', 'mm_template', 'none', dir], { stdio: 'pipe' });
  },
  helperExists: (p) => fs.existsSync(p),
};

let helperPath = process.env.TRENV_MMT_HELPER ?? 'trenv-mmt';

/** the daemon's helper binary (runtime-daemon/native/trenv-mmt.c); the daemon sets its build path */
export function mmtHelper(): string {
  return helperPath;
}
export function setMmtHelper(p: string): void {
  helperPath = process.env.TRENV_MMT_HELPER ?? p;
}

/** Is the module's filesystem mounted at dir (MMT_FS_DIR)? Sandbox roots bind it when it is. */
export function mmtFsMounted(dir = MMT_FS_DIR, mounts = realProbe.mounts()): boolean {
  return mounts.split('\n').some((l) => {
    const f = l.split(' ');
    return f[1] === dir && f[2] === 'mm_template';
  });
}

/**
 * Is the module usable? Loaded (the device exists), its filesystem mounted at MMT_FS_DIR (mounted
 * here when it is not) and the helper built. Anything missing: the userspace path, and why.
 * `TRENV_MMT=0` in the daemon's environment turns it off (the userspace path, said so).
 */
export function detectMmTemplate(
  device = MMT_DEVICE,
  dir = MMT_FS_DIR,
  probe: MmtProbe = realProbe,
  helper = mmtHelper(),
  env: NodeJS.ProcessEnv = process.env,
): MmTemplateStatus {
  if (!probe.isCharDevice(device)) return { loaded: false, path: 'userspace', message: 'kernel module not loaded; using userspace templates' };
  if (env.TRENV_MMT === '0') return { loaded: true, path: 'userspace', message: `kernel module mm_template is loaded (${device}) but turned off by TRENV_MMT=0; using userspace templates` };
  const why = (reason: string): MmTemplateStatus => ({
    loaded: true,
    path: 'userspace',
    message: `kernel module mm_template is loaded (${device}) but not usable: ${reason}; using userspace templates`,
  });
  if (!probe.helperExists(helper)) return why(`its helper ${helper} is missing (make -C runtime-daemon/native)`);
  if (!mmtFsMounted(dir, probe.mounts())) {
    try {
      probe.mount(dir);
    } catch (e) {
      return why(`mounting its filesystem at ${dir} failed (${(e as Error).message.split('\n')[0]}); is it an older module without the filesystem (ABI < ${MMT_ABI_VERSION})?`);
    }
  }
  return {
    loaded: true,
    path: 'kernel-module',
    message: `kernel module mm_template is loaded (${device}, templates in ${dir}): Node templates map their initialised memory from it (shared, copy-on-write)`,
  };
}

let cached: MmTemplateStatus | undefined;

/** The status, detected once per process; `log` gets the message the first time only. */
export function mmTemplateStatus(log?: (message: string) => void): MmTemplateStatus {
  if (!cached) {
    cached = detectMmTemplate();
    log?.(cached.message);
  }
  return cached;
}

/** what a module template of a checkpoint is (kept in the template's meta) */
export interface MmtTemplateInfo {
  id: number;
  bytes: number;
  runs: number;
  /** the map file: the runs and their offsets (for delete and diagnostics) */
  mapFile: string;
  buildMs: number;
  /** its file's mtime in ns = when the module created it; with the id, which template this is (ids are reused after a reload or reboot) */
  createdNs?: string;
}

type StatBig = (p: string) => { size: bigint; mtimeNs: bigint };
const statBig: StatBig = (p) => fs.statSync(p, { bigint: true });

/**
 * Why a checkpoint's module template cannot be used any more (undefined: it is still there and is
 * the same template). After an unload/reload of the module or a reboot the id is gone, or names a
 * template made since (another agent's memory): told apart by the file's size and mtime (its
 * creation time); without a recorded createdNs (older metas), by the creation time being within a
 * minute of the map file's own mtime (written right after the creation).
 */
export function mmtTemplateGone(info: MmtTemplateInfo, dir = MMT_FS_DIR, stat: StatBig = statBig): string | undefined {
  let st: { size: bigint; mtimeNs: bigint };
  try {
    st = stat(`${dir}/${info.id}`);
  } catch {
    return `its kernel-module template ${info.id} is gone (module unloaded or reloaded, or the machine restarted)`;
  }
  let same = Number(st.size) === info.bytes;
  if (same && info.createdNs !== undefined) same = String(st.mtimeNs) === info.createdNs;
  else if (same) {
    try {
      same = Math.abs(Number(st.mtimeNs / 1_000_000n) - Number(stat(info.mapFile).mtimeNs / 1_000_000n)) < 60_000;
    } catch {
      same = false;
    }
  }
  return same ? undefined : `kernel-module template ${info.id} is another template now (the module was reloaded or the machine restarted)`;
}

/** the process's state letter (T: stopped), or 'gone' */
function procState(pid: number): string {
  return procStatFields(pid)?.[0] ?? 'gone';
}

function waitState(pid: number, want: (s: string) => boolean, ms: number, what: string): void {
  const end = Date.now() + ms;
  while (!want(procState(pid))) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${pid} to ${what} (state ${procState(pid)})`);
    sleepSync(2);
  }
}

function helper(args: string[]): string {
  try {
    return execFileSync(mmtHelper(), args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`trenv-mmt ${args[0]}: ${(err.stderr || err.message).trim()}`);
  }
}

/**
 * Make a template of process `pid`'s initialised memory and map the process itself onto it (step 2
 * above). The process is stopped for it (unless it already is) and continued after, unless
 * `leaveStopped`. A failure deletes the template again and continues the process.
 */
export function templateFromStopped(pid: number, mapFile: string, o: { leaveStopped?: boolean } = {}): MmtTemplateInfo {
  const t0 = Date.now();
  const wasStopped = procState(pid) === 'T';
  if (!wasStopped) {
    process.kill(pid, 'SIGSTOP');
    waitState(pid, (s) => s === 'T' || s === 'gone', 10_000, 'stop');
    if (procState(pid) === 'gone') throw new Error(`process ${pid} exited before its memory could be templated`);
  }
  let built = false;
  try {
    helper(['build', String(pid), mapFile]);
    built = true;
    helper(['remap', mapFile, String(pid)]);
  } catch (e) {
    if (built) deleteTemplate(mapFile);
    throw e;
  } finally {
    if (!wasStopped && !o.leaveStopped) process.kill(pid, 'SIGCONT');
  }
  const head = /^id (\d+) runs (\d+) bytes (\d+)/.exec(fs.readFileSync(mapFile, 'utf8'));
  if (!head) throw new Error(`trenv-mmt wrote an unreadable map file ${mapFile}`);
  let createdNs: string | undefined;
  try {
    createdNs = String(statBig(`${MMT_FS_DIR}/${head[1]}`).mtimeNs);
  } catch {
    /* filesystem not mounted here (the guest tests' own driver): identified by the map file's time */
  }
  return { id: Number(head[1]), runs: Number(head[2]), bytes: Number(head[3]), mapFile, buildMs: Date.now() - t0, createdNs };
}

/**
 * Delete a template and its map file (its pages go when the last instance mapping it exits). Given
 * a map file just written (a failed build), unconditionally; given a checkpoint's recorded template,
 * only if its id still names that template: after a reload or reboot it may name another one,
 * which is left alone.
 */
export function deleteTemplate(t: string | MmtTemplateInfo): void {
  const mapFile = typeof t === 'string' ? t : t.mapFile;
  if (typeof t === 'string' || !mmtTemplateGone(t)) {
    try {
      helper(['delete', mapFile]);
    } catch {
      /* already gone (module reloaded, machine restarted) */
    }
  }
  fs.rmSync(mapFile, { force: true });
}
