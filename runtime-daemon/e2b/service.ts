/**
 * The E2B-compatible API as one part of trenvd: the API key, the sandboxes, the listener and the
 * discovery file `<state>/e2b.json` ({port, apiUrl, apiKeyFile}) that `trenv e2b env` reads.
 */
import * as fs from 'node:fs';
import { e2bPaths, E2bInfoFile } from './paths';
import type { SandboxPool } from '../sandbox/pool';
import type { TemplateInfo } from '../protocol/messages';
import { Freezer } from './freezer';
import { E2bSandbox, E2bSandboxes, E2bVms } from './sandboxes';
import { DEFAULT_E2B_PORT, E2bServer, loadOrCreateApiKey } from './server';
import { RecordSink, SandboxRecord } from './records';

export interface E2bServiceOptions {
  stateDir: string;
  instanceId: string;
  pool: SandboxPool;
  /** microVMs for sandboxes that ask for one (absent: only containers) */
  vms?: E2bVms;
  emptyApp: string;
  enterPath: string;
  templates(): TemplateInfo[];
  owner?: { uid: number; gid: number };
  log(m: string): void;
  /** where E2B sandboxes are recorded like invocations */
  records?: RecordSink;
}

/** Port from the option, else $TRENV_E2B_PORT, else 49982 (0: any free port, recorded in e2b.json). */
export function e2bPortFrom(option: number | undefined): number {
  if (option !== undefined && Number.isInteger(option) && option >= 0) return option;
  const env = process.env.TRENV_E2B_PORT;
  if (env !== undefined && env !== '' && Number.isInteger(Number(env)) && Number(env) >= 0) return Number(env);
  return DEFAULT_E2B_PORT;
}

export class E2bService {
  readonly sandboxes: E2bSandboxes;
  private server: E2bServer | undefined;
  private readonly freezer: Freezer;

  constructor(private readonly o: E2bServiceOptions) {
    this.freezer = new Freezer(o.instanceId);
    this.freezer.cleanupLeftovers();
    const max = Number(process.env.TRENV_E2B_MAX_SANDBOXES);
    this.sandboxes = new E2bSandboxes({
      pool: o.pool,
      ...(o.vms ? { vms: o.vms } : {}),
      emptyApp: o.emptyApp,
      templates: o.templates,
      freezer: this.freezer,
      maxSandboxes: Number.isInteger(max) && max > 0 ? max : 64,
      log: o.log,
    });
    const sink = o.records;
    if (sink) {
      this.sandboxes.on('created', (sb: E2bSandbox) => (sb.record = new SandboxRecord(sink, sb)));
      this.sandboxes.on('ending', (sb: E2bSandbox, why: string) => sb.record?.end(why));
    }
  }

  /** Starts the listener; a busy port is logged, not fatal (the rest of the daemon works without it). */
  async start(port: number): Promise<number | undefined> {
    const paths = e2bPaths(this.o.stateDir);
    fs.rmSync(paths.info, { force: true });
    const apiKey = loadOrCreateApiKey(paths.apiKey, this.o.owner);
    const server = new E2bServer({ sandboxes: this.sandboxes, apiKey, enterPath: this.o.enterPath, log: this.o.log });
    try {
      const p = await server.listen(port);
      this.server = server;
      const info: E2bInfoFile = { port: p, apiUrl: `http://127.0.0.1:${p}`, apiKeyFile: paths.apiKey };
      fs.writeFileSync(paths.info, JSON.stringify(info, null, 2) + '\n', { mode: 0o644 });
      this.o.log(`E2B-compatible API on http://127.0.0.1:${p} (trenv e2b env prints the SDK settings)`);
      return p;
    } catch (e) {
      this.o.log(`E2B-compatible API not started: ${(e as Error).message} (set TRENV_E2B_PORT to another port, or 0 for any free one)`);
      return undefined;
    }
  }

  /** Ends the E2B sandbox behind a record (the editor's Stop on it); false when none is. */
  killByRecord(recordId: string): boolean {
    const sb = this.sandboxes.list().find((s) => s.record?.record.id === recordId);
    if (!sb) return false;
    void this.sandboxes.kill(sb, 'killed from trenv');
    return true;
  }

  async stop(): Promise<void> {
    await this.sandboxes.closeAll();
    await this.server?.close();
    this.freezer.removeInstance();
    fs.rmSync(e2bPaths(this.o.stateDir).info, { force: true });
  }
}
