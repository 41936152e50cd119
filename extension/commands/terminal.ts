/**
 * TrEnv: Open Terminal in Sandbox — a VS Code Pseudoterminal bridged over the daemon's binary
 * WebSocket (/terminal) to a shell that node-pty runs inside a sandbox of the agent.
 */
import * as path from 'node:path';
import * as vscode from 'vscode';
import WebSocket from 'ws';
import type { Ctx } from '../ctx';
import { readDiscovery } from '../daemon';
import { pickAgent } from './agents';

export function sandboxPty(url: string, token: string, name: string, onDone: (why: string) => void): vscode.Pseudoterminal {
  const write = new vscode.EventEmitter<string>();
  const close = new vscode.EventEmitter<number | void>();
  let ws: WebSocket | undefined;
  let size: vscode.TerminalDimensions | undefined;
  return {
    onDidWrite: write.event,
    onDidClose: close.event,
    open(dim) {
      size = dim;
      const u = new URL(url);
      if (dim) {
        u.searchParams.set('cols', String(dim.columns));
        u.searchParams.set('rows', String(dim.rows));
      }
      write.fire(`\x1b[2mtrenv: opening a shell in a sandbox of ${name}…\x1b[0m\r\n`);
      ws = new WebSocket(u.toString(), { headers: { authorization: `Bearer ${token}` } });
      ws.on('message', (data) => write.fire((data as Buffer).toString('utf8')));
      ws.on('close', (_code, reason) => {
        const why = reason.toString() || 'closed';
        write.fire(`\r\n\x1b[2mtrenv: ${why}\x1b[0m\r\n`);
        onDone(why);
        close.fire();
      });
      ws.on('error', (e) => write.fire(`\r\n\x1b[31mtrenv: ${e.message}\x1b[0m\r\n`));
    },
    handleInput(data) {
      if (ws?.readyState === WebSocket.OPEN) ws.send(Buffer.from(data, 'utf8'), { binary: true });
    },
    setDimensions(dim) {
      size = dim;
      if (ws?.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'resize', cols: dim.columns, rows: dim.rows }));
    },
    close() {
      void size;
      ws?.close();
    },
  };
}

export async function openTerminal(ctx: Ctx, arg: unknown): Promise<vscode.Terminal | undefined> {
  const agentDir = await pickAgent(typeof arg === 'string' ? arg : undefined);
  if (!agentDir) return undefined;
  ctx.need();
  const { info, token } = readDiscovery(ctx.config().stateDir);
  const url = `ws://127.0.0.1:${info.port}/terminal?agentDir=${encodeURIComponent(agentDir)}`;
  const name = path.basename(agentDir);
  const term = vscode.window.createTerminal({ name: `TrEnv: ${name}`, pty: sandboxPty(url, token, name, (why) => ctx.log.info(`terminal ${name}: ${why}`)) });
  term.show();
  return term;
}
