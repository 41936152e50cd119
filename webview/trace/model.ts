/**
 * The restore trace as steps: spans sorted by start (a parent before its children, as in a
 * waterfall), each with its nesting depth, its offset from the first span, and the state it is
 * compared with. No DOM: the logic the trace view's numbers come from.
 */
import type { MemorySample, TraceSpan } from '../shared/messages';

export interface Step {
  span: TraceSpan;
  key: string;
  start: bigint;
  end: bigint;
  /** number of spans that contain this one */
  depth: number;
  /** ms from the first span's start */
  offsetMs: number;
  /**
   * The memory state just before this step's state: the span with a memory sample that ended last
   * before this one ended. Spans record the sandbox state at their end, so comparing in end order
   * is what "what did this step change" means, also for a parent span (compared with its last child).
   */
  prev?: Step;
}

export const spanKey = (s: TraceSpan): string => `${s.name}@${s.startNs}`;

export function buildSteps(spans: readonly TraceSpan[]): Step[] {
  const steps: Step[] = spans.map((span) => ({ span, key: spanKey(span), start: BigInt(span.startNs), end: BigInt(span.endNs), depth: 0, offsetMs: 0 }));
  steps.sort((a, b) => (a.start !== b.start ? (a.start < b.start ? -1 : 1) : a.end !== b.end ? (a.end > b.end ? -1 : 1) : 0));
  const t0 = steps[0]?.start ?? 0n;
  const stack: Step[] = [];
  for (const s of steps) {
    while (stack.length && !(stack[stack.length - 1]!.start <= s.start && s.end <= stack[stack.length - 1]!.end)) stack.pop();
    s.depth = stack.length;
    s.offsetMs = Number(s.start - t0) / 1e6;
    stack.push(s);
  }
  const byEnd = [...steps].sort((a, b) => (a.end < b.end ? -1 : a.end > b.end ? 1 : steps.indexOf(a) - steps.indexOf(b)));
  let last: Step | undefined;
  for (const s of byEnd) {
    s.prev = last;
    if (s.span.state?.memory) last = s;
  }
  return steps;
}

export interface Extent {
  t0: bigint;
  totalMs: number;
}

export function extent(steps: readonly Step[]): Extent {
  if (!steps.length) return { t0: 0n, totalMs: 0 };
  const t0 = steps[0]!.start;
  const end = steps.reduce((m, s) => (s.end > m ? s.end : m), t0);
  return { t0, totalMs: Number(end - t0) / 1e6 };
}

export interface MemoryDelta {
  rssKb: number;
  pssKb: number;
  sharedKb: number;
  privateKb: number;
}

export function memoryDelta(s: Step): MemoryDelta | undefined {
  const now = s.span.state?.memory;
  if (!now) return undefined;
  const before: MemorySample | undefined = s.prev?.span.state?.memory;
  const d = (k: keyof MemoryDelta) => now[k] - (before?.[k] ?? 0);
  return { rssKb: d('rssKb'), pssKb: d('pssKb'), sharedKb: d('sharedKb'), privateKb: d('privateKb') };
}

/** Axis ticks: a 1/2/5 step giving about `target` ticks over [0, totalMs]. */
export function ticks(totalMs: number, target = 6): number[] {
  if (totalMs <= 0) return [0];
  const raw = totalMs / target;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((x) => x >= raw)!;
  const out: number[] = [];
  for (let t = 0; t <= totalMs + 1e-9; t += step) out.push(t);
  return out;
}
