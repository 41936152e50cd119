/**
 * The daemon protocol: every custom JSON-RPC method and notification, defined once.
 * Imported by the daemon, the CLI, the extension and (types only) the webviews.
 * Methods are namespaced `trenv/...`. Streams (logs, spans, memory) are notifications.
 */
import { NotificationType, RequestType, RequestType0 } from 'vscode-jsonrpc';

export const PROTOCOL_VERSION = 1;

// ---------------------------------------------------------------- records

export type InvocationState =
  | 'queued'
  | 'running'
  | 'succeeded'
  | 'failed'
  | 'timeout'
  | 'oom'
  | 'killed'
  | 'daemon-lost';

export const FINAL_STATES: readonly InvocationState[] = ['succeeded', 'failed', 'timeout', 'oom', 'killed', 'daemon-lost'];

export type SandboxKind = 'container' | 'vm';

export interface InvocationError {
  type: string;
  message: string;
  stack?: string;
  /** where it failed: load (module import), handler, result (not JSON), sandbox, limit */
  phase?: string;
}

export interface InvocationSummary {
  id: string;
  agent: string;
  agentDir: string;
  runtime: string;
  sandboxKind: SandboxKind;
  sandboxId?: string;
  /** how the sandbox was obtained (microVMs: booted cold, or a clone restored from a VM template) */
  start?: 'fresh' | 'repurposed' | 'vm-boot' | 'vm-clone';
  /** the memory template the instance started from (absent: a cold runtime start) */
  template?: string;
  state: InvocationState;
  createdAt: number; // epoch ms
  endedAt?: number;
  durationMs?: number;
  exit?: string;
  error?: InvocationError;
}

export interface InvocationRecord extends InvocationSummary {
  event: unknown;
  result?: unknown;
}

/** Memory and state of a sandbox at the end of a span, so a restore can be replayed step by step. */
export interface SandboxStateSummary {
  processes: number;
  appDir?: string;
  template?: string;
  memory?: MemorySample;
  note?: string;
}

export interface TraceSpan {
  invocationId: string;
  name: string;
  /** CLOCK_MONOTONIC ns as decimal strings (bigint-safe) */
  startNs: string;
  endNs: string;
  durationMs: number;
  attrs?: Record<string, string | number | boolean>;
  state?: SandboxStateSummary;
}

export interface MemorySample {
  t: number; // epoch ms
  /** kB, summed over the sandbox's processes (from /proc/<pid>/smaps_rollup) */
  rssKb: number;
  pssKb: number;
  sharedKb: number;
  privateKb: number;
  /** bytes charged to the sandbox's memory cgroup */
  cgroupBytes?: number;
  processes: number;
  /** microVMs: the guest's own view (kB, /proc/meminfo in the guest); cachedKb is its page cache incl. tmpfs */
  guest?: GuestMemory;
}

export interface GuestMemory {
  totalKb: number;
  availableKb: number;
  cachedKb: number;
  anonKb: number;
  /** the runtime process's RSS in the guest */
  runtimeRssKb?: number;
}

export type LogStream = 'stdout' | 'stderr' | 'log' | 'system';

export interface LogLine {
  invocationId: string;
  seq: number;
  t: number; // epoch ms
  stream: LogStream;
  level?: 'debug' | 'info' | 'warn' | 'error';
  text: string;
  fields?: Record<string, unknown>;
}

// ---------------------------------------------------------------- requests

export interface InvokeParams {
  agentDir: string;
  event?: unknown;
  /** extra env (overrides the manifest's) */
  env?: Record<string, string>;
  sandbox?: SandboxKind;
  /** microVMs: the root filesystem on virtio-pmem with DAX (default: no guest page cache of it) or a plain virtio-blk disk */
  vmRoot?: 'pmem' | 'blk';
  /** stream this invocation's logs/spans/memory to the caller as notifications */
  stream?: boolean;
  /** force a fresh sandbox (no repurposing) - used by the benchmark's baseline */
  fresh?: boolean;
  /** false: start the runtime cold even when the agent has a template */
  template?: boolean;
  /** start the handler under its debugger (debugpy / the Node inspector) and announce debugReady */
  debug?: boolean;
}

/** A debuggee waits for the editor: attach to 127.0.0.1:port (DAP for python, CDP for node). */
export interface DebugReady {
  invocationId: string;
  agentDir: string;
  runtime: string;
  port: number;
  /** where the agent's code is inside the sandbox, for path mapping */
  remoteRoot: string;
}

export interface TemplateInfo {
  name: string;
  agentDir: string;
  runtime: string;
  kind: string;
  builtAt: number;
  buildMs: number;
  agentHash: string;
  runtimeVersion: string;
  preload: string[];
  live: boolean;
  pid?: number;
  memory?: MemorySample;
}

export interface InvocationDetail {
  record: InvocationRecord;
  logs: LogLine[];
  trace: TraceSpan[];
  memory: MemorySample[];
}

export interface SandboxInfo {
  id: string;
  kind: SandboxKind;
  poolKey: string;
  state: 'creating' | 'idle' | 'busy' | 'cleaning' | 'destroyed';
  agent?: string;
  invocationId?: string;
  /** the memory template of the last instance that ran in this sandbox */
  template?: string;
  hostPid?: number;
  uses: number;
  createdAt: number;
  memory?: MemorySample;
}

export interface DaemonStatus {
  version: string;
  protocol: number;
  pid: number;
  stateDir: string;
  port: number;
  startedAt: number;
  cgroup: string;
  sandboxes: { idle: number; busy: number; total: number };
  invocations: { running: number; total: number };
}

export interface StatsResult {
  sandboxes: SandboxInfo[];
  templates: TemplateInfo[];
  total: MemorySample;
  daemonRssKb: number;
  /** the shared browser: whether it runs, its memory (PSS of all its processes), agent contexts */
  browser?: { running: boolean; pid?: number; pssKb: number; endpoints: number; contexts: number; connections: number; downloadsRoot: string };
}

export interface Diagnostic {
  path: string; // JSON pointer-ish: "/limits/memoryMb"
  message: string;
  severity: 'error' | 'warning';
}

export type Topic = 'logs' | 'trace' | 'memory' | 'invocations' | 'sandboxes';

export interface SubscribeParams {
  topics: Topic[];
  /** only this invocation; omitted = all */
  invocationId?: string;
}

export interface PoolConfig {
  maxIdle: number;
  idleTtlMs: number;
  prewarm: Array<{ runtime: string; count: number }>;
}

export const Methods = {
  status: new RequestType0<DaemonStatus, void>('trenv/status'),
  invoke: new RequestType<InvokeParams, InvocationRecord, void>('trenv/invoke'),
  kill: new RequestType<{ id: string }, { killed: boolean }, void>('trenv/kill'),
  listInvocations: new RequestType<{ limit?: number }, InvocationSummary[], void>('trenv/listInvocations'),
  getInvocation: new RequestType<{ id: string }, InvocationDetail, void>('trenv/getInvocation'),
  listSandboxes: new RequestType0<SandboxInfo[], void>('trenv/listSandboxes'),
  stats: new RequestType0<StatsResult, void>('trenv/stats'),
  validateManifest: new RequestType<{ agentDir: string }, Diagnostic[], void>('trenv/validateManifest'),
  subscribe: new RequestType<SubscribeParams, { ok: true }, void>('trenv/subscribe'),
  unsubscribe: new RequestType<SubscribeParams, { ok: true }, void>('trenv/unsubscribe'),
  configurePool: new RequestType<Partial<PoolConfig>, PoolConfig, void>('trenv/configurePool'),
  shutdown: new RequestType0<{ ok: true }, void>('trenv/shutdown'),
  buildTemplate: new RequestType<{ agentDir: string; vm?: boolean }, TemplateInfo, void>('trenv/buildTemplate'),
  listTemplates: new RequestType0<TemplateInfo[], void>('trenv/listTemplates'),
  deleteTemplate: new RequestType<{ name: string }, { deleted: boolean }, void>('trenv/deleteTemplate'),
  /** start a live, read-only view of a running invocation's browser page: frames come as browserFrame */
  browserView: new RequestType<{ invocationId: string }, { ok: true }, void>('trenv/browserView'),
  browserViewStop: new RequestType<{ invocationId: string }, { stopped: boolean }, void>('trenv/browserViewStop'),
} as const;

export const Notifications = {
  log: new NotificationType<LogLine>('trenv/log'),
  span: new NotificationType<TraceSpan>('trenv/span'),
  memory: new NotificationType<{ invocationId: string; sample: MemorySample }>('trenv/memory'),
  invocation: new NotificationType<InvocationSummary>('trenv/invocation'),
  sandboxes: new NotificationType<SandboxInfo[]>('trenv/sandboxes'),
  debugReady: new NotificationType<DebugReady>('trenv/debugReady'),
  /** progress of long work (template builds), for the caller that asked for it */
  progress: new NotificationType<{ what: string; message: string }>('trenv/progress'),
  /** a screencast frame of an invocation's page (base64 JPEG), or its end (`ended` set, no data) */
  browserFrame: new NotificationType<BrowserFrame>('trenv/browserFrame'),
} as const;

export interface BrowserFrame {
  invocationId: string;
  data?: string;
  url?: string;
  title?: string;
  width?: number;
  height?: number;
  ended?: string;
}

/** JSON-RPC error codes we use besides the standard ones. */
export const ErrorCodes = {
  ParseError: -32700,
  InvalidRequest: -32600,
  MethodNotFound: -32601,
  InvalidParams: -32602,
  InternalError: -32603,
  MessageTooLarge: -32001,
  ManifestInvalid: -32010,
  AgentNotFound: -32011,
  NotFound: -32012,
  SandboxFailed: -32020,
  TemplateFailed: -32030,
} as const;

/** Largest JSON-RPC message the daemon accepts (bytes). */
export const MAX_MESSAGE_BYTES = 8 * 1024 * 1024;

/** Discovery file written by the daemon in its state dir. */
export interface DaemonInfoFile {
  pid: number;
  port: number;
  host: '127.0.0.1';
  tokenFile: string;
  startedAt: number;
  version: string;
}
