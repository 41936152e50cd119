/**
 * The code interpreter of an E2B sandbox (what @e2b/code-interpreter calls on port 49999): one
 * long-lived python3 REPL per context, running INSIDE the sandbox through trenv-enter, so state
 * (variables, imports) is kept across runCode calls. The REPL reads one JSON request per line and
 * answers with the NDJSON messages of /execute (stdout, stderr, result, error,
 * number_of_executions, end_of_execution). Executions of one context run one after another.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as readline from 'node:readline';
import { SANDBOX_HOME } from '../sandbox/rootfs';
import { guestProcess, spawnInside } from './inside';
import type { E2bSandbox } from './sandboxes';
import { signalSession } from './processes';

const REPL = String.raw`
import ast, base64, io, json, os, sys, time, traceback
_chan = os.fdopen(os.dup(1), 'w', buffering=1)
_req_in = os.fdopen(os.dup(0), 'r')
_null = os.open(os.devnull, os.O_RDWR)
os.dup2(_null, 0)
def emit(o):
    _chan.write(json.dumps(o) + '\n'); _chan.flush()
class _Stream(io.TextIOBase):
    def __init__(self, name): self.kind, self.buf = name, ''
    def writable(self): return True
    def write(self, s):
        self.buf += s
        while '\n' in self.buf:
            i = self.buf.index('\n') + 1
            emit({'type': self.kind, 'text': self.buf[:i], 'timestamp': time.time_ns() // 1000})
            self.buf = self.buf[i:]
        return len(s)
    def flush(self):
        if self.buf:
            emit({'type': self.kind, 'text': self.buf, 'timestamp': time.time_ns() // 1000}); self.buf = ''
def _figures():
    if 'matplotlib.pyplot' not in sys.modules: return
    plt = sys.modules['matplotlib.pyplot']
    for n in plt.get_fignums():
        b = io.BytesIO(); plt.figure(n).savefig(b, format='png')
        emit({'type': 'result', 'png': base64.b64encode(b.getvalue()).decode(), 'text': '<Figure>', 'is_main_result': False})
    plt.close('all')
def _result(v):
    r = {'type': 'result', 'text': repr(v), 'is_main_result': True}
    for k, m in (('html', '_repr_html_'), ('markdown', '_repr_markdown_'), ('latex', '_repr_latex_'), ('svg', '_repr_svg_')):
        f = getattr(v, m, None)
        if callable(f):
            try:
                x = f()
                if x: r[k] = x
            except Exception: pass
    emit(r)
os.environ.setdefault('MPLBACKEND', 'Agg')
# Debian's matplotlib wants /etc/matplotlibrc, which the sandbox's /etc does not have: a user rc instead
if not os.path.exists('/etc/matplotlibrc') and 'MATPLOTLIBRC' not in os.environ:
    try:
        _d = os.path.join(os.environ.get('HOME', '/tmp'), '.config', 'matplotlib')
        os.makedirs(_d, exist_ok=True)
        if not os.path.exists(os.path.join(_d, 'matplotlibrc')):
            with open(os.path.join(_d, 'matplotlibrc'), 'w') as _f: _f.write('backend: Agg\n')
    except OSError: pass
ns = {'__name__': '__main__'}
count = 0
for line in _req_in:
    try: req = json.loads(line)
    except Exception: continue
    count += 1
    saved_env = dict(os.environ)
    os.environ.update(req.get('env_vars') or {})
    out, err = _Stream('stdout'), _Stream('stderr')
    sys.stdout, sys.stderr = out, err
    try:
        tree = ast.parse(req.get('code', ''), '<cell>', 'exec')
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, '<cell>', 'exec'), ns)
        v = eval(compile(last, '<cell>', 'eval'), ns) if last is not None else None
        out.flush(); err.flush()
        _figures()
        if v is not None: _result(v)
    except BaseException as e:
        out.flush(); err.flush()
        tb = traceback.extract_tb(e.__traceback__)
        while tb and tb[0].filename != '<cell>': tb.pop(0)
        text = ''.join(traceback.format_list(tb)) if tb else ''
        emit({'type': 'error', 'name': type(e).__name__, 'value': str(e), 'traceback': 'Traceback (most recent call last):\n' + text + ''.join(traceback.format_exception_only(type(e), e))})
    finally:
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        os.environ.clear(); os.environ.update(saved_env)
        emit({'type': 'number_of_executions', 'execution_count': count})
        emit({'type': 'end_of_execution'})
`;

export type ExecMsg = Record<string, unknown> & { type: string };

class PyContext {
  private proc: ChildProcess | undefined;
  private current: ((m: ExecMsg) => void) | undefined;
  private chain: Promise<void> = Promise.resolve();
  private exitErr = '';

  constructor(readonly id: string, readonly cwd: string, private readonly sb: E2bSandbox, private readonly enterPath: string) {}

  private ensure(): ChildProcess {
    if (this.proc && this.proc.exitCode === null && !this.proc.killed) return this.proc;
    // the sandbox's envs are set inside (by env), never in trenv-enter's own environment (root on the host)
    const userEnv = Object.entries(this.sb.envs).filter(([k]) => /^[A-Za-z_][A-Za-z0-9_]*$/.test(k)).map(([k, v]) => `${k}=${v}`);
    // the REPL's program comes on fd 3: a short argv in `ps`
    const proc = spawnInside(
      this.sb,
      this.enterPath,
      ['/bin/sh', '-c', 'cd -- "$0" 2>/dev/null || cd; exec /usr/bin/env -- "$@"', this.cwd, ...userEnv, '/usr/bin/python3', '-u', '-c', 'import os\nwith os.fdopen(3) as f: src = f.read()\nexec(compile(src, "<trenv-repl>", "exec"))'],
      { stdin: true, fd3: REPL, detached: true },
    );
    this.proc = proc;
    this.exitErr = '';
    proc.stdin!.on('error', () => undefined);
    proc.stderr!.on('data', (b: Buffer) => (this.exitErr = (this.exitErr + b.toString()).slice(-4000)));
    readline.createInterface({ input: proc.stdout! }).on('line', (line) => {
      if (this.proc !== proc) return;
      try {
        this.current?.(JSON.parse(line) as ExecMsg);
      } catch {
        /* not a message */
      }
    });
    proc.on('exit', (code, signal) => {
      if (this.proc && this.proc !== proc) return; // an old REPL of a restarted context
      const cb = this.current;
      if (cb) {
        cb({ type: 'error', name: 'KernelDied', value: `the python process of context ${this.id} exited (${signal ?? code})`, traceback: this.exitErr });
        cb({ type: 'end_of_execution' });
      }
    });
    return proc;
  }

  /** Runs code; `onMsg` gets every message up to and including end_of_execution. */
  execute(code: string, envVars: Record<string, string>, onMsg: (m: ExecMsg) => void, signal: AbortSignal): Promise<void> {
    const run = () =>
      new Promise<void>((resolve) => {
        const proc = this.ensure();
        const onAbort = () => this.interrupt();
        signal.addEventListener('abort', onAbort);
        this.current = (m) => {
          onMsg(m);
          if (m.type === 'end_of_execution') {
            this.current = undefined;
            signal.removeEventListener('abort', onAbort);
            resolve();
          }
        };
        proc.stdin!.write(JSON.stringify({ code, env_vars: envVars }) + '\n');
      });
    const p = this.chain.then(run, run);
    this.chain = p;
    return p;
  }

  /** KeyboardInterrupt in the running cell (not in trenv-enter, which SIGINT would end). */
  interrupt(): void {
    const g = guestProcess(this.proc);
    if (g) g.kill('SIGINT');
    else if (this.proc?.pid) signalSession(this.proc.pid, 'SIGINT', this.sb.hostPids());
  }

  kill(): void {
    const g = guestProcess(this.proc);
    if (g) g.kill('SIGKILL');
    else if (this.proc?.pid) {
      try {
        process.kill(-this.proc.pid, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    this.proc = undefined;
  }
}

export class Interpreters {
  private readonly contexts = new Map<string, PyContext>();

  constructor(private readonly sb: E2bSandbox, private readonly enterPath: string) {}

  create(language: string | undefined, cwd: string | undefined, id: string = crypto.randomUUID()): { id: string; language: string; cwd: string } {
    if (language && language !== 'python') throw new Error(`language "${language}" is not supported by trenv's code interpreter (python only)`);
    const c = new PyContext(id, cwd || SANDBOX_HOME, this.sb, this.enterPath);
    this.contexts.set(id, c);
    return { id, language: 'python', cwd: c.cwd };
  }

  get(id: string | undefined): PyContext | undefined {
    if (!id) {
      if (!this.contexts.has('default')) this.create('python', SANDBOX_HOME, 'default');
      return this.contexts.get('default');
    }
    return this.contexts.get(id);
  }

  list(): Array<{ id: string; language: string; cwd: string }> {
    return [...this.contexts.values()].map((c) => ({ id: c.id, language: 'python', cwd: c.cwd }));
  }

  remove(id: string): boolean {
    const c = this.contexts.get(id);
    c?.kill();
    return this.contexts.delete(id);
  }

  restart(id: string): boolean {
    const c = this.contexts.get(id);
    c?.kill();
    return !!c;
  }

  dispose(): void {
    for (const c of this.contexts.values()) c.kill();
    this.contexts.clear();
  }
}
