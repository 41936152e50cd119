/**
 * `npm run bench [-- part ...]`: runs the benchmark parts (default: all), prints ratios against the
 * baselines measured in the same run, writes bench/results/<part>.json/.md and updates latest.json.
 */
import { benchContainer } from './container';
import { benchTemplates } from './templates';
import { benchEditor } from './editor';
import { benchVm } from './vm';
import { benchBrowser } from './browser';
import { benchKsm } from './ksm';
import { benchKmod } from './kmod';
import { benchE2b } from './e2b';
import { MetricRow, writeLatest } from './results';

const PARTS: Record<string, () => Promise<MetricRow[]>> = {
  container: () => benchContainer(),
  templates: () => benchTemplates(),
  editor: () => benchEditor(),
  vm: () => benchVm(),
  browser: () => benchBrowser(),
  ksm: () => benchKsm(),
  kmod: () => benchKmod(),
  e2b: () => benchE2b(),
};

async function main(): Promise<void> {
  const asked = process.argv.slice(2).filter((a) => !a.startsWith('-'));
  const unknown = asked.filter((a) => !PARTS[a]);
  if (unknown.length) {
    process.stderr.write(`unknown bench part(s): ${unknown.join(', ')}; parts: ${Object.keys(PARTS).join(', ')}\n`);
    process.exit(2);
  }
  const parts = asked.length ? asked : Object.keys(PARTS);
  const rows: MetricRow[] = [];
  for (const p of parts) {
    const t0 = Date.now();
    const r = await PARTS[p]();
    rows.push(...r);
    writeLatest(r); // each part lands as soon as it is measured
    process.stderr.write(`bench part ${p} took ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
  }
  for (const r of rows) process.stdout.write(`${r.name} = ${r.value} ${r.unit} (${r.better} is better)\n`);
}

main().catch((e) => {
  process.stderr.write(`bench failed: ${(e as Error).stack}\n`);
  process.exit(1);
});
