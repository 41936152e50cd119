/**
 * Filesystem access of an E2B sandbox. Paths are never resolved on the host: a small Node program
 * runs INSIDE the sandbox (through trenv-enter: its mount namespace, root and user; in a microVM
 * through the guest agent, as the guest's sandbox user), so `..`,
 * symlinks and permissions resolve exactly as they do for the sandbox's own processes and nothing
 * outside its root is reachable. One helper per sandbox, started on first use (and again if it
 * was killed), speaking JSON lines on stdin/stdout; file contents of /files stream through `cat` runs the same way.
 */
import type { ChildProcess } from 'node:child_process';
import { EventEmitter } from 'node:events';
import * as readline from 'node:readline';
import { spawnInside } from './inside';
import type { E2bSandbox } from './sandboxes';

/** Runs inside the sandbox under node, read from fd 3. Requests {id, op, ...}; replies {id, result} | {id, error:{code,message}}; watch events {watch, events}. */
const HELPER = String.raw`
const fs = require('fs'), path = require('path'), rl = require('readline');
const HOME = process.env.HOME || '/';
const names = (f) => { const m = new Map(); try { for (const l of fs.readFileSync(f, 'utf8').split('\n')) { const x = l.split(':'); if (x.length > 2) m.set(Number(x[2]), x[0]); } } catch {} return m; };
const users = names('/etc/passwd'), groups = names('/etc/group');
const abs = (p) => path.resolve(HOME, p || '.');
function perm(st) {
  const t = st.isDirectory() ? 'd' : st.isSymbolicLink() ? 'L' : '-';
  let s = ''; for (let i = 8; i >= 0; i--) s += (st.mode >> i) & 1 ? 'rwx'[(8 - i) % 3] : '-';
  return t + s;
}
function entry(p) {
  const l = fs.lstatSync(p);
  let st = l, target;
  if (l.isSymbolicLink()) { target = fs.readlinkSync(p); try { st = fs.statSync(p); } catch {} }
  return { name: path.basename(p) || '/', type: l.isSymbolicLink() ? 'symlink' : st.isDirectory() ? 'dir' : 'file', path: p, size: st.size,
    mode: st.mode & 0o7777, permissions: perm(l), owner: users.get(st.uid) || String(st.uid), group: groups.get(st.gid) || String(st.gid),
    mtimeMs: st.mtimeMs, symlinkTarget: target };
}
function list(dir, depth, out) {
  for (const n of fs.readdirSync(dir).sort()) {
    const p = path.join(dir, n); let e; try { e = entry(p); } catch { continue; }
    out.push(e);
    if (depth > 1 && e.type === 'dir') { try { list(p, depth - 1, out); } catch {} }
  }
  return out;
}
const watchers = new Map(); let wseq = 0;
const send = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const ops = {
  stat: (r) => entry(abs(r.path)),
  mkdir: (r) => { const p = abs(r.path); if (fs.existsSync(p)) { const e = new Error('exists'); e.code = 'EEXIST'; throw e; } fs.mkdirSync(p, { recursive: true }); return entry(p); },
  move: (r) => { const a = abs(r.source), b = abs(r.destination); fs.mkdirSync(path.dirname(b), { recursive: true }); fs.renameSync(a, b); return entry(b); },
  list: (r) => { const p = abs(r.path); if (!fs.statSync(p).isDirectory()) { const e = new Error('not a directory'); e.code = 'ENOTDIR'; throw e; } return list(p, Math.max(1, r.depth || 1), []); },
  remove: (r) => { const p = abs(r.path); fs.lstatSync(p); fs.rmSync(p, { recursive: true, force: true }); return {}; },
  readable: (r) => { const p = abs(r.path); const st = fs.statSync(p); if (st.isDirectory()) { const e = new Error('is a directory'); e.code = 'EISDIR'; throw e; } fs.accessSync(p, fs.constants.R_OK); return { path: p, size: st.size }; },
  watch: (r) => {
    const p = abs(r.path); if (!fs.statSync(p).isDirectory()) { const e = new Error('not a directory'); e.code = 'ENOTDIR'; throw e; }
    const id = ++wseq;
    const w = fs.watch(p, { recursive: !!r.recursive }, (kind, name) => {
      if (!name) return;
      const full = path.join(p, name); let ex = true; try { fs.lstatSync(full); } catch { ex = false; }
      const type = kind === 'change' ? 'write' : ex ? 'create' : 'remove';
      send({ watch: id, events: [{ name, type, entry: ex && r.includeEntry ? (() => { try { return entry(full); } catch { return undefined; } })() : undefined }] });
    });
    w.on('error', (e) => send({ watch: id, error: String(e.message) }));
    watchers.set(id, w); return { watchId: id };
  },
  unwatch: (r) => { const w = watchers.get(r.watchId); if (w) { w.close(); watchers.delete(r.watchId); } return {}; },
};
rl.createInterface({ input: process.stdin }).on('line', (line) => {
  let r; try { r = JSON.parse(line); } catch { return; }
  try { const f = ops[r.op]; if (!f) throw Object.assign(new Error('unknown op ' + r.op), { code: 'EINVAL' }); send({ id: r.id, result: f(r) }); }
  catch (e) { send({ id: r.id, error: { code: e.code || 'EIO', message: e.message } }); }
}).on('close', () => process.exit(0));
send({ ready: true });
`;

export interface EntryJson {
  name: string;
  type: 'file' | 'dir' | 'symlink';
  path: string;
  size: number;
  mode: number;
  permissions: string;
  owner: string;
  group: string;
  mtimeMs: number;
  symlinkTarget?: string;
}

export interface FsEventJson {
  name: string;
  type: 'create' | 'write' | 'remove' | 'rename' | 'chmod';
  entry?: EntryJson;
}

export class FsError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
  }
}

export class FsHelper extends EventEmitter {
  private proc: ChildProcess | undefined;
  private ready: Promise<void> | undefined;
  private seq = 0;
  private readonly waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private disposed = false;

  constructor(private readonly sb: E2bSandbox, private readonly enterPath: string) {
    super();
    this.setMaxListeners(0);
  }

  private start(): Promise<void> {
    if (this.ready) return this.ready;
    this.ready = new Promise((resolve, reject) => {
      // the program comes on fd 3 (a short argv in `ps`, nothing to parse on the command line)
      const proc = spawnInside(this.sb, this.enterPath, ['/usr/bin/node', '-e', 'eval(require("fs").readFileSync(3, "utf8"))'], { stdin: true, fd3: HELPER });
      this.proc = proc;
      let err = '';
      proc.stderr!.on('data', (b: Buffer) => (err = (err + b.toString()).slice(-2000)));
      proc.stdin!.on('error', () => undefined);
      rlLines(proc, (msg) => {
        if (msg.ready) return resolve();
        if (typeof msg.watch === 'number') return this.emit(`watch:${msg.watch}`, msg);
        const w = this.waiting.get(msg.id as number);
        if (!w) return;
        this.waiting.delete(msg.id as number);
        const e = msg.error as { code: string; message: string } | undefined;
        if (e) w.reject(new FsError(e.code, e.message));
        else w.resolve(msg.result);
      });
      proc.on('exit', (code, signal) => {
        const why = new FsError('EUNAVAILABLE', `the sandbox's file helper exited (${signal ?? code})${err ? `: ${err.trim()}` : ''}`);
        reject(why);
        for (const w of this.waiting.values()) w.reject(why);
        this.waiting.clear();
        // killed from inside the sandbox (its own processes may do that): the next call starts a new one
        this.ready = undefined;
        this.proc = undefined;
        this.emit('dead');
      });
    });
    return this.ready;
  }

  async call<T>(op: string, args: Record<string, unknown>): Promise<T> {
    if (this.disposed) throw new FsError('EUNAVAILABLE', 'the sandbox ended');
    await this.start();
    const id = ++this.seq;
    return new Promise<T>((resolve, reject) => {
      this.waiting.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.proc!.stdin!.write(JSON.stringify({ id, op, ...args }) + '\n');
    });
  }

  dispose(): void {
    this.disposed = true;
    this.proc?.kill('SIGKILL');
  }
}

function rlLines(proc: ChildProcess, onMsg: (m: Record<string, unknown>) => void): void {
  readline.createInterface({ input: proc.stdout! }).on('line', (line) => {
    try {
      onMsg(JSON.parse(line) as Record<string, unknown>);
    } catch {
      /* not ours */
    }
  });
}
