/**
 * The extension's webview panels (logs, restore trace, memory) fed from the daemon client: an
 * adapter from Ctx's notifications and requests to the panels' data-source interfaces. Panels are
 * created on first use and reused; the webviews never see the daemon's address or token.
 */
import * as vscode from 'vscode';
import { InvocationSummary, MemorySample, Methods } from '../runtime-daemon/protocol/messages';
import type { MemoryBaseline, MemorySnapshot } from '../webview/shared/messages';
import type { Ctx } from './ctx';
import { BrowserPanel, LogsPanel, MemoryPanel, TracePanel, TrenvDataSource } from './webviews/panels';

const RECENT_MS = 10 * 60_000;

function peak(samples: MemorySample[]): MemorySample | undefined {
  return samples.reduce<MemorySample | undefined>((m, s) => (!m || s.pssKb > m.pssKb ? s : m), undefined);
}

export class Panels implements vscode.Disposable {
  private logs: LogsPanel | undefined;
  private trace: TracePanel | undefined;
  private memory: MemoryPanel | undefined;
  private readonly browsers = new Map<string, BrowserPanel>();
  private follow: string | undefined;
  private readonly agents = new Map<string, string>(); // invocation id -> agent name
  private readonly baselines = new vscode.EventEmitter<MemoryBaseline>();
  private readonly subs: vscode.Disposable[] = [];
  readonly source: TrenvDataSource;

  constructor(private readonly ctx: Ctx, private readonly ext: vscode.ExtensionContext) {
    this.source = {
      getInvocation: (id) => ctx.need().sendRequest(Methods.getInvocation, { id }),
      onLog: (cb) => ctx.onLog.event(cb),
      onSpan: (cb) => ctx.onSpan.event(cb),
      onInvocation: (cb) => ctx.onInvocation.event(cb),
      getMemorySnapshot: () => this.snapshot(),
      onMemory: (cb) =>
        ctx.onMemory.event((e) => cb({ instanceId: e.invocationId, label: `${this.agents.get(e.invocationId) ?? 'agent'} · ${e.invocationId.slice(-8)}`, sample: e.sample })),
      onBaseline: (cb) => this.baselines.event(cb),
      startView: async (id) => void (await ctx.need().sendRequest(Methods.browserView, { invocationId: id })),
      stopView: async (id) => void (await ctx.need().sendRequest(Methods.browserViewStop, { invocationId: id })),
      onFrame: (cb) => ctx.onBrowserFrame.event(cb),
    };
    this.subs.push(
      this.baselines,
      ctx.onInvocation.event((inv) => this.onInvocation(inv)),
    );
  }

  private onInvocation(inv: InvocationSummary): void {
    this.agents.set(inv.id, inv.agent);
    if (this.follow && inv.agentDir === this.follow) {
      this.follow = undefined;
      void this.showLogs(inv.id);
    }
    // a finished cold start is the "what you would otherwise pay" baseline of the memory view
    if (inv.start === 'fresh' && !inv.template && inv.state === 'succeeded' && this.memory) void this.emitColdBaseline(inv.id);
  }

  private async emitColdBaseline(id: string): Promise<MemoryBaseline | undefined> {
    const d = await this.ctx.need().sendRequest(Methods.getInvocation, { id });
    const p = peak(d.memory);
    if (!p) return undefined;
    const b = { label: `cold start (${d.record.agent})`, sample: p };
    this.baselines.fire(b);
    return b;
  }

  private async snapshot(): Promise<MemorySnapshot> {
    const c = this.ctx.need();
    const list = await c.sendRequest(Methods.listInvocations, { limit: 40 });
    const recent = list.filter((s) => s.state === 'running' || Date.now() - (s.endedAt ?? s.createdAt) < RECENT_MS).slice(0, 12);
    const details = await Promise.all(recent.map((s) => c.sendRequest(Methods.getInvocation, { id: s.id })));
    const baselines: MemoryBaseline[] = [];
    const cold = list.find((s) => s.start === 'fresh' && !s.template && s.state === 'succeeded');
    if (cold) {
      const d = details.find((x) => x.record.id === cold.id) ?? (await c.sendRequest(Methods.getInvocation, { id: cold.id }));
      const p = peak(d.memory);
      if (p) baselines.push({ label: `cold start (${d.record.agent})`, sample: p });
    }
    for (const s of recent) this.agents.set(s.id, s.agent);
    return {
      instances: details.filter((d) => d.memory.length).map((d) => ({ instanceId: d.record.id, label: `${d.record.agent} · ${d.record.id.slice(-8)}`, samples: d.memory })),
      baselines,
    };
  }

  /** The logs panel shows this agent's next invocation as soon as the daemon announces it. */
  followNext(agentDir: string): void {
    this.follow = agentDir;
  }

  async showLogs(id: string, seq?: number): Promise<void> {
    if (!this.logs) {
      this.logs = new LogsPanel(this.source, this.ext.extensionUri);
      this.logs.onDidDispose(() => (this.logs = undefined));
    }
    await this.logs.show(id, seq);
  }

  async showTrace(id: string): Promise<void> {
    if (!this.trace) {
      this.trace = new TracePanel(this.source, this.ext.extensionUri, (req) => void this.showLogs(req.invocationId, req.seq));
      this.trace.onDidDispose(() => (this.trace = undefined));
    }
    await this.trace.show(id);
  }

  async showMemory(_id?: string): Promise<void> {
    if (!this.memory) {
      this.memory = new MemoryPanel(this.source, this.ext.extensionUri);
      this.memory.onDidDispose(() => (this.memory = undefined));
    }
    this.memory.reveal();
  }

  /** A live view of a running invocation's browser page (one panel per invocation). */
  async showBrowser(id: string, agent: string): Promise<void> {
    const have = this.browsers.get(id);
    if (have) return have.reveal();
    const p = new BrowserPanel(this.source, this.ext.extensionUri, id, agent);
    this.browsers.set(id, p);
    p.onDidDispose(() => this.browsers.delete(id));
    await p.start();
  }

  dispose(): void {
    for (const b of this.browsers.values()) b.dispose();
    this.logs?.dispose();
    this.trace?.dispose();
    this.memory?.dispose();
    for (const s of this.subs) s.dispose();
  }
}
