/**
 * mm-templates: build, store, staleness, and the live template processes.
 *   <state>/templates/<agent-name>/meta.json   TemplateMeta (the recipe: enough to rebuild after a restart)
 *   <state>/templates/<agent-name>/zygote.sock the zygote's socket (Python, kind 'zygote')
 *   <state>/templates/<agent-name>/images/     CRIU images of the initialised Node shim (kind 'criu')
 * A template is stale when the agent's files, its preload list or the runtime changed; an invoke
 * rebuilds a stale template (and says so in the invocation's logs) before using it.
 *
 * Node cannot fork a zygote (threads), so a Node template is a CRIU checkpoint: the shim is started
 * in a dedicated sandbox (from the `makeSandbox` callback), loads the agent, says `loaded` and
 * blocks reading its event; CRIU dumps it (which ends it) and the sandbox is destroyed. Every
 * invoke restores the images into the sandbox the pool gives it (criu.ts restoreInto). A CRIU
 * template is "live" while its images exist: there is no process to keep running or restart.
 */
import { execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { TemplateInfo } from '../protocol/messages';
import type { LoadedAgent } from '../manifest/manifest';
import { SANDBOX_GID, SANDBOX_HOME, SANDBOX_UID } from '../sandbox/rootfs';
import { criuAvailable, dump, launchForCheckpoint, META_FILE as CRIU_META_FILE } from './criu';
import type { KsmControl } from './ksm';
import { deleteTemplate, mmTemplateStatus, mmtTemplateGone, templateFromStopped, type MmtTemplateInfo } from './mmTemplate';
import { Zygote } from './zygote';

export type TemplateKind = 'zygote' | 'criu';

/** The Node shim as the cold path starts it (see daemon/invoker.ts RUNTIMES). */
export const NODE_SHIM_ARGV = ['/usr/bin/node', '/opt/trenv/runtimes/node/trenv-shim.js'];

export interface TemplateMeta {
  name: string;
  agentDir: string;
  runtime: 'python' | 'node';
  kind: TemplateKind;
  agentHash: string;
  runtimeVersion: string;
  preload: string[];
  builtAt: number;
  buildMs: number;
  skipped: string[];
  /** kind 'criu': the dump (ms), the images' size, the shim's time from start to `loaded` */
  criu?: {
    dumpMs: number;
    imagesBytes: number;
    readyMs: number;
    criuVersion?: string;
    /** the images map this mm_template kernel-module template (shared, copy-on-write memory) */
    mmTemplate?: MmtTemplateInfo;
  };
}

/** A sandbox to build a CRIU template in (a ContainerSandbox). */
export interface BuildSandbox {
  initPid: number;
  cgroup: { procsFiles: string[] };
}

export interface TemplateManagerOptions<S extends BuildSandbox = BuildSandbox> {
  /** a dedicated, fresh sandbox for this agent (its code at /app, its limits and network) */
  makeSandbox(agent: LoadedAgent): Promise<S>;
  destroySandbox(sb: S): Promise<void>;
  /** the Node shim on the host (its hash is part of a Node template's runtime version) */
  nodeShim?: string;
}

export type InvokeTemplate =
  | { kind: 'zygote'; meta: TemplateMeta; zygote: Zygote; rebuilt?: string }
  | { kind: 'criu'; meta: TemplateMeta; imagesDir: string; rebuilt?: string };

export class TemplateError extends Error {}

const MAX_HASH_FILES = 2000;
const MAX_HASH_BYTES = 64 * 1024 * 1024;

/** Hash of an agent folder's files (names, sizes, contents), bounded so a huge folder cannot stall the daemon. */
export function agentHash(dir: string): string {
  const h = crypto.createHash('sha256');
  let files = 0;
  let bytes = 0;
  const walk = (d: string, rel: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      if (e.name === 'node_modules' && rel === '') {
        // dependencies: their lock/manifest stands for them
        continue;
      }
      if (e.name === '.trenv' || e.name === '__pycache__' || e.name === '.git') continue;
      const p = path.join(d, e.name);
      const r = path.join(rel, e.name);
      if (e.isDirectory()) walk(p, r);
      else if (e.isFile()) {
        if (++files > MAX_HASH_FILES) throw new TemplateError(`agent folder ${dir} has more than ${MAX_HASH_FILES} files: too large to template`);
        const data = fs.readFileSync(p);
        bytes += data.length;
        if (bytes > MAX_HASH_BYTES) throw new TemplateError(`agent folder ${dir} holds more than ${MAX_HASH_BYTES >> 20} MiB: too large to template`);
        h.update(r).update('\0').update(String(data.length)).update('\0').update(data);
      }
    }
  };
  walk(dir, '');
  return h.digest('hex').slice(0, 16);
}

let pythonVersion: string | undefined;
let nodeVersion: string | undefined;
const shimHashes = new Map<string, { mtimeMs: number; size: number; hash: string }>();
/**
 * The runtime a template holds in memory. For Node (a CRIU image of the process) also the shim's
 * hash: a changed shim must not keep running from old images.
 */
export function runtimeVersion(runtime: string, nodeShim?: string): string {
  if (runtime === 'python') {
    pythonVersion ??= execFileSync('/usr/bin/python3', ['-c', 'import sys; print(sys.version.split()[0])'], { encoding: 'utf8' }).trim();
    return `python ${pythonVersion}`;
  }
  try {
    nodeVersion ??= execFileSync('/usr/bin/node', ['--version'], { encoding: 'utf8' }).trim().replace(/^v/, '');
  } catch {
    nodeVersion = process.versions.node;
  }
  let shim = '';
  if (nodeShim) {
    try {
      const st = fs.statSync(nodeShim);
      let c = shimHashes.get(nodeShim);
      if (!c || c.mtimeMs !== st.mtimeMs || c.size !== st.size) {
        c = { mtimeMs: st.mtimeMs, size: st.size, hash: crypto.createHash('sha256').update(fs.readFileSync(nodeShim)).digest('hex').slice(0, 12) };
        shimHashes.set(nodeShim, c);
      }
      shim = `, shim ${c.hash}`;
    } catch {
      /* no shim file: version only */
    }
  }
  return `node ${nodeVersion}${shim}`;
}

interface Live {
  meta: TemplateMeta;
  zygote: Zygote;
}

export class TemplateManager {
  /** running zygotes (Python); CRIU templates have no process */
  private readonly live = new Map<string, Live>();
  private readonly building = new Map<string, Promise<TemplateMeta>>();
  /** consecutive failed restores of a CRIU template (by name), see restoreFailed() */
  private readonly failures = new Map<string, { builtAt: number; streak: number; message: string }>();
  private criu: { ok: boolean; version?: string; reason?: string } | undefined;
  log: (m: string) => void = () => undefined;
  /** KSM for CRIU-restored instances (TRENV_KSM=1), set by the daemon when this kernel allows it */
  ksm?: KsmControl;

  constructor(
    private readonly dir: string,
    private readonly zygoteScript: string,
    private readonly sandboxes?: TemplateManagerOptions,
  ) {
    fs.mkdirSync(dir, { recursive: true });
    // known before the first `template build` / invoke of a Node agent (criu check takes a moment)
    if (sandboxes) void this.criuState();
  }

  private async criuState(): Promise<{ ok: boolean; version?: string; reason?: string }> {
    this.criu ??= await criuAvailable().catch((e: Error) => ({ ok: false, reason: e.message }));
    return this.criu;
  }

  private kindFor(runtime: string): TemplateKind {
    return runtime === 'python' ? 'zygote' : 'criu';
  }

  private runtimeVersionOf(runtime: string): string {
    return runtimeVersion(runtime, this.sandboxes?.nodeShim);
  }

  imagesDir(name: string): string {
    return path.join(this.dir, name, 'images');
  }

  /** A CRIU template's images are complete (the trenv meta file is written after a successful dump). */
  private imagesExist(name: string): boolean {
    return fs.existsSync(path.join(this.imagesDir(name), CRIU_META_FILE)) && fs.existsSync(path.join(this.imagesDir(name), 'inventory.img'));
  }

  private metaFile(name: string): string {
    return path.join(this.dir, name, 'meta.json');
  }

  readMeta(name: string): TemplateMeta | undefined {
    try {
      return JSON.parse(fs.readFileSync(this.metaFile(name), 'utf8')) as TemplateMeta;
    } catch {
      return undefined;
    }
  }

  /** Why a template cannot be used for this agent as it is now, or undefined when it is current. */
  staleness(agent: LoadedAgent, meta: TemplateMeta | undefined): string | undefined {
    if (!meta) return 'no template';
    if (meta.agentDir !== agent.dir) return `the template was built from ${meta.agentDir}`;
    if (meta.kind !== this.kindFor(agent.manifest.runtime)) return `the template kind changed (${meta.kind} -> ${this.kindFor(agent.manifest.runtime)})`;
    const rv = this.runtimeVersionOf(agent.manifest.runtime);
    if (meta.runtimeVersion !== rv) return `the runtime changed (${meta.runtimeVersion} -> ${rv})`;
    if (JSON.stringify(meta.preload) !== JSON.stringify(agent.manifest.preload ?? [])) return 'the preload list changed';
    if (meta.agentHash !== agentHash(agent.dir)) return "the agent's files changed";
    return undefined;
  }

  /** Why this agent cannot have a template here (undefined: it can). */
  supports(agent: LoadedAgent): string | undefined {
    if (agent.manifest.runtime === 'python') return undefined;
    if (!this.sandboxes) return 'memory templates for Node agents are CRIU checkpoints, and this daemon was started without a sandbox factory for building them';
    if (this.criu && !this.criu.ok) {
      return `memory templates for Node agents need CRIU, which is not available here (${this.criu.reason ?? 'criu check failed'}); Node agents start cold. Run scripts/setup-criu.sh as root to enable them`;
    }
    return undefined;
  }

  /** Builds (or rebuilds) the template of an agent. Concurrent calls share one build. */
  build(agent: LoadedAgent, progress: (m: string) => void = () => undefined): Promise<TemplateMeta> {
    const name = agent.manifest.name;
    const running = this.building.get(name);
    if (running) return running;
    const p = this.doBuild(agent, progress).finally(() => this.building.delete(name));
    this.building.set(name, p);
    return p;
  }

  private async doBuild(agent: LoadedAgent, progress: (m: string) => void): Promise<TemplateMeta> {
    if (this.kindFor(agent.manifest.runtime) === 'criu' && this.sandboxes) await this.criuState();
    const why = this.supports(agent);
    if (why) throw new TemplateError(why);
    if (this.kindFor(agent.manifest.runtime) === 'criu') return this.buildCriu(agent, progress);
    const name = agent.manifest.name;
    const t0 = Date.now();
    progress(`building template ${name}: starting the runtime and loading ${agent.manifest.preload?.length ? agent.manifest.preload.join(', ') : 'the shim'}`);
    await this.stopLive(name);
    const tdir = path.join(this.dir, name);
    fs.mkdirSync(tdir, { recursive: true, mode: 0o700 });
    const zygote = new Zygote(path.join(tdir, 'zygote.sock'), this.zygoteScript, agent.manifest.preload ?? []);
    const ready = await zygote.start();
    const skipped = Array.isArray(ready.skipped)
      ? ready.skipped.map((s) => `${s.module}: ${s.reason}`)
      : Object.entries(ready.skipped ?? {}).map(([m, r]) => `${m}: ${r}`);
    const meta: TemplateMeta = {
      name,
      agentDir: agent.dir,
      runtime: agent.manifest.runtime,
      kind: 'zygote',
      agentHash: agentHash(agent.dir),
      runtimeVersion: this.runtimeVersionOf(agent.manifest.runtime),
      preload: agent.manifest.preload ?? [],
      builtAt: Date.now(),
      buildMs: Date.now() - t0,
      skipped,
    };
    this.writeMeta(meta);
    this.adopt(meta, zygote);
    for (const s of skipped) progress(`template ${name}: preload skipped: ${s}`);
    progress(`template ${name} ready in ${meta.buildMs} ms (zygote pid ${zygote.pid})`);
    return meta;
  }

  private writeMeta(meta: TemplateMeta): void {
    const tmp = `${this.metaFile(meta.name)}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(meta, null, 2));
    fs.renameSync(tmp, this.metaFile(meta.name));
  }

  /** The environment the shim is started with, as in the cold path minus the per-invocation keys. */
  private buildEnv(agent: LoadedAgent): Record<string, string> {
    const m = agent.manifest;
    return {
      PATH: '/usr/local/bin:/usr/bin:/bin',
      HOME: SANDBOX_HOME,
      LANG: 'C.UTF-8',
      ...Object.fromEntries(Object.entries(m.env ?? {}).map(([k, v]) => [k, String(v)])),
      TRENV_HANDLER: m.handler,
      TRENV_AGENT: m.name,
    };
  }

  /**
   * Node: start the shim in a dedicated sandbox, wait until it has loaded the agent and blocks on
   * its event, dump it with CRIU (the dump ends it), destroy the sandbox. The images replace the
   * previous ones only once complete.
   */
  private async buildCriu(agent: LoadedAgent, progress: (m: string) => void): Promise<TemplateMeta> {
    const sbx = this.sandboxes!;
    const name = agent.manifest.name;
    const t0 = Date.now();
    const tdir = path.join(this.dir, name);
    fs.mkdirSync(tdir, { recursive: true, mode: 0o700 });
    const images = this.imagesDir(name);
    const tmpImages = path.join(tdir, `images.new-${process.pid}-${Date.now()}`);
    progress(`building template ${name}: starting node in a new sandbox and loading ${agent.manifest.handler}`);
    const sb = await sbx.makeSandbox(agent);
    let launched: Awaited<ReturnType<typeof launchForCheckpoint>> | undefined;
    let d: Awaited<ReturnType<typeof dump>>;
    let mmt: MmtTemplateInfo | undefined;
    try {
      const target = { initPid: sb.initPid, cgroupProcs: sb.cgroup.procsFiles };
      launched = await launchForCheckpoint(target, {
        argv: NODE_SHIM_ARGV,
        env: this.buildEnv(agent),
        cwd: '/app',
        uid: SANDBOX_UID,
        gid: SANDBOX_GID,
        envelope: true,
        timeoutMs: 30_000,
      });
      progress(`template ${name}: agent loaded in ${launched.readyMs.toFixed(0)} ms; checkpointing it with CRIU`);
      checkDiskFor(name, tdir, launched.hostPid);
      if (mmTemplateStatus().path === 'kernel-module') {
        // its initialised memory goes into a kernel-module template the checkpoint maps (mmTemplate.ts)
        try {
          mmt = templateFromStopped(launched.hostPid, path.join(tdir, `mmt-${process.pid}-${Date.now()}.map`));
          progress(`template ${name}: ${(mmt.bytes / 1048576).toFixed(1)} MiB of initialised memory in mm_template template ${mmt.id} (${mmt.runs} runs, ${mmt.buildMs} ms)`);
        } catch (e) {
          progress(`template ${name}: warning: the mm_template kernel module could not take its memory (${(e as Error).message}); its instances get private copies`);
        }
      }
      d = await dump(launched.hostPid, tmpImages, { target, envelope: true, runtime: 'node', timeoutMs: 60_000 });
    } catch (e) {
      fs.rmSync(tmpImages, { recursive: true, force: true });
      if (mmt) deleteTemplate(mmt.mapFile);
      if (e instanceof TemplateError) throw e;
      const out = launched?.output().trim();
      const full = isDiskFull(e as Error) ? ` (the disk holding ${tdir} is full: ${freeMb(tdir)} MiB free)` : '';
      throw new TemplateError(`building the CRIU template of ${name} failed${full}: ${(e as Error).message}${out ? `\n--- shim output ---\n${out.slice(-2000)}` : ''}`);
    } finally {
      launched?.close();
      await sbx.destroySandbox(sb).catch((e: Error) => this.log(`template ${name}: destroying the build sandbox: ${e.message}`));
    }
    // swap in the new images (a restore running from the old ones keeps its open directory)
    const old = `${images}.old-${process.pid}-${Date.now()}`;
    const oldMmt = this.readMeta(name)?.criu?.mmTemplate;
    if (fs.existsSync(images)) fs.renameSync(images, old);
    fs.renameSync(tmpImages, images);
    fs.rmSync(old, { recursive: true, force: true });
    if (oldMmt) deleteTemplate(oldMmt); // instances still running keep its pages until they exit
    const meta: TemplateMeta = {
      name,
      agentDir: agent.dir,
      runtime: agent.manifest.runtime,
      kind: 'criu',
      agentHash: agentHash(agent.dir),
      runtimeVersion: this.runtimeVersionOf(agent.manifest.runtime),
      preload: agent.manifest.preload ?? [],
      builtAt: Date.now(),
      buildMs: Date.now() - t0,
      skipped: [],
      criu: { dumpMs: Math.round(d.ms), imagesBytes: d.bytes, readyMs: Math.round(launched.readyMs), criuVersion: d.meta.criuVersion, mmTemplate: mmt },
    };
    this.writeMeta(meta);
    this.failures.delete(name);
    progress(`template ${name} ready in ${meta.buildMs} ms (CRIU images ${(d.bytes / 1048576).toFixed(1)} MiB, dump ${d.ms.toFixed(0)} ms)`);
    // CRIU restores keep the pid, so OpenSSL never notices the clone; the shim re-seeds its DRBG
    // through the addon trenv_rand.node. Without it (not built) only the JS-level APIs are re-seeded.
    if (launched.readyInfo.reseed !== 'openssl') {
      progress(
        `template ${name}: warning: the re-seed addon (runtime-daemon/runtimes/node/trenv_rand.node, make -C runtime-daemon/native) is not loaded: instances share OpenSSL's internal random state; Math.random and the crypto random APIs are re-seeded, but keys that Node generates through OpenSSL (generateKeyPair, TLS) may repeat across instances`,
      );
    }
    return meta;
  }

  /**
   * A restore from this CRIU template failed (the invoke started cold instead). The next invoke
   * rebuilds it once; if the rebuilt one fails too, invokes start cold until it is rebuilt by hand
   * (`trenv template build`) or the daemon restarts.
   */
  restoreFailed(meta: TemplateMeta, message: string): void {
    const prev = this.failures.get(meta.name);
    this.failures.set(meta.name, { builtAt: meta.builtAt, streak: (prev?.streak ?? 0) + 1, message: message.split('\n')[0] });
  }

  restoreOk(name: string): void {
    this.failures.delete(name);
  }

  private adopt(meta: TemplateMeta, zygote: Zygote): void {
    zygote.onExit = (why) => {
      if (this.live.get(meta.name)?.zygote === zygote) {
        this.live.delete(meta.name);
        this.log(`template ${meta.name}: ${why}; it is restarted from its recipe at the next use`);
      }
    };
    this.live.set(meta.name, { meta, zygote });
  }

  /**
   * The template to start an instance of this agent from: current (rebuilt when stale, restarted
   * from its recipe after a daemon restart), or undefined when the agent has none.
   */
  async forInvoke(agent: LoadedAgent, progress: (m: string) => void): Promise<InvokeTemplate | undefined> {
    const name = agent.manifest.name;
    const meta = this.live.get(name)?.meta ?? this.readMeta(name);
    if (!meta) return undefined;
    const stale = this.staleness(agent, meta);
    if (meta.kind === 'criu' || this.kindFor(agent.manifest.runtime) === 'criu') {
      const f = this.failures.get(name);
      let reason = stale;
      if (!reason && !this.imagesExist(name)) reason = 'its CRIU images are missing';
      // its memory lives in a kernel-module template: still there, and still the same one?
      if (!reason && meta.criu?.mmTemplate) reason = mmtTemplateGone(meta.criu.mmTemplate);
      if (!reason && f && f.builtAt === meta.builtAt) {
        if (f.streak > 1) {
          throw new TemplateError(`restoring template ${name} failed ${f.streak} times in a row (last: ${f.message}); rebuild it with \`trenv template build\``);
        }
        reason = `the last restore from it failed (${f.message})`;
      }
      if (!reason) return { kind: 'criu', meta, imagesDir: this.imagesDir(name) };
      const m = await this.build(agent, progress);
      return { kind: 'criu', meta: m, imagesDir: this.imagesDir(name), rebuilt: reason };
    }
    const live = this.live.get(name);
    if (!stale && live?.zygote.alive) return { kind: 'zygote', ...live };
    const reason = stale ?? 'its zygote is not running (daemon restart or crash)';
    const m = await this.build(agent, progress);
    const l = this.live.get(m.name)!;
    return { kind: 'zygote', ...l, rebuilt: reason };
  }

  list(): TemplateInfo[] {
    let names: string[] = [];
    try {
      names = fs.readdirSync(this.dir).filter((n) => fs.existsSync(this.metaFile(n)));
    } catch {
      /* none */
    }
    return names.map((n) => {
      const live = this.live.get(n);
      const meta = live?.meta ?? this.readMeta(n)!;
      const mem = live?.zygote.memory();
      return {
        name: n,
        agentDir: meta.agentDir,
        runtime: meta.runtime,
        kind: meta.kind,
        builtAt: meta.builtAt,
        buildMs: meta.buildMs,
        agentHash: meta.agentHash,
        runtimeVersion: meta.runtimeVersion,
        preload: meta.preload,
        live: meta.kind === 'criu' ? this.imagesExist(n) : !!live?.zygote.alive,
        pid: live?.zygote.pid,
        memory: mem ? { t: Date.now(), ...mem, processes: 1 } : undefined,
      };
    });
  }

  private async stopLive(name: string): Promise<void> {
    const l = this.live.get(name);
    this.live.delete(name);
    await l?.zygote.stop();
  }

  /** Deletes a template: its zygote stops (running instances keep their memory: they are separate processes). */
  async remove(name: string): Promise<boolean> {
    if (!/^[a-z0-9][a-z0-9._-]{0,62}$/.test(name)) return false;
    const existed = this.live.has(name) || fs.existsSync(this.metaFile(name));
    await this.stopLive(name);
    this.failures.delete(name);
    const mmt = this.readMeta(name)?.criu?.mmTemplate;
    if (mmt) deleteTemplate(mmt);
    fs.rmSync(path.join(this.dir, name), { recursive: true, force: true });
    return existed;
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.live.keys()].map((n) => this.stopLive(n)));
  }
}

/** MiB free for unprivileged writers on the file system holding `dir`. */
export function freeMb(dir: string): number {
  const st = fs.statfsSync(dir);
  return Math.floor((st.bavail * st.bsize) / 2 ** 20);
}

/** ENOSPC from our own writes, or CRIU reporting it (a CriuError's message holds its log tail). */
function isDiskFull(e: Error & { code?: string }): boolean {
  return e.code === 'ENOSPC' || /No space left on device|ENOSPC/i.test(e.message);
}

/**
 * Refuses to start a dump that cannot fit: CRIU images hold about the process's resident memory
 * (pages) plus a little metadata, so ask for its RSS plus 25% and 8 MiB. Failing here gives a
 * clear error and leaves no half-written images behind.
 */
function checkDiskFor(name: string, dir: string, pid: number): void {
  let rssKb = 0;
  try {
    rssKb = Number(/VmRSS:\s*(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
  } catch {
    return; // gone: the dump reports it
  }
  const needMb = Math.ceil((rssKb * 1.25) / 1024) + 8;
  const free = freeMb(dir);
  if (free < needMb) {
    throw new TemplateError(`not enough disk space for the CRIU images of ${name}: about ${needMb} MiB needed, ${free} MiB free in ${dir}; free some space or delete unused templates (\`trenv template rm\`)`);
  }
}
