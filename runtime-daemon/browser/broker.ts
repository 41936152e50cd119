/**
 * The browser service: one shared Chromium (started on first use, restarted after a crash) and, per
 * sandbox that asks for a browser, its own CDP endpoint — an HTTP + WebSocket server on a unix
 * socket in a root-only dir — behind which the agent gets its own browser context and sees only
 * its own targets and sessions (rules in cdpFilter.ts). A container sandbox reaches its endpoint at
 * 127.0.0.1:9222 inside its own network namespace through `trenv-enter expose` (no network needed).
 *
 * Each agent connection is its own upstream connection to Chromium, so CDP session ids never mix;
 * the broker keeps one privileged connection of its own for contexts and target lookups.
 */
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import WebSocket, { WebSocketServer } from 'ws';
import { Chromium, newProfileDir } from './chromium';
import { CdpMessage, decide, Decision, filterResponse, keepEvent, Ownership, visibleTarget } from './cdpFilter';

const INTERNAL_ID = 1_000_000_000;

/** A CDP connection the daemon itself uses: request/response by id, events emitted. */
class CdpClient extends EventEmitter {
  private seq = INTERNAL_ID;
  private readonly pending = new Map<number, { resolve: (r: Record<string, unknown>) => void; reject: (e: Error) => void }>();

  constructor(readonly ws: WebSocket) {
    super();
    ws.on('message', (data) => {
      let m: CdpMessage;
      try {
        m = JSON.parse(data.toString()) as CdpMessage;
      } catch {
        return;
      }
      if (typeof m.id === 'number' && this.pending.has(m.id)) {
        const p = this.pending.get(m.id)!;
        this.pending.delete(m.id);
        if (m.error) p.reject(new Error(m.error.message));
        else p.resolve(m.result ?? {});
      } else if (m.method) this.emit('event', m);
    });
    ws.on('close', () => {
      for (const p of this.pending.values()) p.reject(new Error('the shared browser connection closed'));
      this.pending.clear();
      this.emit('close');
    });
    ws.on('error', () => undefined);
  }

  static open(url: string): Promise<CdpClient> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 256 * 1024 * 1024 });
      ws.once('open', () => resolve(new CdpClient(ws)));
      ws.once('error', reject);
    });
  }

  send(method: string, params: Record<string, unknown> = {}, sessionId?: string): Promise<Record<string, unknown>> {
    const id = ++this.seq;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ id, method, params, ...(sessionId ? { sessionId } : {}) }));
    });
  }
}

interface Endpoint {
  sandboxId: string;
  socketPath: string;
  server: http.Server;
  wss: WebSocketServer;
  contexts: Set<string>;
  targets: Map<string, string>;
  defaultContext?: string;
  /** the browser generation the contexts belong to (a crash makes them gone) */
  generation: number;
  downloadsDir: string;
  conns: Set<AgentConnection>;
}

/** One agent connection: client ws <-> filtered <-> its own upstream ws to Chromium. */
class AgentConnection {
  private chain: Promise<void> = Promise.resolve();
  private readonly pending = new Map<number, Decision & { action: 'forward' }>();
  readonly own: Ownership;

  constructor(
    private readonly client: WebSocket,
    private readonly upstream: CdpClient,
    ep: Endpoint,
    private readonly lookup: (targetId: string) => Promise<string | undefined>,
  ) {
    this.own = { defaultContext: ep.defaultContext!, contexts: ep.contexts, targets: ep.targets, sessions: new Set(), downloadsDir: ep.downloadsDir };
    client.on('message', (data) => this.feed(data.toString()));
    upstream.ws.on('message', (data) => this.fromBrowser(data.toString()));
    upstream.on('close', () => this.close(1011, 'the shared browser went away (crashed or restarted): connect again for a new session'));
    client.on('close', () => upstream.ws.close());
    client.on('error', () => undefined);
  }

  /** A message from the agent, handled in order (a decision may wait for a target lookup). */
  feed(text: string): void {
    this.chain = this.chain.then(() => this.fromClient(text)).catch(() => undefined);
  }

  close(code = 1000, reason = ''): void {
    if (this.client.readyState === WebSocket.OPEN) this.client.close(code, reason);
    this.upstream.ws.close();
  }

  private reply(m: CdpMessage): void {
    if (this.client.readyState === WebSocket.OPEN) this.client.send(JSON.stringify(m));
  }

  private async fromClient(text: string): Promise<void> {
    let msg: CdpMessage;
    try {
      msg = JSON.parse(text) as CdpMessage;
    } catch {
      return this.reply({ error: { code: -32700, message: 'Message must be a valid JSON' } });
    }
    if (typeof msg.id !== 'number' || typeof msg.method !== 'string' || msg.id >= INTERNAL_ID) {
      return this.reply({ id: msg.id, error: { code: -32600, message: 'Message must have integer id (< 1e9) and string method' } });
    }
    let d = decide(msg, this.own);
    if (d.action === 'lookup') {
      const ctx = await this.lookup(d.targetId);
      if (ctx) this.own.targets.set(d.targetId, ctx);
      d = ctx ? decide(msg, this.own) : { action: 'refuse', message: 'No target with given id found' };
      if (d.action === 'lookup') d = { action: 'refuse', message: 'No target with given id found' };
    }
    if (d.action === 'refuse') return this.reply({ id: msg.id, ...(msg.sessionId ? { sessionId: msg.sessionId } : {}), error: { code: -32000, message: d.message } });
    if (d.action === 'answer') return this.reply({ id: msg.id, ...(msg.sessionId ? { sessionId: msg.sessionId } : {}), result: d.result });
    if (d.after) this.pending.set(msg.id, d);
    this.upstream.ws.send(JSON.stringify(d.msg));
  }

  private fromBrowser(text: string): void {
    let m: CdpMessage;
    try {
      m = JSON.parse(text) as CdpMessage;
    } catch {
      return;
    }
    if (typeof m.id === 'number') {
      if (m.id >= INTERNAL_ID) return; // the broker's own request on this connection
      const d = this.pending.get(m.id);
      this.pending.delete(m.id);
      return this.reply(d ? filterResponse(d, m, this.own) : m);
    }
    const v = keepEvent(m, this.own);
    if (v === 'keep') return this.reply(m);
    if (v === 'drop') return;
    // auto-attached to someone else's target: let it run and let go of it
    const { sessionId, waiting } = v.release;
    if (waiting) void this.upstream.send('Runtime.runIfWaitingForDebugger', {}, sessionId).catch(() => undefined);
    void this.upstream.send('Target.detachFromTarget', { sessionId }).catch(() => undefined);
  }
}

export interface BrowserStats {
  running: boolean;
  pid?: number;
  pssKb: number;
  endpoints: number;
  contexts: number;
  connections: number;
  downloadsRoot: string;
}

export class BrowserBroker extends EventEmitter {
  private chromium: Chromium | undefined;
  private admin: CdpClient | undefined;
  private starting: Promise<CdpClient> | undefined;
  private generation = 0;
  private version: Record<string, unknown> = {};
  private readonly endpoints = new Map<string, Endpoint>();
  private readonly dir: string;
  /** where agents' downloads land: one dir per sandbox, writable by the browser user only */
  readonly downloadsRoot: string;

  constructor(private readonly stateDir: string, private readonly log: (m: string) => void = () => undefined) {
    super();
    this.dir = path.join(stateDir, 'browser');
    this.downloadsRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'trenv-downloads-'));
    fs.chmodSync(this.downloadsRoot, 0o711);
    // endpoints of a previous daemon: their sockets are dead files now
    fs.rmSync(path.join(this.dir, 'ep'), { recursive: true, force: true });
    fs.mkdirSync(path.join(this.dir, 'ep'), { recursive: true, mode: 0o700 });
    fs.chmodSync(path.join(this.dir, 'ep'), 0o700);
  }

  /** The running browser's privileged connection, starting Chromium first when needed. */
  private ensure(): Promise<CdpClient> {
    if (this.admin && !this.chromium?.exited) return Promise.resolve(this.admin);
    this.starting ??= (async () => {
      const gen = ++this.generation;
      const profile = newProfileDir(this.stateDir);
      const c = new Chromium(profile, this.log);
      const url = await c.start();
      fs.writeFileSync(path.join(this.dir, 'pid'), JSON.stringify({ pid: c.pid, profile }));
      const admin = await CdpClient.open(url);
      this.version = await admin.send('Browser.getVersion');
      c.once('exit', (why: string) => this.crashed(gen, why));
      this.chromium = c;
      this.admin = admin;
      this.log(`shared browser started: ${String(this.version.product)} (pid ${c.pid})`);
      return admin;
    })().finally(() => (this.starting = undefined));
    return this.starting;
  }

  private crashed(gen: number, why: string): void {
    if (gen !== this.generation) return;
    this.admin = undefined;
    for (const ep of this.endpoints.values()) {
      ep.contexts.clear();
      ep.targets.clear();
      ep.defaultContext = undefined;
      for (const c of ep.conns) c.close(1011, `${why}: open a new session (the next one gets a new browser)`);
      ep.conns.clear();
    }
    this.emit('crash', why);
  }

  /** The sandbox's downloads dir (made by endpoint()). */
  downloadsDir(sandboxId: string): string {
    return path.join(this.downloadsRoot, sandboxId);
  }

  /** The sandbox's endpoint (a unix socket path), made on first use. */
  async endpoint(sandboxId: string, downloadsDir = this.downloadsDir(sandboxId)): Promise<string> {
    const have = this.endpoints.get(sandboxId);
    if (have) return have.socketPath;
    fs.mkdirSync(downloadsDir, { recursive: true, mode: 0o700 });
    fs.chownSync(downloadsDir, 65534, 65534); // the browser runs as nobody
    const socketPath = path.join(this.dir, 'ep', `${sandboxId}.sock`);
    fs.rmSync(socketPath, { force: true });
    const ep: Endpoint = {
      sandboxId,
      socketPath,
      server: http.createServer((req, res) => void this.http(ep, req, res)),
      wss: new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 256 * 1024 * 1024 }),
      contexts: new Set(),
      targets: new Map(),
      generation: 0,
      downloadsDir: path.resolve(downloadsDir),
      conns: new Set(),
    };
    ep.server.on('upgrade', (req, socket, head) => {
      if (!/^\/devtools\/browser(\/|$)/.test(req.url ?? '')) {
        socket.end('HTTP/1.1 403 Forbidden\r\n\r\nonly the browser endpoint /devtools/browser/... is served\r\n');
        return;
      }
      void this.prepare(ep).then(
        () => ep.wss.handleUpgrade(req, socket, head, (ws) => void this.connect(ep, ws)),
        (e: Error) => socket.end(`HTTP/1.1 503 Service Unavailable\r\n\r\n${e.message}\r\n`),
      );
    });
    await new Promise<void>((resolve, reject) => {
      ep.server.once('error', reject);
      ep.server.listen(socketPath, () => resolve());
    });
    fs.chmodSync(socketPath, 0o600);
    this.endpoints.set(sandboxId, ep);
    return socketPath;
  }

  /** The sandbox's own context in the current browser (made again after a crash). */
  private async prepare(ep: Endpoint): Promise<CdpClient> {
    const admin = await this.ensure();
    if (!ep.defaultContext || ep.generation !== this.generation) {
      const r = await admin.send('Target.createBrowserContext', { disposeOnDetach: false });
      ep.defaultContext = String(r.browserContextId);
      ep.contexts.clear();
      ep.targets.clear();
      ep.contexts.add(ep.defaultContext);
      ep.generation = this.generation;
    }
    return admin;
  }

  private async connect(ep: Endpoint, ws: WebSocket): Promise<void> {
    // the agent may send before its upstream connection is open: keep those messages, in order
    const early: string[] = [];
    const onEarly = (d: WebSocket.RawData) => early.push(d.toString());
    ws.on('message', onEarly);
    let upstream: CdpClient;
    try {
      await this.prepare(ep);
      upstream = await CdpClient.open(this.chromium!.wsUrl).catch(async () => {
        // the browser died and its exit is not handled yet: treat it as the crash it is, start anew
        this.crashed(this.generation, 'the shared browser is gone');
        await this.prepare(ep);
        return CdpClient.open(this.chromium!.wsUrl);
      });
    } catch (e) {
      ws.close(1011, (e as Error).message.slice(0, 120));
      return;
    }
    const conn = new AgentConnection(ws, upstream, ep, async (targetId) => {
      try {
        const r = await this.admin!.send('Target.getTargetInfo', { targetId });
        const info = r.targetInfo as { browserContextId?: string; type?: string; url?: string } | undefined;
        return visibleTarget(info) ? info?.browserContextId : undefined;
      } catch {
        return undefined;
      }
    });
    ws.off('message', onEarly);
    for (const m of early) conn.feed(m);
    ep.conns.add(conn);
    ws.on('close', () => ep.conns.delete(conn));
  }

  private async http(ep: Endpoint, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = (req.url ?? '').replace(/\/+$/, '');
    const json = (code: number, body: unknown) => {
      res.writeHead(code, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    try {
      if (url === '/json/version') {
        await this.prepare(ep);
        return json(200, {
          Browser: this.version.product,
          'Protocol-Version': this.version.protocolVersion,
          'User-Agent': this.version.userAgent,
          'V8-Version': this.version.jsVersion,
          'WebKit-Version': this.version.revision,
          webSocketDebuggerUrl: `ws://${req.headers.host ?? '127.0.0.1'}/devtools/browser/trenv-${ep.sandboxId}`,
        });
      }
      if (url === '/json' || url === '/json/list') {
        const admin = await this.prepare(ep);
        const r = await admin.send('Target.getTargets');
        const mine = (r.targetInfos as Array<{ targetId: string; type: string; title: string; url: string; browserContextId?: string }>).filter(
          (t) => t.browserContextId && ep.contexts.has(t.browserContextId),
        );
        return json(200, mine.map((t) => ({ id: t.targetId, type: t.type, title: t.title, url: t.url })));
      }
      json(404, { error: `not served through trenv's shared browser: ${url || '/'}` });
    } catch (e) {
      json(503, { error: (e as Error).message });
    }
  }

  /** Ends the sandbox's endpoint: connections closed, its contexts (and their targets) disposed. */
  async release(sandboxId: string): Promise<void> {
    const ep = this.endpoints.get(sandboxId);
    if (!ep) return;
    this.endpoints.delete(sandboxId);
    for (const c of ep.conns) c.close(1000, 'the sandbox ended');
    ep.conns.clear();
    await new Promise<void>((r) => ep.server.close(() => r()));
    fs.rmSync(ep.socketPath, { force: true });
    fs.rmSync(ep.downloadsDir, { recursive: true, force: true }); // like the sandbox's writable layer
    if (this.admin && ep.generation === this.generation) {
      await Promise.all([...ep.contexts].map((id) => this.admin!.send('Target.disposeBrowserContext', { browserContextId: id }).catch(() => undefined)));
    }
  }

  /**
   * A live view of the sandbox's newest page (read-only: only screencast commands are sent), over
   * the broker's own connection. Waits for the agent to open a page; follows to a newer one.
   * Returns a stop function.
   */
  async screencast(sandboxId: string, onFrame: (f: ScreencastFrame) => void, onEnd: (why: string) => void): Promise<() => Promise<void>> {
    const ep = this.endpoints.get(sandboxId);
    if (!ep) throw new Error('this invocation has no browser session (not running, or its agent has no "browser": true)');
    const admin = await this.prepare(ep);
    let stopped = false;
    let session: string | undefined;
    let target: { targetId: string; url: string; title: string } | undefined;
    let last: ScreencastFrame | undefined;
    const onEvent = (m: CdpMessage) => {
      if (m.sessionId !== session || !session) return;
      if (m.method === 'Page.screencastFrame') {
        const p = m.params as { data: string; sessionId: number; metadata: { deviceWidth: number; deviceHeight: number } };
        void admin.send('Page.screencastFrameAck', { sessionId: p.sessionId }, session).catch(() => undefined);
        last = { data: p.data, url: target?.url ?? '', title: target?.title ?? '', width: p.metadata.deviceWidth, height: p.metadata.deviceHeight, targetId: target?.targetId ?? '' };
        onFrame(last);
      }
    };
    const onInfo = (m: CdpMessage) => {
      const info = (m.params as { targetInfo?: { targetId: string; url: string; title: string } } | undefined)?.targetInfo;
      if (m.method === 'Target.targetInfoChanged' && info && info.targetId === target?.targetId) target = { ...target, url: info.url, title: info.title };
    };
    admin.on('event', onEvent);
    admin.on('event', onInfo);
    await admin.send('Target.setDiscoverTargets', { discover: true }).catch(() => undefined);
    const attach = async () => {
      const r = await admin.send('Target.getTargets');
      const pages = (r.targetInfos as Array<{ targetId: string; type: string; url: string; title: string; browserContextId?: string }>).filter(
        (t) => t.type === 'page' && t.browserContextId && ep.contexts.has(t.browserContextId),
      );
      const newest = pages[pages.length - 1];
      if (newest && target && newest.targetId === target.targetId && (newest.url !== target.url || newest.title !== target.title)) {
        // a static page sends no new frames: show the title and URL it has now with the last frame
        target = { ...target, url: newest.url, title: newest.title };
        if (last) onFrame((last = { ...last, url: newest.url, title: newest.title }));
      }
      if (!newest || newest.targetId === target?.targetId) return;
      if (session) await admin.send('Target.detachFromTarget', { sessionId: session }).catch(() => undefined);
      target = newest;
      session = String((await admin.send('Target.attachToTarget', { targetId: newest.targetId, flatten: true })).sessionId);
      await admin.send('Page.startScreencast', { format: 'jpeg', quality: 70, maxWidth: 1024, maxHeight: 768, everyNthFrame: 1 }, session);
    };
    const poll = setInterval(() => {
      if (stopped) return;
      if (!this.endpoints.has(sandboxId)) {
        void stop().then(() => onEnd('the invocation ended'));
        return;
      }
      void attach().catch(() => undefined);
    }, 500);
    await attach().catch(() => undefined);
    const stop = async () => {
      if (stopped) return;
      stopped = true;
      clearInterval(poll);
      admin.off('event', onEvent);
      admin.off('event', onInfo);
      if (session) {
        await admin.send('Page.stopScreencast', {}, session).catch(() => undefined);
        await admin.send('Target.detachFromTarget', { sessionId: session }).catch(() => undefined);
      }
    };
    return stop;
  }

  /** Contexts and targets the browser has now (for leak checks), besides the default context. */
  async census(): Promise<{ contexts: number; targets: number }> {
    if (!this.admin || this.chromium?.exited) return { contexts: 0, targets: 0 };
    const [c, t] = await Promise.all([this.admin.send('Target.getBrowserContexts'), this.admin.send('Target.getTargets')]);
    const ctxs = c.browserContextIds as string[];
    const targets = (t.targetInfos as Array<{ browserContextId?: string; type: string }>).filter((x) => x.browserContextId && ctxs.includes(x.browserContextId));
    return { contexts: ctxs.length, targets: targets.length };
  }

  stats(): BrowserStats {
    const running = !!this.chromium && !this.chromium.exited;
    let contexts = 0;
    let connections = 0;
    for (const ep of this.endpoints.values()) {
      contexts += ep.contexts.size;
      connections += ep.conns.size;
    }
    return {
      running,
      ...(running ? { pid: this.chromium!.pid } : {}),
      pssKb: running ? this.chromium!.pssKb() : 0,
      endpoints: this.endpoints.size,
      contexts,
      connections,
      downloadsRoot: this.downloadsRoot,
    };
  }

  /** The browser's pid (tests kill it to check recovery). */
  get pid(): number | undefined {
    return this.chromium && !this.chromium.exited ? this.chromium.pid : undefined;
  }

  async stop(): Promise<void> {
    for (const id of [...this.endpoints.keys()]) await this.release(id);
    this.admin?.ws.close();
    await this.chromium?.stop();
    fs.rmSync(path.join(this.dir, 'pid'), { force: true });
    fs.rmSync(this.downloadsRoot, { recursive: true, force: true });
  }

  /** After a daemon crash: the browser it left (pid file, checked against the command line). */
  static reapLeftover(stateDir: string): boolean {
    const pidFile = path.join(stateDir, 'browser', 'pid');
    try {
      const { pid, profile } = JSON.parse(fs.readFileSync(pidFile, 'utf8')) as { pid: number; profile: string };
      fs.rmSync(pidFile, { force: true });
      let killed = false;
      try {
        if (fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(profile)) {
          process.kill(pid, 'SIGKILL');
          killed = true;
        }
      } finally {
        fs.rmSync(profile, { recursive: true, force: true });
      }
      return killed;
    } catch {
      /* nothing left */
    }
    return false;
  }
}

export interface ScreencastFrame {
  /** base64 JPEG */
  data: string;
  url: string;
  title: string;
  width: number;
  height: number;
  targetId: string;
}
