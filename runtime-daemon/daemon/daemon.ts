/**
 * trenvd: composes the state dir, records, sandbox driver + pool, invoker and server, and serves
 * the `trenv/...` protocol. One daemon per state dir. Needs root (namespaces, cgroups, mounts).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ResponseError } from 'vscode-jsonrpc/node';
import {
  DaemonStatus,
  Diagnostic,
  ErrorCodes,
  InvocationRecord,
  InvokeParams,
  LogLine,
  MemorySample,
  Methods,
  Notifications,
  PROTOCOL_VERSION,
  SandboxInfo,
  StatsResult,
  TemplateInfo,
  BrowserFrame,
  SubscribeParams,
  Topic,
  TraceSpan,
} from '../protocol/messages';
import { AgentNotFoundError, ManifestError, checkManifestText } from '../manifest/manifest';
import { addSamples, emptySample, readRollup, sampleProcesses } from '../metrics/smaps';
import { RecordStore, summarize } from '../records/store';
import { ContainerDriver } from '../sandbox/container';
import { DEFAULT_POOL, SandboxPool } from '../sandbox/pool';
import { ClientConnection, DaemonServer, paramsError } from '../server/server';
import { Invoker } from './invoker';
import { serveTerminal } from '../server/terminal';
import { TemplateManager } from '../template/templates';
import { Accel, findImage, probeAccel, reapLeftovers, RootKind, VmImage } from '../sandbox/vm';
import { VmPool } from '../sandbox/vmPool';
import { VmTemplateManager } from '../template/vmTemplates';
import { BrowserBroker } from '../browser/broker';
import { execFileSync } from 'node:child_process';
import { loadAgent } from '../manifest/manifest';
import { KsmControl } from '../template/ksm';
import { mmTemplateStatus, setMmtHelper } from '../template/mmTemplate';
import { acquireLock, clientOwner, ensureDirs, packageRoot, StatePaths, writeInfo, writeToken } from './state';
import { E2bService, e2bPortFrom } from '../e2b/service';
import type { E2bSandbox } from '../e2b/sandboxes';

export const VERSION = '0.1.0';

export interface DaemonOptions {
  stateDir: string;
  port: number;
  /** E2B-compatible API port (default $TRENV_E2B_PORT or 49982; 0 = any free port) */
  e2bPort?: number;
  log?: (msg: string) => void;
}

interface Subscription {
  topics: Set<Topic>;
  invocationId?: string;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

export class Daemon {
  readonly paths: StatePaths;
  private releaseLock: (() => void) | undefined;
  private store!: RecordStore;
  private driver!: ContainerDriver;
  private pool!: SandboxPool;
  private invoker!: Invoker;
  private templates!: TemplateManager;
  private vmPool: VmPool | undefined;
  private browser: BrowserBroker | undefined;
  private e2b: E2bService | undefined;
  private vmTemplates: VmTemplateManager | undefined;
  private nativeDir = '';
  private server!: DaemonServer;
  private readonly subs = new Map<ClientConnection, Subscription[]>();
  private port = 0;
  private readonly startedAt = Date.now();
  private stopping: Promise<void> | undefined;
  private readonly log: (msg: string) => void;
  onStopped: (() => void) | undefined;

  constructor(private readonly o: DaemonOptions) {
    this.paths = new StatePaths(o.stateDir);
    this.log = o.log ?? ((m) => process.stderr.write(`trenvd: ${m}\n`));
  }

  async start(): Promise<{ port: number }> {
    if (process.getuid?.() !== 0) {
      throw new Error('trenvd needs root for namespaces, cgroups and mounts: start it with sudo (trenv daemon start)');
    }
    ensureDirs(this.paths);
    this.releaseLock = acquireLock(this.paths);
    try {
      this.store = new RecordStore(this.paths.invocations);
      const { lost } = this.store.open();
      if (lost.length) this.log(`marked ${lost.length} invocation(s) of a previous daemon as daemon-lost`);

      const root = packageRoot();
      this.nativeDir = path.join(root, 'runtime-daemon/native/build');
      // once: is the mm_template kernel module there? Before the sandbox driver: when it is, the
      // detection mounts its filesystem, which every sandbox root then binds (rootfs.ts baseBinds)
      setMmtHelper(path.join(this.nativeDir, 'trenv-mmt'));
      mmTemplateStatus((m) => this.log(m));
      this.driver = new ContainerDriver({
        sandboxdPath: process.env.TRENV_SANDBOXD || path.join(this.nativeDir, 'trenv-sandboxd'),
        stateRoot: this.paths.root,
        rootfsDir: this.paths.rootfs,
        mntDir: this.paths.mnt,
        runtimesDir: path.join(root, 'runtime-daemon/runtimes'),
        instanceId: this.paths.instanceId,
        sandboxdLog: path.join(this.paths.run, 'sandboxd.log'),
      });
      const { leftovers } = this.driver.start();
      if (leftovers.length) this.log(`removed ${leftovers.length} cgroup(s) left by a previous daemon`);
      this.driver.native.on('exit', (e: Error) => {
        if (!this.stopping) {
          this.log(`${e.message}: stopping the daemon (restart it to recover)`);
          void this.stop();
        }
      });
      this.driver.native.on('protocolError', (e: Error) => this.log(`sandboxd: ${e.message}`));

      this.pool = new SandboxPool(this.driver, this.paths.emptyApp);
      this.pool.on('warn', (m: string) => this.log(m));
      // TrEnv: a cleaned sandbox gets the next instance of its last template half-started (the
      // waiter joins its cgroups and namespaces now), so that part is off the next call's path
      this.pool.onIdle = (sb) => {
        if (sb.lastZygote && fs.existsSync(sb.lastZygote)) this.driver.prepare(sb, sb.lastZygote);
      };
      this.driver.native.on('prepareError', (sbx: string, msg: string) => this.log(`prepare ${sbx}: ${msg}`));
      this.pool.on('changed', this.publishSandboxes);
      this.pool.start();

      // Node templates are CRIU checkpoints made in a dedicated sandbox (not from the pool: it is
      // destroyed right after the dump), with the agent's code, limits and network.
      const driver = this.driver;
      this.templates = new TemplateManager(path.join(this.paths.root, 'templates'), path.join(root, 'runtime-daemon/runtimes/python/trenv_zygote.py'), {
        makeSandbox: async (agent) => {
          const m = agent.manifest;
          const spec = { runtime: m.runtime, memoryMb: m.limits.memoryMb, pids: m.limits.pids, tmpfsMb: m.limits.tmpfsMb, network: m.network };
          return (await driver.create(spec, agent.dir)).sandbox;
        },
        destroySandbox: (sb) => driver.destroy(sb as Parameters<ContainerDriver['destroy']>[0]),
        nodeShim: path.join(root, 'runtime-daemon/runtimes/node/trenv-shim.js'),
      });
      this.templates.log = this.log;
      if (process.env.TRENV_KSM === '1') {
        try {
          this.templates.ksm = KsmControl.enable(path.join(this.nativeDir, 'trenv-enter'), Number(process.env.TRENV_KSM_PAGES_TO_SCAN) || undefined);
          this.log('KSM on (TRENV_KSM=1): CRIU-restored instances are mergeable; ksmd runs until this daemon stops');
        } catch (e) {
          this.log(`KSM requested (TRENV_KSM=1) but not available: ${(e as Error).message}; restored instances keep private copies`);
        }
      }
      this.setUpVms();
      if (BrowserBroker.reapLeftover(this.paths.root)) this.log('killed the shared browser a previous daemon left');
      this.browser = new BrowserBroker(this.paths.root, this.log);
      const broker = this.browser;
      this.invoker = new Invoker(this.store, this.pool, this.driver, this.templates, path.join(this.nativeDir, 'trenv-enter'), {
        pool: this.vmPool!,
        templates: this.vmTemplates!,
        root: () => (process.env.TRENV_VM_ROOT === 'blk' ? 'blk' : 'pmem') as RootKind,
        unavailable: () => this.vmUnavailable(),
      }, {
        endpoint: (id, dir) => broker.endpoint(id, dir),
        release: (id) => broker.release(id),
        downloadsDir: (id) => broker.downloadsDir(id),
      });
      // subscribers hear of records, logs, spans and memory the same way whoever made them
      // (the invoker stores its own; E2B sandboxes are stored here, below)
      const publish = {
        record: (r: InvocationRecord) => this.notify('invocations', r.id, (c) => c.rpc.sendNotification(Notifications.invocation, summarize(r))),
        log: (l: LogLine) => this.notify('logs', l.invocationId, (c) => c.rpc.sendNotification(Notifications.log, l)),
        span: (sp: TraceSpan) => this.notify('trace', sp.invocationId, (c) => c.rpc.sendNotification(Notifications.span, sp)),
        memory: (id: string, sample: MemorySample) => this.notify('memory', id, (c) => c.rpc.sendNotification(Notifications.memory, { invocationId: id, sample })),
      };
      this.invoker.on('debugReady', (r) => this.notify('invocations', r.invocationId, (c) => c.rpc.sendNotification(Notifications.debugReady, r)));
      this.invoker.on('log', publish.log);
      this.invoker.on('span', publish.span);
      this.invoker.on('memory', publish.memory);
      this.invoker.on('invocation', publish.record);

      this.e2b = new E2bService({
        stateDir: this.paths.root,
        instanceId: this.paths.instanceId,
        pool: this.pool,
        vms: {
          boot: (memoryMb) => this.vmPool!.bootBare(memoryMb, 1, (process.env.TRENV_VM_ROOT === 'blk' ? 'blk' : 'pmem') as RootKind),
          release: (vm) => this.vmPool!.release(vm),
          unavailable: () => this.vmUnavailable(),
        },
        emptyApp: this.paths.emptyApp,
        enterPath: path.join(this.nativeDir, 'trenv-enter'),
        templates: () => this.templates.list(),
        owner: clientOwner(),
        log: this.log,
        records: {
          create: (r) => {
            this.store.create(r);
            publish.record(r);
          },
          update: (r) => {
            this.store.update(r);
            publish.record(r);
          },
          log: (l) => {
            this.store.append(l.invocationId, 'logs', l);
            publish.log(l);
          },
          memory: (id, sample) => {
            this.store.append(id, 'memory', sample);
            publish.memory(id, sample);
          },
          span: (sp) => {
            this.store.append(sp.invocationId, 'trace', sp);
            publish.span(sp);
          },
        },
      });
      this.e2b.sandboxes.on('changed', this.publishSandboxes);
      await this.e2b.start(e2bPortFrom(this.o.e2bPort));

      const token = writeToken(this.paths);
      this.server = new DaemonServer({
        port: this.o.port,
        token,
        vmAvailable: () => !this.vmUnavailable(),
        log: this.log,
        streams: {
          '/terminal': (ws, req) =>
            void serveTerminal(ws, req, { pool: this.pool, enterPath: path.join(this.nativeDir, 'trenv-enter'), log: this.log }),
        },
        onConnection: (c) => this.register(c),
        onClose: (c) => this.subs.delete(c),
      });
      this.port = await this.server.listen();
      writeInfo(this.paths, {
        pid: process.pid,
        port: this.port,
        host: '127.0.0.1',
        tokenFile: this.paths.token,
        startedAt: this.startedAt,
        version: VERSION,
      });
      this.log(`listening on 127.0.0.1:${this.port}, state ${this.paths.root}, cgroups ${this.driver.cgroups.describe()}`);
      return { port: this.port };
    } catch (e) {
      await this.teardown();
      throw e;
    }
  }

  /**
   * microVMs: QEMU processes a crashed daemon left are killed first; guest images are looked up
   * per use (setup-vm.sh may run while the daemon is up); the accelerator is probed once.
   */
  private setUpVms(): void {
    const vmsDir = path.join(this.paths.root, 'vms');
    fs.mkdirSync(vmsDir, { recursive: true, mode: 0o700 });
    const n = reapLeftovers(vmsDir);
    if (n) this.log(`killed ${n} QEMU process(es) left by a previous daemon`);
    let image: VmImage | undefined;
    const getImage = () => (image ??= findImage());
    let accel: Promise<Accel> | undefined;
    const getAccel = () => (accel ??= probeAccel(getImage(), vmsDir, path.join(this.paths.root, 'vm-accel.json'), this.log));
    this.vmTemplates = new VmTemplateManager(path.join(this.paths.root, 'vm-templates'), vmsDir, getImage, getAccel);
    this.vmPool = new VmPool(vmsDir, getImage, getAccel, undefined, this.log);
    this.vmTemplates.on('removed', (name: string) => void this.vmPool?.drop(name));
    this.vmPool.on('changed', this.publishSandboxes);
  }

  private vmTemplateInfos(): TemplateInfo[] {
    return (this.vmTemplates?.list() ?? []).map((t) => {
      const warm = [...(this.vmPool?.all ?? [])].filter((vm) => vm.template === t.meta.name && !vm.destroyed && vm.pid > 0);
      return {
        name: t.meta.name,
        agentDir: t.meta.agentDir,
        runtime: t.meta.runtime,
        kind: 'vm',
        builtAt: t.meta.builtAt,
        buildMs: t.meta.buildMs,
        agentHash: t.meta.agentHash,
        runtimeVersion: `${t.meta.runtime} in microVM (kernel ${t.meta.kernel}, ${t.meta.memoryMb} MiB, ${t.meta.root} root, ${t.meta.accel})`,
        preload: [],
        live: warm.length > 0,
        memory: warm.length ? sampleProcesses(warm.map((vm) => vm.pid)) : undefined,
      };
    });
  }

  private vmCheck: { at: number; why: string | undefined } | undefined;

  /** Why microVMs cannot start here (undefined: they can); re-checked at most every 5 s. */
  private vmUnavailable(): string | undefined {
    if (this.vmCheck && Date.now() - this.vmCheck.at < 5000) return this.vmCheck.why;
    this.vmCheck = { at: Date.now(), why: this.checkVms() };
    return this.vmCheck.why;
  }

  private checkVms(): string | undefined {
    try {
      findImage();
    } catch (e) {
      return (e as Error).message;
    }
    try {
      execFileSync('qemu-system-x86_64', ['--version'], { stdio: 'ignore' });
    } catch {
      return 'qemu-system-x86_64 is not installed: run `sudo bash scripts/setup-vm.sh`';
    }
    return undefined;
  }

  private notify(topic: Topic, invocationId: string | undefined, send: (c: ClientConnection) => Promise<void> | void): void {
    for (const [c, subs] of this.subs) {
      if (subs.some((s) => s.topics.has(topic) && (!s.invocationId || !invocationId || s.invocationId === invocationId))) {
        try {
          // a client that just went away: its close event has not been handled yet
          void Promise.resolve(send(c)).catch(() => undefined);
        } catch {
          /* closed */
        }
      }
    }
  }

  private subscribe(c: ClientConnection, p: SubscribeParams): void {
    const list = this.subs.get(c) ?? [];
    list.push({ topics: new Set(p.topics), invocationId: p.invocationId });
    this.subs.set(c, list);
  }

  private readonly publishSandboxes = (): void => this.notify('sandboxes', undefined, (c) => c.rpc.sendNotification(Notifications.sandboxes, this.sandboxInfos()));

  /** What the Sandboxes tree shows a container as: the E2B sandbox holding it, or its agent. */
  private containerLabel(appDir: string | undefined, e2b: E2bSandbox | undefined): string | undefined {
    if (e2b) return `e2b ${e2b.id} (${e2b.templateId}${e2b.state === 'paused' ? ', paused' : ''})`;
    return appDir ? path.basename(appDir) : undefined;
  }

  private sandboxInfos(): SandboxInfo[] {
    const e2b = this.e2b?.sandboxes.backingIds() ?? new Map();
    const vms: SandboxInfo[] = [...(this.vmPool?.all ?? [])]
      .filter((vm) => !vm.destroyed && vm.pid > 0)
      .map((vm) => ({
        id: vm.cfg.id,
        kind: 'vm',
        poolKey: vm.template ?? 'cold',
        state: this.vmPool!.isWarm(vm) ? 'idle' : 'busy',
        hostPid: vm.pid,
        uses: 0,
        createdAt: vm.createdAt,
        template: vm.template,
        agent: this.containerLabel(undefined, e2b.get(vm.cfg.id)),
        memory: sampleProcesses([vm.pid]),
      }));
    return vms.concat(this.pool.list().map((sb) => ({
      id: sb.id,
      kind: 'container',
      poolKey: sb.key,
      state: sb.state,
      hostPid: sb.initPid,
      uses: sb.uses,
      createdAt: sb.createdAt,
      agent: this.containerLabel(sb.appDir, e2b.get(sb.id)),
      template: sb.lastTemplate,
      memory: sampleProcesses(sb.cgroup.pids_(), sb.cgroup.usageBytes()),
    })));
  }

  private status(): DaemonStatus {
    const list = this.pool.list();
    return {
      version: VERSION,
      protocol: PROTOCOL_VERSION,
      pid: process.pid,
      stateDir: this.paths.root,
      port: this.port,
      startedAt: this.startedAt,
      cgroup: this.driver.cgroups.describe(),
      sandboxes: { idle: list.filter((s) => s.state === 'idle').length, busy: list.filter((s) => s.state === 'busy').length, total: list.length },
      invocations: { running: this.invoker.runningCount(), total: this.store.list(1e9).length },
    };
  }

  private stats(): StatsResult {
    const sandboxes = this.sandboxInfos();
    const total = sandboxes.reduce((acc, s) => (s.memory ? addSamples(acc, s.memory) : acc), emptySample());
    const browser = this.browser?.stats();
    if (browser?.running) total.pssKb += browser.pssKb;
    return { sandboxes, templates: [...this.templates.list(), ...this.vmTemplateInfos()], total, browser, daemonRssKb: readRollup(process.pid)?.rssKb ?? 0 };
  }

  private register(c: ClientConnection): void {
    const { rpc } = c;
    rpc.onRequest(Methods.status, () => this.status());
    rpc.onRequest(Methods.invoke, async (p: InvokeParams) => {
      if (!isObject(p) || typeof p.agentDir !== 'string' || !p.agentDir) throw paramsError('"agentDir" (a path to an agent folder) is required');
      if (p.env !== undefined && (!isObject(p.env) || Object.values(p.env).some((v) => typeof v !== 'string'))) {
        throw paramsError('"env" must be an object of string values');
      }
      if (p.sandbox !== undefined && p.sandbox !== 'container' && p.sandbox !== 'vm') throw paramsError('"sandbox" must be "container" or "vm"');
      if (p.vmRoot !== undefined && p.vmRoot !== 'pmem' && p.vmRoot !== 'blk') throw paramsError('"vmRoot" must be "pmem" (DAX) or "blk"');
      let agent;
      try {
        agent = this.invoker.prepare(p);
      } catch (e) {
        if (e instanceof AgentNotFoundError) throw new ResponseError(ErrorCodes.AgentNotFound, e.message);
        if (e instanceof ManifestError) throw new ResponseError(ErrorCodes.ManifestInvalid, e.message, e.diagnostics);
        throw e;
      }
      try {
        // a streaming caller is subscribed to this invocation before anything of it is emitted
        const onCreated = p.stream
          ? (id: string) => this.subscribe(c, { topics: ['logs', 'trace', 'memory', 'invocations'], invocationId: id })
          : undefined;
        return await this.invoker.invoke(p, agent, onCreated);
      } catch (e) {
        throw new ResponseError(ErrorCodes.SandboxFailed, (e as Error).message);
      }
    });
    rpc.onRequest(Methods.kill, (p: { id: string }) => {
      if (!isObject(p) || typeof p.id !== 'string') throw paramsError('"id" is required');
      const id = this.store.resolve(p.id) ?? p.id;
      return { killed: this.invoker.kill(id) || (this.e2b?.killByRecord(id) ?? false) };
    });
    rpc.onRequest(Methods.listInvocations, (p: { limit?: number }) => this.store.list(isObject(p) && typeof p.limit === 'number' ? p.limit : 100));
    rpc.onRequest(Methods.getInvocation, (p: { id: string }) => {
      if (!isObject(p) || typeof p.id !== 'string') throw paramsError('"id" is required');
      const id = this.store.resolve(p.id);
      const d = id ? this.store.get(id) : undefined;
      if (!d) throw new ResponseError(ErrorCodes.NotFound, `no invocation "${p.id}" (list them with: trenv ps)`);
      return d;
    });
    rpc.onRequest(Methods.listSandboxes, () => this.sandboxInfos());
    rpc.onRequest(Methods.stats, () => this.stats());
    rpc.onRequest(Methods.validateManifest, (p: { agentDir: string }): Diagnostic[] => {
      if (!isObject(p) || typeof p.agentDir !== 'string') throw paramsError('"agentDir" is required');
      let text: string;
      try {
        text = fs.readFileSync(path.join(p.agentDir, 'trenv.json'), 'utf8');
      } catch {
        return [{ path: '', message: `no trenv.json in ${p.agentDir}`, severity: 'error' }];
      }
      return checkManifestText(p.agentDir, text).diagnostics;
    });
    rpc.onRequest(Methods.subscribe, (p: SubscribeParams) => {
      if (!isObject(p) || !Array.isArray(p.topics)) throw paramsError('"topics" must be an array');
      this.subscribe(c, p);
      return { ok: true as const };
    });
    rpc.onRequest(Methods.unsubscribe, (p: SubscribeParams) => {
      if (!isObject(p) || !Array.isArray(p.topics)) throw paramsError('"topics" must be an array');
      const list = this.subs.get(c) ?? [];
      for (const s of list) if (s.invocationId === p.invocationId) for (const t of p.topics) s.topics.delete(t);
      return { ok: true as const };
    });
    rpc.onRequest(Methods.configurePool, async (p) => {
      if (!isObject(p)) throw paramsError('expected an object');
      const cfg = this.pool.config;
      if (typeof p.maxIdle === 'number' && p.maxIdle >= 0 && p.maxIdle <= 256) cfg.maxIdle = Math.floor(p.maxIdle);
      if (typeof p.idleTtlMs === 'number' && p.idleTtlMs >= 1000) cfg.idleTtlMs = p.idleTtlMs;
      if (Array.isArray(p.prewarm)) {
        cfg.prewarm = p.prewarm.filter((w) => isObject(w) && (w.runtime === 'python' || w.runtime === 'node') && typeof w.count === 'number');
        for (const w of cfg.prewarm) {
          await this.pool.prewarm({ runtime: w.runtime, memoryMb: 256, pids: 64, tmpfsMb: 64, network: 'none' }, Math.min(w.count, cfg.maxIdle));
        }
      }
      await this.pool.evictExpired();
      return cfg;
    });
    rpc.onRequest(Methods.buildTemplate, async (p: { agentDir: string; vm?: boolean }) => {
      if (!isObject(p) || typeof p.agentDir !== 'string' || !p.agentDir) throw paramsError('"agentDir" is required');
      let agent;
      try {
        agent = loadAgent(p.agentDir);
      } catch (e) {
        if (e instanceof AgentNotFoundError) throw new ResponseError(ErrorCodes.AgentNotFound, e.message);
        if (e instanceof ManifestError) throw new ResponseError(ErrorCodes.ManifestInvalid, e.message, e.diagnostics);
        throw e;
      }
      const progress = (message: string) =>
        void c.rpc.sendNotification(Notifications.progress, { what: `template ${agent.manifest.name}`, message }).catch(() => undefined);
      try {
        if (p.vm || agent.manifest.sandbox === 'vm') {
          const why = this.vmUnavailable();
          if (why) throw new Error(`microVM sandboxes are not available: ${why}`);
          const t = await this.vmTemplates!.build(agent, process.env.TRENV_VM_ROOT === 'blk' ? 'blk' : 'pmem', progress);
          this.vmPool?.refill(t);
          return this.vmTemplateInfos().find((x) => x.name === t.meta.name)!;
        }
        const meta = await this.templates.build(agent, progress);
        return this.templates.list().find((t) => t.name === meta.name)!;
      } catch (e) {
        throw new ResponseError(ErrorCodes.TemplateFailed, (e as Error).message);
      }
    });
    rpc.onRequest(Methods.listTemplates, () => [...this.templates.list(), ...this.vmTemplateInfos()]);
    rpc.onRequest(Methods.deleteTemplate, async (p: { name: string }) => {
      if (!isObject(p) || typeof p.name !== 'string') throw paramsError('"name" is required');
      if (this.vmTemplates?.list().some((t) => t.meta.name === p.name)) {
        await this.vmPool?.drop(p.name);
        return { deleted: this.vmTemplates.remove(p.name) };
      }
      return { deleted: await this.templates.remove(p.name) };
    });
    const views = new Map<string, () => Promise<void>>();
    rpc.onRequest(Methods.browserView, async (p: { invocationId: string }) => {
      if (!isObject(p) || typeof p.invocationId !== 'string') throw paramsError('"invocationId" is required');
      const id = this.store.resolve(p.invocationId) ?? p.invocationId;
      const det = this.store.get(id);
      if (!det) throw new ResponseError(ErrorCodes.NotFound, `no invocation "${p.invocationId}"`);
      if (det.record.state !== 'running' || !det.record.sandboxId) throw new ResponseError(ErrorCodes.NotFound, `invocation ${id} is not running (${det.record.state}): a live view needs a running agent`);
      if (views.has(id)) return { ok: true as const };
      const send = (f: BrowserFrame) => void c.rpc.sendNotification(Notifications.browserFrame, f).catch(() => undefined);
      try {
        const stop = await this.browser!.screencast(
          det.record.sandboxId,
          (f) => send({ invocationId: id, data: f.data, url: f.url, title: f.title, width: f.width, height: f.height }),
          (why) => {
            views.delete(id);
            send({ invocationId: id, ended: why });
          },
        );
        views.set(id, stop);
        c.socket.once('close', () => void stop());
      } catch (e) {
        throw new ResponseError(ErrorCodes.NotFound, (e as Error).message);
      }
      return { ok: true as const };
    });
    rpc.onRequest(Methods.browserViewStop, async (p: { invocationId: string }) => {
      if (!isObject(p) || typeof p.invocationId !== 'string') throw paramsError('"invocationId" is required');
      const id = this.store.resolve(p.invocationId) ?? p.invocationId;
      const stop = views.get(id);
      views.delete(id);
      await stop?.();
      return { stopped: !!stop };
    });
    rpc.onRequest(Methods.shutdown, () => {
      setImmediate(() => void this.stop());
      return { ok: true as const };
    });
  }

  /** Stops serving, kills running invocations (recorded as killed), destroys sandboxes, releases the lock. */
  stop(): Promise<void> {
    if (!this.stopping) this.stopping = this.teardown();
    return this.stopping;
  }

  private async teardown(): Promise<void> {
    try {
      if (this.invoker) {
        await this.invoker.killAll();
        const until = Date.now() + 3000;
        while (this.invoker.runningCount() > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
      }
      await this.e2b?.stop();
      await this.pool?.close();
      await this.vmPool?.closeAll();
      await this.browser?.stop();
      await this.templates?.stopAll();
      this.templates?.ksm?.disable();
      await this.server?.close();
      this.store?.flush();
      await this.driver?.stop();
    } catch (e) {
      this.log(`while stopping: ${(e as Error).message}`);
    } finally {
      fs.rmSync(this.paths.info, { force: true });
      this.releaseLock?.();
      this.releaseLock = undefined;
      this.onStopped?.();
    }
  }
}

export { DEFAULT_POOL };
