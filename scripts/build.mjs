// Bundles the daemon, the CLI (and later the extension and webviews) with esbuild.
import * as esbuild from 'esbuild';
import * as fs from 'node:fs';
import { buildWebviews } from '../webview/build.mjs';

const watch = process.argv.includes('--watch');
const common = { bundle: true, platform: 'node', mainFields: ['module', 'main'], target: 'node20', format: 'cjs', sourcemap: true, logLevel: 'warning' };
const entries = [
  { entryPoints: ['runtime-daemon/daemon/main.ts'], outfile: 'dist/trenvd.js', external: ['node-pty'] },
  { entryPoints: ['runtime-daemon/cli/main.ts'], outfile: 'dist/trenv.js', external: ['node-pty'] },
];
if (fs.existsSync('extension/extension.ts')) {
  entries.push({ entryPoints: ['extension/extension.ts'], outfile: 'dist/extension.js', external: ['vscode'] });
}
for (const e of entries) {
  const opts = { ...common, ...e };
  if (watch) await (await esbuild.context(opts)).watch();
  else await esbuild.build(opts);
}
await buildWebviews({ watch });
for (const f of ['dist/trenvd.js', 'dist/trenv.js']) fs.chmodSync(f, 0o755);
