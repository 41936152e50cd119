/**
 * The shared Chromium: one headless Debian chromium for all agents, started when the first agent
 * asks for a browser, supervised (a crash is reported and the next request starts a new one), and
 * run as an unprivileged user with its own sandbox when the kernel allows it.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as crypto from 'node:crypto';
import * as os from 'node:os';
import * as path from 'node:path';
import { procStatFields, readRollup } from '../metrics/smaps';

export const CHROMIUM = process.env.TRENV_CHROMIUM ?? '/usr/bin/chromium';

/** Flags measured on this machine (see shared/notes/machine.md); chromium honours only the last --disable-features. */
export const CHROMIUM_FLAGS = [
  '--headless',
  '--disable-gpu',
  '--no-first-run',
  '--no-default-browser-check',
  '--disable-dev-shm-usage',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-extensions',
  '--mute-audio',
  '--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication,InterestFeedContentSuggestions,CalculateNativeWinOcclusion,WebUIOmniboxPopup,WebUIOmniboxAimPopup',
];

export class Chromium extends EventEmitter {
  proc: ChildProcess | undefined;
  wsUrl = '';
  startedAt = 0;
  exited = false;

  constructor(private readonly profileDir: string, private readonly log: (m: string) => void = () => undefined) {
    super();
  }

  get pid(): number {
    return this.proc?.pid ?? 0;
  }

  async start(timeoutMs = 20_000): Promise<string> {
    if (!fs.existsSync(CHROMIUM)) throw new Error(`no chromium at ${CHROMIUM}: install Debian's chromium package (scripts/setup.sh does)`);
    fs.rmSync(this.profileDir, { recursive: true, force: true });
    fs.mkdirSync(this.profileDir, { recursive: true });
    // as root chromium refuses its own sandbox; the daemon runs it with --no-sandbox but never as
    // root: as nobody, in a profile dir it owns (the proxy in front is what isolates agents)
    fs.chownSync(this.profileDir, 65534, 65534);
    const args = [
      '--pdeathsig', 'KILL', '--reuid', '65534', '--regid', '65534', '--clear-groups', '--',
      CHROMIUM, ...CHROMIUM_FLAGS, '--no-sandbox', '--remote-debugging-address=127.0.0.1', '--remote-debugging-port=0',
      `--user-data-dir=${this.profileDir}`, 'about:blank',
    ];
    const proc = spawn('setpriv', args, { stdio: ['ignore', 'ignore', 'pipe'], env: { HOME: this.profileDir, PATH: '/usr/bin:/bin' } });
    this.proc = proc;
    this.startedAt = Date.now();
    let err = '';
    const url = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`chromium did not start within ${timeoutMs} ms: ${err.slice(-500)}`)), timeoutMs);
      proc.stderr!.on('data', (d: Buffer) => {
        if (err.length < 16384) err += d.toString();
        const m = /DevTools listening on (ws:\/\/\S+)/.exec(err);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      });
      proc.once('exit', (code, sig) => {
        clearTimeout(timer);
        reject(new Error(`chromium exited (${sig ?? code}) while starting: ${err.slice(-500)}`));
      });
      proc.once('error', (e) => reject(e));
    });
    proc.stderr!.removeAllListeners('data');
    proc.stderr!.resume();
    proc.once('exit', (code, sig) => {
      this.exited = true;
      this.log(`shared browser exited (${sig ?? code})`);
      this.emit('exit', `the shared browser exited (${sig ?? code})`);
    });
    this.wsUrl = url;
    return url;
  }

  /** Every process of the browser (the main one and its children: renderers, utility, zygotes). */
  pids(): number[] {
    if (!this.pid || this.exited) return [];
    const children = new Map<number, number[]>();
    for (const p of fs.readdirSync('/proc')) {
      if (!/^\d+$/.test(p)) continue;
      const f = procStatFields(p);
      if (!f) continue; // gone
      const ppid = Number(f[1]);
      const list = children.get(ppid) ?? [];
      list.push(Number(p));
      children.set(ppid, list);
    }
    const out: number[] = [];
    const walk = (pid: number) => {
      out.push(pid);
      for (const c of children.get(pid) ?? []) walk(c);
    };
    walk(this.pid);
    return out;
  }

  pssKb(): number {
    return this.pids().reduce((a, p) => a + (readRollup(p)?.pssKb ?? 0), 0);
  }

  async stop(): Promise<void> {
    if (!this.proc || this.exited) return;
    // the whole tree at once: children left behind (zygotes, renderers) still write into the profile
    const tree = this.pids();
    const gone = new Promise<void>((r) => this.proc!.once('exit', () => r()));
    for (const p of tree.reverse()) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
    await Promise.race([gone, new Promise((r) => setTimeout(r, 3000))]);
    // a process of the tree may still be exiting (its files closing): retry while the dir changes under us
    fs.rmSync(this.profileDir, { recursive: true, force: true, maxRetries: 20, retryDelay: 50 });
  }
}

/**
 * A new profile dir for the browser user: under the system temp dir, not the state dir (whose
 * parents may be closed to `nobody`), named after the state dir's hash so leftovers are findable.
 */
export function newProfileDir(stateDir: string): string {
  const tag = crypto.createHash('sha256').update(path.resolve(stateDir)).digest('hex').slice(0, 12);
  return fs.mkdtempSync(path.join(os.tmpdir(), `trenv-browser-${tag}-`));
}
