/**
 * The extension's context: owns the daemon connection for the session (a LanguageClient over our
 * WebSocket transport), reconnects with backoff when the daemon restarts, and exposes typed calls
 * and events to commands and views. Two disposable scopes: one for the session, one per connection.
 */
import * as vscode from 'vscode';
import { LanguageClient, LanguageClientOptions, CloseAction, ErrorAction, State } from 'vscode-languageclient/node';
import {
  BrowserFrame,
  DaemonStatus,
  InvocationSummary,
  LogLine,
  MemorySample,
  Methods,
  Notifications,
  SandboxInfo,
  TraceSpan,
} from '../runtime-daemon/protocol/messages';
import { Backoff, DaemonUnavailable, openTransport, startDaemon } from './daemon';

export type ConnState = 'connecting' | 'connected' | 'disconnected';

export class Ctx implements vscode.Disposable {
  readonly log: vscode.LogOutputChannel;
  client: LanguageClient | undefined;
  state: ConnState = 'disconnected';
  status: DaemonStatus | undefined;
  private readonly session: vscode.Disposable[] = [];
  private perConnection: vscode.Disposable[] = [];
  private readonly backoff = new Backoff();
  private reconnectTimer: NodeJS.Timeout | undefined;
  private disposed = false;
  private startedDaemon = false;

  readonly onState = new vscode.EventEmitter<ConnState>();
  readonly onLog = new vscode.EventEmitter<LogLine>();
  readonly onBrowserFrame = new vscode.EventEmitter<BrowserFrame>();
  readonly onSpan = new vscode.EventEmitter<TraceSpan>();
  readonly onMemory = new vscode.EventEmitter<{ invocationId: string; sample: MemorySample }>();
  readonly onInvocation = new vscode.EventEmitter<InvocationSummary>();
  readonly onSandboxes = new vscode.EventEmitter<SandboxInfo[]>();

  constructor(readonly ext: vscode.ExtensionContext) {
    this.log = vscode.window.createOutputChannel('TrEnv', { log: true });
    this.session.push(this.log, this.onState, this.onLog, this.onBrowserFrame, this.onSpan, this.onMemory, this.onInvocation, this.onSandboxes);
  }

  config() {
    const c = vscode.workspace.getConfiguration('trenv');
    return {
      stateDir: c.get<string>('stateDir') || process.env.TRENV_STATE_DIR || '/var/lib/trenv',
      autoStart: c.get<boolean>('daemon.autoStart', true),
      startCommand: c.get<string>('daemon.startCommand') || '',
    };
  }

  private setState(s: ConnState): void {
    this.state = s;
    this.onState.fire(s);
  }

  /** Connects now (or schedules a retry). */
  async connect(): Promise<void> {
    if (this.disposed || this.state === 'connecting') return;
    clearTimeout(this.reconnectTimer);
    this.setState('connecting');
    const cfg = this.config();
    try {
      let opened;
      try {
        opened = await openTransport(cfg.stateDir);
      } catch (e) {
        if (!(e instanceof DaemonUnavailable) || !e.canStart || !cfg.autoStart || this.startedDaemon) throw e;
        // start it once per session when allowed; then connect again
        this.startedDaemon = true;
        const cmd = cfg.startCommand || `"${process.execPath}" "${this.ext.asAbsolutePath('dist/trenv.js')}" daemon start --state-dir "${cfg.stateDir}"`;
        this.log.info(`starting the daemon: ${cmd}`);
        await startDaemon(cmd, this.ext.extensionPath, (l) => this.log.info(l));
        opened = await openTransport(cfg.stateDir);
      }
      await this.attach(opened.transport, opened.socket);
      this.backoff.reset();
      this.log.info(`connected to trenvd on 127.0.0.1:${opened.info.port} (pid ${opened.info.pid})`);
    } catch (e) {
      this.setState('disconnected');
      const delay = this.backoff.next();
      this.log.warn(`${(e as Error).message}; retrying in ${delay} ms`);
      this.reconnectTimer = setTimeout(() => void this.connect(), delay);
    }
  }

  private async attach(transport: Awaited<ReturnType<typeof openTransport>>['transport'], socket: { on(ev: 'close', cb: () => void): void }): Promise<void> {
    const options: LanguageClientOptions = {
      documentSelector: [
        { scheme: 'file', language: 'python' },
        { scheme: 'file', language: 'javascript' },
        { scheme: 'file', pattern: '**/trenv.json' },
      ],
      outputChannel: this.log,
      // reconnecting is ours: the client must not restart a server it did not start
      errorHandler: { error: () => ({ action: ErrorAction.Shutdown }), closed: () => ({ action: CloseAction.DoNotRestart }) },
    };
    const client = new LanguageClient('trenv', 'TrEnv daemon', () => Promise.resolve(transport), options);
    this.client = client;
    this.perConnection.push(
      client.onNotification(Notifications.log, (l) => this.onLog.fire(l)),
      client.onNotification(Notifications.browserFrame, (f) => this.onBrowserFrame.fire(f)),
      client.onNotification(Notifications.span, (s) => this.onSpan.fire(s)),
      client.onNotification(Notifications.memory, (m) => this.onMemory.fire(m)),
      client.onNotification(Notifications.invocation, (s) => this.onInvocation.fire(s)),
      client.onNotification(Notifications.sandboxes, (s) => this.onSandboxes.fire(s)),
      client.onDidChangeState((e) => {
        if (e.newState === State.Stopped && this.client === client) this.lost('the language client stopped');
      }),
    );
    socket.on('close', () => {
      if (this.client === client) this.lost('the daemon closed the connection');
    });
    await client.start();
    await client.sendRequest(Methods.subscribe, { topics: ['invocations', 'sandboxes', 'logs', 'trace', 'memory'] });
    this.status = await client.sendRequest(Methods.status);
    this.setState('connected');
  }

  private lost(why: string): void {
    const client = this.client;
    this.client = undefined;
    for (const d of this.perConnection) d.dispose();
    this.perConnection = [];
    if (client) void client.dispose().catch(() => undefined);
    if (this.disposed) return;
    this.log.warn(`${why}: reconnecting`);
    this.setState('disconnected');
    const delay = this.backoff.next();
    this.reconnectTimer = setTimeout(() => void this.connect(), delay);
  }

  /** The connected client, or a clear error. */
  need(): LanguageClient {
    if (!this.client || this.state !== 'connected') {
      throw new Error('TrEnv is not connected to its daemon: run "TrEnv: Restart Daemon" or see the TrEnv output');
    }
    return this.client;
  }

  async restartDaemon(): Promise<void> {
    const cfg = this.config();
    try {
      await this.need().sendRequest(Methods.shutdown);
    } catch {
      /* not running */
    }
    this.startedDaemon = false;
    this.lost('restarting the daemon');
    await new Promise((r) => setTimeout(r, 500));
    this.backoff.reset();
    void cfg;
    await this.connect();
  }

  dispose(): void {
    this.disposed = true;
    clearTimeout(this.reconnectTimer);
    for (const d of this.perConnection) d.dispose();
    void this.client?.dispose().catch(() => undefined);
    for (const d of this.session) d.dispose();
  }
}
