/**
 * The E2B-compatible API of trenvd: one HTTP/1.1 listener on 127.0.0.1 that serves
 *   - the control plane (REST + JSON, `X-API-KEY`): create, connect, list, get, kill, timeout,
 *     pause, metrics;
 *   - envd (requests with `E2b-Sandbox-Id` + `E2b-Sandbox-Port: 49983`): the Connect services of
 *     envd.ts, GET /health, GET/POST /files;
 *   - the code interpreter (`E2b-Sandbox-Port: 49999`): POST /execute (NDJSON) and /contexts.
 * Sandbox traffic needs the sandbox's own access token (X-Access-Token or E2B-Traffic-Access-Token),
 * so one sandbox's token never opens another's files or processes, whatever id a request names.
 * Requests carrying a browser Origin are refused.
 */
import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import * as zlib from 'node:zlib';
import busboy from 'busboy';
import { createContextValues } from '@connectrpc/connect';
import { connectNodeAdapter } from '@connectrpc/connect-node';
import { SANDBOX_HOME } from '../sandbox/rootfs';
import { envdRoutes, kRuntime } from './envd';
import { FsError } from './fsHelper';
import { spawnInside } from './inside';
import { SandboxRuntime } from './runtime';
import { cpuTicks, diskOf, E2bError, E2bSandbox, E2bSandboxes, ENVD_VERSION } from './sandboxes';

export const DEFAULT_E2B_PORT = 49982;
export const ENVD_PORT = 49983;
export const INTERPRETER_PORT = 49999;

export interface E2bServerOptions {
  sandboxes: E2bSandboxes;
  apiKey: string;
  enterPath: string;
  log(m: string): void;
}

class HttpError extends Error {
  constructor(readonly status: number, message: string) {
    super(message);
  }
}

function sendJson(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const text = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { ...(text ? { 'Content-Type': 'application/json' } : {}), 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

function sendError(res: http.ServerResponse, status: number, message: string): void {
  sendJson(res, status, { code: status, message });
}

async function readJson(req: http.IncomingMessage, limit = 1 << 20): Promise<Record<string, unknown>> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of req) {
    n += (c as Buffer).length;
    if (n > limit) throw new HttpError(413, `request body over ${limit} bytes`);
    chunks.push(c as Buffer);
  }
  if (!n) return {};
  try {
    const v = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
    return v as Record<string, unknown>;
  } catch (e) {
    throw new HttpError(400, `request body is not a JSON object: ${(e as Error).message}`);
  }
}

function safeEqual(a: string, b: string | undefined): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b ?? '');
  return x.length === y.length && crypto.timingSafeEqual(x, y);
}

function header(req: http.IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}

const FS_STATUS: Record<string, number> = { ENOENT: 404, EISDIR: 400, ENOTDIR: 400, EACCES: 403, EPERM: 403, ENOSPC: 507, EUNAVAILABLE: 502 };

export class E2bServer {
  private server: http.Server | undefined;
  private readonly runtimes = new Map<string, SandboxRuntime>();
  private readonly connect: (req: http.IncomingMessage, res: http.ServerResponse) => void;
  private sampler: NodeJS.Timeout | undefined;
  port = 0;

  constructor(private readonly o: E2bServerOptions) {
    const runtimes = this.runtimes;
    this.connect = connectNodeAdapter({
      routes: envdRoutes,
      contextValues: (req) => createContextValues().set(kRuntime, runtimes.get(header(req as http.IncomingMessage, 'e2b-sandbox-id') ?? '')),
    }) as (req: http.IncomingMessage, res: http.ServerResponse) => void;
  }

  async listen(port: number): Promise<number> {
    const server = http.createServer((req, res) => void this.handle(req, res));
    server.keepAliveTimeout = 65_000;
    server.requestTimeout = 0; // long streams (commands, watches) are normal
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.server = server;
    this.port = (server.address() as AddressInfo).port;
    this.sampler = setInterval(() => {
      for (const sb of this.o.sandboxes.list()) if (sb.state === 'running') this.sample(sb);
    }, 5000);
    this.sampler.unref();
    return this.port;
  }

  async close(): Promise<void> {
    if (this.sampler) clearInterval(this.sampler);
    const s = this.server;
    if (!s) return;
    this.server = undefined;
    await new Promise<void>((resolve) => {
      s.close(() => resolve());
      s.closeAllConnections();
    });
  }

  runtime(sb: E2bSandbox): SandboxRuntime {
    let rt = this.runtimes.get(sb.id);
    if (!rt) {
      rt = new SandboxRuntime(sb, this.o.enterPath);
      this.runtimes.set(sb.id, rt);
      const r = rt;
      sb.once('killed', () => this.runtimes.delete(r.sb.id));
    }
    return rt;
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    try {
      // a web page must not drive sandboxes through the user's browser
      if (req.headers.origin !== undefined) throw new HttpError(403, 'requests from browsers (with an Origin header) are refused');
      const ra = req.socket.remoteAddress ?? '';
      if (ra !== '127.0.0.1' && ra !== '::1' && ra !== '::ffff:127.0.0.1') throw new HttpError(403, 'loopback clients only');
      // a page that rebinds its own name to 127.0.0.1 reaches us with its Host: refused
      const host = (header(req, 'host') ?? '').replace(/:\d+$/, '').toLowerCase();
      if (host !== '127.0.0.1' && host !== 'localhost' && host !== '[::1]') throw new HttpError(403, `unexpected Host "${host}": use http://127.0.0.1:<port>`);
      const sandboxPort = header(req, 'e2b-sandbox-port');
      if (sandboxPort !== undefined) return await this.sandboxTraffic(req, res, sandboxPort);
      return await this.controlPlane(req, res);
    } catch (e) {
      if (e instanceof HttpError || e instanceof E2bError) return sendError(res, e.status, e.message);
      this.o.log(`e2b: ${req.method} ${req.url}: ${(e as Error).stack ?? e}`);
      return sendError(res, 500, (e as Error).message);
    }
  }

  // ---- control plane

  private async controlPlane(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const p = url.pathname.replace(/\/+$/, '') || '/';
    if (p === '/health' && req.method === 'GET') return sendJson(res, 200, { status: 'ok' });
    if (!safeEqual(this.o.apiKey, header(req, 'x-api-key'))) {
      throw new HttpError(401, 'invalid or missing X-API-KEY: use the key of this trenv daemon (`trenv e2b env` prints it)');
    }
    const sbs = this.o.sandboxes;
    const m = /^(?:\/v2)?\/sandboxes(?:\/([^/]+)(?:\/([a-z]+))?)?$/.exec(p);
    if (!m) throw new HttpError(404, `no such endpoint: ${req.method} ${p} (trenv serves the sandbox endpoints of the E2B API)`);
    const [, id, action] = m;
    const method = req.method ?? 'GET';
    if (!id) {
      if (method === 'POST') {
        const body = await readJson(req);
        const sb = await sbs.create(body);
        sendJson(res, 201, this.created(sb));
        // the sandbox's runtime (and its standby shell) starts while the client reads the answer
        setImmediate(() => sb.state === 'running' && this.runtime(sb));
        return;
      }
      if (method === 'GET') return this.list(url, res, p.startsWith('/v2/'));
      throw new HttpError(405, `${method} ${p} is not supported`);
    }
    if (id === 'metrics' && !action && method === 'GET') {
      // the latest metric of several sandboxes at once: {sandboxes: {id: metric}}
      const ids = (url.searchParams.get('sandbox_ids') ?? '').split(',').filter(Boolean);
      const out: Record<string, unknown> = {};
      for (const want of ids) {
        const s = sbs.get(want);
        if (!s) continue;
        if (s.state === 'running') this.sample(s);
        const last = s.samples[s.samples.length - 1];
        if (last) out[s.id] = this.metric(s, last);
      }
      return sendJson(res, 200, { sandboxes: out });
    }
    const sb = sbs.get(decodeURIComponent(id));
    if (!sb) throw new E2bError(404, `sandbox "${id}" not found`);
    if (!action) {
      if (method === 'GET') return sendJson(res, 200, this.detail(sb));
      if (method === 'DELETE') {
        await sbs.kill(sb, 'killed by the API');
        return sendJson(res, 204, undefined);
      }
    } else if (method === 'POST' && action === 'timeout') {
      const body = await readJson(req);
      sbs.setTimeout(sb, body.timeout);
      return sendJson(res, 204, undefined);
    } else if (method === 'POST' && action === 'pause') {
      await sbs.pause(sb);
      return sendJson(res, 204, undefined);
    } else if (method === 'POST' && (action === 'connect' || action === 'resume')) {
      const body = await readJson(req);
      if (action === 'resume' && sb.state !== 'paused') throw new E2bError(409, `sandbox ${sb.id} is not paused`);
      const resumed = sbs.resume(sb, body.timeout);
      return sendJson(res, resumed ? 201 : 200, this.created(sb));
    } else if (method === 'GET' && action === 'metrics') {
      if (sb.state === 'running') this.sample(sb);
      const start = Number(url.searchParams.get('start') ?? 0) * 1000;
      const end = url.searchParams.get('end') ? Number(url.searchParams.get('end')) * 1000 : Infinity;
      return sendJson(res, 200, sb.samples.filter((s) => s.at >= start - 999 && s.at <= end).map((s) => this.metric(sb, s)));
    }
    throw new HttpError(405, `${method} ${p} is not supported`);
  }

  private metric(sb: E2bSandbox, s: E2bSandbox['samples'][number]): Record<string, unknown> {
    return {
      timestamp: new Date(s.at).toISOString(),
      timestampUnix: Math.floor(s.at / 1000),
      cpuCount: os.cpus().length,
      cpuUsedPct: s.cpuPct,
      memUsed: s.memUsed,
      memTotal: sb.memoryMb * 1024 * 1024,
      memCache: 0,
      diskUsed: s.diskUsed,
      diskTotal: s.diskTotal,
    };
  }

  private sample(sb: E2bSandbox): void {
    const now = Date.now();
    const ticks = cpuTicks(sb.hostPids());
    const hz = 100;
    const cpus = os.cpus().length;
    const prev = sb.cpuMark;
    const cpuPct = prev && now > prev.at ? Math.max(0, Math.min(100, ((ticks - prev.ticks) / hz / ((now - prev.at) / 1000) / cpus) * 100)) : 0;
    sb.cpuMark = { at: now, ticks };
    const disk = sb.container ? diskOf(sb.container.initPid) : { used: 0, total: 0 };
    sb.samples.push({ at: now, memUsed: sb.usageBytes(), cpuPct: Number(cpuPct.toFixed(2)), diskUsed: disk.used, diskTotal: disk.total });
    if (sb.samples.length > 720) sb.samples.splice(0, sb.samples.length - 720);
    sb.record?.memory();
  }

  /** what every sandbox answer says of the sandbox (create/connect, list, get) */
  private identity(sb: E2bSandbox): Record<string, unknown> {
    return { templateID: sb.templateId, sandboxID: sb.id, alias: sb.alias, clientID: 'trenv', envdVersion: ENVD_VERSION };
  }

  private created(sb: E2bSandbox): Record<string, unknown> {
    return {
      ...this.identity(sb),
      envdAccessToken: sb.token,
      // the code interpreter SDK sends only this one on /contexts: same token
      trafficAccessToken: sb.token,
      domain: null,
    };
  }

  private listed(sb: E2bSandbox): Record<string, unknown> {
    return {
      ...this.identity(sb),
      startedAt: new Date(sb.startedAt).toISOString(),
      endAt: new Date(sb.endAt).toISOString(),
      cpuCount: os.cpus().length,
      memoryMB: sb.memoryMb,
      diskSizeMB: sb.container?.spec.tmpfsMb ?? 64,
      metadata: sb.metadata,
      state: sb.state,
      volumeMounts: [],
    };
  }

  private detail(sb: E2bSandbox): Record<string, unknown> {
    return { ...this.listed(sb), envdAccessToken: sb.token, domain: null, allowInternetAccess: sb.container?.spec.network === 'egress' };
  }

  private list(url: URL, res: http.ServerResponse, v2: boolean): void {
    let items = this.o.sandboxes.list();
    const states = (url.searchParams.get('state') ?? '').split(',').filter(Boolean);
    if (v2 && states.length) items = items.filter((s) => states.includes(s.state));
    if (!v2) items = items.filter((s) => s.state === 'running');
    const meta = url.searchParams.get('metadata');
    if (meta) {
      const want = [...new URLSearchParams(meta)].map(([k, v]) => [decodeURIComponent(k), decodeURIComponent(v)]);
      items = items.filter((s) => want.every(([k, v]) => s.metadata[k] === v));
    }
    const template = url.searchParams.get('template');
    if (template) items = items.filter((s) => s.templateId === template);
    const after = url.searchParams.get('startedAfter');
    if (after) items = items.filter((s) => s.startedAt > Date.parse(after));
    const asc = url.searchParams.get('order') === 'asc';
    items.sort((a, b) => (asc ? a.startedAt - b.startedAt : b.startedAt - a.startedAt) || a.id.localeCompare(b.id));
    if (!v2) return sendJson(res, 200, items.map((s) => this.listed(s)));
    const limit = Math.max(1, Math.min(100, Number(url.searchParams.get('limit')) || 100));
    let offset = 0;
    const token = url.searchParams.get('nextToken');
    if (token) {
      offset = Number(Buffer.from(token, 'base64url').toString());
      if (!Number.isInteger(offset) || offset < 0) throw new HttpError(400, 'invalid nextToken');
    }
    const page = items.slice(offset, offset + limit);
    const headers: Record<string, string> = offset + limit < items.length ? { 'X-Next-Token': Buffer.from(String(offset + limit)).toString('base64url') } : {};
    return sendJson(res, 200, page.map((s) => this.listed(s)), headers);
  }

  // ---- sandbox traffic (envd, code interpreter)

  private async sandboxTraffic(req: http.IncomingMessage, res: http.ServerResponse, port: string): Promise<void> {
    const id = header(req, 'e2b-sandbox-id');
    const token = header(req, 'x-access-token') ?? header(req, 'e2b-traffic-access-token');
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const sb = this.o.sandboxes.authorize(id, token);
    const rt = this.runtime(sb);
    if (Number(port) === ENVD_PORT) {
      if (url.pathname === '/health') return sendJson(res, 204, undefined);
      if (url.pathname === '/files') return req.method === 'GET' ? this.download(rt, url, req, res) : req.method === 'POST' ? this.upload(rt, url, req, res) : sendError(res, 405, 'GET or POST');
      return this.connect(req, res);
    }
    if (Number(port) === INTERPRETER_PORT) return this.interpreter(rt, url, req, res);
    throw new HttpError(502, `port ${port} of sandbox ${sb.id} is not served: trenv serves envd (${ENVD_PORT}) and the code interpreter (${INTERPRETER_PORT})`);
  }

  private fsFail(res: http.ServerResponse, e: unknown, what: string): void {
    if (e instanceof FsError) return sendError(res, FS_STATUS[e.code] ?? 500, e.code === 'ENOENT' ? `path not found: ${what}` : `${what}: ${e.message}`);
    throw e;
  }

  private async download(rt: SandboxRuntime, url: URL, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const p = url.searchParams.get('path') ?? '';
    if (!p) return sendError(res, 400, 'the "path" query parameter is required');
    let info: { path: string; size: number };
    try {
      info = await rt.fs.call<{ path: string; size: number }>('readable', { path: p });
    } catch (e) {
      return this.fsFail(res, e, p);
    }
    const gzip = /\bgzip\b/.test(header(req, 'accept-encoding') ?? '');
    const cat = spawnInside(rt.sb, this.o.enterPath, ['/bin/cat', '--', info.path], { stdin: false });
    let err = '';
    cat.stderr!.on('data', (b: Buffer) => (err += b.toString()));
    res.writeHead(200, {
      'Content-Type': 'application/octet-stream',
      'Content-Disposition': `attachment; filename="${path.posix.basename(info.path).replace(/["\\\r\n]/g, '_')}"`,
      ...(gzip ? { 'Content-Encoding': 'gzip' } : info.size === 0 ? { 'Content-Length': '0' } : {}),
    });
    res.on('close', () => cat.kill('SIGKILL'));
    try {
      if (gzip) await pipeline(cat.stdout!, zlib.createGzip(), res);
      else await pipeline(cat.stdout!, res);
    } catch {
      res.destroy();
    }
    if (err) this.o.log(`e2b: reading ${info.path} in ${rt.sb.id}: ${err.trim()}`);
  }

  /** Writes one file inside the sandbox from a stream (parents created), as the sandbox user. */
  private writeInside(rt: SandboxRuntime, p: string, data: NodeJS.ReadableStream): Promise<{ path: string; name: string; type: 'file' }> {
    const abs = path.posix.resolve(SANDBOX_HOME, p);
    const sh = spawnInside(rt.sb, this.o.enterPath, ['/bin/sh', '-c', 'mkdir -p -- "$(dirname -- "$0")" && exec cat > "$0"', abs], { stdin: true });
    sh.stdout!.resume();
    let err = '';
    sh.stderr!.on('data', (b: Buffer) => (err = (err + b.toString()).slice(-2000)));
    const done = new Promise<number>((resolve) => sh.on('close', (code) => resolve(code ?? 1)));
    return pipeline(data, sh.stdin!).then(
      async () => {
        const code = await done;
        if (code !== 0) throw new HttpError(/denied/i.test(err) ? 403 : /space/i.test(err) ? 507 : 400, `cannot write ${abs}: ${err.trim() || `exit ${code}`}`);
        return { path: abs, name: path.posix.basename(abs), type: 'file' as const };
      },
      async (e: Error) => {
        sh.kill('SIGKILL');
        await done;
        throw new HttpError(400, `cannot write ${abs}: ${err.trim() || e.message}`);
      },
    );
  }

  private async upload(rt: SandboxRuntime, url: URL, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const p = url.searchParams.get('path') ?? undefined;
    const type = header(req, 'content-type') ?? '';
    const encoding = (header(req, 'content-encoding') ?? '').toLowerCase();
    const body: NodeJS.ReadableStream = encoding === 'gzip' ? req.pipe(zlib.createGunzip()) : req;
    if (encoding && encoding !== 'gzip' && encoding !== 'identity') throw new HttpError(415, `Content-Encoding ${encoding} is not supported (gzip or none)`);
    if (type.startsWith('multipart/form-data')) {
      const writes: Array<Promise<{ path: string; name: string; type: 'file' }>> = [];
      await new Promise<void>((resolve, reject) => {
        const bb = busboy({ headers: req.headers });
        bb.on('file', (_field, stream, info) => {
          const target = p ?? info.filename;
          if (!target) {
            stream.resume();
            writes.push(Promise.reject(new HttpError(400, 'a file part without a path: give ?path= or a filename')));
            return;
          }
          const w = this.writeInside(rt, target, stream);
          w.catch(() => stream.resume());
          writes.push(w);
        });
        bb.on('error', reject);
        bb.on('close', resolve);
        body.pipe(bb);
      });
      const results = await Promise.all(writes);
      if (!results.length) throw new HttpError(400, 'no file in the multipart body (expected a part named "file")');
      return sendJson(res, 200, results);
    }
    if (!p) throw new HttpError(400, 'the "path" query parameter is required for an octet-stream upload');
    return sendJson(res, 200, [await this.writeInside(rt, p, body)]);
  }

  // ---- code interpreter

  private async interpreter(rt: SandboxRuntime, url: URL, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const p = url.pathname.replace(/\/+$/, '');
    const it = rt.interpreters;
    if (p === '/health' && req.method === 'GET') return sendJson(res, 200, { status: 'ok' });
    if (p === '/execute' && req.method === 'POST') {
      const body = await readJson(req, 16 << 20);
      if (typeof body.code !== 'string') throw new HttpError(400, '"code" (a string) is required');
      if (body.language && body.language !== 'python') throw new HttpError(400, `language "${String(body.language)}" is not supported by trenv's code interpreter (python only)`);
      const ctx = it.get(typeof body.context_id === 'string' ? body.context_id : undefined);
      if (!ctx) throw new HttpError(404, `context "${String(body.context_id)}" not found`);
      const env = body.env_vars && typeof body.env_vars === 'object' ? (body.env_vars as Record<string, string>) : {};
      res.writeHead(200, { 'Content-Type': 'application/x-ndjson' });
      res.flushHeaders(); // the SDK's request timeout runs until the headers arrive; the run may take long
      const ac = new AbortController();
      res.on('close', () => ac.abort());
      const onKill = () => res.destroy();
      rt.sb.once('killed', onKill);
      await ctx.execute(body.code, env, (m) => res.write(JSON.stringify(m) + '\n'), ac.signal);
      rt.sb.off('killed', onKill);
      res.end();
      return;
    }
    if (p === '/contexts' && req.method === 'POST') {
      const body = await readJson(req);
      try {
        return sendJson(res, 200, it.create(typeof body.language === 'string' ? body.language : undefined, typeof body.cwd === 'string' ? body.cwd : undefined));
      } catch (e) {
        throw new HttpError(400, (e as Error).message);
      }
    }
    if (p === '/contexts' && req.method === 'GET') return sendJson(res, 200, it.list());
    const m = /^\/contexts\/([^/]+)(\/restart)?$/.exec(p);
    if (m && req.method === 'DELETE' && !m[2]) {
      if (!it.remove(decodeURIComponent(m[1]))) throw new HttpError(404, `context "${m[1]}" not found`);
      return sendJson(res, 204, undefined);
    }
    if (m && req.method === 'POST' && m[2]) {
      if (!it.restart(decodeURIComponent(m[1]))) throw new HttpError(404, `context "${m[1]}" not found`);
      return sendJson(res, 204, undefined);
    }
    throw new HttpError(404, `no such code interpreter endpoint: ${req.method} ${p}`);
  }
}

/** The daemon's E2B API key: made once (`e2b_` + 40 hex), kept in the state dir, 0600. */
export function loadOrCreateApiKey(file: string, owner?: { uid: number; gid: number }): string {
  try {
    const k = fs.readFileSync(file, 'utf8').trim();
    if (/^e2b_[0-9a-f]{40}$/.test(k)) return k;
  } catch {
    /* make one */
  }
  const key = `e2b_${crypto.randomBytes(20).toString('hex')}`;
  const tmp = `${file}.${process.pid}`;
  fs.writeFileSync(tmp, key + '\n', { mode: 0o600 });
  fs.chmodSync(tmp, 0o600);
  if (owner) fs.chownSync(tmp, owner.uid, owner.gid);
  fs.renameSync(tmp, file);
  return key;
}
