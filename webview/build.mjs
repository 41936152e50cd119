// Bundles the webview apps (webview/<name>/main.ts) to dist/webview/<name>.js + <name>.css.
// Called by scripts/build.mjs (`await buildWebviews({ watch })`) and by the preview test; also
// runnable alone: `node webview/build.mjs [--watch]`. Browser bundles: IIFE, no eval, no remote
// resources (uPlot and its CSS are bundled from node_modules), so they run under the webview CSP.
import * as esbuild from 'esbuild';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const WEBVIEWS = ['logs', 'memory', 'trace', 'browser'];
const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

/**
 * @param {{ watch?: boolean, outdir?: string, minify?: boolean }} [opts] minify defaults to !watch
 * @returns {Promise<{ outdir: string, dispose(): Promise<void> }>} dispose stops a watch
 */
export async function buildWebviews({ watch = false, outdir = path.join(root, 'dist', 'webview'), minify = !watch } = {}) {
  const options = {
    absWorkingDir: root,
    entryPoints: WEBVIEWS.map((n) => ({ in: `webview/${n}/main.ts`, out: n })),
    outdir,
    bundle: true,
    platform: 'browser',
    format: 'iife',
    target: ['chrome120'],
    sourcemap: true,
    minify,
    logLevel: 'warning',
    loader: { '.css': 'css' },
  };
  if (watch) {
    const ctx = await esbuild.context(options);
    await ctx.watch();
    return { outdir, dispose: () => ctx.dispose() };
  }
  await esbuild.build(options);
  return { outdir, dispose: async () => {} };
}

// run directly: build (or watch). No top-level await, so `require('./webview/build.mjs')` works too.
if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  buildWebviews({ watch: process.argv.includes('--watch') }).catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
