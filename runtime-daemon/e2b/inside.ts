/**
 * Starting a program inside an E2B sandbox as its user, whatever backs the sandbox: in a container
 * through trenv-enter (its cgroups, namespaces, root and user), in a microVM through the guest
 * agent's exec port (sandbox/vmExec.ts). Both give a ChildProcess-shaped object.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { SANDBOX_GID, SANDBOX_HOME, SANDBOX_UID } from '../sandbox/rootfs';
import { GuestProcess } from '../sandbox/vmExec';
import type { E2bSandbox } from './sandboxes';

export const SANDBOX_ENV = { PATH: '/usr/local/bin:/usr/bin:/bin', HOME: SANDBOX_HOME, LANG: 'C.UTF-8', USER: 'agent' };

/** argv of trenv-enter that runs `cmd` inside the (container) sandbox as its user. */
export function enterArgv(sb: E2bSandbox, cmd: string[]): string[] {
  const c = sb.container!;
  return ['shell', String(c.initPid), String(SANDBOX_UID), String(SANDBOX_GID), ...c.cgroup.procsFiles, '--', ...cmd];
}

export interface InsideOptions {
  stdin: boolean;
  /** a small program the process reads from its fd 3 (a short argv in `ps`, nothing to parse) */
  fd3?: string;
  /** its own process group (a container's trenv-enter; a VM's processes always have their own session) */
  detached?: boolean;
  /** VM only: the whole environment and the working dir (a container's come from `argv`, see ProcessTable) */
  env?: Record<string, string>;
  cwd?: string;
  pty?: { cols: number; rows: number };
  /** VM only: as root of the guest (the SDK's user 'root'; envd refuses it for containers) */
  root?: boolean;
}

export type InsideProcess = ChildProcess | GuestProcess;

/** Runs argv inside the sandbox as its user; stdout and stderr are pipes. */
export function spawnInside(sb: E2bSandbox, enterPath: string, argv: string[], o: InsideOptions): ChildProcess {
  if (sb.vm) {
    const p = sb.vm.exec.spawn({
      argv,
      env: o.env ?? { ...SANDBOX_ENV, E2B_SANDBOX: 'true', E2B_SANDBOX_ID: sb.id },
      cwd: o.cwd ?? SANDBOX_HOME,
      uid: o.root ? 0 : SANDBOX_UID,
      gid: o.root ? 0 : SANDBOX_GID,
      stdin: o.stdin,
      ...(o.pty ? { pty: o.pty } : {}),
      ...(o.fd3 !== undefined ? { fd3: o.fd3 } : {}),
      nproc: sb.pidsMax,
    });
    return p as unknown as ChildProcess;
  }
  const proc = spawn(enterPath, enterArgv(sb, argv), {
    env: SANDBOX_ENV,
    cwd: '/',
    detached: o.detached ?? false,
    stdio: [o.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe', ...(o.fd3 !== undefined ? (['pipe'] as const) : [])],
  });
  if (o.fd3 !== undefined) {
    const code = proc.stdio[3] as NodeJS.WritableStream;
    code.on('error', () => undefined);
    code.end(o.fd3);
  }
  return proc;
}

/** A GuestProcess behind a ChildProcess type (a microVM sandbox's). */
export function guestProcess(p: ChildProcess | undefined): GuestProcess | undefined {
  const g = p as unknown;
  return g instanceof GuestProcess ? g : undefined;
}
