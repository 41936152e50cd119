/**
 * E2B sandboxes in the daemon's records, like invocations: one record per E2B sandbox (running
 * while the sandbox lives), with the sandbox start as its trace (pool pick, repurpose or fresh
 * create steps), every command as log lines (`$ cmd`, its stdout/stderr, its exit) and memory
 * samples of the sandbox. The editor's Invocations tree, logs, memory and trace views and
 * `trenv ps` / `trenv logs` show them without knowing about E2B.
 */
import type { InvocationRecord, InvocationState, LogLine, MemorySample, TraceSpan } from '../protocol/messages';
import { newInvocationId } from '../records/store';
import { sampleProcesses } from '../metrics/smaps';
import type { SandboxProcess, ProcEvent } from './processes';
import type { E2bSandbox } from './sandboxes';

export interface RecordSink {
  create(r: InvocationRecord): void;
  update(r: InvocationRecord): void;
  log(l: LogLine): void;
  memory(id: string, s: MemorySample): void;
  span(s: TraceSpan): void;
}

const MAX_LOG_BYTES = 8 * 1024 * 1024;

export class SandboxRecord {
  readonly record: InvocationRecord;
  private seq = 0;
  private bytes = 0;
  private truncated = false;

  constructor(private readonly sink: RecordSink, private readonly sb: E2bSandbox) {
    const c = sb.container;
    this.record = {
      id: newInvocationId(sb.startedAt),
      agent: `e2b ${sb.id} (${sb.templateId})`,
      agentDir: c?.appDir ?? '',
      runtime: c?.spec.runtime ?? 'python',
      sandboxKind: sb.vm ? 'vm' : 'container',
      sandboxId: sb.backingId,
      start: sb.acquired?.how,
      state: 'running',
      createdAt: sb.startedAt,
      event: { e2bSandboxId: sb.id, templateID: sb.templateId, metadata: sb.metadata },
    };
    sink.create(this.record);
    const a = sb.acquired;
    if (a) {
      if (c) this.span('pool.pick', a.pickNs[0], a.pickNs[1], { result: a.how, key: c.key });
      for (const s of a.spans) this.span(`${a.how === 'fresh' ? 'sandbox' : 'repurpose'}.${s.name}`, s.startNs, s.endNs);
      this.span('sandbox.ready', a.t0, a.t1, { how: a.how, e2bSandboxId: sb.id }, this.state());
    }
  }

  private sample(pids = this.sb.hostPids()): MemorySample {
    return sampleProcesses(pids, this.sb.container?.cgroup.usageBytes());
  }

  private state() {
    const pids = this.sb.hostPids();
    return { processes: pids.length, appDir: this.sb.container?.appDir ?? '', memory: this.sample(pids) };
  }

  private span(name: string, start: bigint, end: bigint, attrs?: Record<string, string | number | boolean>, state?: TraceSpan['state']): void {
    this.sink.span({ invocationId: this.record.id, name, startNs: String(start), endNs: String(end), durationMs: Number(end - start) / 1e6, ...(attrs ? { attrs } : {}), ...(state ? { state } : {}) });
  }

  private log(stream: LogLine['stream'], text: string, level?: LogLine['level'], fields?: Record<string, unknown>): void {
    if (this.truncated) return;
    this.bytes += text.length;
    if (this.bytes > MAX_LOG_BYTES) {
      this.truncated = true;
      text = `log limit of ${MAX_LOG_BYTES} bytes reached: further output of this sandbox is dropped`;
      stream = 'system';
      level = 'warn';
    }
    this.sink.log({ invocationId: this.record.id, seq: ++this.seq, t: Date.now(), stream, text, ...(level ? { level } : {}), ...(fields ? { fields } : {}) });
  }

  /** Follows one command: its line, its output, its end. */
  command(p: SandboxProcess): void {
    const shown = p.config.cmd === '/bin/bash' && p.config.args[0] === '-l' && p.config.args[1] === '-c' ? p.config.args.slice(2).join(' ') : [p.config.cmd, ...p.config.args].join(' ');
    this.log('system', `$ ${shown}`, 'info', { pid: p.pid, ...(p.tag ? { tag: p.tag } : {}) });
    const dec = { stdout: new TextDecoder(), stderr: new TextDecoder(), pty: new TextDecoder() };
    const on = (e: ProcEvent) => {
      if (e.case === 'data') {
        const k = e.value.output.case;
        this.log(k === 'stderr' ? 'stderr' : 'stdout', dec[k].decode(e.value.output.value, { stream: true }));
      } else if (e.case === 'end') {
        p.off('event', on);
        this.log('system', `[pid ${p.pid}] ${e.value.status}`, e.value.exitCode === 0 ? 'info' : 'warn');
      }
    };
    p.on('event', on);
  }

  memory(): void {
    this.sink.memory(this.record.id, this.sample());
  }

  note(text: string): void {
    this.log('system', text, 'info');
  }

  end(why: string): void {
    if (this.record.endedAt) return;
    const state: InvocationState = why === 'timeout' ? 'timeout' : why === 'killed by the API' ? 'succeeded' : 'killed';
    this.record.state = state;
    this.record.endedAt = Date.now();
    this.record.durationMs = this.record.endedAt - this.record.createdAt;
    this.record.exit = why;
    this.log('system', `sandbox ended: ${why}`, 'info');
    this.sink.update(this.record);
  }
}
