/** Human output of the CLI: tables, durations, memory, log lines, traces. */
import type { InvocationSummary, LogLine, MemorySample, TraceSpan } from '../protocol/messages';

const useColor = process.stdout.isTTY && !process.env.NO_COLOR;
const paint = (code: string) => (s: string) => (useColor ? `\x1b[${code}m${s}\x1b[0m` : s);
export const dim = paint('2');
export const red = paint('31');
export const green = paint('32');
export const yellow = paint('33');
export const bold = paint('1');

export function table(rows: string[][], header?: string[]): string {
  const all = header ? [header, ...rows] : rows;
  const widths = all[0]?.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length))) ?? [];
  const fmt = (r: string[]) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('  ');
  const lines = all.map(fmt);
  if (header) lines.splice(1, 0, widths.map((w) => '-'.repeat(w)).join('  '));
  return lines.join('\n');
}

export function ms(v: number | undefined): string {
  if (v === undefined) return '-';
  if (v < 1) return `${(v * 1000).toFixed(0)} µs`;
  if (v < 1000) return `${v.toFixed(v < 10 ? 2 : 1)} ms`;
  return `${(v / 1000).toFixed(2)} s`;
}

export function kb(v: number | undefined): string {
  if (v === undefined) return '-';
  if (v < 1024) return `${v} kB`;
  return `${(v / 1024).toFixed(1)} MiB`;
}

export function stateColor(state: string): string {
  if (state === 'succeeded') return green(state);
  if (state === 'running' || state === 'queued') return yellow(state);
  return red(state);
}

export function logLine(l: LogLine): string {
  const t = new Date(l.t).toISOString().slice(11, 23);
  const tag = l.stream === 'log' ? (l.level ?? 'info') : l.stream;
  const fields = l.fields && Object.keys(l.fields).length ? ' ' + dim(JSON.stringify(l.fields)) : '';
  const text = `${dim(t)} ${tag.padEnd(6)} ${l.text}${fields}`;
  return l.level === 'error' || l.stream === 'stderr' ? text.replace(l.text, red(l.text)) : text;
}

export function invocationRows(list: InvocationSummary[]): string {
  return table(
    list.map((r) => [r.id, r.agent, stateColor(r.state), r.start ?? '-', ms(r.durationMs), new Date(r.createdAt).toISOString().replace('T', ' ').slice(0, 19)]),
    ['ID', 'AGENT', 'STATE', 'SANDBOX', 'DURATION', 'CREATED'],
  );
}

export function traceTable(spans: TraceSpan[]): string {
  if (!spans.length) return '(no spans)';
  spans = [...spans].sort((a, b) => (BigInt(a.startNs) < BigInt(b.startNs) ? -1 : BigInt(a.startNs) > BigInt(b.startNs) ? 1 : 0));
  const t0 = BigInt(spans.reduce((m, s) => (BigInt(s.startNs) < BigInt(m) ? s.startNs : m), spans[0].startNs));
  return table(
    spans.map((s) => [
      s.name,
      `+${ms(Number(BigInt(s.startNs) - t0) / 1e6)}`,
      ms(s.durationMs),
      String(s.state?.processes ?? '-'),
      kb(s.state?.memory?.pssKb),
      s.attrs ? Object.entries(s.attrs).map(([k, v]) => `${k}=${v}`).join(' ') : '',
    ]),
    ['SPAN', 'AT', 'TOOK', 'PROCS', 'PSS', 'DETAIL'],
  );
}

export function memoryRow(name: string, m: MemorySample | undefined): string[] {
  return [name, kb(m?.rssKb), kb(m?.pssKb), kb(m?.sharedKb), kb(m?.privateKb), m?.cgroupBytes !== undefined ? kb(Math.round(m.cgroupBytes / 1024)) : '-'];
}

export const MEMORY_HEADER = ['WHAT', 'RSS', 'PSS', 'SHARED', 'PRIVATE', 'CGROUP'];
