/**
 * A minimal test runner for suites that run inside the real extension host (code-server or VS Code).
 * A suite's `run()` calls `runSuite(tests)`; each result is written to the JSON file named by
 * $TRENV_TEST_RESULTS, because code-server's page gives no exit code: the runner on the outside
 * (runExtensionHostSuite in codeServer.ts) reads that file and turns it into pass/fail.
 * No vscode import here, so it loads in any extension host and in plain node.
 */
import * as fs from 'node:fs';

export const RESULTS_ENV = 'TRENV_TEST_RESULTS';

export type HostTest = [name: string, fn: () => unknown | Promise<unknown>];

export interface HostTestResult {
  name: string;
  ok: boolean;
  durationMs: number;
  error?: string;
}

export interface HostSuiteReport {
  done: boolean;
  results: HostTestResult[];
}

const TEST_TIMEOUT_MS = 30_000;

function writeReport(file: string | undefined, report: HostSuiteReport): void {
  if (!file) return;
  // Write then rename, so the runner never reads a half-written file.
  const tmp = `${file}.tmp`;
  fs.writeFileSync(tmp, JSON.stringify(report, null, 2));
  fs.renameSync(tmp, file);
}

function withTimeout<T>(p: Promise<T>, ms: number, name: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`test "${name}" did not finish within ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/**
 * Runs the tests one after the other and records each result. Resolves when all pass; rejects when
 * any fails, so under @vscode/test-electron the editor exits non-zero as well.
 */
export async function runSuite(tests: HostTest[]): Promise<void> {
  const file = process.env[RESULTS_ENV];
  const report: HostSuiteReport = { done: false, results: [] };
  writeReport(file, report);
  for (const [name, fn] of tests) {
    const started = Date.now();
    try {
      await withTimeout(Promise.resolve().then(fn), TEST_TIMEOUT_MS, name);
      report.results.push({ name, ok: true, durationMs: Date.now() - started });
    } catch (err) {
      const error = err instanceof Error ? (err.stack ?? err.message) : String(err);
      report.results.push({ name, ok: false, durationMs: Date.now() - started, error });
    }
    writeReport(file, report);
  }
  report.done = true;
  writeReport(file, report);
  const failed = report.results.filter((r) => !r.ok);
  if (failed.length > 0) throw new Error(`${failed.length} of ${report.results.length} extension-host tests failed: ${failed.map((f) => f.name).join(', ')}`);
}
