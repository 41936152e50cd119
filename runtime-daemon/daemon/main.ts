#!/usr/bin/env node
/**
 * trenvd entry: `trenvd [--state-dir DIR] [--port N] [--e2b-port N]`. Runs in the foreground; `trenv daemon start`
 * starts it in the background. SIGTERM/SIGINT stop it cleanly.
 */
import { AlreadyRunningError, stateDirFromEnv } from './state';
import { Daemon } from './daemon';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : undefined;
}

async function main(): Promise<void> {
  const stateDir = stateDirFromEnv(arg('--state-dir'));
  const port = Number(arg('--port') ?? process.env.TRENV_PORT ?? 0);
  const e2bPort = arg('--e2b-port');
  const daemon = new Daemon({ stateDir, port, e2bPort: e2bPort === undefined ? undefined : Number(e2bPort) });
  daemon.onStopped = () => process.exit(0);
  for (const sig of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(sig, () => void daemon.stop());
  // a rejected promise nobody awaited is a bug to log, not a reason to stop serving
  process.on('unhandledRejection', (e) => process.stderr.write(`trenvd: unhandled rejection: ${(e as Error)?.stack ?? e}\n`));
  process.on('uncaughtException', (e) => {
    process.stderr.write(`trenvd: internal error: ${e.stack ?? e}\n`);
    void daemon.stop();
  });
  try {
    const { port: p } = await daemon.start();
    process.stdout.write(`trenvd ready on 127.0.0.1:${p} (state ${stateDir}, pid ${process.pid})\n`);
  } catch (e) {
    process.stderr.write(`trenvd: ${(e as Error).message}\n`);
    process.exit(e instanceof AlreadyRunningError ? 3 : 1);
  }
}

void main();
