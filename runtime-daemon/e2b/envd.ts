/**
 * envd's Connect services (process.Process, filesystem.Filesystem) for E2B sandboxes, served by
 * @connectrpc/connect-node from the code generated out of proto/*.proto. The server resolves and
 * authorizes the sandbox (E2b-Sandbox-Id + its access token) before a request gets here and hands
 * it over as a context value.
 */
import { create } from '@bufbuild/protobuf';
import { timestampFromMs } from '@bufbuild/protobuf/wkt';
import { Code, ConnectError, ConnectRouter, createContextKey, HandlerContext } from '@connectrpc/connect';
import { EntryInfoSchema, EventType, FileType, Filesystem, type EntryInfo, type FilesystemEvent } from './gen/filesystem_pb';
import { Process, Signal } from './gen/process_pb';
import { EntryJson, FsError, FsEventJson } from './fsHelper';
import { follow, ProcEvent } from './processes';
import type { SandboxRuntime } from './runtime';

export const kRuntime = createContextKey<SandboxRuntime | undefined>(undefined, { description: 'e2b sandbox' });

function rt(ctx: HandlerContext): SandboxRuntime {
  const r = ctx.values.get(kRuntime);
  if (!r) throw new ConnectError('no sandbox for this request', Code.Unavailable);
  return r;
}

/**
 * The user a command asks for (the SDK's `user` option: `Authorization: Basic base64("<name>:")`).
 * None, `user` or `agent`: the sandbox user (uid 10001). `root`: root of a microVM's guest (the VM is
 * the boundary); refused in container sandboxes, whose root would be root of the host's kernel.
 */
export function commandUser(authorization: string | null, vm: boolean): 'sandbox' | 'root' {
  const m = /^Basic\s+([A-Za-z0-9+/=]+)$/.exec(authorization?.trim() ?? '');
  const name = m ? Buffer.from(m[1], 'base64').toString('utf8').split(':')[0] : '';
  if (!name || name === 'user' || name === 'agent') return 'sandbox';
  if (name === 'root') {
    if (vm) return 'root';
    throw new ConnectError(
      "user 'root' is not available in container sandboxes: commands run as the sandbox user (uid 10001) without privileges; for root, use a microVM sandbox (template base-vm or metadata trenv.sandbox=microvm)",
      Code.PermissionDenied,
    );
  }
  throw new ConnectError(`unknown user '${name.slice(0, 64)}': this sandbox has 'user' (uid 10001)${vm ? " and 'root'" : ''}`, Code.InvalidArgument);
}

const FS_CODES: Record<string, Code> = {
  ENOENT: Code.NotFound,
  EEXIST: Code.AlreadyExists,
  EACCES: Code.PermissionDenied,
  EPERM: Code.PermissionDenied,
  ENOTDIR: Code.InvalidArgument,
  EISDIR: Code.InvalidArgument,
  ENOTEMPTY: Code.FailedPrecondition,
  EINVAL: Code.InvalidArgument,
  EXDEV: Code.InvalidArgument,
  ENOSPC: Code.ResourceExhausted,
  EUNAVAILABLE: Code.Unavailable,
};

async function fsCall<T>(r: SandboxRuntime, op: string, args: Record<string, unknown>): Promise<T> {
  try {
    return await r.fs.call<T>(op, args);
  } catch (e) {
    if (e instanceof FsError) {
      const what = typeof args.path === 'string' ? args.path : typeof args.source === 'string' ? `${args.source} -> ${args.destination}` : '';
      const msg = e.code === 'ENOENT' ? `path not found: ${what}` : e.code === 'EEXIST' ? `path already exists: ${what}` : `${what}: ${e.message}`;
      throw new ConnectError(msg, FS_CODES[e.code] ?? Code.Internal);
    }
    throw e;
  }
}

function entryInfo(e: EntryJson): EntryInfo {
  return create(EntryInfoSchema, {
    name: e.name,
    type: e.type === 'dir' ? FileType.DIRECTORY : e.type === 'symlink' ? FileType.SYMLINK : FileType.FILE,
    path: e.path,
    size: BigInt(Math.trunc(e.size)),
    mode: e.mode,
    permissions: e.permissions,
    owner: e.owner,
    group: e.group,
    modifiedTime: timestampFromMs(Math.trunc(e.mtimeMs)),
    symlinkTarget: e.symlinkTarget,
  });
}

const EVENT_TYPES: Record<FsEventJson['type'], EventType> = {
  create: EventType.CREATE,
  write: EventType.WRITE,
  remove: EventType.REMOVE,
  rename: EventType.RENAME,
  chmod: EventType.CHMOD,
};

function fsEvent(e: FsEventJson): Omit<FilesystemEvent, '$typeName'> {
  return { name: e.name, type: EVENT_TYPES[e.type], entry: e.entry ? entryInfo(e.entry) : undefined };
}

function keepaliveSeconds(ctx: HandlerContext): number {
  const n = Number(ctx.requestHeader.get('keepalive-ping-interval'));
  return Number.isFinite(n) && n > 0 ? Math.min(n, 300) : 50;
}

function toEvent(e: ProcEvent) {
  return { event: { event: e } } as never;
}

export function envdRoutes(router: ConnectRouter): void {
  router.service(Process, {
    list(_req, ctx) {
      return { processes: rt(ctx).procs.list().map((p) => ({ pid: p.pid, tag: p.tag, config: { cmd: p.config.cmd, args: p.config.args, envs: p.config.envs, cwd: p.config.cwd } })) };
    },
    async *start(req, ctx) {
      const r = rt(ctx);
      const c = req.process;
      if (!c?.cmd) throw new ConnectError('process.cmd is required', Code.InvalidArgument);
      const asRoot = commandUser(ctx.requestHeader.get('authorization'), !!r.sb.vm) === 'root';
      const p = r.procs.create({ cmd: c.cmd, args: [...c.args], envs: { ...c.envs }, cwd: c.cwd }, req.tag);
      const events = follow(p, r.sb, ctx.signal, keepaliveSeconds(ctx));
      const first = await events.next(); // subscribed: nothing the command prints can be missed
      yield toEvent(first.value as ProcEvent);
      const size = req.pty?.size;
      r.procs.spawn(p, { pty: req.pty ? { cols: size?.cols ?? 80, rows: size?.rows ?? 24 } : undefined, tag: req.tag, stdin: req.stdin ?? true, ...(asRoot ? { user: 'root' } : {}) });
      for await (const e of events) yield toEvent(e);
    },
    async *connect(req, ctx) {
      const r = rt(ctx);
      const p = r.procs.find(req.process?.selector as never);
      for await (const e of follow(p, r.sb, ctx.signal, keepaliveSeconds(ctx))) yield toEvent(e);
    },
    update(req, ctx) {
      const p = rt(ctx).procs.find(req.process?.selector as never);
      if (req.pty?.size) {
        if (!p.pty) throw new ConnectError(`process ${p.pid} has no pty`, Code.FailedPrecondition);
        if (p.running) p.pty.resize(Math.max(1, req.pty.size.cols), Math.max(1, req.pty.size.rows));
      }
      return {};
    },
    sendInput(req, ctx) {
      const p = rt(ctx).procs.find(req.process?.selector as never);
      if (!p.running) throw new ConnectError(`process ${p.pid} has exited`, Code.NotFound);
      const input = req.input?.input;
      if (!input?.case) return {};
      if (p.pty) p.pty.write(Buffer.from(input.value).toString('utf8'));
      else if (p.child?.stdin && !p.child.stdin.writableEnded) p.child.stdin.write(Buffer.from(input.value));
      else throw new ConnectError(`process ${p.pid} has no open stdin (start it with stdin: true)`, Code.FailedPrecondition);
      return {};
    },
    closeStdin(req, ctx) {
      const p = rt(ctx).procs.find(req.process?.selector as never);
      if (p.child?.stdin) p.child.stdin.end();
      else if (p.pty) p.pty.write('\x04');
      return {};
    },
    sendSignal(req, ctx) {
      const p = rt(ctx).procs.find(req.process?.selector as never);
      const pids = rt(ctx).sb.hostPids();
      if (req.signal === Signal.SIGKILL) p.signal('SIGKILL', pids);
      else if (req.signal === Signal.SIGTERM) p.signal('SIGTERM', pids);
      else throw new ConnectError(`signal ${req.signal} is not supported (SIGTERM or SIGKILL)`, Code.InvalidArgument);
      return {};
    },
  });

  router.service(Filesystem, {
    async stat(req, ctx) {
      return { entry: entryInfo(await fsCall<EntryJson>(rt(ctx), 'stat', { path: req.path })) };
    },
    async makeDir(req, ctx) {
      return { entry: entryInfo(await fsCall<EntryJson>(rt(ctx), 'mkdir', { path: req.path })) };
    },
    async move(req, ctx) {
      return { entry: entryInfo(await fsCall<EntryJson>(rt(ctx), 'move', { source: req.source, destination: req.destination })) };
    },
    async listDir(req, ctx) {
      return { entries: (await fsCall<EntryJson[]>(rt(ctx), 'list', { path: req.path, depth: req.depth })).map(entryInfo) };
    },
    async remove(req, ctx) {
      await fsCall(rt(ctx), 'remove', { path: req.path });
      return {};
    },
    async *watchDir(req, ctx) {
      const r = rt(ctx);
      const w = await r.watch(req.path, req.recursive, req.includeEntry);
      try {
        yield { event: { case: 'start', value: {} } };
        const ka = keepaliveSeconds(ctx) * 1000;
        for (;;) {
          const batch = await w.next(ctx.signal, ka);
          if (batch === 'ended') throw new ConnectError(`sandbox ${r.sb.id} ended while watching ${req.path}`, Code.Unavailable);
          if (batch === 'aborted') return;
          if (!batch.length) yield { event: { case: 'keepalive', value: {} } };
          for (const e of batch) yield { event: { case: 'filesystem', value: fsEvent(e) } };
        }
      } finally {
        await w.close();
      }
    },
    async createWatcher(req, ctx) {
      const r = rt(ctx);
      const w = await r.watch(req.path, req.recursive, req.includeEntry);
      return { watcherId: r.addPolledWatcher(w) };
    },
    getWatcherEvents(req, ctx) {
      const w = rt(ctx).polledWatcher(req.watcherId);
      if (!w) throw new ConnectError(`watcher ${req.watcherId} not found`, Code.NotFound);
      return { events: w.drain().map(fsEvent) };
    },
    async removeWatcher(req, ctx) {
      const r = rt(ctx);
      const w = r.polledWatcher(req.watcherId);
      if (!w) throw new ConnectError(`watcher ${req.watcherId} not found`, Code.NotFound);
      await r.removePolledWatcher(req.watcherId);
      return {};
    },
  });
}
