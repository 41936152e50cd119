/**
 * runc baseline: run a trenv agent function in a plain OCI container started by `runc run` —
 * a fresh container (namespaces, cgroups, mounts) for every invocation and destroyed after it,
 * the way a conventional container-based FaaS platform (faasd / containerd + runc) cold-starts.
 *
 * The container is set up to match a trenv container sandbox as closely as runc allows:
 *  - root = a small read-only skeleton dir (see buildRootfsSkeleton) with the host's /usr and
 *    /etc/ssl bound read-only, the agent's folder read-only at /app, the runtime shims read-only
 *    at /opt/trenv/runtimes, a tmpfs /tmp (and /dev/shm),
 *  - new mnt/pid/net/uts/ipc/cgroup namespaces; the network namespace is new and empty (runc
 *    brings up only `lo`), no capabilities, no_new_privs, uid/gid 10001,
 *  - memory (+memsw, so no swap) and pids limits in cgroups at `/trenv-bench/<id>` — an
 *    absolute cgroupsPath, so runc's cgroupfs driver creates the cgroup at
 *    /sys/fs/cgroup/<controller>/trenv-bench/<id> and never anywhere else (a relative path, or
 *    the systemd-style `slice:prefix:name` form, which the cgroupfs driver takes as a relative
 *    path, would land under runc's own cgroup, i.e. inside whoever started us).
 *  - the shim is the container's init process: event JSON on stdin, chan JSON lines on fd 3
 *    (`runc run --preserve-fds 1` hands fd 3 of runc to the container process as its fd 3).
 *
 * runc's state lives in its own root (`/run/trenv-bench-runc` by default), separate from any
 * other runc user on the machine.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

export const RUNC_ROOT = '/run/trenv-bench-runc';
/** Every cgroup runc creates for the baseline lives under this name in each hierarchy. */
export const CGROUP_PARENT = 'trenv-bench';
export const SANDBOX_UID = 10001;
export const CONTAINER_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
const CGROUP_ROOT = '/sys/fs/cgroup';
const MIB = 1024 * 1024;

/** The runc version string; throws with how to install runc if it is missing. */
export function ensureRunc(): string {
  const r = spawnSync('runc', ['--version'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) {
    const why = r.error ? (r.error as NodeJS.ErrnoException).code ?? r.error.message : `exit ${r.status}: ${r.stderr.trim()}`;
    throw new Error(`runc is not available (${why}); install it with: sudo apt-get install -y runc`);
  }
  if (process.getuid?.() !== 0) throw new Error('the runc baseline needs root (runc run with cgroups and namespaces)');
  return r.stdout.split('\n')[0].trim();
}

/**
 * Build (or refresh) the read-only root skeleton: empty mount points, the usual merged-/usr
 * symlinks and an /etc with a passwd/group that know uid 10001. Idempotent.
 */
export function buildRootfsSkeleton(dir: string): string {
  for (const d of ['usr', 'etc/ssl', 'app', 'opt/trenv/runtimes', 'proc', 'sys', 'dev', 'tmp', 'root', 'run', 'home/sandbox']) {
    fs.mkdirSync(path.join(dir, d), { recursive: true });
  }
  fs.chmodSync(path.join(dir, 'tmp'), 0o1777);
  for (const [link, target] of [['bin', 'usr/bin'], ['lib', 'usr/lib'], ['lib64', 'usr/lib64'], ['sbin', 'usr/sbin']]) {
    const p = path.join(dir, link);
    let cur: string | undefined;
    try {
      cur = fs.readlinkSync(p);
    } catch {
      cur = undefined;
    }
    if (cur === target) continue;
    fs.rmSync(p, { force: true, recursive: true });
    fs.symlinkSync(target, p);
  }
  const files: Record<string, string> = {
    'etc/passwd': `root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:${SANDBOX_UID}:${SANDBOX_UID}:trenv sandbox:/home/sandbox:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n`,
    'etc/group': `root:x:0:\nsandbox:x:${SANDBOX_UID}:\nnogroup:x:65534:\n`,
    'etc/hosts': '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n',
    'etc/hostname': 'trenv-bench\n',
    'etc/nsswitch.conf': 'passwd: files\ngroup: files\nhosts: files\n',
    'etc/resolv.conf': '',
  };
  for (const [f, text] of Object.entries(files)) {
    const p = path.join(dir, f);
    if (!fs.existsSync(p) || fs.readFileSync(p, 'utf8') !== text) fs.writeFileSync(p, text);
  }
  return dir;
}

export interface BundleOptions {
  bundleDir: string;
  /** A dir made by buildRootfsSkeleton (shared read-only by every bundle). */
  rootfsSkeleton: string;
  /** The agent's folder, bound read-only at /app (the cwd of the process). */
  appDir: string;
  /** runtime-daemon/runtimes, bound read-only at /opt/trenv/runtimes. */
  runtimesDir: string;
  /** "K=V" strings. TRENV_INVOCATION_ID / TRENV_DEADLINE_MS are set again by runInvocation. */
  env: string[];
  /** Container argv, e.g. ["/usr/bin/python3", "/opt/trenv/runtimes/python/trenv_shim.py"]. */
  argv: string[];
  memoryMb: number;
  pids: number;
  tmpfsMb?: number;
  hostname?: string;
}

function checkCgroupsPath(p: string): void {
  if (!p.startsWith(`/${CGROUP_PARENT}/`) || p.includes('..') || p.split('/').length !== 3) {
    throw new Error(`refusing cgroupsPath ${p}: must be /${CGROUP_PARENT}/<id>`);
  }
}

const swapAccounting = (): boolean => fs.existsSync(path.join(CGROUP_ROOT, 'memory/memory.memsw.limit_in_bytes'));

/** The OCI runtime spec (config.json) of a bundle. */
export function ociConfig(o: BundleOptions, cgroupsPath = `/${CGROUP_PARENT}/${path.basename(o.bundleDir)}`): object {
  checkCgroupsPath(cgroupsPath);
  const tmpfsMb = o.tmpfsMb ?? 64;
  const ro = ['bind', 'ro', 'nosuid', 'nodev'];
  const limit = o.memoryMb * MIB;
  return {
    ociVersion: '1.0.2',
    process: {
      terminal: false,
      user: { uid: SANDBOX_UID, gid: SANDBOX_UID, additionalGids: [] },
      args: o.argv,
      env: o.env,
      cwd: '/app',
      capabilities: { bounding: [], effective: [], inheritable: [], permitted: [], ambient: [] },
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 }],
      noNewPrivileges: true,
    },
    root: { path: path.resolve(o.rootfsSkeleton), readonly: true },
    hostname: o.hostname ?? 'trenv-bench',
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
      { destination: '/dev/pts', type: 'devpts', source: 'devpts', options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620'] },
      { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
      { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
      { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
      { destination: '/usr', type: 'bind', source: '/usr', options: ro },
      { destination: '/etc/ssl', type: 'bind', source: '/etc/ssl', options: ro },
      { destination: '/app', type: 'bind', source: path.resolve(o.appDir), options: ro },
      { destination: '/opt/trenv/runtimes', type: 'bind', source: path.resolve(o.runtimesDir), options: ro },
      { destination: '/tmp', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', 'mode=1777', `size=${tmpfsMb}m`] },
    ],
    linux: {
      cgroupsPath,
      resources: {
        devices: [{ allow: false, access: 'rwm' }],
        memory: swapAccounting() ? { limit, swap: limit } : { limit },
        pids: { limit: o.pids },
      },
      // A new, empty network namespace: runc only brings up `lo`.
      namespaces: [{ type: 'pid' }, { type: 'network' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }, { type: 'cgroup' }],
      maskedPaths: [
        '/proc/acpi', '/proc/asound', '/proc/kcore', '/proc/keys', '/proc/latency_stats', '/proc/timer_list',
        '/proc/timer_stats', '/proc/sched_debug', '/sys/firmware', '/proc/scsi',
      ],
      readonlyPaths: ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'],
    },
  };
}

/** Write <bundleDir>/config.json. Returns the bundle dir. */
export function makeBundle(o: BundleOptions): string {
  for (const [what, p] of [['rootfsSkeleton', o.rootfsSkeleton], ['appDir', o.appDir], ['runtimesDir', o.runtimesDir]]) {
    if (!fs.statSync(p, { throwIfNoEntry: false })?.isDirectory()) throw new Error(`${what} ${p} is not a directory`);
  }
  if (!o.argv.length) throw new Error('argv is empty');
  fs.mkdirSync(o.bundleDir, { recursive: true });
  fs.writeFileSync(path.join(o.bundleDir, 'config.json'), JSON.stringify(ociConfig(o), null, 2));
  return o.bundleDir;
}

// ---- manifests -> bundles ---------------------------------------------------------------------

export interface AgentManifest {
  name: string;
  runtime: 'python' | 'node';
  handler: string;
  limits?: { memoryMb?: number; pids?: number; timeoutMs?: number; tmpfsMb?: number };
  network?: 'none' | 'egress';
  env?: Record<string, string>;
  preload?: string[];
}

export function readManifest(appDir: string): AgentManifest {
  return JSON.parse(fs.readFileSync(path.join(appDir, 'trenv.json'), 'utf8')) as AgentManifest;
}

/** Interpreter + shim of a runtime, inside the container (or on the host with hostRuntimesDir). */
export function shimArgv(runtime: 'python' | 'node', runtimesDir = '/opt/trenv/runtimes', node = '/usr/bin/node'): string[] {
  return runtime === 'python'
    ? ['/usr/bin/python3', path.join(runtimesDir, 'python/trenv_shim.py')]
    : [node, path.join(runtimesDir, 'node/trenv-shim.js')];
}

/** The environment a trenv sandbox gives a handler (without the per-invocation TRENV_ ids). */
export function agentEnv(m: AgentManifest, extra: Record<string, string> = {}): Record<string, string> {
  return { PATH: CONTAINER_PATH, HOME: '/tmp', LANG: 'C.UTF-8', ...m.env, ...extra, TRENV_HANDLER: m.handler, TRENV_AGENT: m.name };
}

/** makeBundle from an agent folder's trenv.json (limits, env, runtime). */
export function makeAgentBundle(o: { bundleDir: string; rootfsSkeleton: string; appDir: string; runtimesDir: string; env?: Record<string, string> }): string {
  const m = readManifest(o.appDir);
  const env = agentEnv(m, o.env);
  return makeBundle({
    bundleDir: o.bundleDir,
    rootfsSkeleton: o.rootfsSkeleton,
    appDir: o.appDir,
    runtimesDir: o.runtimesDir,
    env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
    argv: shimArgv(m.runtime),
    memoryMb: m.limits?.memoryMb ?? 256,
    pids: m.limits?.pids ?? 64,
    tmpfsMb: m.limits?.tmpfsMb ?? 64,
  });
}

// ---- running ----------------------------------------------------------------------------------

export interface ChanMessage {
  t: string;
  mono_ns: string;
  [k: string]: unknown;
}

export interface InvocationTiming {
  /** spawn of `runc run` -> chan `loaded` (container created, runtime up, handler module loaded). */
  startMs: number;
  /** spawn -> chan `start` (the handler is called). */
  handlerStartMs: number;
  /** chan `start` -> `result`/`error`: the handler itself. */
  handlerMs: number;
  /** spawn -> `runc run` exited (container torn down by runc; the result is in). */
  e2eMs: number;
  /** `runc delete -f` afterwards (cleanup off the critical path). */
  deleteMs: number;
  /** The handler's result value (undefined if it failed; see error). */
  result: unknown;
  error?: unknown;
  ok: boolean;
  exitCode: number | string | null;
  chan: ChanMessage[];
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** Kill the container after this long (default: TRENV_DEADLINE_MS - now + 1 s, or 30 s). */
  timeoutMs?: number;
  runcRoot?: string;
}

function parseChan(raw: string): ChanMessage[] {
  return raw.split('\n').filter(Boolean).map((l) => JSON.parse(l) as ChanMessage);
}

function runcSync(root: string, args: string[]): { status: number | null; stderr: string } {
  const r = spawnSync('runc', ['--root', root, ...args], { encoding: 'utf8' });
  return { status: r.status, stderr: r.stderr ?? '' };
}

/** Timings and result of one invocation from its chan messages (mono ns) and its start/end. */
function chanTiming(
  chan: ChanMessage[],
  t0: bigint,
  tEnd: bigint,
  o: { deleteMs: number; exitCode: number | string | null; stdout: string; stderr: string },
): InvocationTiming {
  const ms = (ns: bigint): number => Number(ns - t0) / 1e6;
  const at = (t: string): bigint | undefined => {
    const m = chan.find((x) => x.t === t);
    return m ? BigInt(m.mono_ns) : undefined;
  };
  const final = chan.find((m) => m.t === 'result' || m.t === 'error');
  const loaded = at('loaded');
  const start = at('start');
  return {
    startMs: loaded !== undefined ? ms(loaded) : NaN,
    handlerStartMs: start !== undefined ? ms(start) : NaN,
    handlerMs: start !== undefined && final ? Number(BigInt(final.mono_ns) - start) / 1e6 : NaN,
    e2eMs: ms(tEnd),
    deleteMs: o.deleteMs,
    result: final?.t === 'result' ? final.value : undefined,
    error: final?.t === 'error' ? final.error : final ? undefined : { message: `no result (exit ${o.exitCode}): ${o.stderr.trim().slice(0, 500)}` },
    ok: final?.t === 'result' && o.exitCode === 0,
    exitCode: o.exitCode,
    chan,
    stdout: o.stdout,
    stderr: o.stderr,
  };
}

/**
 * Run one invocation in a fresh container from the bundle: `runc run --preserve-fds 1 --bundle
 * <dir> <id>` with the event on stdin and the chan on fd 3, then `runc delete -f <id>` (always).
 * config.json is rewritten first with this invocation's TRENV_INVOCATION_ID, TRENV_DEADLINE_MS
 * and cgroupsPath /trenv-bench/<id>, so a bundle can be reused (not concurrently).
 */
export async function runInvocation(bundleDir: string, id: string, event: unknown, opts: RunOptions = {}): Promise<InvocationTiming> {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,120}$/.test(id)) throw new Error(`bad container id ${id}`);
  const root = opts.runcRoot ?? RUNC_ROOT;
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const cfgPath = path.join(bundleDir, 'config.json');
  const cfg = JSON.parse(fs.readFileSync(cfgPath, 'utf8'));
  const cgroupsPath = `/${CGROUP_PARENT}/${id}`;
  checkCgroupsPath(cgroupsPath);
  cfg.linux.cgroupsPath = cgroupsPath;
  cfg.process.env = (cfg.process.env as string[])
    .filter((e) => !e.startsWith('TRENV_INVOCATION_ID=') && !e.startsWith('TRENV_DEADLINE_MS='))
    .concat([`TRENV_INVOCATION_ID=${id}`, `TRENV_DEADLINE_MS=${Date.now() + timeoutMs}`]);
  fs.writeFileSync(cfgPath, JSON.stringify(cfg, null, 2));
  fs.mkdirSync(root, { recursive: true, mode: 0o700 });

  const out = { stdout: [] as Buffer[], stderr: [] as Buffer[], chan: [] as Buffer[] };
  const t0 = process.hrtime.bigint();
  let exitCode: number | string | null = null;
  let tEnd = t0;
  let deleteMs = NaN;
  try {
    const child = spawn('runc', ['--root', root, 'run', '--preserve-fds', '1', '--bundle', bundleDir, id], {
      stdio: ['pipe', 'pipe', 'pipe', 'pipe'],
    });
    child.stdout!.on('data', (d: Buffer) => out.stdout.push(d));
    child.stderr!.on('data', (d: Buffer) => out.stderr.push(d));
    (child.stdio[3] as NodeJS.ReadableStream).on('data', (d: Buffer) => out.chan.push(d));
    child.stdin!.on('error', () => {}); // the container may exit before reading all of stdin
    child.stdin!.end(JSON.stringify(event ?? {}));
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      runcSync(root, ['kill', id, 'KILL']);
      child.kill('SIGKILL');
    }, timeoutMs + 1000);
    exitCode = await new Promise<number | string | null>((resolve, reject) => {
      child.on('error', reject);
      child.on('close', (code, signal) => resolve(timedOut ? 'timeout' : code ?? signal));
    });
    tEnd = process.hrtime.bigint();
    clearTimeout(timer);
  } finally {
    const d0 = process.hrtime.bigint();
    const del = runcSync(root, ['delete', '-f', id]);
    deleteMs = Number(process.hrtime.bigint() - d0) / 1e6;
    // `delete -f` of a container that is already gone says "does not exist": fine.
    if (del.status !== 0 && !/does not exist|not found/i.test(del.stderr)) {
      throw new Error(`runc delete -f ${id} failed: ${del.stderr.trim()}`);
    }
  }

  const chanRaw = Buffer.concat(out.chan).toString('utf8');
  const stderr = Buffer.concat(out.stderr).toString('utf8');
  let chan: ChanMessage[];
  try {
    chan = parseChan(chanRaw);
  } catch (err) {
    throw new Error(`bad chan output from ${id}: ${(err as Error).message}; raw: ${chanRaw.slice(0, 300)}`);
  }
  return chanTiming(chan, t0, tEnd, { deleteMs, exitCode, stdout: Buffer.concat(out.stdout).toString('utf8'), stderr });
}

/**
 * The same invocation as a plain host process (no sandbox): interpreter + shim with cwd = the
 * agent folder, the same env, event on stdin and chan on fd 3. The reference for results.
 */
export async function runDirect(appDir: string, event: unknown, opts: { runtimesDir: string; env?: Record<string, string>; timeoutMs?: number; id?: string }): Promise<InvocationTiming> {
  const m = readManifest(appDir);
  const timeoutMs = opts.timeoutMs ?? m.limits?.timeoutMs ?? 30_000;
  const [bin, ...args] = shimArgv(m.runtime, opts.runtimesDir, process.execPath);
  const env = { ...agentEnv(m, opts.env), PATH: process.env.PATH ?? CONTAINER_PATH, TRENV_INVOCATION_ID: opts.id ?? `direct-${process.pid}`, TRENV_DEADLINE_MS: String(Date.now() + timeoutMs) };
  const out = { stdout: [] as Buffer[], stderr: [] as Buffer[], chan: [] as Buffer[] };
  const t0 = process.hrtime.bigint();
  const child = spawn(bin, args, { cwd: appDir, env, stdio: ['pipe', 'pipe', 'pipe', 'pipe'] });
  child.stdout!.on('data', (d: Buffer) => out.stdout.push(d));
  child.stderr!.on('data', (d: Buffer) => out.stderr.push(d));
  (child.stdio[3] as NodeJS.ReadableStream).on('data', (d: Buffer) => out.chan.push(d));
  child.stdin!.on('error', () => {});
  child.stdin!.end(JSON.stringify(event ?? {}));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const exitCode = await new Promise<number | string | null>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => resolve(code ?? signal));
  });
  const tEnd = process.hrtime.bigint();
  clearTimeout(timer);
  const chan = parseChan(Buffer.concat(out.chan).toString('utf8'));
  const stderr = Buffer.concat(out.stderr).toString('utf8');
  return chanTiming(chan, t0, tEnd, { deleteMs: 0, exitCode, stdout: Buffer.concat(out.stdout).toString('utf8'), stderr });
}

// ---- cleanup ----------------------------------------------------------------------------------

/** Containers runc still knows about in our root (should be none after runInvocation). */
export function listContainers(runcRoot = RUNC_ROOT): string[] {
  if (!fs.existsSync(runcRoot)) return [];
  const r = spawnSync('runc', ['--root', runcRoot, 'list', '-q'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.split('\n').filter(Boolean) : [];
}

/** Every `trenv-bench` cgroup dir (parent and leftovers) in every mounted hierarchy. */
export function benchCgroupDirs(): string[] {
  const found: string[] = [];
  for (const h of fs.readdirSync(CGROUP_ROOT)) {
    const p = path.join(CGROUP_ROOT, h, CGROUP_PARENT);
    if (!fs.existsSync(p)) continue;
    for (const e of fs.readdirSync(p, { withFileTypes: true })) if (e.isDirectory()) found.push(path.join(p, e.name));
    found.push(p);
  }
  return found;
}

/**
 * Remove what the baseline leaves: containers in our runc root (delete -f), then the (empty)
 * `trenv-bench` cgroup dirs runc created — rmdir only, children first; nothing outside
 * /sys/fs/cgroup/<controller>/trenv-bench is touched. Returns what could not be removed.
 */
export function cleanupAll(runcRoot = RUNC_ROOT): string[] {
  for (const id of listContainers(runcRoot)) runcSync(runcRoot, ['delete', '-f', id]);
  const left: string[] = [];
  for (const dir of benchCgroupDirs()) {
    try {
      fs.rmdirSync(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') left.push(dir);
    }
  }
  try {
    fs.rmdirSync(runcRoot); // only if empty
  } catch {
    // not empty (a container runc could not delete) or already gone
  }
  return left;
}
