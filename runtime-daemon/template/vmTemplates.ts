/**
 * VM templates: an agent's runtime booted once in a microVM, its module loaded by the shim (which
 * then waits for an event), and the VM saved: RAM in a file QEMU mapped shared while it ran (so
 * saving copies no RAM), device state written with `x-ignore-shared`. Clones map that RAM file
 * MAP_PRIVATE and load the device state (see Vm.restore).
 *
 * A template is immutable once saved (files 0444, sha256 of both recorded and checked before the
 * first clone of a daemon's life), versioned by everything frozen in it (agent content hash,
 * guest image build, memory size, root kind, accelerator), rebuilt when any of those change, and
 * survives daemon restarts (it is only files).
 */
import * as crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { LoadedAgent } from '../manifest/manifest';
import { Accel, qemuArgs, RootKind, Vm, VmError, VmImage, withTimeout } from '../sandbox/vm';
import { agentHash, freeMb } from './templates';

export const VM_TEMPLATE_FORMAT = 1;

export interface VmTemplateMeta {
  format: number;
  name: string;
  agent: string;
  agentDir: string;
  agentHash: string;
  runtime: string;
  image: string;
  kernel: string;
  memoryMb: number;
  vcpus: number;
  root: RootKind;
  accel: Accel;
  /** shared: RAM in a file clones map private (trenv); copy: a full snapshot whose RAM each restore copies (the benchmark's baseline) */
  mode: VmTemplateMode;
  builtAt: number;
  buildMs: number;
  ramBytes: number;
  stateBytes: number;
  ramSha256: string;
  stateSha256: string;
}

export type VmTemplateMode = 'shared' | 'copy';

export interface VmTemplate {
  meta: VmTemplateMeta;
  dir: string;
  ramPath: string;
  statePath: string;
}

export const VM_RUNTIMES: Record<string, string[]> = {
  python: ['/usr/bin/python3', '-B', '/opt/trenv/runtimes/python/trenv_shim.py'],
  node: ['/usr/bin/node', '/opt/trenv/runtimes/node/trenv-shim.js'],
};

const MAX_AGENT_BYTES = 32 * 1024 * 1024;

/** The agent's files for the guest's /app (the VM has no shared folder: 9p would block snapshots). */
export function agentFiles(dir: string): Array<{ path: string; mode: number; b64: string }> {
  const out: Array<{ path: string; mode: number; b64: string }> = [];
  let bytes = 0;
  const walk = (d: string, rel: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      if (e.name === '.trenv' || e.name === '.git' || e.name === '__pycache__') continue;
      const p = path.join(d, e.name);
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(p, r);
      else if (e.isFile()) {
        const data = fs.readFileSync(p);
        bytes += data.length;
        if (bytes > MAX_AGENT_BYTES) throw new VmError(`the agent folder ${dir} holds more than ${MAX_AGENT_BYTES >> 20} MiB: too large to copy into a microVM`);
        out.push({ path: r, mode: fs.statSync(p).mode & 0o755, b64: data.toString('base64') });
      }
    }
  };
  walk(dir, '');
  return out;
}

/** The environment the shim starts with in a VM (per-invocation values come later, in the envelope). */
export function vmShimEnv(agent: LoadedAgent, extra: Record<string, string> = {}): string[] {
  const m = agent.manifest;
  return Object.entries({
    PATH: '/usr/local/bin:/usr/bin:/bin',
    HOME: '/home/agent',
    LANG: 'C.UTF-8',
    PYTHONDONTWRITEBYTECODE: '1',
    PYTHONUNBUFFERED: '1',
    ...m.env,
    TRENV_HANDLER: m.handler,
    TRENV_AGENT: m.name,
    ...extra,
  }).map(([k, v]) => `${k}=${v}`);
}

export function vmVcpus(agent: LoadedAgent): number {
  return agent.manifest.limits.vcpus ?? 1;
}

export function vmMemoryMb(agent: LoadedAgent): number {
  // in a VM, limits.memoryMb is the guest's RAM (kernel and guest agent included); at least 160 MiB
  return Math.max(160, agent.manifest.limits.memoryMb);
}

async function sha256File(p: string): Promise<string> {
  const h = crypto.createHash('sha256');
  for await (const chunk of fs.createReadStream(p, { highWaterMark: 4 << 20 })) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Emits `removed` (name) when a template is deleted or replaced: its warm clones must go too. */
export class VmTemplateManager extends EventEmitter {
  /** templates whose files were checksummed in this daemon's life (by dir + mtime) */
  private readonly verified = new Map<string, number>();
  private readonly building = new Map<string, Promise<VmTemplate>>();

  constructor(
    private readonly dir: string,
    private readonly vmsDir: string,
    private readonly image: () => VmImage,
    private readonly accel: () => Promise<Accel>,
  ) {
    super();
    fs.mkdirSync(dir, { recursive: true });
    // a build that was cut short (daemon crash) leaves only a .building dir: remove it
    for (const e of fs.readdirSync(dir)) if (e.endsWith('.building')) fs.rmSync(path.join(dir, e), { recursive: true, force: true });
  }

  /** The template's name for this agent as it is now (content, image, memory, root, accelerator). */
  async key(agent: LoadedAgent, root: RootKind, mode: VmTemplateMode = 'shared'): Promise<{ name: string; hash: string; image: VmImage; accel: Accel; memoryMb: number; vcpus: number }> {
    const image = this.image();
    const accel = await this.accel();
    const hash = agentHash(agent.dir);
    const memoryMb = vmMemoryMb(agent);
    // the machine a clone must match: a change in QEMU's arguments (devices, kernel command line) makes old templates stale
    const vcpus = vmVcpus(agent);
    const machine = qemuArgs({ id: '-', dir: '/-', image, accel, memoryMb, vcpus, root, ram: { path: '/-', share: false } });
    const v = crypto
      .createHash('sha256')
      .update(JSON.stringify([VM_TEMPLATE_FORMAT, hash, image.key, memoryMb, root, accel, agent.manifest.runtime, agent.manifest.handler, agent.manifest.env, machine]))
      .digest('hex')
      .slice(0, 12);
    return { name: `${agent.manifest.name}-${root}${mode === 'copy' ? '-copy' : ''}-${v}`, hash, image, accel, memoryMb, vcpus };
  }

  private tplOf(name: string): VmTemplate | undefined {
    const d = path.join(this.dir, name);
    try {
      const meta = JSON.parse(fs.readFileSync(path.join(d, 'meta.json'), 'utf8')) as VmTemplateMeta;
      return { meta, dir: d, ramPath: path.join(d, 'ram'), statePath: path.join(d, 'state') };
    } catch {
      return undefined;
    }
  }

  list(): VmTemplate[] {
    let names: string[] = [];
    try {
      names = fs.readdirSync(this.dir).filter((n) => !n.endsWith('.building'));
    } catch {
      /* none */
    }
    return names.map((n) => this.tplOf(n)).filter((t): t is VmTemplate => !!t);
  }

  /** Checks the files against the recorded checksums (once per daemon life and file version). */
  async verify(t: VmTemplate): Promise<void> {
    let st: fs.Stats;
    try {
      st = fs.statSync(t.ramPath);
      fs.statSync(t.statePath);
    } catch {
      throw new VmError(`template ${t.meta.name} is incomplete (its memory or device-state file is missing)`);
    }
    const stamp = st.mtimeMs + fs.statSync(t.statePath).mtimeMs;
    if (this.verified.get(t.dir) === stamp) return;
    if (t.meta.format !== VM_TEMPLATE_FORMAT) throw new VmError(`template ${t.meta.name} has format ${t.meta.format}, this daemon writes ${VM_TEMPLATE_FORMAT}`);
    const [ram, state] = await Promise.all([sha256File(t.ramPath), sha256File(t.statePath)]);
    if (ram !== t.meta.ramSha256 || state !== t.meta.stateSha256) {
      throw new VmError(`template ${t.meta.name} is corrupt: its ${ram !== t.meta.ramSha256 ? 'memory' : 'device-state'} file does not match the checksum taken when it was saved`);
    }
    this.verified.set(t.dir, stamp);
  }

  /**
   * The current template for the agent: reused when it exists and checks out, else (re)built.
   * `rebuilt` says why a build happened.
   */
  async forInvoke(agent: LoadedAgent, root: RootKind, progress: (m: string) => void): Promise<VmTemplate & { rebuilt?: string }> {
    const k = await this.key(agent, root);
    const t = this.tplOf(k.name);
    let reason: string;
    if (t) {
      try {
        await this.verify(t);
        return t;
      } catch (e) {
        reason = (e as Error).message;
        progress(`${reason}: rebuilding it`);
        this.remove(k.name);
      }
    } else {
      const old = this.list().find((x) => x.meta.agent === agent.manifest.name && x.meta.root === root);
      reason = old ? `the agent, guest image or settings changed since ${old.meta.name} was built` : 'no VM template yet';
      if (old) this.remove(old.meta.name);
    }
    const built = await this.build(agent, root, progress);
    return { ...built, rebuilt: reason };
  }

  remove(name: string): boolean {
    const d = path.join(this.dir, name);
    if (!fs.existsSync(d)) return false;
    // clones map the RAM file: unlinking is safe (their mappings keep the inode alive)
    fs.rmSync(d, { recursive: true, force: true });
    this.verified.delete(d);
    this.emit('removed', name);
    return true;
  }

  removeAgent(agentName: string): number {
    let n = 0;
    for (const t of this.list()) if (t.meta.agent === agentName && this.remove(t.meta.name)) n++;
    return n;
  }

  build(agent: LoadedAgent, root: RootKind, progress: (m: string) => void = () => undefined, mode: VmTemplateMode = 'shared'): Promise<VmTemplate> {
    const key = `${agent.dir}\0${root}\0${mode}`;
    let p = this.building.get(key);
    if (!p) {
      p = this.doBuild(agent, root, progress, mode).finally(() => this.building.delete(key));
      this.building.set(key, p);
    }
    return p;
  }

  private async doBuild(agent: LoadedAgent, root: RootKind, progress: (m: string) => void, mode: VmTemplateMode): Promise<VmTemplate> {
    const k = await this.key(agent, root, mode);
    const m = agent.manifest;
    const t0 = Date.now();
    const tmp = path.join(this.dir, `${k.name}.building`);
    fs.rmSync(tmp, { recursive: true, force: true });
    fs.mkdirSync(tmp, { recursive: true, mode: 0o700 });
    // the guest's RAM lands in a file here (a shared file that fills while the guest runs, or
    // the saved state): with too little space QEMU would die of SIGBUS or the save would fail
    const free = freeMb(tmp);
    if (free < k.memoryMb + 32) {
      fs.rmSync(tmp, { recursive: true, force: true });
      throw new VmError(`not enough disk space for the VM template ${k.name}: about ${k.memoryMb + 32} MiB needed (guest RAM + device state), ${free} MiB free in ${this.dir}`);
    }
    const vm = new Vm({
      id: `tb-${crypto.randomBytes(4).toString('hex')}`,
      dir: path.join(this.vmsDir, `tb-${crypto.randomBytes(4).toString('hex')}`),
      image: k.image,
      accel: k.accel,
      memoryMb: k.memoryMb,
      vcpus: k.vcpus,
      root,
      // copy mode: anonymous RAM, written into the state file by the save
      ...(mode === 'shared' ? { ram: { path: path.join(tmp, 'ram'), share: true } } : {}),
    });
    let shimLog = '';
    try {
      progress(`VM template ${k.name}: booting the guest (${k.accel.toUpperCase()}, ${k.memoryMb} MiB, ${root} root)`);
      await vm.boot();
      await vm.chan.request('files', { dir: '/app', files: agentFiles(agent.dir) }, 30_000);
      progress(`VM template ${k.name}: loading the agent in ${m.runtime}`);
      const loaded = new Promise<void>((resolve, reject) => {
        vm.chan.on('msg', (msg: { t: string; fd?: string; b64?: string; status?: string }) => {
          if (msg.t === 'data' && msg.b64) {
            const text = Buffer.from(msg.b64, 'base64').toString('utf8');
            if (shimLog.length < 16384) shimLog += text;
            if (msg.fd === 'chan') {
              for (const line of text.split('\n')) {
                if (/"t":"loaded"/.test(line)) resolve();
                if (/"t":"error"/.test(line)) reject(new VmError(`the agent failed to load in the VM: ${line}`));
              }
            }
          }
          if (msg.t === 'exit') reject(new VmError(`the runtime exited (${msg.status}) while loading the agent:\n${shimLog.slice(-4000)}`));
        });
      });
      await vm.chan.request('start', { argv: VM_RUNTIMES[m.runtime], env: vmShimEnv(agent, { TRENV_EVENT_ENVELOPE: '1' }), cwd: '/app', uid: 10001, gid: 10001 });
      await vm.guard(withTimeout(loaded, 60_000, 'loading the agent in the VM')).catch((e: Error) => {
        throw new VmError(`${e.message}\n${shimLog.slice(-2000)}`.trim());
      });
      progress(`VM template ${k.name}: saving`);
      const statePath = path.join(tmp, 'state');
      await vm.saveTemplate(statePath, 120_000, mode === 'shared');
      await vm.destroy();
      const ramPath = path.join(tmp, 'ram');
      if (mode === 'copy') fs.writeFileSync(ramPath, ''); // the RAM is inside the state file
      const [ramSha256, stateSha256] = await Promise.all([sha256File(ramPath), sha256File(statePath)]);
      fs.chmodSync(ramPath, 0o444);
      fs.chmodSync(statePath, 0o444);
      const meta: VmTemplateMeta = {
        format: VM_TEMPLATE_FORMAT,
        name: k.name,
        agent: m.name,
        agentDir: agent.dir,
        agentHash: k.hash,
        runtime: m.runtime,
        image: k.image.key,
        kernel: k.image.kernel,
        memoryMb: k.memoryMb,
        vcpus: k.vcpus,
        root,
        accel: k.accel,
        mode,
        builtAt: Date.now(),
        buildMs: Date.now() - t0,
        ramBytes: fs.statSync(ramPath).size,
        stateBytes: fs.statSync(statePath).size,
        ramSha256,
        stateSha256,
      };
      fs.writeFileSync(path.join(tmp, 'meta.json'), JSON.stringify(meta, null, 2));
      const final = path.join(this.dir, k.name);
      if (fs.existsSync(final)) this.remove(k.name);
      fs.renameSync(tmp, final);
      const t = this.tplOf(k.name)!;
      this.verified.set(t.dir, fs.statSync(t.ramPath).mtimeMs + fs.statSync(t.statePath).mtimeMs);
      progress(`VM template ${k.name}: built in ${meta.buildMs} ms (device state ${(meta.stateBytes / 1024).toFixed(0)} KiB, RAM file ${meta.ramBytes >> 20} MiB)`);
      return t;
    } catch (e) {
      await vm.destroy();
      fs.rmSync(tmp, { recursive: true, force: true });
      throw e;
    }
  }
}
