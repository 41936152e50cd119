/**
 * The daemon's front door: HTTP + WebSocket on 127.0.0.1 only. A connection must carry the token
 * (`Authorization: Bearer <token>`) and must not carry a browser `Origin` (a web page must never
 * drive the daemon). Each connection is a JSON-RPC 2.0 peer (vscode-jsonrpc over ws).
 */
import * as crypto from 'node:crypto';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocket, WebSocketServer } from 'ws';
import { ResponseError } from 'vscode-jsonrpc/node';
import type { Connection } from 'vscode-languageserver';
import { createClientConnection, serveLanguageFeatures } from './lsp';
import { ErrorCodes, MAX_MESSAGE_BYTES } from '../protocol/messages';
import { wsTransport } from '../protocol/transport';

export interface ClientConnection {
  id: number;
  /** JSON-RPC peer: the trenv/ methods, and the language server features for editor clients */
  rpc: Connection;
  socket: WebSocket;
}

export interface ServerOptions {
  port: number;
  /** whether microVMs can start here (code lenses offer "Invoke in microVM" then) */
  vmAvailable?: () => boolean;
  token: string;
  /** binary-stream endpoints other than the RPC socket, by URL path (e.g. /terminal) */
  streams?: Record<string, (ws: WebSocket, req: http.IncomingMessage) => void>;
  onConnection(c: ClientConnection): void;
  onClose(c: ClientConnection): void;
  log(msg: string): void;
}

export function tokenMatches(expected: string, header: string | undefined): boolean {
  if (!header) return false;
  const m = /^Bearer\s+(\S+)$/i.exec(header.trim());
  if (!m) return false;
  const a = Buffer.from(m[1]);
  const b = Buffer.from(expected);
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}

/** Decides whether an upgrade request may connect; returns an HTTP status and reason when not. */
export function checkUpgrade(req: http.IncomingMessage, token: string): { ok: true } | { ok: false; status: number; reason: string } {
  if (req.headers.origin !== undefined) {
    return { ok: false, status: 403, reason: 'browser origins are not allowed to connect to the trenv daemon' };
  }
  if (!tokenMatches(token, req.headers.authorization)) {
    return { ok: false, status: 401, reason: 'missing or wrong token: read it from the daemon state dir (token file)' };
  }
  return { ok: true };
}

export class DaemonServer {
  private http: http.Server | undefined;
  private wss: WebSocketServer | undefined;
  private nextId = 0;
  readonly clients = new Set<ClientConnection>();

  constructor(private readonly o: ServerOptions) {}

  async listen(): Promise<number> {
    this.http = http.createServer((req, res) => {
      // Only the websocket upgrade is served; a plain request learns nothing but where to go.
      res.writeHead(426, { 'content-type': 'text/plain' });
      res.end('trenv daemon: connect with a WebSocket and a token\n');
    });
    this.wss = new WebSocketServer({ noServer: true, maxPayload: MAX_MESSAGE_BYTES * 2 });
    this.http.on('upgrade', (req, socket, head) => {
      const verdict = checkUpgrade(req, this.o.token);
      if (!verdict.ok) {
        this.o.log(`rejected connection from ${req.socket.remoteAddress}: ${verdict.reason}`);
        socket.write(`HTTP/1.1 ${verdict.status} ${http.STATUS_CODES[verdict.status]}\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n${verdict.reason}\n`);
        socket.destroy();
        return;
      }
      const pathname = new URL(req.url ?? '/', 'http://127.0.0.1').pathname;
      const stream = this.o.streams?.[pathname];
      if (pathname !== '/' && !stream) {
        socket.write('HTTP/1.1 404 Not Found\r\nConnection: close\r\n\r\n');
        socket.destroy();
        return;
      }
      this.wss!.handleUpgrade(req, socket, head, (ws) => (stream ? stream(ws, req) : this.accept(ws)));
    });
    await new Promise<void>((resolve, reject) => {
      this.http!.once('error', reject);
      this.http!.listen(this.o.port, '127.0.0.1', () => resolve());
    });
    return (this.http.address() as AddressInfo).port;
  }

  private accept(ws: WebSocket): void {
    const transport = wsTransport(ws, (bad) => {
      // answer frames that are not JSON-RPC with a JSON-RPC error instead of dropping them
      if (ws.readyState === ws.OPEN) {
        ws.send(JSON.stringify({ jsonrpc: '2.0', id: bad.id, error: { code: bad.code, message: bad.message } }));
      }
    });
    const rpc = createClientConnection(transport.reader, transport.writer, () => ws.close());
    serveLanguageFeatures(rpc, this.o.vmAvailable);
    const c: ClientConnection = { id: ++this.nextId, rpc, socket: ws };
    this.clients.add(c);
    ws.on('error', () => undefined);
    ws.on('close', () => {
      this.clients.delete(c);
      rpc.dispose();
      this.o.onClose(c);
    });
    this.o.onConnection(c);
    rpc.listen();
  }

  async close(): Promise<void> {
    for (const c of this.clients) c.socket.terminate();
    this.wss?.close();
    await new Promise<void>((r) => (this.http ? this.http.close(() => r()) : r()));
  }
}

export function paramsError(message: string): ResponseError<void> {
  return new ResponseError(ErrorCodes.InvalidParams, message);
}
