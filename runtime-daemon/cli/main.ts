#!/usr/bin/env node
/**
 * The `trenv` CLI: a client of the daemon protocol, like the extension.
 *   trenv daemon start|stop|status      trenv invoke <agent-dir> [--event JSON|@file] [--env K=V] [--json] [--trace] [--fresh]
 *   trenv ps [--limit N]                trenv logs <invocation> [--follow]     trenv trace <invocation>
 *   trenv stats                         trenv validate <agent-dir>             trenv demo
 * Exit codes: 0 ok; 1 invocation failed / error; 2 usage; 3 daemon not running; 4 timeout; 5 oom; 6 killed.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import type { MessageConnection } from 'vscode-jsonrpc/node';
import { InvocationRecord, LogLine, Methods, Notifications, TraceSpan } from '../protocol/messages';
import { packageRoot, readInfo, StatePaths, stateDirFromEnv } from '../daemon/state';
import { connect, DaemonNotRunningError } from './client';
import * as f from './format';
import { runDemo } from './demo';
import { e2bPaths, E2bInfoFile } from '../e2b/paths';

export class UsageError extends Error {}

const EXIT_BY_STATE: Record<string, number> = { succeeded: 0, failed: 1, timeout: 4, oom: 5, killed: 6, 'daemon-lost': 1 };

const USAGE = `usage: trenv <command> [options]

  daemon start [--port N] [--foreground]   start the daemon (needs root: use sudo)
  daemon stop | daemon status
  invoke <agent-dir> [--event JSON|@file] [--env K=V ...] [--json] [--trace] [--fresh] [--no-template] [--vm [--vm-root pmem|blk]]
  template build <agent-dir> [--vm] | template ls | template rm <name>
  ps [--limit N] [--json]                  recent invocations and live sandboxes
  logs <invocation> [--follow] [--json]    logs of an invocation (id or unique prefix/suffix)
  trace <invocation> [--json]              restore trace of an invocation, step by step
  stats [--json]                           memory of live sandboxes
  validate <agent-dir>                     check a trenv.json
  demo                                     start the daemon, invoke every example, show traces and memory
  e2b env                                  print the E2B SDK settings of this daemon (eval "$(trenv e2b env)")

  --state-dir DIR   daemon state dir (default $TRENV_STATE_DIR or /var/lib/trenv)`;

function out(s: string): void {
  process.stdout.write(s + '\n');
}

async function withDaemon<T>(stateDir: string, fn: (rpc: MessageConnection) => Promise<T>): Promise<T> {
  const c = await connect(stateDir);
  try {
    return await fn(c.rpc);
  } finally {
    c.close();
  }
}

/** `export` lines for the E2B SDKs (JS and Python read the same variables). */
function e2bEnv(stateDir: string): string {
  const paths = new StatePaths(stateDir);
  if (!readInfo(paths)) throw new DaemonNotRunningError(`no trenv daemon runs with state dir ${stateDir}: start it with sudo trenv daemon start`);
  const p = e2bPaths(stateDir);
  let info: E2bInfoFile;
  try {
    info = JSON.parse(fs.readFileSync(p.info, 'utf8')) as E2bInfoFile;
  } catch {
    throw new Error(`the daemon has no E2B API listener (see its log: the port may be taken; set TRENV_E2B_PORT and restart it)`);
  }
  let key: string;
  try {
    key = fs.readFileSync(info.apiKeyFile, 'utf8').trim();
  } catch (e) {
    throw new Error(`cannot read the E2B API key ${info.apiKeyFile} (${(e as NodeJS.ErrnoException).code}): it belongs to the user who started the daemon; run this as that user or with sudo`);
  }
  return `export E2B_API_KEY=${key} E2B_API_URL=${info.apiUrl} E2B_SANDBOX_URL=${info.apiUrl}`;
}

function parseEvent(v: string | undefined): unknown {
  if (v === undefined) return {};
  const text = v.startsWith('@') ? fs.readFileSync(v.slice(1), 'utf8') : v;
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new UsageError(`--event is not valid JSON (${(e as Error).message}): pass a JSON value or @file.json`);
  }
}

function parseEnv(list: string[] | undefined): Record<string, string> {
  const env: Record<string, string> = {};
  for (const kv of list ?? []) {
    const i = kv.indexOf('=');
    if (i <= 0) throw new UsageError(`--env takes KEY=VALUE, got "${kv}"`);
    env[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return env;
}

export async function daemonStart(stateDir: string, port: number | undefined, quiet = false): Promise<{ pid: number; port: number; already: boolean }> {
  const paths = new StatePaths(stateDir);
  const info = readInfo(paths);
  if (info) {
    try {
      const st = await withDaemon(stateDir, (rpc) => rpc.sendRequest(Methods.status));
      if (!quiet) out(`trenv daemon already running (pid ${st.pid}, 127.0.0.1:${st.port}, state ${st.stateDir})`);
      return { pid: st.pid, port: st.port, already: true };
    } catch {
      /* stale discovery file: start a new one */
    }
  }
  if (process.getuid?.() !== 0) throw new Error('the daemon needs root (namespaces, cgroups, mounts): run: sudo trenv daemon start');
  fs.mkdirSync(paths.run, { recursive: true });
  const logFile = path.join(paths.run, 'trenvd.log');
  try {
    // keep one previous log, bounded
    if (fs.statSync(logFile).size > 10 * 1024 * 1024) fs.renameSync(logFile, `${logFile}.1`);
  } catch {
    /* no log yet */
  }
  const fd = fs.openSync(logFile, 'a');
  const trenvd = path.join(packageRoot(), 'dist', 'trenvd.js');
  const child = spawn(process.execPath, [trenvd, '--state-dir', stateDir, ...(port ? ['--port', String(port)] : [])], {
    detached: true,
    stdio: ['ignore', fd, fd],
  });
  fs.closeSync(fd);
  let exited: number | null = null;
  child.on('exit', (code) => (exited = code ?? 1));
  child.unref();
  const until = Date.now() + 20_000;
  while (Date.now() < until) {
    if (exited !== null) {
      const tail = fs.readFileSync(logFile, 'utf8').trim().split('\n').slice(-5).join('\n');
      throw new Error(`the daemon exited during start (code ${exited}):\n${tail}`);
    }
    const i = readInfo(paths);
    if (i && i.pid === child.pid) {
      if (!quiet) out(`trenv daemon started (pid ${i.pid}, 127.0.0.1:${i.port}, state ${stateDir}, log ${logFile})`);
      return { pid: i.pid, port: i.port, already: false };
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`the daemon did not become ready within 20 s: see ${logFile}`);
}

async function daemonStop(stateDir: string): Promise<void> {
  const paths = new StatePaths(stateDir);
  const info = readInfo(paths);
  if (!info) {
    out('trenv daemon is not running');
    return;
  }
  try {
    await withDaemon(stateDir, (rpc) => rpc.sendRequest(Methods.shutdown));
  } catch {
    try {
      process.kill(info.pid, 'SIGTERM');
    } catch {
      /* gone */
    }
  }
  const until = Date.now() + 10_000;
  while (Date.now() < until) {
    try {
      process.kill(info.pid, 0);
    } catch {
      out(`trenv daemon stopped (pid ${info.pid})`);
      return;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`the daemon (pid ${info.pid}) did not stop within 10 s`);
}

async function invoke(
  stateDir: string,
  dir: string,
  o: { event?: string; env?: string[]; json?: boolean; trace?: boolean; fresh?: boolean; vm?: boolean; 'vm-root'?: string; 'no-template'?: boolean },
): Promise<number> {
  const event = parseEvent(o.event);
  return withDaemon(stateDir, async (rpc) => {
    if (!o.json) rpc.onNotification(Notifications.log, (l: LogLine) => {
        process.stderr.write(f.logLine(l) + '\n');
      });
    const rec: InvocationRecord = await rpc.sendRequest(Methods.invoke, {
      agentDir: path.resolve(dir),
      event,
      env: parseEnv(o.env),
      stream: !o.json,
      fresh: o.fresh,
      template: o['no-template'] ? false : undefined,
      sandbox: o.vm || o['vm-root'] ? 'vm' : undefined,
      ...(o['vm-root'] ? { vmRoot: o['vm-root'] === 'blk' ? 'blk' : 'pmem' } : {}),
    });
    const detail = o.trace || o.json ? await rpc.sendRequest(Methods.getInvocation, { id: rec.id }) : undefined;
    if (o.json) {
      out(JSON.stringify(o.trace ? detail : rec, null, 2));
    } else {
      out(
        `${f.bold(rec.agent)} ${f.stateColor(rec.state)} in ${f.ms(rec.durationMs)} (${rec.start ?? '-'} sandbox ${rec.sandboxId ?? '-'}, ` +
          `${rec.template ? `template ${rec.template}` : 'cold runtime'}, ${rec.id})`,
      );
      if (rec.state === 'succeeded') out(JSON.stringify(rec.result, null, 2));
      else if (rec.error) {
        out(f.red(`${rec.error.type}: ${rec.error.message}`));
        if (rec.error.stack) out(f.dim(rec.error.stack));
      }
      if (o.trace && detail) out('\n' + f.traceTable(detail.trace));
    }
    return EXIT_BY_STATE[rec.state] ?? 1;
  });
}

async function logs(stateDir: string, id: string, o: { follow?: boolean; json?: boolean }): Promise<number> {
  const c = await connect(stateDir);
  try {
    const d = await c.rpc.sendRequest(Methods.getInvocation, { id });
    let last = 0;
    for (const l of d.logs) {
      out(o.json ? JSON.stringify(l) : f.logLine(l));
      last = Math.max(last, l.seq);
    }
    if (!o.follow || !['running', 'queued'].includes(d.record.state)) return 0;
    await new Promise<void>((resolve) => {
      c.rpc.onNotification(Notifications.log, (l: LogLine) => {
        if (l.seq > last) out(o.json ? JSON.stringify(l) : f.logLine(l));
      });
      c.rpc.onNotification(Notifications.invocation, (s) => {
        if (s.id === d.record.id && !['running', 'queued'].includes(s.state)) resolve();
      });
      void c.rpc.sendRequest(Methods.subscribe, { topics: ['logs', 'invocations'], invocationId: d.record.id });
      c.rpc.onClose(() => resolve());
    });
    return 0;
  } finally {
    c.close();
  }
}

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      'state-dir': { type: 'string' },
      port: { type: 'string' },
      foreground: { type: 'boolean' },
      event: { type: 'string', short: 'e' },
      env: { type: 'string', multiple: true },
      json: { type: 'boolean' },
      trace: { type: 'boolean' },
      fresh: { type: 'boolean' },
      vm: { type: 'boolean' },
      'vm-root': { type: 'string' },
      'no-template': { type: 'boolean' },
      follow: { type: 'boolean', short: 'f' },
      limit: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  const stateDir = stateDirFromEnv(values['state-dir']);
  const [cmd, sub, ...rest] = positionals;
  if (values.help || !cmd) {
    out(USAGE);
    return cmd || values.help ? 0 : 2;
  }
  switch (cmd) {
    case 'daemon':
      if (sub === 'start') {
        if (values.foreground) {
          process.argv = [process.argv[0], 'trenvd', '--state-dir', stateDir, ...(values.port ? ['--port', values.port] : [])];
          require('../daemon/main');
          return new Promise<number>(() => undefined);
        }
        await daemonStart(stateDir, values.port ? Number(values.port) : undefined);
        return 0;
      }
      if (sub === 'stop') {
        await daemonStop(stateDir);
        return 0;
      }
      if (sub === 'status') {
        const st = await withDaemon(stateDir, (rpc) => rpc.sendRequest(Methods.status));
        if (values.json) out(JSON.stringify(st, null, 2));
        else
          out(
            `trenv daemon ${st.version} running: pid ${st.pid}, 127.0.0.1:${st.port}, state ${st.stateDir}, up ${f.ms(Date.now() - st.startedAt)}\n` +
              `cgroups ${st.cgroup}\nsandboxes: ${st.sandboxes.total} (${st.sandboxes.idle} idle, ${st.sandboxes.busy} busy); invocations: ${st.invocations.running} running, ${st.invocations.total} recorded`,
          );
        return 0;
      }
      throw new UsageError('usage: trenv daemon start|stop|status');
    case 'invoke':
      if (!sub) throw new UsageError('usage: trenv invoke <agent-dir> [--event JSON|@file]');
      return invoke(stateDir, sub, values);
    case 'template':
      return withDaemon(stateDir, async (rpc) => {
        if (sub === 'build') {
          const dir = rest[0];
          if (!dir) throw new UsageError('usage: trenv template build <agent-dir>');
          rpc.onNotification(Notifications.progress, (p) => {
            process.stderr.write(`${f.dim(p.message)}\n`);
          });
          const t = await rpc.sendRequest(Methods.buildTemplate, { agentDir: path.resolve(dir), ...(values.vm ? { vm: true } : {}) });
          const mem = t.kind === 'vm' ? `warm clones PSS ${f.kb(t.memory?.pssKb)}` : `zygote PSS ${f.kb(t.memory?.pssKb)}`;
          out(values.json ? JSON.stringify(t, null, 2) : `template ${t.name} built in ${f.ms(t.buildMs)} (${t.kind}, ${t.runtimeVersion}, ${mem})`);
          return 0;
        }
        if (sub === 'ls' || sub === 'list') {
          const list = await rpc.sendRequest(Methods.listTemplates);
          if (values.json) out(JSON.stringify(list, null, 2));
          else
            out(
              f.table(
                list.map((t) => [t.name, t.kind, t.live ? f.green('live') : 'stopped', t.runtimeVersion, f.kb(t.memory?.rssKb), f.kb(t.memory?.pssKb), t.preload.join(',') || '-']),
                ['TEMPLATE', 'KIND', 'STATE', 'RUNTIME', 'RSS', 'PSS', 'PRELOAD'],
              ),
            );
          return 0;
        }
        if (sub === 'rm') {
          if (!rest[0]) throw new UsageError('usage: trenv template rm <name>');
          const r = await rpc.sendRequest(Methods.deleteTemplate, { name: rest[0] });
          out(r.deleted ? `template ${rest[0]} deleted` : `no template ${rest[0]}`);
          return r.deleted ? 0 : 1;
        }
        throw new UsageError('usage: trenv template build <agent-dir> | template ls | template rm <name>');
      });
    case 'ps':
      return withDaemon(stateDir, async (rpc) => {
        const [list, sbs] = await Promise.all([rpc.sendRequest(Methods.listInvocations, { limit: Number(values.limit ?? 20) }), rpc.sendRequest(Methods.listSandboxes)]);
        if (values.json) {
          out(JSON.stringify({ invocations: list, sandboxes: sbs }, null, 2));
          return 0;
        }
        out(f.invocationRows(list));
        out('');
        out(f.table(sbs.map((s) => [s.id, s.state, s.agent ?? '-', s.poolKey, String(s.uses), f.kb(s.memory?.pssKb)]), ['SANDBOX', 'STATE', 'AGENT', 'POOL KEY', 'USES', 'PSS']));
        return 0;
      });
    case 'logs':
      if (!sub) throw new UsageError('usage: trenv logs <invocation> [--follow]');
      return logs(stateDir, sub, values);
    case 'trace':
      if (!sub) throw new UsageError('usage: trenv trace <invocation>');
      return withDaemon(stateDir, async (rpc) => {
        const d = await rpc.sendRequest(Methods.getInvocation, { id: sub });
        out(values.json ? JSON.stringify(d.trace, null, 2) : f.traceTable(d.trace as TraceSpan[]));
        return 0;
      });
    case 'stats':
      return withDaemon(stateDir, async (rpc) => {
        const s = await rpc.sendRequest(Methods.stats);
        if (values.json) out(JSON.stringify(s, null, 2));
        else
          out(
            f.table(
              [
                ...s.templates.filter((t) => t.live).map((t) => f.memoryRow(`template ${t.name} (${t.kind === 'vm' ? 'warm clones' : 'zygote'})`, t.memory)),
                ...s.sandboxes.map((sb) => f.memoryRow(`${sb.id} (${sb.state})`, sb.memory)),
                f.memoryRow('sandboxes total', s.total),
              ],
              f.MEMORY_HEADER,
            ),
          );
        return 0;
      });
    case 'validate':
      if (!sub) throw new UsageError('usage: trenv validate <agent-dir>');
      return withDaemon(stateDir, async (rpc) => {
        const d = await rpc.sendRequest(Methods.validateManifest, { agentDir: path.resolve(sub) });
        if (!d.length) out(`${path.join(sub, 'trenv.json')}: ok`);
        for (const x of d) out(`${path.join(sub, 'trenv.json')}${x.path ? ' ' + x.path : ''}: ${x.severity}: ${x.message}`);
        return d.some((x) => x.severity === 'error') ? 1 : 0;
      });
    case 'demo':
      return runDemo(stateDir);
    case 'e2b':
      if (sub !== 'env') throw new UsageError('usage: trenv e2b env');
      out(e2bEnv(stateDir));
      return 0;
    default:
      void rest;
      throw new UsageError(`unknown command "${cmd}"\n\n${USAGE}`);
  }
}

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (e: Error & { code?: number; data?: unknown }) => {
      if (e instanceof UsageError || (e as { code?: string }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
        process.stderr.write(`trenv: ${e.message}\n`);
        process.exit(2);
      }
      process.stderr.write(`trenv: ${e.message}\n`);
      process.exit(e instanceof DaemonNotRunningError ? 3 : 1);
    },
  );
}

export { main };
