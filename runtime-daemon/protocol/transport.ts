/**
 * JSON-RPC over WebSocket: a vscode-jsonrpc MessageReader/MessageWriter pair over a `ws` socket.
 * Used by the daemon (server side), the CLI and the extension (client side, as the
 * vscode-languageclient MessageTransports). One JSON-RPC message per text frame.
 */
import type WebSocket from 'ws';
import {
  AbstractMessageReader,
  AbstractMessageWriter,
  DataCallback,
  Disposable,
  Message,
  MessageReader,
  MessageWriter,
} from 'vscode-jsonrpc/node';
import { ErrorCodes, MAX_MESSAGE_BYTES } from './messages';

export interface MalformedMessage {
  code: number;
  message: string;
  id: number | string | null;
}

/** Checks that a parsed value is a JSON-RPC 2.0 request, notification or response. */
export function checkJsonRpcShape(value: unknown): MalformedMessage | undefined {
  if (Array.isArray(value)) {
    return { code: ErrorCodes.InvalidRequest, message: 'batch requests are not supported: send one message per frame', id: null };
  }
  if (value === null || typeof value !== 'object') {
    return { code: ErrorCodes.InvalidRequest, message: 'a JSON-RPC message must be an object', id: null };
  }
  const m = value as Record<string, unknown>;
  const id = typeof m.id === 'string' || typeof m.id === 'number' ? m.id : null;
  if (m.jsonrpc !== '2.0') {
    return { code: ErrorCodes.InvalidRequest, message: 'missing "jsonrpc": "2.0"', id };
  }
  if ('id' in m && m.id !== null && typeof m.id !== 'string' && typeof m.id !== 'number') {
    return { code: ErrorCodes.InvalidRequest, message: '"id" must be a string or a number', id: null };
  }
  if ('method' in m) {
    if (typeof m.method !== 'string' || m.method.length === 0 || m.method.length > 200) {
      return { code: ErrorCodes.InvalidRequest, message: '"method" must be a non-empty string', id };
    }
    if ('params' in m && m.params !== undefined && (m.params === null || typeof m.params !== 'object')) {
      return { code: ErrorCodes.InvalidRequest, message: '"params" must be an object or an array', id };
    }
    return undefined;
  }
  if ('result' in m || 'error' in m) return undefined;
  return { code: ErrorCodes.InvalidRequest, message: 'neither a request, a notification nor a response', id };
}

class WsMessageReader extends AbstractMessageReader implements MessageReader {
  private callback: DataCallback | undefined;
  private readonly queue: Message[] = [];

  constructor(
    private readonly socket: WebSocket,
    private readonly onMalformed?: (m: MalformedMessage) => void,
  ) {
    super();
    socket.on('message', (data, isBinary) => this.receive(data as Buffer | Buffer[] | ArrayBuffer, isBinary));
    socket.on('error', (err) => this.fireError(err));
    socket.on('close', () => this.fireClose());
  }

  listen(callback: DataCallback): Disposable {
    this.callback = callback;
    while (this.queue.length > 0) callback(this.queue.shift()!);
    return { dispose: () => (this.callback = undefined) };
  }

  private receive(data: Buffer | Buffer[] | ArrayBuffer, isBinary: boolean): void {
    const buf = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
    if (buf.length > MAX_MESSAGE_BYTES) {
      this.onMalformed?.({ code: ErrorCodes.MessageTooLarge, message: `message of ${buf.length} bytes exceeds the limit of ${MAX_MESSAGE_BYTES}`, id: null });
      return;
    }
    if (isBinary) {
      this.onMalformed?.({ code: ErrorCodes.InvalidRequest, message: 'binary frames are not JSON-RPC: send text frames', id: null });
      return;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(buf.toString('utf8'));
    } catch (e) {
      this.onMalformed?.({ code: ErrorCodes.ParseError, message: `invalid JSON: ${(e as Error).message}`, id: null });
      return;
    }
    const bad = checkJsonRpcShape(parsed);
    if (bad) {
      this.onMalformed?.(bad);
      return;
    }
    const msg = parsed as Message;
    if (this.callback) this.callback(msg);
    else this.queue.push(msg);
  }
}

class WsMessageWriter extends AbstractMessageWriter implements MessageWriter {
  constructor(private readonly socket: WebSocket) {
    super();
  }

  write(msg: Message): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.socket.readyState !== 1 /* OPEN */) {
        reject(new Error('connection is closed'));
        return;
      }
      this.socket.send(JSON.stringify(msg), (err) => {
        if (err) {
          this.fireError([err, msg, 1]);
          reject(err);
        } else resolve();
      });
    });
  }

  end(): void {
    this.socket.close();
  }
}

export interface WsTransport {
  reader: MessageReader;
  writer: MessageWriter;
}

/**
 * Wraps an open socket. `onMalformed` (server side) is told about frames that are not JSON-RPC so
 * that it can answer with a JSON-RPC error instead of dropping them silently.
 */
export function wsTransport(socket: WebSocket, onMalformed?: (m: MalformedMessage) => void): WsTransport {
  return { reader: new WsMessageReader(socket, onMalformed), writer: new WsMessageWriter(socket) };
}
