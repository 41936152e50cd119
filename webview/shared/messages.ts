/**
 * The messages between the extension and its webviews, defined once and imported by both sides
 * (extension/webviews/panels.ts and webview/<view>/main.ts). Types only: no DOM, no `vscode`.
 *
 * Each view has its own pair of unions (`ToWebview<V>` / `FromWebview<V>`), discriminated by `type`.
 * The host side posts with `WebviewPanelHost<V>.post()`, the webview side with `connect(view).post()`
 * (webview/shared/api.ts): a message a view does not understand does not type-check.
 *
 * Lifecycle: a webview posts `ready` every time its document loads (first show, and every reload:
 * panels do not retain their context when hidden). The host answers `ready` with `init`, which
 * carries everything up to now; live messages (`log`, `span`, `memory` ...) follow. Live messages
 * posted before `ready` are dropped by the host: the next `init` includes them.
 */
import type {
  InvocationDetail,
  InvocationSummary,
  LogLine,
  LogStream,
  MemorySample,
  TraceSpan,
} from '../../runtime-daemon/protocol/messages';

export type { InvocationDetail, InvocationSummary, LogLine, LogStream, MemorySample, TraceSpan };

export type ViewName = 'logs' | 'memory' | 'trace' | 'browser';
export const VIEW_NAMES: readonly ViewName[] = ['logs', 'memory', 'trace', 'browser'];

export type LogLevel = NonNullable<LogLine['level']>;
export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];
export const LOG_STREAMS: readonly LogStream[] = ['stdout', 'stderr', 'log', 'system'];

// ---------------------------------------------------------------- payloads

/** One memory sample of one sandbox instance (a pooled sandbox, or a template's zygote). */
export interface MemoryEvent {
  instanceId: string;
  /** shown in the legend and the chart title, e.g. "py-text-stats · sb3cf4819" */
  label: string;
  sample: MemorySample;
}

/** What the user would otherwise run, drawn beside the live numbers ("cold start", "CRIU copy"). */
export interface MemoryBaseline {
  label: string;
  sample: MemorySample;
}

export interface MemorySnapshot {
  instances: Array<{ instanceId: string; label: string; samples: MemorySample[] }>;
  baselines: MemoryBaseline[];
}

/**
 * How a TraceSpan's CLOCK_MONOTONIC time maps to LogLine.t (epoch ms):
 *   epochMs = Number(ns) / 1e6 + offsetMs
 * 'span-memory': offsetMs = min over spans with state.memory of (state.memory.t - endNs/1e6); the
 *   daemon takes that sample (Date.now()) right after the span ends, so the smallest difference is
 *   the closest to the true offset (error: the 1 ms resolution of t, and at most the sampling time).
 * 'created-at': no span has a memory sample; offsetMs = record.createdAt - (first startNs)/1e6
 *   (the invocation is created just before its first span starts: error of a few ms).
 */
export interface ClockMapping {
  source: 'span-memory' | 'created-at';
  offsetMs: number;
}

export interface LogFilter {
  levels: LogLevel[];
  streams: LogStream[];
  search: string;
}

// ---------------------------------------------------------------- extension -> webview

export type LogsToWebview =
  /** show this invocation (a past one, or the running one; live `log` messages follow) */
  | { type: 'init'; detail: InvocationDetail }
  | { type: 'log'; line: LogLine }
  | { type: 'state'; invocation: InvocationSummary }
  /** scroll to the first line with seq >= `seq` (asked by the trace view) */
  | { type: 'reveal'; invocationId: string; seq: number };

export type TraceToWebview =
  | { type: 'init'; detail: InvocationDetail }
  | { type: 'span'; span: TraceSpan }
  | { type: 'state'; invocation: InvocationSummary };

export type MemoryToWebview =
  | { type: 'init'; snapshot: MemorySnapshot }
  | ({ type: 'memory' } & MemoryEvent)
  | ({ type: 'baseline' } & MemoryBaseline);

/** One screencast frame of an agent's page (base64 JPEG), read-only. */
export interface BrowserFrameView {
  data: string;
  url: string;
  title: string;
  width: number;
  height: number;
}

export type BrowserToWebview =
  | { type: 'init'; invocationId: string; agent: string; frame?: BrowserFrameView; ended?: string }
  | ({ type: 'frame' } & BrowserFrameView)
  | { type: 'ended'; reason: string };

// ---------------------------------------------------------------- webview -> extension

type Ready = { type: 'ready' };

export type LogsFromWebview = Ready | { type: 'filter'; invocationId?: string; filter: LogFilter };

export type TraceFromWebview =
  | Ready
  /** the user moved to step `index` (in the view's step order: spans sorted by start) */
  | { type: 'step'; invocationId: string; index: number; name: string }
  /**
   * "show logs at this step": seq is the first log line at/after the step's end (absent: no line
   * yet); atEpochMs is the step's end on the log clock, with the mapping used to get it.
   */
  | { type: 'openLogs'; invocationId: string; seq?: number; atEpochMs?: number; mapping?: ClockMapping };

export type MemoryFromWebview = Ready;

export type BrowserFromWebview = Ready;

// ---------------------------------------------------------------- per view

export interface ViewProtocol {
  logs: { toWebview: LogsToWebview; fromWebview: LogsFromWebview };
  memory: { toWebview: MemoryToWebview; fromWebview: MemoryFromWebview };
  trace: { toWebview: TraceToWebview; fromWebview: TraceFromWebview };
  browser: { toWebview: BrowserToWebview; fromWebview: BrowserFromWebview };
}
export type ToWebview<V extends ViewName> = ViewProtocol[V]['toWebview'];
export type FromWebview<V extends ViewName> = ViewProtocol[V]['fromWebview'];

/** A posted value looks like a message of ours (the host and the webview check before dispatching). */
export function isMessage(v: unknown): v is { type: string } {
  return typeof v === 'object' && v !== null && typeof (v as { type?: unknown }).type === 'string';
}
