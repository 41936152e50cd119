/**
 * CRIU checkpoints of initialised runtimes ("CRIU" baseline of the paper, and a restore path for
 * Node templates). Installed by scripts/setup-criu.sh into a private prefix (criu 4.x from Debian
 * trixie, run through trixie's own loader; nothing system-wide).
 *
 * How it works on this machine (all measured, see runtime-daemon/template/criu-check.mjs):
 *
 * - A template is a runtime shim that has loaded the agent and blocks reading its event from
 *   stdin, running inside a trenv-sandboxd sandbox (`launchForCheckpoint`). Its fds 0-3 must be
 *   real pipes (Node's spawn gives unix socketpairs, which CRIU cannot re-open), so a bash
 *   launcher puts pipes in between. Its PID is pushed up to `pidBase` (ns_last_pid) so that the
 *   low PIDs of any target sandbox stay free for CRIU and the sandbox's own processes.
 * - CRIU always runs INSIDE the sandbox: `nsenter` into the sandbox init's mnt/net/uts/ipc/pid
 *   namespaces, chroot'ed to the sandbox root. Then the task shares CRIU's namespaces and root,
 *   so CRIU dumps no namespace and no mount at all (no overlay/tmpfs/proc images, no external
 *   mount maps) and, at restore, the task lands in the target sandbox's namespaces, sees its
 *   root, and (because the CRIU process was put into the sandbox's cgroups before it started,
 *   with --manage-cgroups=ignore) in its cgroups. The criu binary, its libraries and the images
 *   are reached from inside through inherited directory fds (`/proc/self/fd/N/...`).
 * - Dump runs CRIU with the task's uid/gid and all of our capabilities as ambient caps, with
 *   `--unprivileged`: this machine lacks CAP_SYS_RESOURCE, so root may not prlimit() a process
 *   of another uid (CRIU reads rlimits with prlimit), but the same uid may.
 * - `--unprivileged` is also used for restore: it makes CRIU keep its kernel-feature cache
 *   (criu.kdat) in $XDG_RUNTIME_DIR, which we point at a root-only tmpfs dir; without the cache
 *   each restore re-probes the kernel (~30 ms).
 * - Restore: per instance, four FIFOs (stdin, stdout, stderr, chan) are created and handed to
 *   CRIU with `--inherit-fd fd[N]:pipe:[<inode at dump>]`; CRIU re-opens them in place of the
 *   template's pipes. `-d` (restore detached): the task is reparented to the sandbox's init.
 *   The restored process keeps its PID (it must be free in the target pid namespace).
 *
 * Use A ("CRIU" baseline): `restoreFresh` = a fresh sandbox per invocation + `restoreInto`.
 * Use B (product path): `restoreInto` an existing (e.g. repurposed) sandbox.
 *
 * Every call has a timeout; failures throw CriuError carrying the tail of CRIU's log.
 * Restored instances are clones: they share RNG state, so the shim must re-seed before the
 * handler runs (`CriuInstance.invoke` sends an envelope with a fresh seed when the template was
 * launched with `envelope: true`; see runtimes/node/trenv-shim.js).
 */
import { ChildProcess, execFile, spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

export const DEFAULT_CRIU_PREFIX = '/opt/trenv/criu';
const LOADER = 'usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2';
const LIBDIRS = ['usr/lib/x86_64-linux-gnu', 'lib/x86_64-linux-gnu'];
const BIN = 'usr/sbin/criu';
/** Root-only dir on tmpfs for CRIU's kernel-feature cache (gone at reboot, as CRIU requires). */
const KDAT_DIR = '/dev/shm/trenv-criu-kdat';
/** File in the images dir describing the template (see TemplateMeta). */
export const META_FILE = 'trenv-criu.json';

// Child fd layout of every CRIU spawn (inherited through sh and nsenter).
const FD_IMAGES = 3;
const FD_PREFIX = 4;
const FD_KDAT = 5;
const FD_INHERIT0 = 6; // 6..9: stdin, stdout, stderr, chan of the restored task

export class CriuError extends Error {
  constructor(message: string, readonly logTail = '') {
    super(logTail ? `${message}\n--- criu log tail ---\n${logTail}` : message);
  }
  get name(): string {
    return 'CriuError';
  }
}

/** A sandbox to run CRIU in / restore into: its init's host PID and its cgroup.procs files. */
export interface CriuTarget {
  initPid: number;
  cgroupProcs?: string[];
  /** The sandbox root inside init's mount namespace (trenv-sandboxd: `/root`). */
  rootInInit?: string;
}

/** What restore needs to know about a template, kept next to the images. */
export interface TemplateMeta {
  nsPid: number;
  uid: number;
  gid: number;
  /** pipe inode of the template's fd 0..3 at dump time (the --inherit-fd keys) */
  pipes: number[];
  envelope: boolean;
  runtime?: string;
  dumpedAt: string;
  criuVersion?: string;
}

export function criuPrefix(): string {
  return process.env.TRENV_CRIU_PREFIX || DEFAULT_CRIU_PREFIX;
}

/** The wrapper script made by scripts/setup-criu.sh (runs criu through trixie's loader). */
export function criuPath(): string {
  return path.join(criuPrefix(), 'criu');
}

// ---------------------------------------------------------------------------------------------
// small helpers

function run(cmd: string, args: string[], timeoutMs: number, env?: NodeJS.ProcessEnv): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, killSignal: 'SIGKILL', env, maxBuffer: 1 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as NodeJS.ErrnoException).code === 'number' ? Number((err as NodeJS.ErrnoException).code) : null) : 0;
      resolve({ code, out: `${stdout}${stderr}` });
    });
  });
}

function tail(text: string, lines = 15): string {
  return text.split('\n').filter(Boolean).slice(-lines).join('\n');
}

function logTail(file: string, lines = 15): string {
  try {
    const all = fs.readFileSync(file, 'utf8').split('\n').filter(Boolean);
    // the error lines first (they are what matters), then the very end
    const errs = all.filter((l) => /Error|Warn \(/.test(l) && !/tun\.c|RLIMIT_NOFILE for self|kdat/.test(l)).slice(-8);
    return [...errs, '...', ...all.slice(-lines)].join('\n');
  } catch {
    return '(no log)';
  }
}

const CAP_NAMES = [
  'chown', 'dac_override', 'dac_read_search', 'fowner', 'fsetid', 'kill', 'setgid', 'setuid', 'setpcap',
  'linux_immutable', 'net_bind_service', 'net_broadcast', 'net_admin', 'net_raw', 'ipc_lock', 'ipc_owner',
  'sys_module', 'sys_rawio', 'sys_chroot', 'sys_ptrace', 'sys_pacct', 'sys_admin', 'sys_boot', 'sys_nice',
  'sys_resource', 'sys_time', 'sys_tty_config', 'mknod', 'lease', 'audit_write', 'audit_control', 'setfcap',
  'mac_override', 'mac_admin', 'syslog', 'wake_alarm', 'block_suspend', 'audit_read', 'perfmon', 'bpf',
  'checkpoint_restore',
];

/** Our effective capabilities as a setpriv list (`+chown,+kill,...`). */
function ownCaps(): string {
  const hex = /CapEff:\s*([0-9a-f]+)/.exec(fs.readFileSync('/proc/self/status', 'utf8'))?.[1] ?? '0';
  const bits = BigInt(`0x${hex}`);
  return CAP_NAMES.filter((_, i) => (bits >> BigInt(i)) & 1n).map((n) => `+${n}`).join(',');
}

function procStatus(pid: number): string {
  return fs.readFileSync(`/proc/${pid}/status`, 'utf8');
}

/** Last NSpid entry: the PID as seen inside its own (innermost) pid namespace. */
export function nsPidOf(hostPid: number): number {
  const m = /NSpid:\s*([\d\s]+)/.exec(procStatus(hostPid));
  if (!m) throw new CriuError(`cannot read NSpid of ${hostPid}`);
  return Number(m[1].trim().split(/\s+/).pop());
}

/** Host PID of the process with PID `nsPid` in the pid namespace of `initPid`, if any. */
export function hostPidIn(initPid: number, nsPid: number): number | undefined {
  const ns = fs.readlinkSync(`/proc/${initPid}/ns/pid`);
  // restored tasks are children of init (restore -d); try those first, then scan
  const first = (() => {
    try {
      return fs.readFileSync(`/proc/${initPid}/task/${initPid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean);
    } catch {
      return [];
    }
  })();
  const all = first.concat(fs.readdirSync('/proc').filter((d) => /^\d+$/.test(d)));
  for (const d of all) {
    try {
      if (fs.readlinkSync(`/proc/${d}/ns/pid`) !== ns) continue;
      if (nsPidOf(Number(d)) === nsPid) return Number(d);
    } catch {
      /* gone */
    }
  }
  return undefined;
}

/** RSS / PSS (kB) of one process from smaps_rollup. */
export function memoryOf(pid: number): { rssKb: number; pssKb: number; pssAnonKb: number; pssFileKb: number } | undefined {
  try {
    const t = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    const g = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(t)?.[1] ?? 0);
    return { rssKb: g('Rss'), pssKb: g('Pss'), pssAnonKb: g('Pss_Anon'), pssFileKb: g('Pss_File') };
  } catch {
    return undefined;
  }
}

function kdatDirOk(): boolean {
  try {
    fs.mkdirSync(KDAT_DIR, { mode: 0o700 });
  } catch {
    /* exists */
  }
  try {
    const st = fs.lstatSync(KDAT_DIR);
    // someone else's dir (or a link) in the world-writable /dev/shm: do not trust it
    return st.isDirectory() && st.uid === 0 && (st.mode & 0o077) === 0;
  } catch {
    return false;
  }
}

let availability: Promise<{ ok: boolean; version?: string; reason?: string }> | undefined;

/** Is a working CRIU installed? (`criu check` says "Looks good"); cached for the process. */
export function criuAvailable(timeoutMs = 20_000): Promise<{ ok: boolean; version?: string; reason?: string }> {
  availability ??= (async () => {
    if (process.getuid?.() !== 0) return { ok: false, reason: 'CRIU needs root' };
    if (!fs.existsSync(criuPath())) return { ok: false, reason: `${criuPath()} not found: run scripts/setup-criu.sh as root` };
    const v = await run(criuPath(), ['--version'], timeoutMs);
    const version = /Version:\s*(\S+)/.exec(v.out)?.[1];
    if (v.code !== 0 || !version) return { ok: false, reason: `criu --version failed: ${tail(v.out, 5)}` };
    const c = await run(criuPath(), ['check'], timeoutMs);
    if (!/Looks good/.test(c.out)) return { ok: false, version, reason: `criu check failed: ${tail(c.out, 8)}` };
    return { ok: true, version };
  })();
  return availability;
}

// ---------------------------------------------------------------------------------------------
// running CRIU inside a sandbox

interface InSandboxOptions {
  target: CriuTarget;
  imagesDir: string;
  criuArgs: string[];
  /** run criu as this uid/gid, keeping our capabilities as ambient caps (dump) */
  asUser?: { uid: number; gid: number };
  /** extra fds for FD_INHERIT0.. */
  inherit?: number[];
  logFile: string;
  timeoutMs: number;
  what: string;
  /** a command that execs the rest (e.g. `trenv-enter ksm --`), run before entering the sandbox */
  prefix?: string[];
}

/**
 * sh (joins the sandbox's cgroups) -> nsenter (sandbox namespaces + root) -> [setpriv] -> criu.
 * Resolves when criu exits 0; rejects with the log tail otherwise or on timeout.
 */
async function criuInSandbox(o: InSandboxOptions): Promise<void> {
  const I = o.target.initPid;
  const rootIn = `/proc/${I}/root${o.target.rootInInit ?? '/root'}`;
  const P = `/proc/self/fd/${FD_PREFIX}`;
  const criu = [`${P}/${LOADER}`, '--library-path', LIBDIRS.map((d) => `${P}/${d}`).join(':'), `${P}/${BIN}`];
  const priv = o.asUser
    ? ['/usr/bin/setpriv', `--reuid=${o.asUser.uid}`, `--regid=${o.asUser.gid}`, '--clear-groups', `--inh-caps=${ownCaps()}`, `--ambient-caps=${ownCaps()}`]
    : [];
  const kdat = kdatDirOk();
  const argv = [
    '-c',
    'p=$$; while [ "$1" != -- ]; do echo $p > "$1" || exit 97; shift; done; shift; exec "$@"',
    'criu-in-sandbox',
    ...(o.target.cgroupProcs ?? []),
    '--',
    ...(o.prefix ?? []),
    'nsenter', '-t', String(I), '-m', '-n', '-u', '-i', '-p', `--root=${rootIn}`, `--wd=${rootIn}`, '--',
    ...priv,
    ...criu,
    ...o.criuArgs,
    '-D', `/proc/self/fd/${FD_IMAGES}`,
    '-o', o.logFile,
    '-v4',
    '--unprivileged',
    '--manage-cgroups=ignore',
  ];
  const fds: number[] = [];
  const open = (p: string) => {
    const fd = fs.openSync(p, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
    fds.push(fd);
    return fd;
  };
  try {
    const stdio: Array<'ignore' | 'pipe' | number> = ['ignore', 'pipe', 'pipe', open(o.imagesDir), open(criuPrefix()), kdat ? open(KDAT_DIR) : 'ignore', ...(o.inherit ?? [])];
    const env: NodeJS.ProcessEnv = { PATH: '/usr/sbin:/usr/bin:/sbin:/bin', LANG: 'C' };
    if (kdat) env.XDG_RUNTIME_DIR = `/proc/self/fd/${FD_KDAT}`;
    const child: ChildProcess = spawn('/bin/sh', argv, { stdio, env, detached: true });
    let out = '';
    child.stdout!.on('data', (d) => (out += d));
    child.stderr!.on('data', (d) => (out += d));
    const res = await new Promise<{ code: number | null; sig: string | null; timedOut: boolean; err?: Error }>((resolve) => {
      const timer = setTimeout(() => {
        try {
          process.kill(-child.pid!, 'SIGKILL');
        } catch {
          /* gone */
        }
        resolve({ code: null, sig: 'SIGKILL', timedOut: true });
      }, o.timeoutMs);
      child.on('error', (err) => {
        clearTimeout(timer);
        resolve({ code: null, sig: null, timedOut: false, err });
      });
      child.on('exit', (code, sig) => {
        clearTimeout(timer);
        resolve({ code, sig, timedOut: false });
      });
    });
    if (res.err) throw new CriuError(`${o.what}: cannot start criu: ${res.err.message}`);
    const log = path.join(o.imagesDir, o.logFile);
    if (res.timedOut) throw new CriuError(`${o.what}: timed out after ${o.timeoutMs} ms`, logTail(log));
    if (res.code === 97) throw new CriuError(`${o.what}: cannot join the sandbox's cgroups (${(o.target.cgroupProcs ?? []).join(', ')})`);
    if (res.code !== 0) {
      throw new CriuError(`${o.what}: criu failed (${res.sig ?? `exit ${res.code}`})${out.trim() ? `: ${tail(out, 5)}` : ''}`, logTail(log));
    }
  } finally {
    for (const fd of fds) fs.closeSync(fd);
  }
}

// ---------------------------------------------------------------------------------------------
// template process

export interface LaunchOptions {
  /** argv inside the sandbox, argv[0] an absolute path there */
  argv: string[];
  env: Record<string, string>;
  cwd: string;
  uid: number;
  gid: number;
  /** the template's PID in the sandbox will be pidBase (default 10000); its threads take the next ones */
  pidBase?: number;
  /** the shim will read an envelope (re-seed + per-invocation env) instead of a bare event */
  envelope?: boolean;
  /** chan message that means "initialised, waiting for the event" (default `loaded`) */
  readyMessage?: string;
  timeoutMs?: number;
}

export interface LaunchedTemplate {
  hostPid: number;
  nsPid: number;
  envelope: boolean;
  /** stderr/stdout seen so far (for errors) */
  output(): string;
  /** kill the launcher chain (the template itself is killed by dump) */
  close(): void;
  /** ms from spawn to the ready message */
  readyMs: number;
  /** the ready message's fields (the Node shim: its wait before the snapshot, how clones are re-seeded) */
  readyInfo: Record<string, unknown>;
}

/**
 * Start a runtime in the sandbox (its namespaces, root, cgroups), as uid/gid without
 * capabilities and with no_new_privs, with pipes as fds 0-3, and wait until it says it is ready.
 */
export async function launchForCheckpoint(target: CriuTarget, o: LaunchOptions): Promise<LaunchedTemplate> {
  const I = target.initPid;
  const base = o.pidBase ?? 10000;
  const timeoutMs = o.timeoutMs ?? 30_000;
  const rootIn = `/proc/${I}/root${target.rootInInit ?? '/root'}`;
  // the next PID in the sandbox's pid namespace (the nsenter child doing it takes one itself)
  const bump = await run('nsenter', ['-t', String(I), '-p', '/bin/sh', '-c', `echo ${base - 1} > /proc/sys/kernel/ns_last_pid`], 5000);
  if (bump.code !== 0) throw new CriuError(`cannot set ns_last_pid in the sandbox: ${tail(bump.out, 3)}`);

  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  const env = { ...o.env, ...(o.envelope ? { TRENV_EVENT_ENVELOPE: '1' } : {}) };
  const inner = [
    'nsenter', '-t', String(I), '-m', '-n', '-u', '-i', '-p', `--root=${rootIn}`, `--wd=${rootIn}${o.cwd}`, '--',
    // close every fd above 3 (bash leaves its process-substitution fds open), then exec
    '/usr/bin/bash', '-c', 'for f in /proc/self/fd/*; do n=${f##*/}; [ "$n" -gt 3 ] && eval "exec $n>&-"; done; exec "$@"', 'tmpl',
    '/usr/bin/setsid',
    '/usr/bin/setpriv', `--reuid=${o.uid}`, `--regid=${o.gid}`, '--clear-groups', '--inh-caps=-all', '--bounding-set=-all', '--no-new-privs',
    '/usr/bin/env', '-i', ...Object.entries(env).map(([k, v]) => `${k}=${v}`),
    ...o.argv,
  ];
  // real pipes for fds 0-3 (CRIU re-opens them at restore via /proc/self/fd; sockets cannot be)
  const script = `exec 4>&3; cat | ${inner.map(q).join(' ')} > >(exec cat) 2> >(exec cat >&2) 3> >(exec cat >&4) 4>&-`;
  const t0 = process.hrtime.bigint();
  // --norc: with a socket as stdin (Node's stdio pipes are socketpairs) bash thinks it was started
  // by rshd and reads root's ~/.bashrc, which has no business in a template's launch
  const child = spawn('/usr/bin/bash', ['--norc', '-c', script], { stdio: ['pipe', 'pipe', 'pipe', 'pipe'], detached: true, env: { PATH: '/usr/bin:/bin' } });
  let output = '';
  child.stdout!.on('data', (d) => (output += d));
  child.stderr!.on('data', (d) => (output += d));
  child.stdin!.on('error', () => undefined);
  const close = () => {
    try {
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      /* gone */
    }
  };
  const ready = o.readyMessage ?? 'loaded';
  let readyInfo: Record<string, unknown> = {};
  try {
    await new Promise<void>((resolve, reject) => {
      let buf = '';
      const timer = setTimeout(() => reject(new CriuError(`template did not become ready within ${timeoutMs} ms: ${tail(output, 8)}`)), timeoutMs);
      child.stdio[3]!.on('data', (d: Buffer) => {
        buf += d.toString();
        for (const line of buf.split('\n').slice(0, -1)) {
          try {
            const m = JSON.parse(line);
            if (m.t === ready) {
              clearTimeout(timer);
              readyInfo = m;
              resolve();
            } else if (m.t === 'error') {
              clearTimeout(timer);
              reject(new CriuError(`template failed while loading: ${m.error?.type}: ${m.error?.message}`));
            }
          } catch {
            /* not ours */
          }
        }
        buf = buf.slice(buf.lastIndexOf('\n') + 1);
      });
      child.on('exit', (code) => {
        clearTimeout(timer);
        reject(new CriuError(`template launcher exited (${code}) before ready: ${tail(output, 8)}`));
      });
    });
  } catch (e) {
    close();
    throw e;
  }
  const readyMs = Number(process.hrtime.bigint() - t0) / 1e6;
  const hostPid = hostPidIn(I, base);
  if (!hostPid) {
    close();
    throw new CriuError(`template is ready but PID ${base} is not in the sandbox (another process took it?)`);
  }
  return { hostPid, nsPid: base, envelope: !!o.envelope, output: () => output, close, readyMs, readyInfo };
}

// ---------------------------------------------------------------------------------------------
// dump

export interface DumpOptions {
  /** the sandbox the process runs in */
  target: CriuTarget;
  /** keep the process running after the dump (default: CRIU kills it) */
  leaveRunning?: boolean;
  envelope?: boolean;
  runtime?: string;
  timeoutMs?: number;
}

/** Checkpoint `pid` (host PID; it must run in `target`, fds 0-3 pipes) into imagesDir. */
export async function dump(pid: number, imagesDir: string, opts: DumpOptions): Promise<{ ms: number; bytes: number; meta: TemplateMeta }> {
  const st = procStatus(pid);
  const uid = Number(/Uid:\s*(\d+)/.exec(st)?.[1]);
  const gid = Number(/Gid:\s*(\d+)/.exec(st)?.[1]);
  const pipes = [0, 1, 2, 3].map((fd) => {
    const l = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
    const m = /^pipe:\[(\d+)\]$/.exec(l);
    if (!m) throw new CriuError(`fd ${fd} of ${pid} is ${l}, not a pipe (start templates with launchForCheckpoint)`);
    return Number(m[1]);
  });
  const nsPid = nsPidOf(pid);
  fs.rmSync(imagesDir, { recursive: true, force: true });
  fs.mkdirSync(imagesDir, { recursive: true, mode: 0o700 });
  const avail = await criuAvailable();
  if (!avail.ok) throw new CriuError(`CRIU is not available: ${avail.reason}`);
  const t0 = process.hrtime.bigint();
  await criuInSandbox({
    target: opts.target,
    imagesDir,
    criuArgs: ['dump', '-t', String(nsPid), ...(opts.leaveRunning ? ['--leave-running'] : [])],
    asUser: { uid, gid },
    logFile: 'dump.log',
    timeoutMs: opts.timeoutMs ?? 30_000,
    what: `criu dump of ${pid}`,
  });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  const meta: TemplateMeta = { nsPid, uid, gid, pipes, envelope: !!opts.envelope, runtime: opts.runtime, dumpedAt: new Date().toISOString(), criuVersion: avail.version };
  fs.writeFileSync(path.join(imagesDir, META_FILE), JSON.stringify(meta, null, 1));
  const bytes = fs.readdirSync(imagesDir).reduce((s, f) => s + fs.statSync(path.join(imagesDir, f)).size, 0);
  return { ms, bytes, meta };
}

export function readMeta(imagesDir: string): TemplateMeta {
  try {
    return JSON.parse(fs.readFileSync(path.join(imagesDir, META_FILE), 'utf8'));
  } catch (e) {
    throw new CriuError(`${imagesDir} is not a trenv CRIU template (${(e as Error).message})`);
  }
}

// ---------------------------------------------------------------------------------------------
// restore

export interface InvokeResult {
  ok: boolean;
  value?: unknown;
  error?: { type?: string; message?: string; stack?: string; phase?: string };
  messages: Array<Record<string, unknown>>;
  stdout: string;
  stderr: string;
  /** ms from writing the event to the result/error message */
  ms: number;
}

export interface InvokeOptions {
  /** per-invocation env for the shim (TRENV_INVOCATION_ID, TRENV_DEADLINE_MS ...) */
  env?: Record<string, string>;
  /** send a fresh 32-byte seed (default true; only with envelope templates) */
  reseed?: boolean;
  timeoutMs?: number;
  /**
   * Every chunk of the restored process's stdout/stderr/chan as it arrives (set before the event
   * is written, so nothing of this invocation is missed), for callers that stream output.
   */
  onChunk?: ChunkHandler;
}

export type ChunkHandler = (stream: 'out' | 'err' | 'chan', data: Buffer, ns: bigint) => void;

/** A timed step of a restore, on the CLOCK_MONOTONIC scale of process.hrtime.bigint(). */
export interface RestoreStep {
  name: string;
  startNs: bigint;
  endNs: bigint;
}

/** One restored process with its four streams. */
export class CriuInstance {
  private chanBuf = '';
  private readonly messages: Array<Record<string, unknown>> = [];
  private out = '';
  private err = '';
  private waiters: Array<() => void> = [];
  private eof = 0;
  /** see InvokeOptions.onChunk (invoke sets it) */
  onChunk?: ChunkHandler;
  /** the restore's steps with their times (fifo, criu, find); set by restoreInto */
  steps: RestoreStep[] = [];

  constructor(
    readonly hostPid: number,
    readonly nsPid: number,
    readonly meta: TemplateMeta,
    private readonly stdin: net.Socket,
    stdout: net.Socket,
    stderr: net.Socket,
    chan: net.Socket,
    /** restore spans in ms: fifo (pipes), criu (spawn to exit), find (host pid) */
    readonly spans: Record<string, number>,
  ) {
    stdin.on('error', () => undefined);
    stdout.on('data', (d: Buffer) => {
      this.out += d;
      this.onChunk?.('out', d, process.hrtime.bigint());
    });
    stderr.on('data', (d: Buffer) => {
      this.err += d;
      this.onChunk?.('err', d, process.hrtime.bigint());
    });
    chan.on('data', (d: Buffer) => {
      this.onChunk?.('chan', d, process.hrtime.bigint());
      this.chanBuf += d.toString();
      const lines = this.chanBuf.split('\n');
      this.chanBuf = lines.pop() ?? '';
      for (const l of lines) {
        try {
          this.messages.push(JSON.parse(l));
        } catch {
          this.messages.push({ t: 'garbage', line: l });
        }
      }
      this.wake();
    });
    for (const s of [stdout, stderr, chan]) {
      s.on('error', () => undefined);
      s.on('end', () => {
        this.eof++;
        this.wake();
      });
    }
  }

  /** True once stdout, stderr and chan all reached EOF (the process has exited or closed them). */
  get ended(): boolean {
    return this.eof >= 3;
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  get restoreMs(): number {
    return Object.values(this.spans).reduce((a, b) => a + b, 0);
  }

  memory() {
    return memoryOf(this.hostPid);
  }

  /**
   * Write the event (wrapped in the re-seed envelope if the template expects one), close
   * stdin, and wait for the shim's result or error on chan.
   */
  async invoke(event: unknown, o: InvokeOptions = {}): Promise<InvokeResult> {
    const payload = this.meta.envelope
      ? { trenv: { ...(o.reseed === false ? {} : { seed: crypto.randomBytes(32).toString('hex') }), env: o.env ?? {} }, event }
      : event;
    if (o.onChunk) this.onChunk = o.onChunk;
    const t0 = process.hrtime.bigint();
    this.stdin.end(JSON.stringify(payload));
    const timeoutMs = o.timeoutMs ?? 30_000;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const fin = this.messages.find((m) => m.t === 'result' || m.t === 'error');
      if (fin) {
        const ms = Number(process.hrtime.bigint() - t0) / 1e6;
        // let the process finish writing stdout/stderr (it exits right after the result)
        await this.waitEof(Math.max(0, Math.min(2000, deadline - Date.now())));
        return {
          ok: fin.t === 'result',
          value: fin.value,
          error: fin.t === 'error' ? { ...(fin.error as object), phase: fin.phase as string } : undefined,
          messages: this.messages,
          stdout: this.out,
          stderr: this.err,
          ms,
        };
      }
      if (this.eof >= 3 || Date.now() >= deadline) {
        this.kill();
        throw new CriuError(
          this.eof >= 3 ? `restored process ${this.hostPid} exited without a result; stderr: ${tail(this.err, 8)}` : `no result from restored process ${this.hostPid} within ${timeoutMs} ms`,
        );
      }
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.max(1, deadline - Date.now()));
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  private async waitEof(ms: number): Promise<void> {
    const end = Date.now() + ms;
    while (this.eof < 3 && Date.now() < end) {
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.max(1, end - Date.now()));
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  kill(): void {
    try {
      // only if it is still the process we restored (same pid namespace, same ns pid)
      if (nsPidOf(this.hostPid) === this.nsPid) process.kill(this.hostPid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}

export interface RestoreOptions {
  timeoutMs?: number;
  /** where the per-instance FIFOs are made (they are unlinked right after opening) */
  tmpDir?: string;
  /** keep CRIU's restore log even on success (default: deleted) */
  keepLog?: boolean;
  /** argv prefix for the restore (KsmControl.prefix: the instance's memory becomes mergeable) */
  prefix?: string[];
}

let restoreSeq = 0;

/**
 * Use B: restore the template in imagesDir into an existing sandbox (its namespaces, root and
 * cgroups). The template's PID (meta.nsPid) and its threads' TIDs must be free there.
 */
export async function restoreInto(imagesDir: string, target: CriuTarget, o: RestoreOptions = {}): Promise<CriuInstance> {
  const meta = readMeta(imagesDir);
  const spans: Record<string, number> = {};
  const steps: RestoreStep[] = [];
  let t = process.hrtime.bigint();
  const lap = (name: string) => {
    const now = process.hrtime.bigint();
    spans[name] = Number(now - t) / 1e6;
    steps.push({ name, startNs: t, endNs: now });
    t = now;
  };
  const dir = fs.mkdtempSync(path.join(o.tmpDir ?? os.tmpdir(), 'trenv-criu-'));
  const names = ['in', 'out', 'err', 'chan'].map((n) => path.join(dir, n));
  const fds: number[] = [];
  try {
    const mk = await run('mkfifo', ['-m', '600', ...names], 5000);
    if (mk.code !== 0) throw new CriuError(`mkfifo failed: ${mk.out}`);
    const C = fs.constants;
    // stdin: we hold a read-write end so that opening never blocks; the shim sees EOF when we
    // end it. stdout/stderr/chan: read ends; EOF once the restored process has exited.
    fds.push(fs.openSync(names[0], C.O_RDWR | C.O_NONBLOCK));
    for (const n of names.slice(1)) fds.push(fs.openSync(n, C.O_RDONLY | C.O_NONBLOCK));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  lap('fifo');
  const log = `restore-${process.pid}-${++restoreSeq}.log`;
  try {
    await criuInSandbox({
      target,
      imagesDir,
      criuArgs: ['restore', '-d', ...meta.pipes.flatMap((ino, i) => ['--inherit-fd', `fd[${FD_INHERIT0 + i}]:pipe:[${ino}]`])],
      inherit: fds,
      logFile: log,
      timeoutMs: o.timeoutMs ?? 30_000,
      what: `criu restore of ${imagesDir} into sandbox ${target.initPid}`,
      prefix: o.prefix,
    });
  } catch (e) {
    for (const fd of fds) fs.closeSync(fd);
    throw e;
  }
  lap('criu');
  const hostPid = hostPidIn(target.initPid, meta.nsPid);
  lap('find');
  if (!o.keepLog) fs.rmSync(path.join(imagesDir, log), { force: true });
  const sock = (fd: number, w: boolean) => new net.Socket({ fd, readable: !w, writable: w });
  const [i, so, se, ch] = [sock(fds[0], true), sock(fds[1], false), sock(fds[2], false), sock(fds[3], false)];
  if (!hostPid) {
    for (const s of [i, so, se, ch]) s.destroy();
    throw new CriuError(`criu restore succeeded but PID ${meta.nsPid} is not in sandbox ${target.initPid}`);
  }
  const inst = new CriuInstance(hostPid, meta.nsPid, meta, i, so, se, ch, spans);
  inst.steps = steps;
  return inst;
}

/** Makes and removes sandboxes for Use A. */
export interface SandboxFactory<S extends CriuTarget = CriuTarget> {
  create(): Promise<S>;
  destroy(s: S): Promise<void>;
}

/**
 * Use A (the "CRIU" baseline): a FRESH sandbox per invocation, then restore the template into
 * it. Returns the instance, its sandbox (destroy it with factory.destroy when done) and spans.
 */
export async function restoreFresh<S extends CriuTarget>(
  imagesDir: string,
  factory: SandboxFactory<S>,
  o: RestoreOptions = {},
): Promise<{ instance: CriuInstance; sandbox: S; createMs: number; totalMs: number }> {
  const t0 = process.hrtime.bigint();
  const sandbox = await factory.create();
  const createMs = Number(process.hrtime.bigint() - t0) / 1e6;
  try {
    const instance = await restoreInto(imagesDir, sandbox, o);
    return { instance, sandbox, createMs, totalMs: Number(process.hrtime.bigint() - t0) / 1e6 };
  } catch (e) {
    await factory.destroy(sandbox).catch(() => undefined);
    throw e;
  }
}
