/**
 * The daemon's state dir: layout, the single-instance lock, the token and the discovery file.
 * Layout:
 *   <state>/daemon.lock      pid of the running daemon (O_EXCL; stale locks are taken over)
 *   <state>/daemon.json      DaemonInfoFile: port, pid, token file (0644)
 *   <state>/token            random token (0600, owned by the sudo user so their editor can read it)
 *   <state>/invocations/<id> records
 *   <state>/rootfs/base      read-only base root skeleton
 *   <state>/mnt              mount point used inside each sandbox's own mount namespace
 *   <state>/run              runtime files (sandboxd stderr log, ...)
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { DaemonInfoFile } from '../protocol/messages';

export const DEFAULT_STATE_DIR = '/var/lib/trenv';

export function stateDirFromEnv(explicit?: string): string {
  return path.resolve(explicit || process.env.TRENV_STATE_DIR || DEFAULT_STATE_DIR);
}

/** Finds the repository/package root (the folder with package.json named trenv) from a bundle or out/ file. */
export function packageRoot(from: string = __dirname): string {
  let dir = from;
  for (;;) {
    const pj = path.join(dir, 'package.json');
    if (fs.existsSync(pj)) {
      try {
        if (JSON.parse(fs.readFileSync(pj, 'utf8')).name === 'trenv') return dir;
      } catch {
        /* keep looking */
      }
    }
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`cannot find the trenv package root above ${from}`);
    dir = up;
  }
}

export class StatePaths {
  constructor(readonly root: string) {}
  get lock(): string { return path.join(this.root, 'daemon.lock'); }
  get info(): string { return path.join(this.root, 'daemon.json'); }
  get token(): string { return path.join(this.root, 'token'); }
  get invocations(): string { return path.join(this.root, 'invocations'); }
  get rootfs(): string { return path.join(this.root, 'rootfs', 'base'); }
  get mnt(): string { return path.join(this.root, 'mnt'); }
  get run(): string { return path.join(this.root, 'run'); }
  get emptyApp(): string { return path.join(this.root, 'run', 'empty-app'); }
  /** Short stable id of this state dir: names its cgroup subtree so daemons with other state dirs never collide. */
  get instanceId(): string {
    return crypto.createHash('sha256').update(this.root).digest('hex').slice(0, 10);
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function isTrenvd(pid: number): boolean {
  try {
    const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    return cmd.includes('trenvd');
  } catch {
    return false;
  }
}

export class AlreadyRunningError extends Error {
  constructor(readonly pid: number, readonly info: DaemonInfoFile | undefined, stateDir: string) {
    super(
      `a trenv daemon is already running for ${stateDir} (pid ${pid}` +
        (info ? `, listening on 127.0.0.1:${info.port}` : '') +
        `). Use it, or stop it with: trenv daemon stop --state-dir ${stateDir}`,
    );
  }
}

/** Takes the single-instance lock. A lock whose pid is gone (or is not a trenvd) is stale and taken over. */
export function acquireLock(paths: StatePaths): () => void {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = fs.openSync(paths.lock, 'wx', 0o644);
      fs.writeSync(fd, String(process.pid));
      fs.closeSync(fd);
      return () => {
        try {
          if (fs.readFileSync(paths.lock, 'utf8').trim() === String(process.pid)) fs.unlinkSync(paths.lock);
        } catch {
          /* already gone */
        }
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      const pid = Number(fs.readFileSync(paths.lock, 'utf8').trim());
      if (pid > 0 && pid !== process.pid && processAlive(pid) && isTrenvd(pid)) {
        throw new AlreadyRunningError(pid, readInfo(paths), paths.root);
      }
      fs.rmSync(paths.lock, { force: true }); // stale
    }
  }
  throw new Error(`could not take the lock ${paths.lock}`);
}

export function readInfo(paths: StatePaths): DaemonInfoFile | undefined {
  try {
    return JSON.parse(fs.readFileSync(paths.info, 'utf8')) as DaemonInfoFile;
  } catch {
    return undefined;
  }
}

/** The uid/gid that should own client-readable files: the sudo user when started through sudo. */
export function clientOwner(): { uid: number; gid: number } | undefined {
  const uid = Number(process.env.SUDO_UID);
  const gid = Number(process.env.SUDO_GID);
  return Number.isInteger(uid) && uid > 0 && Number.isInteger(gid) ? { uid, gid } : undefined;
}

export function writeToken(paths: StatePaths): string {
  const token = crypto.randomBytes(32).toString('hex');
  const tmp = `${paths.token}.${process.pid}`;
  fs.writeFileSync(tmp, token + '\n', { mode: 0o600 });
  fs.chmodSync(tmp, 0o600);
  const owner = clientOwner();
  if (owner) fs.chownSync(tmp, owner.uid, owner.gid);
  fs.renameSync(tmp, paths.token);
  return token;
}

export function writeInfo(paths: StatePaths, info: DaemonInfoFile): void {
  const tmp = `${paths.info}.${process.pid}`;
  fs.writeFileSync(tmp, JSON.stringify(info, null, 2) + '\n', { mode: 0o644 });
  fs.renameSync(tmp, paths.info);
}

export function ensureDirs(paths: StatePaths): void {
  fs.mkdirSync(paths.root, { recursive: true, mode: 0o755 });
  for (const d of [paths.invocations, paths.run, paths.mnt, paths.emptyApp]) fs.mkdirSync(d, { recursive: true, mode: 0o755 });
  fs.chmodSync(paths.mnt, 0o700);
}
