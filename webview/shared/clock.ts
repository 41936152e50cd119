/** Monotonic span time <-> epoch log time (see ClockMapping in messages.ts for the method). */
import type { ClockMapping, InvocationDetail, LogLine, TraceSpan } from './messages';

export function clockMapping(detail: Pick<InvocationDetail, 'trace' | 'record'>): ClockMapping {
  let best: number | undefined;
  for (const s of detail.trace) {
    const t = s.state?.memory?.t;
    if (typeof t !== 'number' || !t) continue;
    const off = t - Number(s.endNs) / 1e6;
    if (best === undefined || off < best) best = off;
  }
  if (best !== undefined) return { source: 'span-memory', offsetMs: best };
  const first = detail.trace.reduce<bigint | undefined>((m, s) => (m === undefined || BigInt(s.startNs) < m ? BigInt(s.startNs) : m), undefined);
  return { source: 'created-at', offsetMs: detail.record.createdAt - (first === undefined ? 0 : Number(first) / 1e6) };
}

export const nsToEpochMs = (ns: string, m: ClockMapping): number => Number(ns) / 1e6 + m.offsetMs;

/** The first log line at or after `epochMs` (lines need not arrive sorted by t). */
export function firstLogAtOrAfter(logs: readonly LogLine[], epochMs: number): LogLine | undefined {
  let best: LogLine | undefined;
  for (const l of logs) if (l.t >= epochMs && (!best || l.t < best.t || (l.t === best.t && l.seq < best.seq))) best = l;
  return best;
}

export function spanEndEpochMs(span: TraceSpan, m: ClockMapping): number {
  return nsToEpochMs(span.endNs, m);
}
