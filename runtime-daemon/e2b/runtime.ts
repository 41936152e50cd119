/**
 * What lives inside one E2B sandbox on the daemon's side: its processes, its file helper, its
 * directory watchers and its code-interpreter contexts. Owned by the sandbox: disposed (all killed)
 * when it ends.
 */
import * as crypto from 'node:crypto';
import { FsEventJson, FsHelper } from './fsHelper';
import { ProcessTable } from './processes';
import type { E2bSandbox } from './sandboxes';
import { Interpreters } from './interpreter';

export class Watcher {
  private queue: FsEventJson[] = [];
  private wake: (() => void) | undefined;
  private ended = false;
  private readonly onMsg = (m: { events?: FsEventJson[] }) => {
    if (m.events) this.queue.push(...m.events);
    if (this.queue.length > 10_000) this.queue.splice(0, this.queue.length - 10_000);
    this.wake?.();
  };
  private readonly onDead = () => {
    this.ended = true;
    this.wake?.();
  };

  constructor(private readonly fs: FsHelper, readonly id: number) {
    fs.on(`watch:${id}`, this.onMsg);
    fs.on('dead', this.onDead);
  }

  /** Events since the last call; [] after `timeoutMs` without any. */
  async next(signal: AbortSignal, timeoutMs: number): Promise<FsEventJson[] | 'ended' | 'aborted'> {
    if (!this.queue.length && !this.ended && !signal.aborted) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, timeoutMs);
        function done() {
          clearTimeout(t);
          signal.removeEventListener('abort', done);
          resolve();
        }
        signal.addEventListener('abort', done);
        this.wake = done;
      });
      this.wake = undefined;
    }
    if (signal.aborted) return 'aborted';
    if (this.queue.length) return this.queue.splice(0);
    return this.ended ? 'ended' : [];
  }

  drain(): FsEventJson[] {
    return this.queue.splice(0);
  }

  async close(): Promise<void> {
    this.fs.off(`watch:${this.id}`, this.onMsg);
    this.fs.off('dead', this.onDead);
    this.ended = true;
    await this.fs.call('unwatch', { watchId: this.id }).catch(() => undefined);
  }
}

export class SandboxRuntime {
  readonly procs: ProcessTable;
  readonly fs: FsHelper;
  readonly interpreters: Interpreters;
  private readonly polled = new Map<string, Watcher>();

  constructor(readonly sb: E2bSandbox, readonly enterPath: string) {
    this.procs = new ProcessTable(sb, enterPath, (p) => sb.record?.command(p));
    this.fs = new FsHelper(sb, enterPath);
    this.interpreters = new Interpreters(sb, enterPath);
    sb.owned.add({ dispose: () => this.dispose() });
    this.procs.prepareStandby();
  }

  async watch(path: string, recursive: boolean, includeEntry: boolean): Promise<Watcher> {
    const { watchId } = await this.fs.call<{ watchId: number }>('watch', { path, recursive, includeEntry });
    return new Watcher(this.fs, watchId);
  }

  addPolledWatcher(w: Watcher): string {
    const id = crypto.randomBytes(8).toString('hex');
    this.polled.set(id, w);
    return id;
  }

  polledWatcher(id: string): Watcher | undefined {
    return this.polled.get(id);
  }

  async removePolledWatcher(id: string): Promise<void> {
    const w = this.polled.get(id);
    this.polled.delete(id);
    await w?.close();
  }

  dispose(): void {
    this.procs.dispose();
    this.fs.dispose();
    this.interpreters.dispose();
  }
}
