/**
 * Finding, starting and connecting to the daemon (vscode-free, so it is unit-testable): read the
 * discovery file and token from the state dir, open the WebSocket with the token, hand back
 * vscode-jsonrpc MessageTransports for vscode-languageclient. Reconnection policy lives here too.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import WebSocket from 'ws';
import { wsTransport, WsTransport } from '../runtime-daemon/protocol/transport';
import type { DaemonInfoFile } from '../runtime-daemon/protocol/messages';

export class DaemonUnavailable extends Error {
  constructor(message: string, readonly canStart: boolean) {
    super(message);
  }
}

export function readDiscovery(stateDir: string): { info: DaemonInfoFile; token: string } {
  let info: DaemonInfoFile;
  try {
    info = JSON.parse(fs.readFileSync(path.join(stateDir, 'daemon.json'), 'utf8')) as DaemonInfoFile;
  } catch {
    throw new DaemonUnavailable(`no trenv daemon is running for ${stateDir}`, true);
  }
  let token: string;
  try {
    token = fs.readFileSync(info.tokenFile || path.join(stateDir, 'token'), 'utf8').trim();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new DaemonUnavailable(
      code === 'EACCES'
        ? `cannot read the daemon token in ${stateDir}: start the daemon through sudo from your user so the token is yours`
        : `the daemon's token file is missing in ${stateDir}`,
      false,
    );
  }
  return { info, token };
}

export async function openTransport(stateDir: string, timeoutMs = 3000): Promise<{ transport: WsTransport; socket: WebSocket; info: DaemonInfoFile }> {
  const { info, token } = readDiscovery(stateDir);
  const socket = new WebSocket(`ws://127.0.0.1:${info.port}/`, { headers: { authorization: `Bearer ${token}` }, maxPayload: 64 * 1024 * 1024 });
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => {
      socket.terminate();
      reject(new DaemonUnavailable(`the daemon on port ${info.port} did not answer`, true));
    }, timeoutMs);
    socket.once('open', () => {
      clearTimeout(t);
      resolve();
    });
    socket.once('unexpected-response', (_q, res) => {
      clearTimeout(t);
      reject(new DaemonUnavailable(`the daemon refused the connection (HTTP ${res.statusCode})`, false));
    });
    socket.once('error', (e) => {
      clearTimeout(t);
      reject(new DaemonUnavailable(`cannot reach the daemon on port ${info.port}: ${(e as Error).message}`, true));
    });
  });
  return { transport: wsTransport(socket), socket, info };
}

/** Starts the daemon with a shell command (setting `trenv.daemon.startCommand`), resolving when it exits. */
export function startDaemon(command: string, cwd: string, log: (line: string) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('/bin/sh', ['-c', command], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout.on('data', (d: Buffer) => log(d.toString().trimEnd()));
    child.stderr.on('data', (d: Buffer) => log(d.toString().trimEnd()));
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`"${command}" exited with ${code}: see the TrEnv output`))));
  });
}

/** Exponential backoff for reconnecting: 0.5 s, 1 s, 2 s ... capped. */
export class Backoff {
  private attempt = 0;
  constructor(private readonly baseMs = 500, private readonly maxMs = 10_000) {}
  next(): number {
    const d = Math.min(this.maxMs, this.baseMs * 2 ** this.attempt);
    this.attempt++;
    return d;
  }
  reset(): void {
    this.attempt = 0;
  }
}
