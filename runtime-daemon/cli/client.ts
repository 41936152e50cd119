/**
 * Connecting to a running daemon: read its discovery file and token from the state dir, open the
 * WebSocket with the token, and return a JSON-RPC connection. Shared by the CLI, tests and bench.
 */
import * as fs from 'node:fs';
import WebSocket from 'ws';
import { createMessageConnection, MessageConnection } from 'vscode-jsonrpc/node';
import { wsTransport } from '../protocol/transport';
import { readInfo, StatePaths } from '../daemon/state';

export class DaemonNotRunningError extends Error {}

export interface DaemonClient {
  rpc: MessageConnection;
  port: number;
  close(): void;
}

export function readToken(paths: StatePaths): string {
  try {
    return fs.readFileSync(paths.token, 'utf8').trim();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EACCES') throw new Error(`cannot read the daemon token ${paths.token}: run as the user who started the daemon (or with sudo)`);
    throw new DaemonNotRunningError(`no daemon token in ${paths.root}: start the daemon with: sudo trenv daemon start`);
  }
}

export async function connect(stateDir: string, timeoutMs = 5000): Promise<DaemonClient> {
  const paths = new StatePaths(stateDir);
  const info = readInfo(paths);
  if (!info) throw new DaemonNotRunningError(`no trenv daemon is running for ${stateDir}: start it with: sudo trenv daemon start`);
  const token = readToken(paths);
  const ws = new WebSocket(`ws://127.0.0.1:${info.port}/`, { headers: { authorization: `Bearer ${token}` }, maxPayload: 64 * 1024 * 1024 });
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => {
      ws.terminate();
      reject(new DaemonNotRunningError(`the daemon for ${stateDir} (port ${info.port}) did not answer within ${timeoutMs} ms`));
    }, timeoutMs);
    ws.once('open', () => {
      clearTimeout(t);
      resolve();
    });
    ws.once('unexpected-response', (_req, res) => {
      clearTimeout(t);
      reject(new Error(`the daemon refused the connection: HTTP ${res.statusCode}`));
    });
    ws.once('error', (e) => {
      clearTimeout(t);
      reject(
        (e as NodeJS.ErrnoException).code === 'ECONNREFUSED'
          ? new DaemonNotRunningError(`no trenv daemon answers on port ${info.port} (stale ${paths.info}?): start it with: sudo trenv daemon start`)
          : e,
      );
    });
  });
  const t = wsTransport(ws);
  const rpc = createMessageConnection(t.reader, t.writer);
  rpc.listen();
  return { rpc, port: info.port, close: () => { rpc.dispose(); ws.close(); } };
}
