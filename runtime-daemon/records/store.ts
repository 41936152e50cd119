/**
 * Invocation records on disk, readable after a daemon restart or crash:
 *   <dir>/<id>/record.json   the InvocationRecord (replaced atomically on every state change)
 *   <dir>/<id>/logs.jsonl    LogLine per line
 *   <dir>/<id>/trace.jsonl   TraceSpan per line
 *   <dir>/<id>/memory.jsonl  MemorySample per line
 * Appends are buffered for one tick and written with plain write(2): a killed daemon loses at most
 * the lines of its last tick, and a record left `running`/`queued` is marked `daemon-lost` at start.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  FINAL_STATES,
  InvocationDetail,
  InvocationRecord,
  InvocationSummary,
  LogLine,
  MemorySample,
  TraceSpan,
} from '../protocol/messages';

type Kind = 'logs' | 'trace' | 'memory';

export function newInvocationId(now = Date.now()): string {
  // time-sortable: 9 base36 chars of ms time + 8 random hex
  return `inv-${now.toString(36).padStart(9, '0')}-${crypto.randomBytes(4).toString('hex')}`;
}

const ID_RE = /^inv-[0-9a-z]{9}-[0-9a-f]{8}$/;

/** True when a file's last line was cut short (a crash mid-write): the next line must start afresh. */
function endsTorn(file: string): boolean {
  try {
    const fd = fs.openSync(file, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      if (size === 0) return false;
      const b = Buffer.alloc(1);
      fs.readSync(fd, b, 0, 1, size - 1);
      return b[0] !== 0x0a;
    } finally {
      fs.closeSync(fd);
    }
  } catch {
    return false;
  }
}

export function summarize(r: InvocationRecord): InvocationSummary {
  const { event: _e, result: _r, ...s } = r;
  return s;
}

export class RecordStore {
  private readonly pending = new Map<string, string[]>(); // file -> lines
  private flushScheduled = false;
  private readonly cache = new Map<string, InvocationSummary>();

  constructor(readonly dir: string, private readonly maxRecords = 5000) {
    fs.mkdirSync(dir, { recursive: true });
  }

  /** Loads summaries, marks unfinished records `daemon-lost`, prunes the oldest beyond the cap. */
  open(): { lost: string[] } {
    const lost: string[] = [];
    const ids = this.ids();
    for (const id of ids) {
      const r = this.readRecord(id);
      if (!r) continue;
      if (!FINAL_STATES.includes(r.state)) {
        r.state = 'daemon-lost';
        r.endedAt = r.endedAt ?? Date.now();
        r.error = r.error ?? { type: 'DaemonLost', message: 'the daemon stopped (crash or kill) while this invocation was in progress', phase: 'sandbox' };
        this.writeRecordNow(r);
        this.appendNow(id, 'logs', {
          invocationId: id,
          seq: 1e9,
          t: Date.now(),
          stream: 'system',
          level: 'error',
          text: 'daemon was lost during this invocation; marked daemon-lost at the next daemon start',
        } satisfies LogLine);
        lost.push(id);
      }
      this.cache.set(id, summarize(r));
    }
    const excess = ids.length - this.maxRecords;
    for (let i = 0; i < excess; i++) this.remove(ids[i]);
    return { lost };
  }

  private ids(): string[] {
    try {
      return fs.readdirSync(this.dir).filter((n) => ID_RE.test(n)).sort();
    } catch {
      return [];
    }
  }

  private file(id: string, name: string): string {
    if (!ID_RE.test(id)) throw new Error(`not an invocation id: ${JSON.stringify(id)}`);
    return path.join(this.dir, id, name);
  }

  private readRecord(id: string): InvocationRecord | undefined {
    try {
      return JSON.parse(fs.readFileSync(this.file(id, 'record.json'), 'utf8')) as InvocationRecord;
    } catch {
      return undefined;
    }
  }

  private writeRecordNow(r: InvocationRecord): void {
    const f = this.file(r.id, 'record.json');
    const tmp = `${f}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(r));
    fs.renameSync(tmp, f);
  }

  create(r: InvocationRecord): void {
    fs.mkdirSync(path.join(this.dir, r.id), { recursive: true });
    this.writeRecordNow(r);
    this.cache.set(r.id, summarize(r));
  }

  update(r: InvocationRecord): void {
    this.flush(); // keep lines and the record consistent on disk
    this.writeRecordNow(r);
    this.cache.set(r.id, summarize(r));
  }

  private appendNow(id: string, kind: Kind, obj: unknown): void {
    const f = this.file(id, `${kind}.jsonl`);
    fs.appendFileSync(f, (endsTorn(f) ? '\n' : '') + JSON.stringify(obj) + '\n');
  }

  append(id: string, kind: Kind, obj: LogLine | TraceSpan | MemorySample): void {
    const f = this.file(id, `${kind}.jsonl`);
    let lines = this.pending.get(f);
    if (!lines) this.pending.set(f, (lines = []));
    lines.push(JSON.stringify(obj));
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
  }

  flush(): void {
    this.flushScheduled = false;
    for (const [f, lines] of this.pending) {
      try {
        fs.appendFileSync(f, lines.join('\n') + '\n');
      } catch {
        /* record dir removed under us (pruned); nothing to keep */
      }
    }
    this.pending.clear();
  }

  private readLines<T>(id: string, kind: Kind): T[] {
    let text = '';
    try {
      text = fs.readFileSync(this.file(id, `${kind}.jsonl`), 'utf8');
    } catch {
      return [];
    }
    const out: T[] = [];
    for (const line of text.split('\n')) {
      if (!line) continue;
      try {
        out.push(JSON.parse(line) as T);
      } catch {
        /* a torn last line after a crash */
      }
    }
    return out;
  }

  get(id: string): InvocationDetail | undefined {
    if (!ID_RE.test(id)) return undefined;
    this.flush();
    const record = this.readRecord(id);
    if (!record) return undefined;
    return {
      record,
      logs: this.readLines<LogLine>(id, 'logs'),
      trace: this.readLines<TraceSpan>(id, 'trace'),
      memory: this.readLines<MemorySample>(id, 'memory'),
    };
  }

  /** Newest first. */
  list(limit = 100): InvocationSummary[] {
    return [...this.cache.values()].sort((a, b) => (a.id < b.id ? 1 : -1)).slice(0, limit);
  }

  /** Resolves a unique id prefix (as `git` does) for the CLI. */
  resolve(prefix: string): string | undefined {
    if (this.cache.has(prefix)) return prefix;
    const hits = [...this.cache.keys()].filter((id) => id.startsWith(prefix) || id.endsWith(prefix));
    return hits.length === 1 ? hits[0] : undefined;
  }

  private remove(id: string): void {
    fs.rmSync(path.join(this.dir, id), { recursive: true, force: true });
    this.cache.delete(id);
  }
}
