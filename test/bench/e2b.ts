/**
 * E2B part: what E2B SDK code sees, through the real SDK (`e2b` from npm): `Sandbox.create()` until
 * the first stdout byte of `commands.run('echo hi')`, for a sandbox from trenv's pool (a cleaned,
 * repurposed container) and for a cold one (new namespaces, cgroup and mounts; metadata
 * {"trenv.start": "cold"}), interleaved run by run so both see the same machine load.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { e2bPaths, E2bInfoFile } from '../../runtime-daemon/e2b/paths';
import { startDaemon } from '../integration/harness';
import { mdTable, mean, MetricRow, percentile, row, writeReport } from './results';

type Mode = 'trenv' | 'cold';

export async function benchE2b(runs = Number(process.env.TRENV_BENCH_E2B_RUNS ?? 200)): Promise<MetricRow[]> {
  process.env.TRENV_E2B_PORT = '0';
  const d = await startDaemon();
  try {
    const p = e2bPaths(d.stateDir);
    const info = JSON.parse(fs.readFileSync(p.info, 'utf8')) as E2bInfoFile;
    process.env.E2B_API_KEY = fs.readFileSync(p.apiKey, 'utf8').trim();
    process.env.E2B_API_URL = info.apiUrl;
    process.env.E2B_SANDBOX_URL = info.apiUrl;
    // the SDK is ESM/CJS dual; loaded after the variables are set
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const { Sandbox } = require('e2b') as typeof import('e2b');
    const one = async (mode: Mode): Promise<{ firstMs: number; createMs: number }> => {
      const t0 = performance.now();
      const sb = await Sandbox.create({ metadata: mode === 'cold' ? { 'trenv.start': 'cold' } : {} });
      const t1 = performance.now();
      let first = NaN;
      const r = await sb.commands.run('echo hi', { onStdout: () => void (Number.isNaN(first) && (first = performance.now())) });
      if (r.stdout !== 'hi\n') throw new Error(`unexpected output ${JSON.stringify(r.stdout)}`);
      await sb.kill();
      return { firstMs: first - t0, createMs: t1 - t0 };
    };
    for (let i = 0; i < 10; i++) await one(i % 2 ? 'cold' : 'trenv'); // warm the pool, caches and the SDK
    const s: Record<Mode, Array<{ firstMs: number; createMs: number }>> = { trenv: [], cold: [] };
    for (let i = 0; i < runs; i++) {
      for (const mode of (i % 2 ? ['cold', 'trenv'] : ['trenv', 'cold']) as Mode[]) s[mode].push(await one(mode));
    }
    const stat = (m: Mode, k: 'firstMs' | 'createMs', q: number) => percentile(s[m].map((x) => x[k]), q);
    const t50 = stat('trenv', 'firstMs', 50);
    const c50 = stat('cold', 'firstMs', 50);
    const table = mdTable(
      ['sandbox', 'runs', 'create P50 ms', 'create→first output P50 ms', 'P99 ms', 'mean ms'],
      (['trenv', 'cold'] as Mode[]).map((m) => [
        m === 'trenv' ? 'trenv (pool, repurposed container)' : 'cold (new container each time)',
        s[m].length,
        stat(m, 'createMs', 50),
        stat(m, 'firstMs', 50),
        stat(m, 'firstMs', 99),
        mean(s[m].map((x) => x.firstMs)),
      ]),
    );
    writeReport(
      'e2b',
      { runs, samples: s },
      `# E2B API: Sandbox.create() → first stdout byte of commands.run('echo hi')\n\nThrough the e2b SDK ${sdkVersion()} against trenvd's E2B-compatible API, ${runs} runs each, interleaved.\n\n${table}\n\ncold / trenv (P50): ${(c50 / t50).toFixed(2)}x`,
    );
    return [
      row('e2b.create_to_first_output_p50_ms', t50, 'ms', 'lower'),
      row('e2b.create_to_first_output_p99_ms', stat('trenv', 'firstMs', 99), 'ms', 'lower'),
      row('e2b.create_to_first_output_ratio.cold_over_trenv', c50 / t50, 'x', 'higher'),
    ];
  } finally {
    await d.stop();
  }
}

function sdkVersion(): string {
  try {
    return (JSON.parse(fs.readFileSync(path.join(require.resolve('e2b'), '../../package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return '?';
  }
}
