/**
 * Benchmark output: percentiles, the JSON + markdown report of a part, and bench/results/latest.json
 * (rows {name, value, unit, better, measured_at, machine}; a partial run replaces only its own rows).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export interface MetricRow {
  name: string;
  value: number;
  unit: string;
  better: 'lower' | 'higher';
  measured_at: string;
  machine: string;
}

export const RESULTS_DIR = path.resolve(__dirname, '../../../bench/results');

export function machine(): string {
  const cpu = os.cpus()[0]?.model.replace(/\s+/g, ' ').trim() ?? 'cpu';
  return `${cpu} x${os.cpus().length}, ${Math.round(os.totalmem() / 2 ** 30)} GiB, Linux ${os.release()}`;
}

export function percentile(values: number[], p: number): number {
  if (!values.length) return NaN;
  const s = [...values].sort((a, b) => a - b);
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return s[i];
}

export function mean(values: number[]): number {
  return values.length ? values.reduce((a, b) => a + b, 0) / values.length : NaN;
}

export function row(name: string, value: number, unit: string, better: 'lower' | 'higher'): MetricRow {
  return { name, value: Number(value.toFixed(4)), unit, better, measured_at: new Date().toISOString(), machine: machine() };
}

/** Replaces the rows of this run in latest.json (by name) and keeps the others. */
export function writeLatest(rows: MetricRow[]): void {
  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  const file = path.join(RESULTS_DIR, 'latest.json');
  let old: MetricRow[] = [];
  try {
    old = JSON.parse(fs.readFileSync(file, 'utf8')) as MetricRow[];
  } catch {
    /* first run */
  }
  const names = new Set(rows.map((r) => r.name));
  const merged = [...old.filter((r) => !names.has(r.name)), ...rows].sort((a, b) => a.name.localeCompare(b.name));
  fs.writeFileSync(file, JSON.stringify(merged, null, 2) + '\n');
}

export function writeReport(part: string, data: unknown, markdown: string): void {
  fs.mkdirSync(RESULTS_DIR, { recursive: true });
  fs.writeFileSync(path.join(RESULTS_DIR, `${part}.json`), JSON.stringify(data, null, 2) + '\n');
  fs.writeFileSync(path.join(RESULTS_DIR, `${part}.md`), markdown + '\n');
}

export function mdTable(header: string[], rows: Array<Array<string | number>>): string {
  const fmt = (v: string | number) => (typeof v === 'number' ? (Number.isInteger(v) ? String(v) : v.toFixed(2)) : v);
  return [`| ${header.join(' | ')} |`, `| ${header.map(() => '---').join(' | ')} |`, ...rows.map((r) => `| ${r.map(fmt).join(' | ')} |`)].join('\n');
}

/** Seeded PRNG (mulberry32) so traces are reproducible. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Bursty arrivals modelled on the shape of the Azure Functions 2019 trace: bursts arrive as a
 * Poisson process (exponential gaps, mean `burstGapMs`), burst sizes are geometric (mean
 * `meanBurst`), and calls inside a burst are spread with exponential gaps of mean `innerGapMs`.
 */
export function burstyArrivals(n: number, seed: number, o = { burstGapMs: 150, meanBurst: 4, innerGapMs: 3 }): number[] {
  const r = rng(seed);
  const exp = (m: number) => -Math.log(1 - r()) * m;
  const out: number[] = [];
  let t = 0;
  while (out.length < n) {
    t += exp(o.burstGapMs);
    let k = 1;
    while (r() > 1 / o.meanBurst) k++;
    let u = t;
    for (let i = 0; i < k && out.length < n; i++) {
      out.push(u);
      u += exp(o.innerGapMs);
    }
  }
  return out;
}
