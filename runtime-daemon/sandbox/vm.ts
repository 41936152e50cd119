/**
 * microVM sandboxes: one QEMU process per VM, driven over QMP (control) and a virtio-serial port
 * (the guest agent `trenv-guest`, JSON lines). A VM either boots cold (kernel + initramfs + a
 * read-only root) or is a clone restored from a VM template: RAM mapped MAP_PRIVATE from the
 * template's memory file (shared reads, private writes) and device state loaded with
 * `x-ignore-shared`, so nothing of the RAM is copied.
 *
 * Root filesystem: virtio-pmem (the image file mapped as guest memory, ext4 mounted with -o dax in
 * the guest: guests read the host's page cache and keep none of their own) or virtio-blk (a plain
 * disk, each guest caching what it reads), chosen per VM.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as readline from 'node:readline';
import type { GuestMemory } from '../protocol/messages';
import { CDP_PORT_NAME, CdpRelay } from './vmCdp';
import { EXEC_PORT_NAME, GuestExec } from './vmExec';

export type RootKind = 'pmem' | 'blk';
export type Accel = 'kvm' | 'tcg';

export interface VmImage {
  dir: string;
  key: string;
  kernel: string;
  vmlinuz: string;
  initrd: string;
  rootfs: string;
  rootfsBytes: number;
}

export const DEFAULT_VM_DIR = '/opt/trenv/vm';

/** The guest images built by scripts/setup-vm.sh (the `current` build), or a clear error. */
export function findImage(vmDir = process.env.TRENV_VM_DIR ?? DEFAULT_VM_DIR): VmImage {
  const dir = path.join(vmDir, 'current');
  let meta: { key: string; kernel: string };
  try {
    meta = JSON.parse(fs.readFileSync(path.join(dir, 'image.json'), 'utf8')) as { key: string; kernel: string };
  } catch {
    throw new VmError(`no microVM guest images in ${vmDir}: run \`sudo bash scripts/setup-vm.sh\` (it installs QEMU and builds the guest kernel, initramfs and root filesystem)`);
  }
  const real = fs.realpathSync(dir);
  const rootfs = path.join(real, 'rootfs.ext4');
  return { dir: real, key: meta.key, kernel: meta.kernel, vmlinuz: path.join(real, 'vmlinuz'), initrd: path.join(real, 'initrd.cpio'), rootfs, rootfsBytes: fs.statSync(rootfs).size };
}

export class VmError extends Error {}

/** What a guest said when it stopped answering: a kernel panic line from its console, if any. */
export function consoleTrouble(consolePath: string): string | undefined {
  try {
    const text = fs.readFileSync(consolePath, 'utf8');
    const m = /Kernel panic[^\n]*/.exec(text) ?? /trenv-init: [^\n]*/.exec(text);
    return m?.[0].trim();
  } catch {
    return undefined;
  }
}

/** Calls `onMessage` with every JSON object the socket sends, one per line (other lines are skipped). */
function onJsonLines<T>(sock: net.Socket, onMessage: (msg: T) => void): void {
  const rl = readline.createInterface({ input: sock, crlfDelay: Infinity });
  rl.on('error', () => undefined); // a reset socket (QEMU gone): its close handler does the cleanup
  rl.on('line', (line) => {
    if (!line.trim()) return;
    let msg: T;
    try {
      msg = JSON.parse(line) as T;
    } catch {
      return;
    }
    onMessage(msg);
  });
}

// ---- QMP

/** A minimal QMP client: one command at a time in flight per id, events emitted. */
export class Qmp extends EventEmitter {
  private seq = 0;
  private readonly pending = new Map<string, { resolve: (v: unknown) => void; reject: (e: Error) => void }>();
  private greeted!: Promise<void>;

  constructor(private readonly sock: net.Socket) {
    super();
    let greet: () => void;
    this.greeted = new Promise((r) => (greet = r));
    onJsonLines<{ QMP?: unknown; id?: string; return?: unknown; error?: { desc: string }; event?: string; data?: unknown }>(sock, (msg) => {
      if (msg.QMP) greet();
      else if (msg.event) this.emit('event', msg.event, msg.data);
      else if (msg.id && this.pending.has(msg.id)) {
        const p = this.pending.get(msg.id)!;
        this.pending.delete(msg.id);
        if (msg.error) p.reject(new VmError(`QMP: ${msg.error.desc}`));
        else p.resolve(msg.return);
      }
    });
    const fail = () => {
      for (const p of this.pending.values()) p.reject(new VmError('QMP connection closed (QEMU exited)'));
      this.pending.clear();
      this.emit('close');
    };
    sock.on('close', fail);
    sock.on('error', () => undefined);
  }

  static async connect(socketPath: string, timeoutMs: number): Promise<Qmp> {
    const sock = await connectUnix(socketPath, timeoutMs);
    const q = new Qmp(sock);
    await withTimeout(q.greeted, timeoutMs, 'QMP greeting');
    await q.cmd('qmp_capabilities');
    return q;
  }

  cmd<T = unknown>(execute: string, args?: Record<string, unknown>): Promise<T> {
    const id = `q${++this.seq}`;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.sock.write(JSON.stringify({ execute, ...(args ? { arguments: args } : {}), id }) + '\n');
    });
  }

  close(): void {
    this.sock.destroy();
  }
}

// ---- the guest agent's channel

export interface GuestMsg {
  t: string;
  id?: number;
  ok?: boolean;
  error?: string;
  fd?: 'out' | 'err' | 'chan';
  b64?: string;
  status?: string;
  oom?: boolean;
  mono_ns?: string;
  [k: string]: unknown;
}

/** JSON lines with trenv-guest over the virtio-serial port's host socket. */
export class GuestChannel extends EventEmitter {
  private seq = 0;
  private readonly pending = new Map<number, { resolve: (m: GuestMsg) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
  closed = false;

  constructor(private readonly sock: net.Socket) {
    super();
    onJsonLines<GuestMsg>(sock, (msg) => {
      if (msg.t === 'ack' && typeof msg.id === 'number' && this.pending.has(msg.id)) {
        const p = this.pending.get(msg.id)!;
        this.pending.delete(msg.id);
        clearTimeout(p.timer);
        if (msg.ok) p.resolve(msg);
        else p.reject(new VmError(`guest agent: ${msg.error ?? 'request failed'}`));
      } else this.emit('msg', msg, process.hrtime.bigint());
    });
    sock.on('close', () => {
      this.closed = true;
      for (const p of this.pending.values()) {
        clearTimeout(p.timer);
        p.reject(new VmError('the guest channel closed (the VM stopped)'));
      }
      this.pending.clear();
      this.emit('close');
    });
    sock.on('error', () => undefined);
  }

  request(op: string, args: Record<string, unknown> = {}, timeoutMs = 10_000): Promise<GuestMsg> {
    if (this.closed) return Promise.reject(new VmError('the guest channel is closed (the VM stopped)'));
    const id = ++this.seq;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new VmError(`the guest agent did not answer "${op}" within ${timeoutMs} ms (guest hung?)`));
      }, timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      this.sock.write(JSON.stringify({ id, op, ...args }) + '\n');
    });
  }

  /** The next message of type `t` (e.g. `ready` after boot). */
  waitFor(t: string, timeoutMs: number): Promise<GuestMsg> {
    return withTimeout(
      new Promise<GuestMsg>((resolve, reject) => {
        const on = (m: GuestMsg) => {
          if (m.t !== t) return;
          this.off('msg', on);
          resolve(m);
        };
        this.on('msg', on);
        this.once('close', () => reject(new VmError('the guest channel closed before the guest was ready (the VM stopped)')));
      }),
      timeoutMs,
      `guest "${t}"`,
    );
  }

  close(): void {
    this.sock.destroy();
  }
}

// ---- helpers

export function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new VmError(`${what}: no answer within ${ms} ms`)), ms);
    }),
  ]);
}

async function connectUnix(p: string, timeoutMs: number): Promise<net.Socket> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await new Promise<net.Socket>((resolve, reject) => {
        const s = net.createConnection(p);
        s.once('connect', () => resolve(s));
        s.once('error', reject);
      });
    } catch (e) {
      if (Date.now() > until) throw new VmError(`cannot connect to ${p}: ${(e as Error).message}`);
      await new Promise((r) => setTimeout(r, 2));
    }
  }
}

// ---- one QEMU process

export interface VmConfig {
  id: string;
  /** per-VM dir: sockets, console log, pid file (removed on destroy) */
  dir: string;
  image: VmImage;
  accel: Accel;
  memoryMb: number;
  vcpus: number;
  root: RootKind;
  /** RAM: a file to map (a template's memory), shared (template build) or private (clone); absent: anonymous */
  ram?: { path: string; share: boolean };
  /** start with -incoming defer (a clone waiting for its device state) */
  incoming?: boolean;
}

/** The CPU model under TCG (TRENV_VM_CPU overrides it). */
export const TCG_CPU = 'max';

/** The QEMU command line; identical for a template and its clones except the RAM's share flag. */
export function qemuArgs(c: VmConfig): string[] {
  const ramObj = c.ram
    ? `memory-backend-file,id=ram,size=${c.memoryMb}M,mem-path=${c.ram.path},share=${c.ram.share ? 'on' : 'off'}`
    : `memory-backend-ram,id=ram,size=${c.memoryMb}M`;
  const args = [
    '-name', `trenv-${c.id}`,
    '-accel', c.accel === 'kvm' ? 'kvm' : 'tcg,tb-size=64',
    '-M', 'q35,vmport=off,smbus=off,memory-backend=ram',
    '-cpu', c.accel === 'kvm' ? 'host' : (process.env.TRENV_VM_CPU ?? TCG_CPU),
    '-smp', String(c.vcpus),
    '-m', `${c.memoryMb}M,slots=2,maxmem=${c.memoryMb + Math.ceil(c.image.rootfsBytes / 2 ** 20) + 256}M`,
    '-object', ramObj,
    '-nodefaults', '-no-user-config', '-display', 'none', '-monitor', 'none', '-no-reboot',
    '-serial', `file:${path.join(c.dir, 'console.log')}`,
    '-kernel', c.image.vmlinuz,
    '-initrd', c.image.initrd,
    // unknown_nmi_panic: an NMI from the host (QMP inject-nmi) crashes a wedged guest on purpose
    '-append', `console=ttyS0 quiet panic=-1 unknown_nmi_panic=1 swiotlb=noforce trenv.root=${c.root}`,
    '-device', 'virtio-serial-pci,id=vs',
    '-chardev', `socket,id=ch,path=${path.join(c.dir, 'chan.sock')},server=on,wait=off`,
    '-device', 'virtserialport,bus=vs.0,chardev=ch,name=org.trenv.0',
    // the shared browser's relay (vmCdp.ts): guest 127.0.0.1:9222 <-> the sandbox's CDP endpoint
    '-chardev', `socket,id=cdp,path=${path.join(c.dir, 'cdp.sock')},server=on,wait=off`,
    '-device', `virtserialport,bus=vs.0,chardev=cdp,name=${CDP_PORT_NAME}`,
    // processes of E2B sandboxes (vmExec.ts): commands, file helper, file transfers
    '-chardev', `socket,id=exec,path=${path.join(c.dir, 'exec.sock')},server=on,wait=off`,
    '-device', `virtserialport,bus=vs.0,chardev=exec,name=${EXEC_PORT_NAME}`,
    '-qmp', `unix:${path.join(c.dir, 'qmp.sock')},server=on,wait=off`,
    // a second QMP monitor for the developer's own tools (qmp-shell, an NMI to crash a wedged
    // guest): QEMU serves one client per monitor and the daemon holds the first
    '-qmp', `unix:${path.join(c.dir, 'qmp-user.sock')},server=on,wait=off`,
  ];
  if (c.root === 'pmem') {
    args.push(
      '-object', `memory-backend-file,id=rootmem,mem-path=${c.image.rootfs},size=${c.image.rootfsBytes},share=on,readonly=on`,
      '-device', 'virtio-pmem-pci,memdev=rootmem,id=pmem0',
    );
  } else {
    args.push('-drive', `if=none,id=rootblk,file=${c.image.rootfs},format=raw,readonly=on`, '-device', 'virtio-blk-pci,drive=rootblk');
  }
  if (c.incoming) args.push('-incoming', 'defer');
  return args;
}

export interface Span {
  name: string;
  startNs: bigint;
  endNs: bigint;
  attrs?: Record<string, string | number | boolean>;
}

/** The guest agent's `mem` answer as a GuestMemory. */
export function guestMemory(m: GuestMsg): GuestMemory {
  const n = (k: string) => (typeof m[k] === 'number' ? (m[k] as number) : 0);
  return {
    totalKb: n('MemTotal'),
    availableKb: n('MemAvailable'),
    cachedKb: n('Cached'),
    anonKb: n('AnonPages'),
    ...(typeof m.RuntimeRss === 'number' ? { runtimeRssKb: m.RuntimeRss } : {}),
  };
}

export class Vm extends EventEmitter {
  proc!: ChildProcess;
  qmp!: Qmp;
  chan!: GuestChannel;
  /** the shared browser's relay (idle until the invoker gives it a target) */
  cdp!: CdpRelay;
  /** processes started in the guest (E2B sandboxes' commands and file helper) */
  exec!: GuestExec;
  readonly spans: Span[] = [];
  exited = false;
  exitInfo = '';
  destroyed = false;
  createdAt = Date.now();
  /** set by the pool: the template this VM was restored from */
  template?: string;

  constructor(readonly cfg: VmConfig) {
    super();
  }

  get pid(): number {
    return this.proc?.pid ?? 0;
  }

  get consolePath(): string {
    return path.join(this.cfg.dir, 'console.log');
  }

  private step(name: string, t0: bigint, attrs?: Span['attrs']): bigint {
    const t1 = process.hrtime.bigint();
    this.spans.push({ name, startNs: t0, endNs: t1, ...(attrs ? { attrs } : {}) });
    return t1;
  }

  /** Starts QEMU and connects QMP and the guest channel (the guest is not necessarily up yet). */
  async spawn(timeoutMs = 10_000): Promise<void> {
    fs.mkdirSync(this.cfg.dir, { recursive: true, mode: 0o700 });
    const t0 = process.hrtime.bigint();
    // setpriv --pdeathsig: QEMU dies with the daemon (the restart also reaps, by pid file)
    this.proc = spawn('setpriv', ['--pdeathsig', 'KILL', '--', 'qemu-system-x86_64', ...qemuArgs(this.cfg)], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    this.proc.stderr!.on('data', (d: Buffer) => {
      if (stderr.length < 8192) stderr += d.toString();
    });
    const exited = new Promise<never>((_, reject) => {
      this.proc.once('exit', (code, sig) => {
        this.exited = true;
        this.exitInfo = `QEMU exited (${sig ?? code})${stderr.trim() ? `: ${stderr.trim().split('\n').slice(-3).join(' | ')}` : ''}`;
        this.emit('exit', this.exitInfo);
        reject(new VmError(this.exitInfo));
      });
      this.proc.once('error', (e) => reject(new VmError(`cannot start QEMU: ${e.message} (is qemu-system-x86 installed? run scripts/setup-vm.sh)`)));
    });
    exited.catch(() => undefined);
    fs.writeFileSync(path.join(this.cfg.dir, 'pid'), String(this.proc.pid));
    this.qmp = await Promise.race([Qmp.connect(path.join(this.cfg.dir, 'qmp.sock'), timeoutMs), exited]);
    this.chan = new GuestChannel(await Promise.race([connectUnix(path.join(this.cfg.dir, 'chan.sock'), timeoutMs), exited]));
    this.cdp = new CdpRelay(await Promise.race([connectUnix(path.join(this.cfg.dir, 'cdp.sock'), timeoutMs), exited]));
    this.exec = new GuestExec(await Promise.race([connectUnix(path.join(this.cfg.dir, 'exec.sock'), timeoutMs), exited]));
    this.qmp.on('event', (ev: string, data: unknown) => {
      if (ev === 'GUEST_PANICKED') this.emit('panic', data);
    });
    this.step('vm.spawn', t0, { pid: this.pid, accel: this.cfg.accel, root: this.cfg.root, memoryMb: this.cfg.memoryMb });
  }

  /** Cold boot: spawn and wait for the guest agent's `ready`. */
  async boot(timeoutMs = 60_000): Promise<void> {
    const ready = () => this.chan.waitFor('ready', timeoutMs);
    await this.spawn();
    const t0 = process.hrtime.bigint();
    const m = await this.guard(ready());
    this.step('vm.boot', t0, { guestBootMs: Number((m.boot_ms as number).toFixed(1)) });
  }

  /** Rejects with what the console says when the VM dies first. */
  guard<T>(p: Promise<T>): Promise<T> {
    if (this.exited) return Promise.reject(new VmError(this.trouble()));
    return Promise.race([
      p,
      new Promise<T>((_, reject) => {
        this.once('exit', () => reject(new VmError(this.trouble())));
        this.once('panic', () => reject(new VmError(`the guest kernel panicked${consoleTrouble(this.consolePath) ? `: ${consoleTrouble(this.consolePath)}` : ''}`)));
      }),
    ]);
  }

  trouble(): string {
    const c = consoleTrouble(this.consolePath);
    return c ? (/panic/i.test(c) ? `the guest kernel panicked: ${c}` : c) : this.exitInfo || 'the VM stopped';
  }

  /**
   * A clone: load the template's device state (RAM is the template file, mapped private), resume.
   * With `ignoreShared: false` the state holds the RAM itself and it is copied into this VM's own
   * memory (a full snapshot restore, how Firecracker/E2B-style restores behave: the bench baseline).
   */
  async restore(statePath: string, timeoutMs = 30_000, ignoreShared = true): Promise<void> {
    await this.spawn();
    let t0 = process.hrtime.bigint();
    if (ignoreShared) await this.qmp.cmd('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
    await this.qmp.cmd('migrate-incoming', { uri: `exec:cat ${shellQuote(statePath)}` });
    const until = Date.now() + timeoutMs;
    for (;;) {
      const st = await this.qmp.cmd<{ status: string }>('query-status');
      if (st.status !== 'inmigrate') break; // -> paused (postmigrate/paused) when loaded
      const mig = await this.qmp.cmd<{ status?: string; 'error-desc'?: string }>('query-migrate');
      if (mig.status === 'failed') throw new VmError(`loading the template's device state failed: ${mig['error-desc'] ?? 'unknown error'}`);
      if (Date.now() > until) throw new VmError('loading the template device state timed out');
      await new Promise((r) => setTimeout(r, 1));
    }
    t0 = this.step('vm.load-state', t0, {
      how: ignoreShared ? 'migrate-incoming with x-ignore-shared: RAM is the template file mapped private, not copied' : 'migrate-incoming of a full snapshot: RAM copied into this VM',
    });
    await this.qmp.cmd('cont');
    t0 = this.step('vm.resume', t0);
    await this.guard(this.chan.request('ping', {}, 10_000));
    this.step('guest.ready', t0);
  }

  /** Template build: pause and write the device state (RAM stays in its shared file; with `ignoreShared: false`, RAM too). */
  async saveTemplate(statePath: string, timeoutMs = 60_000, ignoreShared = true): Promise<void> {
    await this.qmp.cmd('stop');
    if (ignoreShared) await this.qmp.cmd('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
    await this.qmp.cmd('migrate', { uri: `exec:cat > ${shellQuote(statePath)}` });
    const until = Date.now() + timeoutMs;
    for (;;) {
      const mig = await this.qmp.cmd<{ status?: string; 'error-desc'?: string }>('query-migrate');
      if (mig.status === 'completed') return;
      if (mig.status === 'failed' || mig.status === 'cancelled') throw new VmError(`saving the template failed: ${mig['error-desc'] ?? mig.status}`);
      if (Date.now() > until) throw new VmError('saving the template timed out');
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  /** SIGKILL QEMU, close sockets, remove the VM dir. Idempotent. */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    this.chan?.close();
    this.cdp?.close();
    this.exec?.close();
    this.qmp?.close();
    if (this.proc && !this.exited) {
      const gone = new Promise<void>((r) => this.proc.once('exit', () => r()));
      this.proc.kill('SIGKILL');
      await withTimeout(gone, 5000, 'QEMU exit').catch(() => undefined);
    }
    fs.rmSync(this.cfg.dir, { recursive: true, force: true });
  }
}

export function shellQuote(s: string): string {
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

/**
 * After a daemon crash: kill every QEMU a previous daemon left (pid files under `vmsDir`, checked
 * against the process's command line so a reused pid is never hit) and remove their dirs.
 */
export function reapLeftovers(vmsDir: string): number {
  let n = 0;
  let entries: string[] = [];
  try {
    entries = fs.readdirSync(vmsDir);
  } catch {
    return 0;
  }
  for (const e of entries) {
    const dir = path.join(vmsDir, e);
    try {
      const pid = Number(fs.readFileSync(path.join(dir, 'pid'), 'utf8'));
      const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (cmd.includes(`${dir}/qmp.sock`)) {
        process.kill(pid, 'SIGKILL');
        n++;
      }
    } catch {
      /* no pid file or process gone */
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return n;
}

/**
 * KVM where it really works, TCG otherwise: boot the guest under KVM with a time limit (this
 * machine's /dev/kvm is PVM, where stock guest kernels hang). `TRENV_VM_ACCEL` forces one.
 * The answer is cached in `cacheFile` per image.
 */
export async function probeAccel(image: VmImage, workDir: string, cacheFile: string, log: (m: string) => void = () => undefined): Promise<Accel> {
  const forced = process.env.TRENV_VM_ACCEL;
  if (forced === 'kvm' || forced === 'tcg') return forced;
  try {
    const c = JSON.parse(fs.readFileSync(cacheFile, 'utf8')) as { image: string; accel: Accel };
    if (c.image === image.key) return c.accel;
  } catch {
    /* not probed yet */
  }
  let accel: Accel = 'tcg';
  if (fs.existsSync('/dev/kvm')) {
    const vm = new Vm({ id: 'kvm-probe', dir: path.join(workDir, 'kvm-probe'), image, accel: 'kvm', memoryMb: 128, vcpus: 1, root: 'pmem' });
    try {
      await vm.boot(8_000);
      accel = 'kvm';
    } catch (e) {
      log(`KVM does not boot the guest here (${(e as Error).message}): using TCG`);
    } finally {
      await vm.destroy();
    }
  }
  fs.writeFileSync(cacheFile, JSON.stringify({ image: image.key, accel }));
  return accel;
}
