/**
 * Terminals inside sandboxes: a WebSocket on `/terminal?agentDir=...&cols=..&rows=..` (same token
 * and Origin rules as the RPC socket). The daemon takes a sandbox for the agent from the pool, runs
 * a shell in it under node-pty through trenv-enter (joins the sandbox's cgroups, namespaces and
 * root, drops privileges), and copies bytes: binary frames are terminal data both ways, text frames
 * from the client are control messages (`{"type":"resize","cols":N,"rows":N}`). Closing either end
 * kills the shell and gives the sandbox back to the pool, cleaned.
 */
import * as fs from 'node:fs';
import type { IncomingMessage } from 'node:http';
import type { WebSocket } from 'ws';
import type { ContainerSandbox, SandboxSpec } from '../sandbox/container';
import type { SandboxPool } from '../sandbox/pool';
import { SANDBOX_GID, SANDBOX_HOME, SANDBOX_UID } from '../sandbox/rootfs';
import { loadAgent } from '../manifest/manifest';

export interface TerminalDeps {
  pool: SandboxPool;
  enterPath: string;
  log(m: string): void;
}

type Pty = { onData(cb: (d: string) => void): void; onExit(cb: (e: { exitCode: number; signal?: number }) => void): void; write(d: string): void; resize(c: number, r: number): void; kill(sig?: string): void; pid: number };

function clampSize(v: string | null, dflt: number, max: number): number {
  const n = Number(v);
  return Number.isInteger(n) && n > 0 && n <= max ? n : dflt;
}

export async function serveTerminal(ws: WebSocket, req: IncomingMessage, deps: TerminalDeps): Promise<void> {
  const url = new URL(req.url ?? '/', 'http://127.0.0.1');
  const agentDir = url.searchParams.get('agentDir') ?? '';
  let sb: ContainerSandbox | undefined;
  let pty: Pty | undefined;
  let closed = false;
  const finish = async (why: string) => {
    if (closed) return;
    closed = true;
    try {
      pty?.kill('SIGKILL');
    } catch {
      /* gone */
    }
    if (ws.readyState === ws.OPEN) ws.close(1000, why.slice(0, 120));
    if (sb) await deps.pool.release(sb, true).catch(() => undefined);
  };
  ws.on('close', () => void finish('client closed'));
  ws.on('error', () => void finish('socket error'));
  // input can arrive while the sandbox is being prepared: keep it for the shell
  const early: Array<{ data: Buffer; isBinary: boolean }> = [];
  let onInput = (data: Buffer, isBinary: boolean) => void early.push({ data, isBinary });
  ws.on('message', (data, isBinary) => onInput(Buffer.isBuffer(data) ? data : Buffer.from(data as ArrayBuffer), isBinary));
  try {
    const agent = loadAgent(agentDir);
    const m = agent.manifest;
    const spec: SandboxSpec = { runtime: m.runtime, memoryMb: m.limits.memoryMb, pids: m.limits.pids, tmpfsMb: m.limits.tmpfsMb, network: m.network };
    sb = (await deps.pool.acquire(spec, agent.dir)).sandbox;
    if (closed) {
      await deps.pool.release(sb, true);
      return;
    }
    if (!fs.existsSync(deps.enterPath)) throw new Error(`${deps.enterPath} is missing: build it with "npm run build:native"`);
    // node-pty is a native addon: loaded when a terminal is first opened
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const nodePty = require('node-pty') as { spawn(file: string, args: string[], o: object): Pty };
    const shell = fs.existsSync('/usr/bin/bash') ? ['/usr/bin/bash', '--norc', '-i'] : ['/bin/sh', '-i'];
    pty = nodePty.spawn(deps.enterPath, ['shell', String(sb.initPid), String(SANDBOX_UID), String(SANDBOX_GID), ...sb.cgroup.procsFiles, '--', ...shell], {
      name: 'xterm-256color',
      cols: clampSize(url.searchParams.get('cols'), 80, 500),
      rows: clampSize(url.searchParams.get('rows'), 24, 200),
      cwd: '/',
      env: {
        TERM: 'xterm-256color',
        PATH: '/usr/local/bin:/usr/bin:/bin',
        HOME: SANDBOX_HOME,
        LANG: 'C.UTF-8',
        PS1: `\\u@\\h:\\w\\$ `,
        TRENV_AGENT: m.name,
      },
    });
    deps.log(`terminal into ${sb.id} for ${m.name} (pid ${pty.pid})`);
    pty.onData((d) => {
      if (ws.readyState === ws.OPEN) ws.send(Buffer.from(d, 'utf8'), { binary: true });
    });
    pty.onExit((e) => void finish(`shell exited (${e.signal ? `signal ${e.signal}` : `code ${e.exitCode}`})`));
    onInput = (buf, isBinary) => {
      if (isBinary) {
        pty?.write(buf.toString('utf8'));
        return;
      }
      try {
        const msg = JSON.parse(buf.toString('utf8')) as { type?: string; cols?: number; rows?: number };
        if (msg.type === 'resize') pty?.resize(clampSize(String(msg.cols), 80, 500), clampSize(String(msg.rows), 24, 200));
      } catch {
        /* ignore malformed control frames */
      }
    };
    for (const e of early.splice(0)) onInput(e.data, e.isBinary);
  } catch (e) {
    if (ws.readyState === ws.OPEN) ws.send(Buffer.from(`\r\ntrenv: cannot open a terminal: ${(e as Error).message}\r\n`), { binary: true });
    await finish((e as Error).message);
  }
}
