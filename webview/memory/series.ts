/**
 * Memory samples -> chart columns (MiB over time). No DOM: what the memory charts draw.
 * The total sums, at every sample time of any instance, the latest sample of each instance at or
 * before that time (a sandbox keeps its memory until its next sample says otherwise).
 */
import type { MemoryBaseline, MemorySample } from '../shared/messages';

export const METRICS = [
  { key: 'rssKb', label: 'RSS', color: ['--vscode-charts-blue', '#3794ff'] },
  { key: 'pssKb', label: 'PSS', color: ['--vscode-charts-green', '#89d185'] },
  { key: 'sharedKb', label: 'Shared', color: ['--vscode-charts-purple', '#b180d7'] },
  { key: 'privateKb', label: 'Private', color: ['--vscode-charts-orange', '#d18616'] },
] as const;
export type MetricKey = (typeof METRICS)[number]['key'];

export const BASELINE_COLORS: ReadonlyArray<readonly [string, string]> = [
  ['--vscode-charts-red', '#f14c4c'],
  ['--vscode-charts-yellow', '#cca700'],
];

export const kbToMiB = (kb: number): number => kb / 1024;

/** Columns: [x (unix s), RSS, PSS, Shared, Private, ...one per baseline (its PSS × `baselineScale`)] */
export type Columns = number[][];

export function instanceColumns(samples: readonly MemorySample[], baselines: readonly MemoryBaseline[]): Columns {
  const sorted = [...samples].sort((a, b) => a.t - b.t);
  return [
    sorted.map((s) => s.t / 1000),
    ...METRICS.map((m) => sorted.map((s) => kbToMiB(s[m.key]))),
    ...baselines.map((b) => sorted.map(() => kbToMiB(b.sample.pssKb))),
  ];
}

/**
 * The sum over instances. The baseline columns are what the instances alive at that time (the held
 * sample has processes > 0) would take if each were the baseline: baseline PSS × live instances.
 */
export function totalColumns(instances: ReadonlyArray<readonly MemorySample[]>, baselines: readonly MemoryBaseline[]): { cols: Columns; live: number; peakLive: number } {
  const sorted = instances.map((s) => [...s].sort((a, b) => a.t - b.t));
  const times = [...new Set(sorted.flatMap((s) => s.map((x) => x.t)))].sort((a, b) => a - b);
  const cursor = sorted.map(() => -1);
  const cols: Columns = [[], ...METRICS.map(() => []), ...baselines.map(() => [])];
  let live = 0;
  let peakLive = 0;
  for (const t of times) {
    const sum = { rssKb: 0, pssKb: 0, sharedKb: 0, privateKb: 0 };
    live = 0;
    sorted.forEach((s, i) => {
      while (cursor[i]! + 1 < s.length && s[cursor[i]! + 1]!.t <= t) cursor[i]!++;
      const held = s[cursor[i]!];
      if (!held) return;
      for (const m of METRICS) sum[m.key] += held[m.key];
      if (held.processes > 0) live++;
    });
    peakLive = Math.max(peakLive, live);
    cols[0]!.push(t / 1000);
    METRICS.forEach((m, j) => cols[1 + j]!.push(kbToMiB(sum[m.key])));
    baselines.forEach((b, j) => cols[1 + METRICS.length + j]!.push(kbToMiB(b.sample.pssKb) * live));
  }
  return { cols, live, peakLive };
}

export function latest(samples: readonly MemorySample[]): MemorySample | undefined {
  return samples.reduce<MemorySample | undefined>((m, s) => (!m || s.t >= m.t ? s : m), undefined);
}
