/**
 * Hosting the webviews (webview/<view>/main.ts, bundled to dist/webview/<view>.js|css): a panel
 * with a strict CSP and a fresh nonce per document, typed messages (webview/shared/messages.ts),
 * and three thin panels fed by a data source the extension core implements over its daemon client.
 * The webviews only ever get records, logs, spans and samples: never the daemon's address or token.
 */
import * as crypto from 'node:crypto';
import * as vscode from 'vscode';
import type {
  FromWebview,
  InvocationDetail,
  InvocationSummary,
  LogLine,
  MemoryBaseline,
  MemoryEvent,
  MemorySnapshot,
  ToWebview,
  TraceFromWebview,
  TraceSpan,
  ViewName,
  BrowserFrameView,
} from '../../webview/shared/messages';
import { isMessage } from '../../webview/shared/messages';
import { renderWebviewHtml } from '../../webview/shared/html';

// ---------------------------------------------------------------- data sources

type Subscribe<T> = (cb: (e: T) => void) => vscode.Disposable;

/** What the panels need from the daemon (an adapter over the extension's client implements it). */
export interface LogsSource {
  getInvocation(id: string): Promise<InvocationDetail>;
  onLog: Subscribe<LogLine>;
  onInvocation: Subscribe<InvocationSummary>;
}
export interface TraceSource {
  getInvocation(id: string): Promise<InvocationDetail>;
  onSpan: Subscribe<TraceSpan>;
  onInvocation: Subscribe<InvocationSummary>;
}
export interface MemorySource {
  /** samples so far (per instance) and the baselines to draw beside them */
  getMemorySnapshot(): Promise<MemorySnapshot>;
  onMemory: Subscribe<MemoryEvent>;
  onBaseline: Subscribe<MemoryBaseline>;
}
export interface BrowserSource {
  /** asks the daemon for a live view of the invocation's page; frames arrive through onFrame */
  startView(invocationId: string): Promise<void>;
  stopView(invocationId: string): Promise<void>;
  onFrame: Subscribe<BrowserFrame>;
}
export type TrenvDataSource = LogsSource & TraceSource & MemorySource & BrowserSource;

import type { BrowserFrame } from '../../runtime-daemon/protocol/messages';

// ---------------------------------------------------------------- host

export interface WebviewPanelHostOptions<V extends ViewName> {
  view: V;
  /** the panel's viewType (used by a WebviewPanelSerializer too) */
  viewType: string;
  title: string;
  extensionUri: vscode.Uri;
  column?: vscode.ViewColumn;
  /** revive a panel VS Code restored (WebviewPanelSerializer.deserializeWebviewPanel) */
  panel?: vscode.WebviewPanel;
}

export function nonce(): string {
  return crypto.randomBytes(18).toString('base64url');
}

/**
 * Owns one WebviewPanel: creates it (scripts on, resources only from dist/webview, context not
 * retained when hidden: the webview reloads and posts `ready` again), sets its HTML, and passes
 * typed messages. Messages posted before the webview is ready are dropped: the `ready` handler
 * (`onReady`) re-sends an `init` with everything up to now.
 */
export class WebviewPanelHost<V extends ViewName> implements vscode.Disposable {
  readonly panel: vscode.WebviewPanel;
  private ready = false;
  private readonly disposables: vscode.Disposable[] = [];
  private readonly handlers = new Set<(msg: FromWebview<V>) => void>();
  private readonly onDidDisposeEmitter = new vscode.EventEmitter<void>();
  readonly onDidDispose = this.onDidDisposeEmitter.event;
  private disposed = false;

  constructor(private readonly opts: WebviewPanelHostOptions<V>) {
    const root = vscode.Uri.joinPath(opts.extensionUri, 'dist', 'webview');
    const options: vscode.WebviewPanelOptions & vscode.WebviewOptions = {
      enableScripts: true,
      localResourceRoots: [root],
      retainContextWhenHidden: false,
      enableFindWidget: false,
    };
    // a panel opened beside the editor keeps the focus in the editor (the logs of a lens click)
    const beside = opts.column === vscode.ViewColumn.Beside;
    this.panel = opts.panel ?? vscode.window.createWebviewPanel(opts.viewType, opts.title, { viewColumn: opts.column ?? vscode.ViewColumn.Active, preserveFocus: beside }, options);
    if (opts.panel) this.panel.webview.options = options;
    const webview = this.panel.webview;
    webview.html = renderWebviewHtml({
      view: opts.view,
      title: opts.title,
      cspSource: webview.cspSource,
      nonce: nonce(),
      scriptUri: webview.asWebviewUri(vscode.Uri.joinPath(root, `${opts.view}.js`)).toString(),
      styleUri: webview.asWebviewUri(vscode.Uri.joinPath(root, `${opts.view}.css`)).toString(),
    });
    this.disposables.push(
      webview.onDidReceiveMessage((raw: unknown) => {
        if (!isMessage(raw)) return;
        const msg = raw as FromWebview<V>;
        if (msg.type === 'ready') this.ready = true;
        for (const h of this.handlers) h(msg);
      }),
      this.panel.onDidChangeViewState(() => {
        // hidden: the document is gone (no retained context) until it posts `ready` again
        if (!this.panel.visible) this.ready = false;
      }),
      this.panel.onDidDispose(() => this.dispose()),
    );
  }

  get view(): V {
    return this.opts.view;
  }

  /** Posts to the webview if its document is loaded; returns false if the message was dropped. */
  post(msg: ToWebview<V>): Thenable<boolean> {
    if (this.disposed || !this.ready) return Promise.resolve(false);
    return this.panel.webview.postMessage(msg);
  }

  onMessage(handler: (msg: FromWebview<V>) => void): vscode.Disposable {
    this.handlers.add(handler);
    return new vscode.Disposable(() => this.handlers.delete(handler));
  }

  /** `handler` runs on every `ready` (first load and every reload of the webview's document). */
  onReady(handler: () => void): vscode.Disposable {
    return this.onMessage((m) => {
      if (m.type === 'ready') handler();
    });
  }

  set title(t: string) {
    this.panel.title = t;
  }

  reveal(column?: vscode.ViewColumn, preserveFocus = false): void {
    this.panel.reveal(column, preserveFocus);
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.handlers.clear();
    for (const d of this.disposables.splice(0)) d.dispose();
    this.panel.dispose();
    this.onDidDisposeEmitter.fire();
    this.onDidDisposeEmitter.dispose();
  }
}

// ---------------------------------------------------------------- panels

export const VIEW_TYPES = { logs: 'trenv.logs', memory: 'trenv.memory', trace: 'trenv.trace', browser: 'trenv.browser' } as const satisfies Record<ViewName, string>;

/** Base of the three panels: one host, the subscriptions that feed it, errors shown once. */
abstract class Panel<V extends ViewName> implements vscode.Disposable {
  protected readonly host: WebviewPanelHost<V>;
  protected readonly subs: vscode.Disposable[] = [];
  readonly onDidDispose: vscode.Event<void>;

  constructor(view: V, title: string, extensionUri: vscode.Uri, panel?: vscode.WebviewPanel, column?: vscode.ViewColumn) {
    this.host = new WebviewPanelHost({ view, viewType: VIEW_TYPES[view], title, extensionUri, panel, column });
    this.onDidDispose = this.host.onDidDispose;
    this.subs.push(this.host.onDidDispose(() => this.dispose()));
  }

  reveal(): void {
    this.host.reveal();
  }

  protected fail(what: string, e: unknown): void {
    void vscode.window.showErrorMessage(`TrEnv: could not load ${what}: ${(e as Error)?.message ?? e}. Check that the daemon is running (TrEnv: Show Status).`);
  }

  dispose(): void {
    for (const d of this.subs.splice(0)) d.dispose();
    this.host.dispose();
  }
}

/** The logs of one invocation; `show(id, seq)` switches to another one and scrolls to a line. */
export class LogsPanel extends Panel<'logs'> {
  private invocationId: string | undefined;
  private pendingSeq: number | undefined;
  /** lines that arrive while an `init` is being fetched: sent after it (the webview drops duplicates by seq) */
  private held: LogLine[] | undefined;
  private fetching = 0;

  constructor(private readonly source: LogsSource, extensionUri: vscode.Uri, panel?: vscode.WebviewPanel) {
    // beside the editor: the code stays in view while its logs stream in, and the webview stays
    // alive between invocations instead of reloading behind the editor's tab
    super('logs', 'TrEnv Logs', extensionUri, panel, vscode.ViewColumn.Beside);
    this.subs.push(
      this.host.onReady(() => void this.sendInit()),
      source.onLog((line) => {
        if (line.invocationId !== this.invocationId) return;
        if (this.held) this.held.push(line);
        else void this.host.post({ type: 'log', line });
      }),
      source.onInvocation((inv) => {
        if (inv.id === this.invocationId) void this.host.post({ type: 'state', invocation: inv });
      }),
    );
  }

  get current(): string | undefined {
    return this.invocationId;
  }

  async show(invocationId: string, seq?: number): Promise<void> {
    const switched = invocationId !== this.invocationId;
    this.invocationId = invocationId;
    this.pendingSeq = seq;
    this.host.reveal(undefined, true);
    if (switched) await this.sendInit();
    else if (seq !== undefined && (await this.host.post({ type: 'reveal', invocationId, seq }))) this.pendingSeq = undefined;
  }

  private async sendInit(): Promise<void> {
    const id = this.invocationId;
    if (!id) return;
    this.held ??= [];
    this.fetching++;
    try {
      const detail = await this.source.getInvocation(id);
      if (id !== this.invocationId) return; // switched meanwhile
      this.host.title = `Logs: ${detail.record.agent}`;
      await this.host.post({ type: 'init', detail });
      for (let line = this.held?.shift(); line; line = this.held?.shift()) if (line.invocationId === id) await this.host.post({ type: 'log', line });
      const seq = this.pendingSeq;
      if (seq !== undefined && (await this.host.post({ type: 'reveal', invocationId: id, seq }))) this.pendingSeq = undefined;
    } catch (e) {
      this.fail(`the logs of ${id}`, e);
    } finally {
      if (--this.fetching === 0) this.held = undefined;
    }
  }
}

/** The restore trace of one invocation; asks the extension to open the logs at a step. */
export class TracePanel extends Panel<'trace'> {
  private invocationId: string | undefined;
  /** spans that arrive while an `init` is being fetched (the webview drops duplicates) */
  private held: TraceSpan[] | undefined;
  private fetching = 0;

  constructor(
    private readonly source: TraceSource,
    extensionUri: vscode.Uri,
    private readonly openLogs: (req: Extract<TraceFromWebview, { type: 'openLogs' }>) => void,
    panel?: vscode.WebviewPanel,
  ) {
    super('trace', 'TrEnv Restore Trace', extensionUri, panel);
    this.subs.push(
      this.host.onReady(() => void this.sendInit()),
      this.host.onMessage((m) => {
        if (m.type === 'openLogs') this.openLogs(m);
      }),
      source.onSpan((span) => {
        if (span.invocationId !== this.invocationId) return;
        if (this.held) this.held.push(span);
        else void this.host.post({ type: 'span', span });
      }),
      source.onInvocation((inv) => {
        if (inv.id === this.invocationId) void this.host.post({ type: 'state', invocation: inv });
      }),
    );
  }

  async show(invocationId: string): Promise<void> {
    this.invocationId = invocationId;
    this.host.reveal();
    await this.sendInit();
  }

  private async sendInit(): Promise<void> {
    const id = this.invocationId;
    if (!id) return;
    this.held ??= [];
    this.fetching++;
    try {
      const detail = await this.source.getInvocation(id);
      if (id !== this.invocationId) return;
      this.host.title = `Trace: ${detail.record.agent}`;
      await this.host.post({ type: 'init', detail });
      for (let span = this.held?.shift(); span; span = this.held?.shift()) if (span.invocationId === id) await this.host.post({ type: 'span', span });
    } catch (e) {
      this.fail(`the trace of ${id}`, e);
    } finally {
      if (--this.fetching === 0) this.held = undefined;
    }
  }
}

/** Memory of all live sandboxes (and templates), with the baselines. */
export class MemoryPanel extends Panel<'memory'> {
  constructor(private readonly source: MemorySource, extensionUri: vscode.Uri, panel?: vscode.WebviewPanel) {
    super('memory', 'TrEnv Memory', extensionUri, panel);
    this.subs.push(
      this.host.onReady(() => void this.sendInit()),
      source.onMemory((e) => void this.host.post({ type: 'memory', ...e })),
      source.onBaseline((b) => void this.host.post({ type: 'baseline', ...b })),
    );
  }

  private async sendInit(): Promise<void> {
    try {
      await this.host.post({ type: 'init', snapshot: await this.source.getMemorySnapshot() });
    } catch (e) {
      this.fail('the memory samples', e);
    }
  }
}

/**
 * A live, read-only view of one running invocation's browser page: the daemon screencasts it
 * (CDP Page.startScreencast on the agent's newest page) and the webview draws the frames with the
 * page's URL and title. Nothing is sent to the page.
 */
export class BrowserPanel extends Panel<'browser'> {
  private last: BrowserFrameView | undefined;
  private ended: string | undefined;

  constructor(private readonly source: BrowserSource, extensionUri: vscode.Uri, readonly invocationId: string, private readonly agent: string) {
    super('browser', `Browser · ${agent}`, extensionUri, undefined, vscode.ViewColumn.Beside);
    this.subs.push(
      this.host.onReady(() => void this.host.post({ type: 'init', invocationId, agent, frame: this.last, ended: this.ended })),
      source.onFrame((f) => {
        if (f.invocationId !== invocationId) return;
        if (f.ended) {
          this.ended = f.ended;
          void this.host.post({ type: 'ended', reason: f.ended });
        } else if (f.data) {
          this.last = { data: f.data, url: f.url ?? '', title: f.title ?? '', width: f.width ?? 0, height: f.height ?? 0 };
          void this.host.post({ type: 'frame', ...this.last });
        }
      }),
      new vscode.Disposable(() => void source.stopView(invocationId).catch(() => undefined)),
    );
  }

  async start(): Promise<void> {
    try {
      await this.source.startView(this.invocationId);
    } catch (e) {
      this.fail('the live browser view', e);
      this.dispose();
    }
  }
}
