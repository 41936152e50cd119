/**
 * mm-templates: build, store, staleness, and the live template processes.
 *   <state>/templates/<agent-name>/meta.json   TemplateMeta (the recipe: enough to rebuild after a restart)
 *   <state>/templates/<agent-name>/zygote.sock the zygote's socket (Python)
 * A template is stale when the agent's files, its preload list or the runtime changed; an invoke
 * rebuilds a stale template (and says so in the invocation's logs) before using it.
 */
import { execFileSync } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { TemplateInfo } from '../protocol/messages';
import type { LoadedAgent } from '../manifest/manifest';
import { Zygote } from './zygote';

export interface TemplateMeta {
  name: string;
  agentDir: string;
  runtime: 'python' | 'node';
  kind: 'zygote';
  agentHash: string;
  runtimeVersion: string;
  preload: string[];
  builtAt: number;
  buildMs: number;
  skipped: string[];
}

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
export function runtimeVersion(runtime: string): string {
  if (runtime === 'python') {
    pythonVersion ??= execFileSync('/usr/bin/python3', ['-c', 'import sys; print(sys.version.split()[0])'], { encoding: 'utf8' }).trim();
    return `python ${pythonVersion}`;
  }
  return `node ${process.versions.node}`;
}

interface Live {
  meta: TemplateMeta;
  zygote: Zygote;
}

export class TemplateManager {
  private readonly live = new Map<string, Live>();
  private readonly building = new Map<string, Promise<TemplateMeta>>();
  log: (m: string) => void = () => undefined;

  constructor(private readonly dir: string, private readonly zygoteScript: string) {
    fs.mkdirSync(dir, { recursive: true });
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
    if (meta.runtimeVersion !== runtimeVersion(agent.manifest.runtime)) return `the runtime changed (${meta.runtimeVersion} -> ${runtimeVersion(agent.manifest.runtime)})`;
    if (JSON.stringify(meta.preload) !== JSON.stringify(agent.manifest.preload ?? [])) return 'the preload list changed';
    if (meta.agentHash !== agentHash(agent.dir)) return "the agent's files changed";
    return undefined;
  }

  supports(agent: LoadedAgent): string | undefined {
    if (agent.manifest.runtime !== 'python') {
      return 'memory templates for Node need CRIU or the mm-template kernel module; not available yet for Node agents in this version';
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
    const why = this.supports(agent);
    if (why) throw new TemplateError(why);
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
      runtimeVersion: runtimeVersion(agent.manifest.runtime),
      preload: agent.manifest.preload ?? [],
      builtAt: Date.now(),
      buildMs: Date.now() - t0,
      skipped,
    };
    const tmp = `${this.metaFile(name)}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(meta, null, 2));
    fs.renameSync(tmp, this.metaFile(name));
    this.adopt(meta, zygote);
    for (const s of skipped) progress(`template ${name}: preload skipped: ${s}`);
    progress(`template ${name} ready in ${meta.buildMs} ms (zygote pid ${zygote.pid})`);
    return meta;
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
  async forInvoke(agent: LoadedAgent, progress: (m: string) => void): Promise<{ meta: TemplateMeta; zygote: Zygote; rebuilt?: string } | undefined> {
    const name = agent.manifest.name;
    const meta = this.live.get(name)?.meta ?? this.readMeta(name);
    if (!meta) return undefined;
    const stale = this.staleness(agent, meta);
    const live = this.live.get(name);
    if (!stale && live?.zygote.alive) return live;
    const reason = stale ?? 'its zygote is not running (daemon restart or crash)';
    const m = await this.build(agent, progress);
    const l = this.live.get(m.name)!;
    return { ...l, rebuilt: reason };
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
        live: !!live?.zygote.alive,
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
    fs.rmSync(path.join(this.dir, name), { recursive: true, force: true });
    return existed;
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.live.keys()].map((n) => this.stopLive(n)));
  }
}
