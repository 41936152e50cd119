/**
 * One invocation, from request to recorded end: load the manifest, get a sandbox from the pool
 * (fresh or repurposed), run the runtime shim in it, stream logs/spans/memory, enforce the time
 * limit, classify the end (succeeded, failed, timeout, oom, killed) and give the sandbox back.
 */
import * as crypto from 'node:crypto';
import { EventEmitter } from 'node:events';
import type {
  DebugReady,
  GuestMemory,
  InvocationError,
  InvocationRecord,
  InvocationState,
  InvokeParams,
  LogLine,
  MemorySample,
  SandboxStateSummary,
  TraceSpan,
} from '../protocol/messages';
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { LoadedAgent, loadAgent, ManifestError } from '../manifest/manifest';
import { sampleProcesses } from '../metrics/smaps';
import { RecordStore, newInvocationId, summarize } from '../records/store';
import { ContainerDriver, ContainerSandbox, SandboxSpec } from '../sandbox/container';
import { SandboxPool } from '../sandbox/pool';
import { SANDBOX_GID, SANDBOX_HOME, SANDBOX_UID } from '../sandbox/rootfs';
import type { NativeSpan, RunHandlers } from '../sandbox/sandboxd';
import { CriuInstance, nsPidOf, restoreInto } from '../template/criu';
import { TemplateManager, TemplateMeta } from '../template/templates';
import { guestMemory, GuestMsg, RootKind } from '../sandbox/vm';
import type { VmAcquired, VmPool } from '../sandbox/vmPool';
import type { VmTemplateManager } from '../template/vmTemplates';

/** The shared browser (absent: agents with "browser": true are refused). */
export interface BrowserSupport {
  /** the sandbox's CDP endpoint (a unix socket on the host), made on first use */
  endpoint(sandboxId: string, downloadsDir: string): Promise<string>;
  /** ends it: connections closed, the agent's browser contexts disposed */
  release(sandboxId: string): Promise<void>;
  downloadsDir(sandboxId: string): string;
}

/** Where an agent finds its browser inside a container sandbox (its own loopback). */
export const BROWSER_PORT = 9222;

/** What the invoker needs for microVM sandboxes (absent: VMs are not set up). */
export interface VmSupport {
  pool: VmPool;
  templates: VmTemplateManager;
  /** the root filesystem kind for new VMs (pmem with DAX by default) */
  root: () => RootKind;
  /** why VMs cannot run here (no guest images, no QEMU), checked per invoke */
  unavailable: () => string | undefined;
}

const RUNTIMES: Record<string, string[]> = {
  python: ['/usr/bin/python3', '-B', '/opt/trenv/runtimes/python/trenv_shim.py'],
  node: ['/usr/bin/node', '/opt/trenv/runtimes/node/trenv-shim.js'],
};

const DEBUG_PORTS: Record<string, number> = { python: 5678, node: 9229 };
const DEBUG_TIMEOUT_MS = 10 * 60_000;

/** The runtime started under its debugger, listening on the sandbox's own loopback. */
function debugArgv(runtime: string, port: number): string[] {
  if (runtime === 'python') {
    return ['/usr/bin/python3', '-B', '-m', 'debugpy', '--listen', `127.0.0.1:${port}`, '--wait-for-client', '/opt/trenv/runtimes/python/trenv_shim.py'];
  }
  return ['/usr/bin/node', `--inspect-brk=127.0.0.1:${port}`, '/opt/trenv/runtimes/node/trenv-shim.js'];
}

/** True when something listens on 127.0.0.1:port in the network namespace of `pid`. */
export function listensInside(pid: number, port: number): boolean {
  try {
    const hex = `:${port.toString(16).toUpperCase().padStart(4, '0')}`;
    return fs
      .readFileSync(`/proc/${pid}/net/tcp`, 'utf8')
      .split('\n')
      .some((l) => {
        const f = l.trim().split(/\s+/);
        return f[1]?.endsWith(hex) && f[3] === '0A';
      });
  } catch {
    return false;
  }
}

const MAX_LOG_BYTES = 8 * 1024 * 1024; // per invocation; beyond it lines are dropped with a note
const MAX_LINE = 64 * 1024;
const MAX_CHAN_LINE = 16 * 1024 * 1024;
const SAMPLE_MS = 100;
const RESULT_GRACE_MS = 500;

export interface InvokerEvents {
  log: (l: LogLine) => void;
  span: (s: TraceSpan) => void;
  memory: (id: string, s: MemorySample) => void;
  invocation: (r: InvocationRecord) => void;
  debugReady: (d: DebugReady) => void;
}

export declare interface Invoker {
  on<E extends keyof InvokerEvents>(event: E, listener: InvokerEvents[E]): this;
  emit<E extends keyof InvokerEvents>(event: E, ...args: Parameters<InvokerEvents[E]>): boolean;
}

/**
 * The agent's code is mounted read-only at /app and read by the unprivileged sandbox user: a folder
 * or handler file that only its owner can read would fail inside with a confusing "not found".
 */
export function checkReadableBySandbox(agent: LoadedAgent): void {
  const check = (p: string, need: number, what: string) => {
    const st = fs.statSync(p);
    if (st.uid === SANDBOX_UID || (st.mode & need) === need) return;
    throw new ManifestError(agent.dir, [
      { path: '/handler', message: `${what} ${p} is not readable by the sandbox user (uid ${SANDBOX_UID}): make it readable, e.g. chmod o+rX`, severity: 'error' },
    ]);
  };
  check(agent.dir, 0o005, 'the agent folder');
  check(path.join(agent.dir, agent.handlerFile), 0o004, 'the handler file');
}

/** `trenv-enter expose`: a listener on the sandbox's own loopback that leads to a host unix socket. */
export function exposeInSandbox(enterPath: string, initPid: number, port: number, socketPath: string): Promise<ChildProcess> {
  return new Promise((resolve, reject) => {
    const child = spawn(enterPath, ['expose', String(initPid), String(port), socketPath], { stdio: ['pipe', 'pipe', 'pipe'] });
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.stdout!.once('data', (d: Buffer) => (/ready/.test(d.toString()) ? resolve(child) : reject(new Error(`trenv-enter expose: ${d.toString()}`))));
    child.once('exit', (code) => reject(new Error(`trenv-enter expose exited (${code}): ${err.trim()}`)));
    child.once('error', reject);
  });
}

/** Splits a byte stream into lines, keeping the partial tail. */
class LineSplitter {
  private tail = '';
  constructor(private readonly max: number) {}
  push(chunk: Buffer): string[] {
    const text = this.tail + chunk.toString('utf8');
    const parts = text.split('\n');
    this.tail = parts.pop() ?? '';
    if (this.tail.length > this.max) {
      parts.push(this.tail);
      this.tail = '';
    }
    return parts;
  }
  end(): string[] {
    const t = this.tail;
    this.tail = '';
    return t ? [t] : [];
  }
}

interface Active {
  record: InvocationRecord;
  sandbox?: ContainerSandbox;
  runId?: string;
  endReason?: 'timeout' | 'killed';
  kill(): void;
}

export class Invoker extends EventEmitter {
  private readonly active = new Map<string, Active>();
  private runSeq = 0;
  /** CLOCK_MONOTONIC -> epoch ms */
  private readonly monoBase = process.hrtime.bigint();
  private readonly epochBase = Date.now();

  constructor(
    private readonly store: RecordStore,
    private readonly pool: SandboxPool,
    private readonly driver: ContainerDriver,
    private readonly templates?: TemplateManager,
    private readonly enterPath = '',
    private readonly vms?: VmSupport,
    private readonly browser?: BrowserSupport,
  ) {
    super();
  }

  private epochOf(ns: bigint): number {
    return this.epochBase + Number(ns - this.monoBase) / 1e6;
  }

  /**
   * Bridges the debugger's port inside the sandbox (no network there) to a host loopback port,
   * once the debugger listens, and announces it (`debugReady`) so the editor can attach.
   */
  private openDebugRelay(id: string, agentDir: string, runtime: string, sb: ContainerSandbox, port: number, warn: (m: string) => void): { kill(): void } {
    let child: ChildProcess | undefined;
    let stopped = false;
    const until = Date.now() + 20_000;
    const poll = setInterval(() => {
      if (stopped) return clearInterval(poll);
      if (!listensInside(sb.initPid, port)) {
        if (Date.now() > until) {
          clearInterval(poll);
          warn(`the debugger did not start listening on port ${port} within 20 s`);
        }
        return;
      }
      clearInterval(poll);
      child = spawn(this.enterPath, ['relay', String(sb.initPid), String(port)], { stdio: ['pipe', 'pipe', 'pipe'] });
      child.stdout!.once('data', (d: Buffer) => {
        const m = /port (\d+)/.exec(d.toString());
        if (m) this.emit('debugReady', { invocationId: id, agentDir, runtime, port: Number(m[1]), remoteRoot: '/app' });
      });
      child.on('error', (e) => warn(`debug relay: ${e.message}`));
    }, 50);
    return {
      kill: () => {
        stopped = true;
        clearInterval(poll);
        child?.stdin?.end();
        child?.kill('SIGKILL');
      },
    };
  }

  runningCount(): number {
    return this.active.size;
  }

  kill(id: string): boolean {
    const a = this.active.get(id);
    if (!a) return false;
    a.endReason = a.endReason ?? 'killed';
    a.kill();
    return true;
  }

  /** Loads the agent (throws for a missing or invalid agent: no record is made for those). */
  prepare(params: InvokeParams): LoadedAgent {
    const agent = loadAgent(params.agentDir);
    checkReadableBySandbox(agent);
    return agent;
  }

  async invoke(params: InvokeParams, agent: LoadedAgent = loadAgent(params.agentDir), onCreated?: (id: string) => void): Promise<InvocationRecord> {
    const m = agent.manifest;
    const isVm = (params.sandbox ?? m.sandbox) === 'vm';
    if (isVm) {
      const why = this.vms ? this.vms.unavailable() : 'this daemon was started without microVM support';
      if (why) throw new Error(`microVM sandboxes are not available: ${why}`);
      if (params.debug) throw new Error('debugging in a microVM is not supported yet: debug the agent in a container (drop --vm / "sandbox": "vm")');
      if (m.network !== 'none') throw new Error('microVMs have no network in this version: run an agent with "network": "egress" in a container');
    }
    if (m.browser && !this.browser) throw new Error('this daemon has no shared browser (chromium is not installed?): run scripts/setup.sh');
    const debugPort = params.debug ? DEBUG_PORTS[m.runtime] : undefined;
    const runtime = debugPort ? debugArgv(m.runtime, debugPort) : RUNTIMES[m.runtime];
    const timeoutMs = debugPort ? Math.max(m.limits.timeoutMs, DEBUG_TIMEOUT_MS) : m.limits.timeoutMs;
    const id = newInvocationId();
    const record: InvocationRecord = {
      id,
      agent: m.name,
      agentDir: agent.dir,
      runtime: m.runtime,
      sandboxKind: isVm ? 'vm' : 'container',
      state: 'queued',
      createdAt: Date.now(),
      event: params.event ?? {},
    };
    this.store.create(record);
    onCreated?.(id);
    this.emit('invocation', record);

    const active: Active = { record, kill: () => undefined };
    this.active.set(id, active);
    let logSeq = 0;
    let logBytes = 0;
    let logTruncated = false;
    const log = (stream: LogLine['stream'], text: string, level?: LogLine['level'], fields?: Record<string, unknown>, t = Date.now()) => {
      if (logTruncated) return;
      logBytes += text.length;
      if (logBytes > MAX_LOG_BYTES) {
        logTruncated = true;
        text = `log limit of ${MAX_LOG_BYTES} bytes reached: further output of this invocation is dropped`;
        stream = 'system';
        level = 'warn';
      }
      const l: LogLine = { invocationId: id, seq: ++logSeq, t, stream, text, ...(level ? { level } : {}), ...(fields ? { fields } : {}) };
      this.store.append(id, 'logs', l);
      this.emit('log', l);
    };

    let sb: ContainerSandbox | undefined;
    let vmA: VmAcquired | undefined;
    const stateOf = (note?: string): SandboxStateSummary => {
      if (vmA) {
        const alive = !vmA.vm.exited && vmA.vm.pid > 0;
        return { processes: alive ? 1 : 0, template: record.template, ...(alive ? { memory: sampleProcesses([vmA.vm.pid]) } : {}), ...(note ? { note } : {}) };
      }
      if (!sb) return { processes: 0, note };
      const pids = sb.workerPids();
      return {
        processes: pids.length,
        appDir: sb.appDir,
        template: record.template,
        memory: sampleProcesses(pids, sb.cgroup.usageBytes()),
        ...(note ? { note } : {}),
      };
    };
    // A span's sandbox state (processes, memory from smaps) takes a millisecond or so to read: it
    // is taken right after the current step, off the invocation's critical path, and the spans
    // keep their order. finish() drains what is still pending.
    const pendingSpans: Array<() => void> = [];
    let drainScheduled = false;
    const drainSpans = () => {
      drainScheduled = false;
      for (let f = pendingSpans.shift(); f; f = pendingSpans.shift()) f();
    };
    const span = (name: string, startNs: bigint, endNs: bigint, attrs?: TraceSpan['attrs'], note?: string) => {
      const s: TraceSpan = {
        invocationId: id,
        name,
        startNs: startNs.toString(),
        endNs: endNs.toString(),
        durationMs: Number(endNs - startNs) / 1e6,
        ...(attrs ? { attrs } : {}),
      };
      pendingSpans.push(() => {
        s.state = stateOf(note);
        this.store.append(id, 'trace', s);
        this.emit('span', s);
        // short handlers end before the first periodic sample: span ends are samples too
        if (s.state?.memory && s.state.memory.processes > 0) {
          this.store.append(id, 'memory', s.state.memory);
          this.emit('memory', id, s.state.memory);
        }
      });
      if (!drainScheduled) {
        drainScheduled = true;
        setImmediate(drainSpans);
      }
    };
    const nativeSpans = (prefix: string, spans: NativeSpan[]) => {
      for (const s of spans) span(`${prefix}.${s.name}`, s.startNs, s.endNs);
    };
    const finish = (state: InvocationState, extra: Partial<InvocationRecord>) => {
      drainSpans();
      if (sb) sb.lastTemplate = record.template; // the Sandboxes view nests sandboxes under their template
      record.state = state;
      record.endedAt = Date.now();
      record.durationMs = record.endedAt - record.createdAt;
      Object.assign(record, extra);
      this.store.update(record);
      this.active.delete(id);
      this.emit('invocation', record);
      return record;
    };

    const spec: SandboxSpec = {
      runtime: m.runtime,
      memoryMb: m.limits.memoryMb,
      pids: m.limits.pids,
      tmpfsMb: m.limits.tmpfsMb,
      network: m.network,
    };

    // ---- the memory template, if the agent has one (rebuilt here when stale)
    let zygoteSocket: string | undefined;
    /** a CRIU template (Node): restored into the sandbox below; record.template is set only once that worked */
    let criuTemplate: { meta: TemplateMeta; imagesDir: string } | undefined;
    if (this.templates && params.template !== false && !debugPort && !isVm) {
      const t0 = process.hrtime.bigint();
      try {
        const t = await this.templates.forInvoke(agent, (msg) => log('system', msg, 'info'));
        if (t) {
          if (t.kind === 'zygote') {
            zygoteSocket = t.zygote.socketPath;
            record.template = t.meta.name;
          } else {
            criuTemplate = { meta: t.meta, imagesDir: t.imagesDir };
          }
          if (t.rebuilt) log('system', `template ${t.meta.name} was rebuilt: ${t.rebuilt}`, 'info');
          span('template.pick', t0, process.hrtime.bigint(), { template: t.meta.name, kind: t.meta.kind, ...(t.rebuilt ? { rebuilt: t.rebuilt } : {}) });
        }
      } catch (e) {
        // a template that cannot be (re)built must not block the function: start it cold
        log('system', `template unavailable (${(e as Error).message}): starting the runtime cold`, 'warn');
        span('template.pick', t0, process.hrtime.bigint(), { result: 'cold-fallback' }, (e as Error).message);
      }
    }

    // ---- get a sandbox
    const tAcq = process.hrtime.bigint();
    if (isVm) {
      try {
        vmA = await this.acquireVm(agent, params, log, span);
        record.sandboxId = vmA.vm.cfg.id;
        record.start = vmA.how;
        if (vmA.template) record.template = vmA.template.meta.name;
        span('sandbox.ready', tAcq, process.hrtime.bigint(), { how: vmA.how, prewarmed: vmA.prewarmed });
      } catch (e) {
        log('system', `could not get a microVM: ${(e as Error).message}`, 'error');
        return finish('failed', { error: { type: 'SandboxError', message: (e as Error).message, phase: 'sandbox' } });
      }
    } else try {
      const acq = await this.pool.acquire(spec, agent.dir, { fresh: params.fresh, prefer: zygoteSocket });
      sb = acq.sandbox;
      active.sandbox = sb;
      record.sandboxId = sb.id;
      record.start = acq.how;
      span('pool.pick', acq.pickNs[0], acq.pickNs[1], { result: acq.how, key: sb.key });
      if (acq.how === 'fresh') nativeSpans('sandbox', acq.spans);
      else nativeSpans('repurpose', acq.spans);
      span('sandbox.ready', tAcq, process.hrtime.bigint(), { how: acq.how });
    } catch (e) {
      log('system', `could not get a sandbox: ${(e as Error).message}`, 'error');
      return finish('failed', { error: { type: 'SandboxError', message: (e as Error).message, phase: 'sandbox' } });
    }

    // ---- run the shim
    record.state = 'running';
    this.store.update(record);
    this.emit('invocation', record);
    const runId = `r${++this.runSeq}`;
    active.runId = runId;
    const deadline = Date.now() + timeoutMs;
    const env = [
      'PATH=/usr/local/bin:/usr/bin:/bin',
      `HOME=${SANDBOX_HOME}`,
      'LANG=C.UTF-8',
      'PYTHONDONTWRITEBYTECODE=1',
      'PYTHONUNBUFFERED=1',
      ...Object.entries({ ...m.env, ...(params.env ?? {}) }).map(([k, v]) => `${k}=${v}`),
      `TRENV_HANDLER=${m.handler}`,
      `TRENV_INVOCATION_ID=${id}`,
      `TRENV_DEADLINE_MS=${deadline}`,
      `TRENV_AGENT=${m.name}`,
    ];
    // ---- the shared browser: the sandbox's own CDP endpoint at 127.0.0.1:9222 on its loopback
    let expose: ChildProcess | undefined;
    if (m.browser && sb) {
      const t0 = process.hrtime.bigint();
      try {
        const sock = await this.browser!.endpoint(sb.id, this.browser!.downloadsDir(sb.id));
        expose = await exposeInSandbox(this.enterPath, sb.initPid, BROWSER_PORT, sock);
        env.push(`TRENV_BROWSER_CDP=http://127.0.0.1:${BROWSER_PORT}`);
        span('browser.endpoint', t0, process.hrtime.bigint(), { port: BROWSER_PORT, how: 'own browser context in the shared Chromium, through the filtering CDP proxy' });
      } catch (e) {
        const message = `could not give the agent its browser: ${(e as Error).message}`;
        log('system', message, 'error');
        expose?.kill('SIGKILL');
        void this.browser!.release(sb.id);
        const rec = finish('failed', { error: { type: 'BrowserError', message, phase: 'sandbox' } });
        void this.pool.release(sb, true).catch(() => undefined);
        return rec;
      }
    }
    // ---- microVMs: the guest's 127.0.0.1:9222 is relayed over a virtio-serial port (vmCdp.ts)
    if (m.browser && vmA) {
      const t0 = process.hrtime.bigint();
      const vmId = vmA.vm.cfg.id;
      try {
        vmA.vm.cdp.setTarget(await this.browser!.endpoint(vmId, this.browser!.downloadsDir(vmId)));
        env.push(`TRENV_BROWSER_CDP=http://127.0.0.1:${BROWSER_PORT}`);
        span('browser.endpoint', t0, process.hrtime.bigint(), { port: BROWSER_PORT, how: 'own browser context in the shared Chromium, through the filtering CDP proxy; guest loopback relayed over virtio-serial' });
      } catch (e) {
        const message = `could not give the agent its browser: ${(e as Error).message}`;
        log('system', message, 'error');
        void this.browser!.release(vmId);
        const rec = finish('failed', { error: { type: 'BrowserError', message, phase: 'sandbox' } });
        void this.vms!.pool.release(vmA.vm).catch(() => undefined);
        return rec;
      }
    }
    const stdin = Buffer.from(JSON.stringify(params.event ?? {}));
    const splitters = { out: new LineSplitter(MAX_LINE), err: new LineSplitter(MAX_LINE), chan: new LineSplitter(MAX_CHAN_LINE) };
    let result: { value: unknown } | undefined;
    let shimError: InvocationError | undefined;
    let tRunSent = 0n;
    let vmKilled = false;
    let vmOom = false;
    let guestMem: GuestMemory | undefined;
    let guestHung = false;
    let tStarted = 0n;
    let tLoaded = 0n;
    let tHandler = 0n;
    let tResult = 0n;
    let relay: { kill(): void } | undefined;
    // A handler that returned but left threads/handles keeping its process alive is ended after a
    // short grace: the result is what counts.
    let graceTimer: NodeJS.Timeout | undefined;
    let endedAfterResult = false;
    // The running instance: a sandboxd run (cold / zygote) or a restored CRIU instance.
    let criuInst: CriuInstance | undefined;
    let criuPending = false; // restore in progress: a kill is applied once it is done
    let criuKilled = false;
    const killRun = () => {
      if (vmA) {
        // the time limit (or a kill) ends the whole VM
        vmKilled = true;
        void vmA.vm.destroy();
      } else if (criuInst) {
        criuKilled = true;
        criuInst.kill();
      } else if (criuPending) criuKilled = true;
      else this.driver.kill(sb!, runId);
    };
    const afterResult = () => {
      graceTimer ??= setTimeout(() => {
        endedAfterResult = true;
        killRun();
      }, RESULT_GRACE_MS);
    };

    const onChan = (line: string, readNs: bigint) => {
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        log('stdout', line, undefined, undefined, this.epochOf(readNs)); // not ours: treat as output
        return;
      }
      let mono = readNs;
      try {
        // a guest's CLOCK_MONOTONIC is not the host's: VM messages are timed when they arrive
        if (typeof msg.mono_ns === 'string' && !vmA) mono = BigInt(msg.mono_ns);
      } catch {
        /* keep read time */
      }
      switch (msg.t) {
        case 'loaded':
          tLoaded = mono;
          {
            // the instance's own clock (chan) can be ahead of sandboxd's `started` timestamp
            const from = tStarted || tRunSent;
            span(zygoteSocket ? 'agent.load' : 'runtime.load', from < mono ? from : mono, mono, { runtime: m.runtime });
          }
          break;
        case 'start':
          tHandler = mono;
          span('handler.start', tLoaded || tStarted, mono);
          break;
        case 'log': {
          const lvl = ['debug', 'info', 'warn', 'error'].includes(msg.level as string) ? (msg.level as LogLine['level']) : 'info';
          log('log', String(msg.msg ?? ''), lvl, (msg.fields as Record<string, unknown>) ?? undefined, this.epochOf(mono));
          break;
        }
        case 'result':
          tResult = mono;
          result = { value: msg.value };
          afterResult();
          break;
        case 'error': {
          tResult = mono;
          const e = (msg.error ?? {}) as Record<string, unknown>;
          shimError = {
            type: String(e.type ?? 'Error'),
            message: String(e.message ?? ''),
            stack: typeof e.stack === 'string' ? e.stack : undefined,
            phase: typeof msg.phase === 'string' ? msg.phase : 'handler',
          };
          log('system', `${shimError.type}: ${shimError.message}`, 'error');
          afterResult();
          break;
        }
        default:
          break;
      }
    };

    const exit = await new Promise<{ status: string; ns: bigint } | { error: string }>((resolve) => {
      const timer = setTimeout(() => {
        active.endReason = 'timeout';
        if (vmA) {
          // a VM: tell a busy handler from a guest that stopped answering (hung kernel, stopped VM)
          const vm = vmA.vm;
          void vm.chan.request('ping', {}, 1000).then(
            () => log('system', `time limit of ${timeoutMs} ms reached: destroying the microVM`, 'error'),
            () => {
              guestHung = true;
              log('system', `time limit of ${timeoutMs} ms reached and the guest does not answer (hung): destroying the microVM`, 'error');
            },
          ).finally(killRun);
          return;
        }
        log('system', `time limit of ${timeoutMs} ms reached: killing the handler`, 'error');
        killRun();
      }, timeoutMs);
      const sampler = setInterval(() => {
        const pids = vmA ? (vmA.vm.exited ? [] : [vmA.vm.pid]) : sb!.workerPids();
        if (!pids.length) return;
        const s = sampleProcesses(pids, vmA ? undefined : sb!.cgroup.usageBytes());
        if (vmA) {
          // the guest's own numbers come from its agent, one sample late (no waiting on the guest here)
          if (guestMem) s.guest = guestMem;
          void vmA.vm.chan.request('mem', {}, 2000).then((g) => (guestMem = guestMemory(g)), () => undefined);
        }
        this.store.append(id, 'memory', s);
        this.emit('memory', id, s);
      }, SAMPLE_MS);
      active.kill = killRun;
      const done = (v: { status: string; ns: bigint } | { error: string }) => {
        relay?.kill();
        clearTimeout(timer);
        clearTimeout(graceTimer);
        clearInterval(sampler);
        resolve(v);
      };
      tRunSent = process.hrtime.bigint();
      try {
        const handlers: RunHandlers = {
            onStarted: (_pid, ns, steps) => {
              tStarted = ns;
              if (zygoteSocket) {
                const prepared = !!steps?.some((x) => x.name === 'prepared');
                span('template.attach', tRunSent, ns, {
                  how: prepared ? 'a waiter forked from the zygote had joined this sandbox during its cleanup: fork the instance, drop privileges' : 'fork from the zygote, join the sandbox (cgroups, namespaces, root), drop privileges',
                  template: record.template ?? '',
                  prepared,
                  memPath: 'userspace', // a fork of the zygote: its pages are shared by fork's copy-on-write
                });
                nativeSpans('template', steps ?? []);
              }
              else span('process.start', tRunSent, ns, { argv0: runtime[0] });
              if (debugPort) {
                log('system', `waiting for a debugger: ${m.runtime === 'python' ? 'debugpy' : 'the Node inspector'} listens on port ${debugPort} inside the sandbox`, 'info');
                relay = this.openDebugRelay(id, agent.dir, m.runtime, sb!, debugPort, (msg) => log('system', msg, 'warn'));
              }
            },
            onData: (stream, ns, data) => {
              const t = this.epochOf(ns);
              for (const line of splitters[stream].push(data)) {
                if (stream === 'chan') onChan(line, ns);
                else log(stream === 'out' ? 'stdout' : 'stderr', line, undefined, undefined, t);
              }
            },
            onExit: (status, ns) => {
              for (const s of ['out', 'err', 'chan'] as const) {
                for (const line of splitters[s].end()) {
                  if (s === 'chan') onChan(line, ns);
                  else log(s === 'out' ? 'stdout' : 'stderr', line);
                }
              }
              done({ status, ns });
            },
            onError: (message) => done({ error: message }),
        };
        const opts = { env, cwd: '/app', uid: SANDBOX_UID, gid: SANDBOX_GID, stdin };
        const envObj = Object.fromEntries(env.map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
        if (vmA) {
          this.runInVm(vmA, agent, params.event ?? {}, envObj, handlers, {
            killed: () => vmKilled,
            oom: () => (vmOom = true),
            guest: (g) => {
              // the last sample: the guest as the handler left it (page cache, runtime RSS)
              const s = { ...sampleProcesses([vmA!.vm.pid]), guest: g };
              this.store.append(id, 'memory', s);
              this.emit('memory', id, s);
            },
            sent: () => (tRunSent = process.hrtime.bigint()),
            identity: (t0, t1, attrs) => {
              span('guest.identity', t0, t1, attrs);
              tStarted = t1;
            },
            done,
          });
          return;
        }
        const startCold = () => {
          if (zygoteSocket) this.driver.spawn(sb!, runId, zygoteSocket, opts, handlers);
          else this.driver.run(sb!, runId, { argv: runtime, ...opts }, handlers);
        };
        if (!criuTemplate) startCold();
        else {
          // CRIU template: restore the initialised shim INTO this sandbox, hand it the event in an
          // envelope (re-seed + this invocation's env), stream its output through the same handlers.
          const tpl = criuTemplate;
          const tmplName = tpl.meta.name;
          criuPending = true;
          void (async () => {
            const c = sb!.cgroup.counters();
            sb!.baseline = { oomKills: c.oomKills, pidsMaxEvents: c.pidsMaxEvents };
            const t0 = process.hrtime.bigint();
            let inst: CriuInstance;
            try {
              inst = await restoreInto(tpl.imagesDir, { initPid: sb!.initPid, cgroupProcs: sb!.cgroup.procsFiles }, { timeoutMs: Math.min(30_000, Math.max(5_000, timeoutMs)), prefix: this.templates?.ksm?.prefix });
            } catch (e) {
              criuPending = false;
              const msg = (e as Error).message;
              const first = msg.split('\n')[0].slice(0, 500);
              span('template.restore', t0, process.hrtime.bigint(), { template: tmplName, result: 'failed', error: first }, msg.slice(0, 4000));
              if (criuKilled) return done({ status: 'signaled:9', ns: process.hrtime.bigint() });
              this.templates?.restoreFailed(tpl.meta, msg);
              log('system', `restoring template ${tmplName} failed (${first}): starting the runtime cold`, 'warn');
              tRunSent = process.hrtime.bigint();
              try {
                startCold();
              } catch (err) {
                done({ error: (err as Error).message });
              }
              return;
            }
            criuPending = false;
            criuInst = inst;
            const tRestored = process.hrtime.bigint();
            record.template = tmplName;
            this.templates?.restoreOk(tmplName);
            const mmt = tpl.meta.criu?.mmTemplate;
            span('template.restore', t0, tRestored, {
              template: tmplName,
              how: 'CRIU restore into this sandbox (its namespaces, root and cgroups)',
              memPath: mmt ? 'kernel-module' : 'userspace',
              pid: inst.hostPid,
              restoreMs: Number(inst.restoreMs.toFixed(2)),
              memory: mmt
                ? `mapped from mm_template template ${mmt.id} (${(mmt.bytes / 1048576).toFixed(1)} MiB shared, copy-on-write)`
                : this.templates?.ksm
                  ? 'private copy, marked mergeable for KSM (TRENV_KSM=1)'
                  : 'private copy',
            });
            for (const st of inst.steps) span(`template.restore.${st.name}`, st.startNs, st.endNs);
            tStarted = tRestored;
            if (criuKilled) inst.kill(); // time limit or kill request while restoring
            else {
              try {
                await inst.invoke(params.event ?? {}, { env: envObj, timeoutMs: timeoutMs + 10_000, onChunk: (stream, data, ns) => handlers.onData(stream, ns, data) });
              } catch {
                /* ended without a result (killed, crashed, OOM): classified below */
              }
            }
            // EOF on its streams: the process is exiting (init reaps it); the sandbox reset kills anything left
            const gone = () => {
              try {
                return nsPidOf(inst.hostPid) !== inst.nsPid;
              } catch {
                return true;
              }
            };
            for (let i = 0; i < 100 && !gone(); i++) await new Promise((r) => setTimeout(r, 10));
            // A restored process is init's child, not ours: its exit status is not observable.
            const oomNow = sb!.cgroup.counters().oomKills > sb!.baseline.oomKills;
            const status = criuKilled || oomNow ? 'signaled:9' : result ? 'exited:0' : 'exited:unknown';
            handlers.onExit(status, process.hrtime.bigint());
          })().catch((e: Error) => done({ error: e.message }));
        }
      } catch (e) {
        done({ error: (e as Error).message });
      }
    });

    const tEnd = 'ns' in exit ? exit.ns : process.hrtime.bigint();
    if (tHandler) span('handler.run', tHandler, tResult || tEnd);

    // ---- classify the end
    let state: InvocationState;
    let error: InvocationError | undefined;
    const counters = sb?.cgroup.counters();
    const oom = sb && counters ? counters.oomKills > sb.baseline.oomKills : vmOom;
    const pidsHit = sb && counters ? counters.pidsMaxEvents > sb.baseline.pidsMaxEvents : false;
    const exitStatus = 'status' in exit ? exit.status : undefined;
    // a "fresh" invocation (the benchmark's baseline) never hands its sandbox on
    let reuse = !params.fresh;
    if ('error' in exit) {
      state = 'failed';
      error = { type: 'SandboxError', message: exit.error, phase: 'sandbox' };
      reuse = false;
    } else if (active.endReason === 'timeout') {
      state = 'timeout';
      error = guestHung
        ? { type: 'Timeout', message: `the microVM's guest stopped answering (hung) and was destroyed at the time limit of ${timeoutMs} ms`, phase: 'limit' }
        : { type: 'Timeout', message: `the handler ran longer than its limit of ${timeoutMs} ms and was killed`, phase: 'limit' };
    } else if (active.endReason === 'killed') {
      state = 'killed';
      error = { type: 'Killed', message: 'the invocation was killed on request', phase: 'limit' };
    } else if (oom) {
      state = 'oom';
      error = {
        type: 'OutOfMemory',
        message: vmA
          ? `the handler ran the microVM (${vmA.vm.cfg.memoryMb} MiB of RAM) out of memory and the guest kernel killed it (raise limits.memoryMb if this is expected)`
          : `the handler exceeded its memory limit of ${m.limits.memoryMb} MiB and was killed by the kernel (raise limits.memoryMb if this is expected)`,
        phase: 'limit',
      };
    } else if (result && (exitStatus === 'exited:0' || endedAfterResult)) {
      state = 'succeeded';
    } else {
      state = 'failed';
      error =
        shimError ??
        (exitStatus?.startsWith('signaled:')
          ? { type: 'Crashed', message: `the handler process was killed by signal ${exitStatus.slice(9)}`, phase: 'handler' }
          : { type: 'Crashed', message: `the handler process exited (${exitStatus}) without a result`, phase: 'handler' });
      if (pidsHit) error.message += ` (the process limit of ${m.limits.pids} was reached: a fork bomb or too many threads?)`;
    }
    if (pidsHit && state !== 'failed') log('system', `the process limit of ${m.limits.pids} was reached`, 'warn');
    if (exitStatus) log('system', `process ended: ${exitStatus}; invocation ${state}`, state === 'succeeded' ? 'info' : 'error');

    // Record the end before releasing: the sandbox cleanup is off the caller's critical path.
    const final = finish(state, { exit: exitStatus, ...(result ? { result: result.value } : {}), ...(error ? { error } : {}) });
    if (vmA) {
      // a VM serves one invocation: destroyed, never handed on (the pool restores fresh clones)
      const t0 = process.hrtime.bigint();
      const vm = vmA.vm;
      vm.cdp?.setTarget(undefined);
      void this.vms!.pool.release(vm).then(() => span('cleanup.vm.destroy', t0, process.hrtime.bigint(), { pid: vm.pid }));
      if (m.browser) {
        const t1 = process.hrtime.bigint();
        void this.browser!.release(vm.cfg.id).then(() => span('cleanup.browser', t1, process.hrtime.bigint()));
      }
      return final;
    }
    if (expose) {
      // the agent's browser context (and its pages) goes with the invocation
      expose.stdin?.end();
      expose.kill('SIGKILL');
      const t0 = process.hrtime.bigint();
      void this.browser!.release(sb!.id).then(() => span('cleanup.browser', t0, process.hrtime.bigint()));
    }
    // Cleanup spans are added to the trace afterwards, so the whole life of the sandbox is visible.
    void this.pool
      .release(sb!, reuse)
      .then((spans) => nativeSpans('cleanup', spans))
      .catch(() => undefined);
    return final;
  }

  /**
   * A microVM for the invocation: a clone of the agent's VM template (built or rebuilt here when
   * missing or stale; from the warm pool when one is ready), or a cold boot when templates are off
   * or the template cannot be had. The VM's own steps (spawn, load state, resume, guest ready, or
   * boot) become spans; a pool clone's steps carry `prewarmed` (they ran before this invocation).
   */
  private async acquireVm(
    agent: LoadedAgent,
    params: InvokeParams,
    log: (stream: LogLine['stream'], text: string, level?: LogLine['level']) => void,
    span: (name: string, startNs: bigint, endNs: bigint, attrs?: TraceSpan['attrs'], note?: string) => void,
  ): Promise<VmAcquired> {
    const vms = this.vms!;
    const root = params.vmRoot ?? vms.root();
    let acq: VmAcquired | undefined;
    if (params.template !== false) {
      const t0 = process.hrtime.bigint();
      try {
        const t = await vms.templates.forInvoke(agent, root, (msg) => log('system', msg, 'info'));
        if (t.rebuilt) log('system', `VM template ${t.meta.name} was built: ${t.rebuilt}`, 'info');
        span('template.pick', t0, process.hrtime.bigint(), { template: t.meta.name, kind: 'vm', root, ...(t.rebuilt ? { rebuilt: t.rebuilt } : {}) });
        acq = await vms.pool.acquire(t);
      } catch (e) {
        log('system', `VM template unavailable (${(e as Error).message}): booting a VM cold`, 'warn');
        span('template.pick', t0, process.hrtime.bigint(), { result: 'cold-fallback' }, (e as Error).message);
      }
    }
    acq ??= { vm: await vms.pool.boot(agent, root), how: 'vm-boot', prewarmed: false };
    for (const s of acq.vm.spans) span(s.name, s.startNs, s.endNs, { ...(s.attrs ?? {}), ...(acq.prewarmed ? { prewarmed: true } : {}) });
    return acq;
  }

  /**
   * Runs the handler in the VM through the guest agent: a clone gets its identity fixed (clock,
   * kernel RNG, hostname) and the event in an envelope (re-seed + this invocation's env) for the
   * shim that was waiting in the template; a cold VM starts the shim and gets the bare event.
   * Output and the exit arrive as guest messages and go through the same handlers as containers.
   */
  private runInVm(
    acq: VmAcquired,
    agent: LoadedAgent,
    event: unknown,
    env: Record<string, string>,
    h: RunHandlers,
    cb: {
      killed: () => boolean;
      oom: () => void;
      guest: (g: GuestMemory) => void;
      sent: () => void;
      identity: (t0: bigint, t1: bigint, attrs: TraceSpan['attrs']) => void;
      done: (v: { status: string; ns: bigint } | { error: string }) => void;
    },
  ): void {
    const vm = acq.vm;
    let ended = false;
    const end = (status: string, ns: bigint) => {
      if (ended) return;
      ended = true;
      h.onExit(status, ns);
    };
    vm.chan.on('msg', (msg: GuestMsg, ns: bigint) => {
      if (msg.t === 'data' && msg.b64) h.onData(msg.fd === 'out' ? 'out' : msg.fd === 'err' ? 'err' : 'chan', ns, Buffer.from(msg.b64, 'base64'));
      else if (msg.t === 'started') h.onStarted(Number(msg.pid), ns);
      else if (msg.t === 'exit') {
        if (msg.oom) cb.oom();
        void vm.chan
          .request('mem', {}, 2000)
          .then((g) => cb.guest(guestMemory(g)), () => undefined)
          .finally(() => end(String(msg.status), ns));
      }
    });
    vm.once('exit', () => {
      if (ended) return;
      if (cb.killed()) end('signaled:9', process.hrtime.bigint());
      else {
        ended = true;
        cb.done({ error: vm.trouble() });
      }
    });
    void (async () => {
      if (acq.how === 'vm-clone') {
        const t0 = process.hrtime.bigint();
        const hostname = vm.cfg.id;
        await vm.chan.request('clock', { epoch_ns: (BigInt(Date.now()) * 1_000_000n).toString() });
        await vm.chan.request('seed', { hex: crypto.randomBytes(64).toString('hex') });
        await vm.chan.request('hostname', { name: hostname });
        cb.identity(t0, process.hrtime.bigint(), {
          clock: 'wall clock set from the host',
          rng: 'kernel CRNG reseeded with 64 host bytes (RNDADDENTROPY + RNDRESEEDCRNG); runtime RNGs re-seeded by the shim',
          hostname,
        });
        const envelope = { trenv: { seed: crypto.randomBytes(32).toString('hex'), env }, event };
        await vm.chan.request('stdin', { b64: Buffer.from(JSON.stringify(envelope)).toString('base64'), close: true });
      } else {
        cb.sent();
        await vm.chan.request('start', this.vms!.pool.startArgs(agent, env));
        await vm.chan.request('stdin', { b64: Buffer.from(JSON.stringify(event)).toString('base64'), close: true });
      }
    })().catch((e: Error) => {
      if (!ended && !vm.exited) {
        ended = true;
        cb.done({ error: e.message });
      }
    });
  }

  /** Kills every running invocation (daemon shutdown): each still ends in a recorded state. */
  async killAll(): Promise<void> {
    for (const id of [...this.active.keys()]) this.kill(id);
  }

  summaries() {
    return [...this.active.values()].map((a) => summarize(a.record));
  }
}
