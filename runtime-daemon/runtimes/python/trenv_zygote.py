"""trenv fork zygote for Python: memory templates in userspace (TrEnv's mm-template idea).

Started by the daemon as root, in the host namespaces::

    /usr/bin/python3 -I -S -B trenv_zygote.py --socket <path> [--preload mod1,mod2] [--profile]

It imports the shim (trenv_shim.py, same directory) and the ``preload`` modules, freezes the
GC, listens on a unix SOCK_SEQPACKET socket (0600) and prints one line ``ready {json}`` on
stdout. Every instance is a fork of this initialised interpreter, so the interpreter and the
preloaded modules stay shared copy-on-write across instances.

Security (the zygote is root on the host, so it never runs agent code):

* Only the system Python is used: ``-I -S``, ``sys.path`` = the stdlib dirs under
  /usr/lib/python3.X + /usr/lib/python3/dist-packages. A preload module (or any parent
  package) whose file is not under /usr/lib/python3* is skipped (reported in ``ready``).
* The agent's module is imported only in the instance (C2), after it joined the sandbox
  (namespaces, cgroups, chroot) and dropped root (setgroups/setgid/setuid, no_new_privs).
* Only root may connect (socket 0600 + SO_PEERCRED check).
* The daemon's environment is wiped from memory at start (instances are forks of us and
  could otherwise read it back from /proc/self/environ's memory).

Requests (fields separated by NUL). A connection starts with ``spawn`` or ``prepare``:

    spawn    initpid=<host pid of sandbox init>  cgroup=<cgroup.procs path>...  uid=  gid=
             cwd=  env=K=V...     + 4 fds by SCM_RIGHTS (the instance's stdin, stdout, stderr, chan)
    prepare  initpid=  cgroup=...  (no fds)
    go       t=<mono_ns sent>  uid=  gid=  cwd=  env=K=V...  + the 4 fds (only after `prepared`)

Flow: the zygote forks C1 per connection (so a slow or broken client never blocks it) and
keeps serving. C1 (root): reads the request, writes its pid to every cgroup.procs, opens
/proc/<initpid>/ns/{uts,ipc,net,mnt,pid}, setns uts/ipc/net/mnt, chroot("/root"),
chdir("/"), setns pid (affects only its children: C1 stays outside the sandbox's pid
namespace), setsid, sets oom_score_adj 0 and re-seeds the RNGs (all inherited by C2). For
``prepare`` it then replies ``prepared`` and blocks on the connection (a "prepared waiter":
all the expensive joining is done, nothing runs in the sandbox's pid namespace) until ``go``
arrives; EOF or anything else while waiting makes it exit. Then, as for ``spawn``: it forks C2
(PID n in the sandbox's pid namespace). C2 dups the fds to 0..3, closes everything else,
setpgid(0, 0), drops root, replaces the environment, builds sys.path (site dirs, .pth files) and
runs the shim's one-shot path (``trenv_shim.run_once()``).

Replies from C1 (one message each, fields separated by NUL):
``prepared <host-pid> <mono_ns> spans=fork,request,cgroup,setns,warm`` (waiter ready),
``started <ns-pid> <host-pid> <mono_ns> spans=<name>:<start>:<end>,...`` (C2 finished its
setup and is about to load the handler; spans: fork, request, cgroup, setns, warm, fork2,
setup after ``spawn``; prepared, request, fork2, setup after ``go``),
``exit exited:<code>|signaled:<sig> <mono_ns>`` (C2 ended), or
``error <message>`` (nothing of the instance runs: failed before or during C2's setup).

``--profile``: every instance writes one line ``trenv-zygote profile (us): step=N ...`` (its
setup steps) to its stderr before loading the handler. For measurements only.

The zygote exits on SIGTERM (removing the socket file) and when its stdin reaches EOF
(the daemon holds the write end). It reaps C1s on SIGCHLD. C1s already running keep going
and report to their own connections.
"""

import os
import sys
import time

_T0 = time.monotonic()

# ---- system Python only (before any other import) ----------------------------------------
SYSTEM_PREFIXES = ("/usr/lib/python3/", "/usr/lib/python3.")
_STDLIB = [p for p in sys.path if os.path.realpath(p).startswith("/usr/lib/python3")]
SYSTEM_PATH = _STDLIB + ["/usr/lib/python3/dist-packages"]
sys.path[:] = SYSTEM_PATH
sys.dont_write_bytecode = True

import atexit  # noqa: E402
import ctypes  # noqa: E402
import errno  # noqa: E402
import fcntl  # noqa: E402
import gc  # noqa: E402
import importlib  # noqa: E402
import importlib.util  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import posix  # noqa: E402
import random  # noqa: E402
import select  # noqa: E402
import signal  # noqa: E402
import site  # noqa: E402  (module only: -S means site.main() never ran)
import socket  # noqa: E402
import stat  # noqa: E402
import struct  # noqa: E402
import threading  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
NS_ORDER = ("uts", "ipc", "net", "mnt")  # setns order; pid last (it only affects children)
MAX_REQUEST = 4 << 20
_ZYGOTE_PID = os.getpid()


def log(msg):
    try:
        os.write(2, f"trenv-zygote[{os.getpid()}]: {msg}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def _check(ret, what):
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _load_shim():
    spec = importlib.util.spec_from_file_location("trenv_shim", os.path.join(_HERE, "trenv_shim.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["trenv_shim"] = module
    spec.loader.exec_module(module)
    return module


shim = _load_shim()


# ---- preloads ---------------------------------------------------------------------------

def _origin_problem(spec):
    """None if the module comes from the system Python, else why not."""
    if spec.origin in ("built-in", "frozen"):
        return None
    paths = [spec.origin] if spec.origin else list(spec.submodule_search_locations or [])
    if not paths:
        return "no file"
    for p in paths:
        if not os.path.realpath(p).startswith(SYSTEM_PREFIXES):
            return f"not under /usr/lib/python3*: {p}"
    return None


def _module_problem(mod):
    f = getattr(mod, "__file__", None)
    if f is None:
        return None  # built-in or frozen or namespace package
    if os.path.realpath(f).startswith(SYSTEM_PREFIXES):
        return None
    return f"not under /usr/lib/python3*: {f}"


def preload(name):
    """Import one module if it and every parent package come from the system Python.
    Returns None on success, else the reason it was skipped."""
    parts = name.split(".")
    if not name or not all(p.isidentifier() for p in parts):
        return "not a module name"
    for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        if sub in sys.modules:
            problem = _module_problem(sys.modules[sub])
            if problem:
                return problem
            continue
        try:
            spec = importlib.util.find_spec(sub)
        except (ImportError, ValueError) as exc:
            return f"not found: {exc}"
        if spec is None:
            return "not found"
        problem = _origin_problem(spec)
        if problem:
            return problem
        try:
            importlib.import_module(sub)
        except BaseException as exc:  # a broken system module must not kill the zygote
            return f"import failed: {type(exc).__name__}: {exc}"
    return None


def _thread_count():
    return len(os.listdir("/proc/self/task"))


# ---- environment wipe -------------------------------------------------------------------

def _wipe_environment():
    """Drop the daemon's environment: os.environ, posix.environ, and the original strings
    on the stack (what /proc/self/environ shows), which every fork would inherit."""
    os.environ.clear()  # unsetenv() of every variable
    posix.environ.clear()
    try:
        fields = open("/proc/self/stat").read().rsplit(")", 1)[1].split()
        # fields[0] is field 3 (state); env_start/env_end are fields 50/51.
        start, end = int(fields[47]), int(fields[48])
        if 0 < start < end:
            ctypes.memset(start, 0, end - start)
    except (OSError, ValueError, IndexError):
        pass


# ---- C2: the instance -------------------------------------------------------------------

def _reseed():
    """Clones must not share RNG state with each other or with the zygote. Runs in C1 before
    it forks C2 (every C1 forks at most one C2 and draws no random numbers itself), so in a
    prepared waiter it is off the critical path. OpenSSL (3.x) also reseeds on its own after
    fork; the zygote instantiated its DRBG at start so the RAND_add here is cheap."""
    random.seed(os.urandom(32))
    shim.reseed_loaded_modules()


def _fresh_std_streams():
    """New sys.std* over fds 0..2, as a fresh `python3` with a UTF-8 locale and pipes makes them."""
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(
        io.open(0, "rb", closefd=False), encoding="utf-8", errors="strict")
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(
        io.open(1, "wb", closefd=False), encoding="utf-8", errors="strict", newline="\n")
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(
        io.open(2, "wb", closefd=False), encoding="utf-8", errors="backslashreplace",
        newline="\n", line_buffering=True)


_VER = f"python{sys.version_info.major}.{sys.version_info.minor}"
SITE_DIRS = (f"/usr/local/lib/{_VER}/dist-packages", "/usr/lib/python3/dist-packages")


def _instance_path():
    """sys.path like a normal `python3 trenv_shim.py` (minus the shim's own dir, which
    trenv_shim.load() drops anyway): stdlib, then the site dirs, .pth files processed.
    Runs in C2 (unprivileged, with the instance's environment): .pth lines may run code."""
    sys.path[:] = list(_STDLIB)
    for d in SITE_DIRS:
        if os.path.isdir(d):
            site.addsitedir(d)
    site.setquit()
    site.setcopyright()
    site.sethelper()


_PTH_CODE = {}  # source string -> code object: compile(src, "<string>", "exec") done once


def _cached_exec(source, globals=None, locals=None):
    """site.addpackage() runs every `import ...` line of a .pth file with exec(line);
    compiling those (often long) lines dominated the instance's sys.path step. This is
    exec() with the caller's namespaces, taking the compiled code from a cache made by the
    zygote (keyed by the exact source, so a changed .pth line is simply compiled anew)."""
    if globals is None:
        frame = sys._getframe(1)
        globals, locals = frame.f_globals, frame.f_locals if locals is None else locals
        del frame
    if isinstance(source, str):
        code = _PTH_CODE.get(source)
        if code is not None:
            source = code
    return exec(source, globals, locals)


def _warm_site():
    """Zygote start, no code of the site dirs runs: give the site dirs' FileFinders
    (directory listings) to every instance, and compile the `import` lines of their .pth
    files (+ string constants in them that compile, e.g. a nested exec("...")), so that
    the instance's .pth processing (C2, unprivileged) neither lists nor compiles again.
    A finder re-lists its directory by itself when the directory's mtime changed."""
    for d in (*_STDLIB, *SITE_DIRS):
        if d in sys.path_importer_cache or not os.path.isdir(d):
            continue
        for hook in sys.path_hooks:
            try:
                finder = hook(d)
            except ImportError:
                continue
            try:
                finder.find_spec("_trenv_no_such_module_")  # fills the listing cache
            except Exception:
                pass
            sys.path_importer_cache[d] = finder
            break
    for d in SITE_DIRS:
        try:
            names = sorted(n for n in os.listdir(d) if n.endswith(".pth") and not n.startswith("."))
        except OSError:
            continue
        for name in names:
            try:
                with open(os.path.join(d, name), encoding="utf-8") as f:
                    lines = f.readlines()
            except (OSError, ValueError):
                continue
            for line in lines:
                if not line.startswith(("import ", "import\t")):
                    continue
                todo = [line]
                while todo and len(_PTH_CODE) < 256:
                    src = todo.pop()
                    try:
                        code = compile(src, "<string>", "exec")
                    except (SyntaxError, ValueError):
                        continue
                    _PTH_CODE[src] = code
                    todo += [c for c in code.co_consts if isinstance(c, str) and "\n" in c]
    site.exec = _cached_exec  # site.addpackage's `exec` (a global lookup) finds this first


def _exit_like_python(code):
    """What interpreter shutdown would do for a script, without unwinding into the zygote."""
    try:
        threading._shutdown()  # join non-daemon threads the handler started
    except BaseException:
        pass
    try:
        atexit._run_exitfuncs()
    except BaseException:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            code = code or 120
    os._exit(code)


_PROFILE = []  # TRENV_ZYGOTE_PROFILE (zygote argv --profile): C2 writes per-step µs to stderr


def _child2(fds, errfd, req):
    """Runs in the sandbox (pid ns, chroot). Never returns. C1 already made the session,
    re-seeded the RNGs and set oom_score_adj (all inherited)."""
    code = 127
    stage = "start"
    pc = time.perf_counter_ns
    prof = [("start", pc())] if _PROFILE else None
    try:
        os.write(errfd, f"P{os.getpid()} {time.monotonic_ns()}\n".encode())
        stage = "fds"
        hi = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in (*fds, errfd)]
        for i in range(4):
            os.dup2(hi[i], i, inheritable=True)
        os.dup2(hi[4], 4, inheritable=False)
        errfd = 4
        os.closerange(5, 0x7FFFFFFF)
        stage = "setpgid"
        prof and prof.append((stage, pc()))
        os.setpgid(0, 0)  # C1 made the session (setsid); our own process group in it
        stage = "chdir"
        prof and prof.append((stage, pc()))
        os.chdir(req["cwd"])
        stage = "setgroups"
        prof and prof.append(("creds", pc()))
        os.setgroups([])
        stage = "setgid"
        os.setgid(req["gid"])
        stage = "setuid"
        os.setuid(req["uid"])
        if os.getuid() == 0 or os.geteuid() == 0:
            raise OSError(errno.EPERM, "still root")
        # setuid() from root made us non-dumpable (execve would reset it, but we do not
        # exec): /proc/self would stay root-owned, so the instance could not read its own
        # /proc/self/environ or fds, and no debugger could attach. An exec'd `run` process
        # is dumpable too; the zygote memory we carry holds no secrets (environment wiped).
        stage = "dumpable"
        prof and prof.append(("prctl", pc()))
        _check(_libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl(DUMPABLE)")
        stage = "no_new_privs"
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
        # Parent-death signal: C1 is our parent (outside our pid ns, so getppid() is 0).
        # If C1 dies nobody reports our exit: die too. Set after setuid (which clears it).
        stage = "pdeathsig"
        _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
        if os.getppid() != 0:
            os._exit(127)  # C1 already died and we were reparented to the sandbox init
        stage = "environment"
        prof and prof.append((stage, pc()))
        os.environ.clear()
        os.environ.update(req["env"])
        time.tzset()  # TZ may differ from the zygote's
        stage = "streams"
        prof and prof.append((stage, pc()))
        _fresh_std_streams()
        stage = "sys.path"
        prof and prof.append((stage, pc()))
        _instance_path()
        sys.argv[:] = ["trenv_shim.py"]
        if prof:
            prof.append(("end", pc()))
            os.write(2, ("trenv-zygote profile (us): " + " ".join(
                f"{prof[i][0]}={(prof[i + 1][1] - prof[i][1]) // 1000}" for i in range(len(prof) - 1))
                + "\n").encode())
        os.close(errfd)  # EOF: C1 reports `started`
        errfd = -1
    except BaseException as exc:
        if errfd >= 0:
            try:
                os.write(errfd, f"E{stage}: {exc}".encode("utf-8", "replace"))
            except OSError:
                pass
        os._exit(127)
    try:
        code = shim.run_once()
    except BaseException:  # run_once() catches the handler's errors; this is a shim bug
        try:
            import traceback
            traceback.print_exc()
        except BaseException:
            pass
        code = 1
    _exit_like_python(code)


# ---- C1: joins the sandbox (now, or prepared ahead), forks C2, reports ---------------------

def _send(conn, *fields):
    conn.send(b"\0".join(f.encode("utf-8", "replace") if isinstance(f, str) else f for f in fields))


# Which fields each request kind takes (PROTOCOL.md): `spawn` = `prepare` + `go` in one message.
_KIND_FIELDS = {
    b"spawn": {"initpid", "cgroup", "uid", "gid", "cwd", "env"},
    b"prepare": {"initpid", "cgroup"},
    b"go": {"t", "uid", "gid", "cwd", "env"},
}


def _parse_request(msg, kinds):
    fields = msg.split(b"\0")
    kind = fields[0]
    if kind not in kinds:
        raise ValueError(f"unexpected request {kind[:32]!r}")
    allowed = _KIND_FIELDS[kind]
    req = {"kind": kind.decode(), "cgroups": [], "env": {}, "cwd": "/", "uid": None, "gid": None,
           "initpid": None, "t": None}
    for f in fields[1:]:
        key, sep, val = f.partition(b"=")
        if not sep:
            raise ValueError("bad field")
        key = key.decode("ascii", "replace")
        if key not in allowed:
            raise ValueError(f"unknown field {key}")
        if key == "env":
            k, sep, v = val.partition(b"=")
            if not sep or not k:
                raise ValueError("bad env entry")
            req["env"][os.fsdecode(k)] = os.fsdecode(v)
        elif key == "cgroup":
            path = os.fsdecode(val)
            if not (path.startswith("/sys/fs/cgroup/") and path.endswith("/cgroup.procs")
                    and "/../" not in path):
                raise ValueError(f"bad cgroup path {path!r}")
            req["cgroups"].append(path)
        elif key in ("uid", "gid", "initpid", "t"):
            req[key] = int(val)
        elif key == "cwd":
            req["cwd"] = os.fsdecode(val)
    if "initpid" in allowed and (req["initpid"] is None or req["initpid"] <= 1):
        raise ValueError("initpid= is required")
    if "uid" in allowed:
        if req["uid"] is None or req["gid"] is None:
            raise ValueError("uid= and gid= are required")
        if req["uid"] == 0 or req["gid"] == 0:
            raise ValueError("refusing to run an instance as root (uid/gid 0)")
        if not req["cwd"].startswith("/"):
            raise ValueError("cwd must be absolute")
    return req


def _recv_request(conn, kinds, nfds):
    """One request message. Returns (req, fds), or (None, None) if the client went away.
    Raises ValueError (fds already closed) for a malformed one."""
    msg, fds, flags, _ = socket.recv_fds(conn, MAX_REQUEST, 8)
    if not msg and not fds:
        return None, None
    try:
        if flags & socket.MSG_TRUNC or flags & socket.MSG_CTRUNC:
            raise ValueError("request too large")
        req = _parse_request(msg, kinds)
        want = nfds[req["kind"]]
        if len(fds) != want:
            raise ValueError(f"want {want} fds (stdin, stdout, stderr, chan), got {len(fds)}"
                             if want else f"want no fds, got {len(fds)}")
    except (ValueError, UnicodeError):
        for fd in fds:
            os.close(fd)
        raise
    return req, fds


def _status(st):
    if os.WIFSIGNALED(st):
        return f"signaled:{os.WTERMSIG(st)}"
    return f"exited:{os.WEXITSTATUS(st)}"


def _join(req):
    """Join the sandbox: cgroups, uts/ipc/net/mnt, chroot, pid (for children only; C1 itself
    stays outside the sandbox's pid namespace, so it does not keep the sandbox busy).
    Returns [(span, start, end)...]; raises OSError with the failed stage."""
    stage = "cgroup"
    nsfds = {}
    t_cgroup = time.monotonic_ns()
    try:
        mypid = str(os.getpid()).encode()
        for path in req["cgroups"]:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, mypid)
            finally:
                os.close(fd)
        t_setns = time.monotonic_ns()
        stage = "open namespaces"
        for name in NS_ORDER + ("pid",):
            nsfds[name] = os.open(f"/proc/{req['initpid']}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        # Never "join" our own namespaces (a recycled initpid of a host process).
        if os.fstat(nsfds["pid"]).st_ino == os.stat("/proc/self/ns/pid").st_ino:
            raise OSError(errno.ESRCH, f"pid {req['initpid']} is not a sandbox init")
        for name in NS_ORDER:
            stage = f"setns {name}"
            _check(_libc.setns(nsfds[name], 0), f"setns {name}")
        stage = "chroot"
        os.chroot("/root")
        os.chdir("/")
        stage = "setns pid"
        _check(_libc.setns(nsfds["pid"], 0), "setns pid")
        t_warm = time.monotonic_ns()
        # Inherited by C2: done here so a prepared waiter does it before `go`.
        # setsid: a new session without a controlling terminal. In C1, because with the
        # scheduler's autogroups a new session creates a task group, which sometimes took
        # ~3 ms; C2 gets its own process group in this session (getsid() is 0 in C2: the
        # session leader C1 is outside its pid namespace).
        stage = "setsid"
        os.setsid()
        stage = "oom_score_adj"
        try:  # like `run`: 0, not the daemon's value (raising needs no privilege)
            fd = os.open("/proc/self/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)
        except OSError:
            pass
        stage = "reseed"
        _reseed()
        t_end = time.monotonic_ns()
    except BaseException as exc:
        raise OSError(getattr(exc, "errno", None) or errno.EIO, f"{stage}: {exc}") from None
    finally:
        for fd in nsfds.values():
            os.close(fd)
    return [("cgroup", t_cgroup, t_setns), ("setns", t_setns, t_warm), ("warm", t_warm, t_end)]


def _fmt_spans(spans):
    return "spans=" + ",".join(f"{n}:{a}:{b}" for n, a, b in spans)


def _child1(conn):
    """Serve one connection. Returns C1's exit code.

    `spawn`: join the sandbox, fork the instance, report. `prepare`: join the sandbox, reply
    `prepared`, then wait on the connection for `go` (the instance's part of a spawn request
    + its 4 fds) and carry on as for `spawn`; EOF (or anything else) while waiting: exit."""
    t_fork = time.monotonic_ns()
    cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, peer_uid, _ = struct.unpack("3i", cred)
    if peer_uid != os.geteuid():
        _send(conn, "error", f"peer uid {peer_uid} may not use the zygote")
        return 1
    try:
        req, fds = _recv_request(conn, (b"spawn", b"prepare"), {"spawn": 4, "prepare": 0})
    except (ValueError, UnicodeError) as exc:
        _send(conn, "error", f"bad request: {exc}")
        return 1
    if req is None:
        return 0  # the client went away
    t_req = time.monotonic_ns()
    try:
        joined = _join(req)
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        _send(conn, "error", exc.strerror or str(exc))
        return 1
    spans = [("fork", _ACCEPT_NS[0], t_fork), ("request", t_fork, t_req)] + joined
    if req["kind"] == "prepare":
        try:
            _send(conn, "prepared", str(os.getpid()), str(time.monotonic_ns()), _fmt_spans(spans))
            go, fds = _recv_request(conn, (b"go",), {"go": 4})
        except (ValueError, UnicodeError) as exc:
            try:
                _send(conn, "error", f"bad request: {exc}")
            except OSError:
                pass
            return 1
        except OSError:
            return 0
        if go is None:
            return 0  # discarded (connection closed): nothing ran in the sandbox
        t_wake = time.monotonic_ns()
        req.update(uid=go["uid"], gid=go["gid"], cwd=go["cwd"], env=go["env"])
        # prepared = sandboxd sent `go` -> the waiter has it (its wake-up).
        spans = [("prepared", go["t"] or t_wake, t_wake), ("request", t_wake, time.monotonic_ns())]
    return _run_instance(conn, fds, req, spans)


def _run_instance(conn, fds, req, spans):
    """C1, already in the sandbox: fork C2, report `started`, wait, report `exit`."""
    t_fork2 = time.monotonic_ns()
    try:
        rd, wr = os.pipe()
        try:
            pid = os.fork()
        except BaseException:
            os.close(rd)
            os.close(wr)
            raise
    except OSError as exc:
        for fd in fds:
            os.close(fd)
        _send(conn, "error", f"fork: {exc}")
        return 1
    if pid == 0:
        try:
            os.close(rd)
            conn.detach()  # its fd is closed by _child2's closerange; the object must not close a reused number
            _child2(fds, wr, req)
        finally:
            os._exit(127)
    os.close(wr)
    for fd in fds:
        os.close(fd)  # only C2 may hold the pipe ends, or they never reach EOF

    report = b""
    while True:
        chunk = os.read(rd, 4096)
        if not chunk:
            break
        report += chunk
    t_started = time.monotonic_ns()
    os.close(rd)
    head, _, rest = report.partition(b"\n")
    if not head.startswith(b"P") or rest.startswith(b"E"):
        _, st = os.waitpid(pid, 0)
        why = rest[1:].decode("utf-8", "replace") if rest.startswith(b"E") else f"instance died during setup ({_status(st)})"
        _send(conn, "error", why)
        return 1
    ns_pid, _, t_c2 = head[1:].decode().partition(" ")
    # Where the time went (for the daemon's restore trace), PROTOCOL.md `spawn`.
    spans = spans + [("fork2", t_fork2, int(t_c2)), ("setup", int(t_c2), t_started)]
    try:
        _send(conn, "started", ns_pid, str(pid), str(t_started), _fmt_spans(spans))
    except OSError:
        pass  # the client is gone; still wait so the instance is reaped
    _, st = os.waitpid(pid, 0)
    try:
        _send(conn, "exit", _status(st), str(time.monotonic_ns()))
    except OSError:
        pass
    return 0


def _start_c1(conn):
    try:
        pid = os.fork()
    except OSError as exc:
        log(f"fork: {exc}")
        try:
            _send(conn, "error", f"zygote fork: {exc}")
        except OSError:
            pass
        conn.close()
        return
    if pid != 0:
        conn.close()
        return
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for s in _ZYGOTE_SOCKETS:
            s.detach()
        code = _child1(conn)
    except BaseException as exc:
        try:
            _send(conn, "error", f"zygote: {type(exc).__name__}: {exc}")
        except BaseException:
            pass
    finally:
        os._exit(code)


# ---- the zygote itself ------------------------------------------------------------------

_ZYGOTE_SOCKETS = []
_ACCEPT_NS = [0]  # when the zygote accepted the connection C1 serves (C1 inherits it)


def _reap(_signum, _frame):
    if os.getpid() != _ZYGOTE_PID:
        return
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _term(_signum, _frame):
    if os.getpid() == _ZYGOTE_PID:
        raise SystemExit(0)


def _listen(path):
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise SystemExit(f"trenv-zygote: {path} exists and is not a socket")
        os.unlink(path)  # stale socket of an earlier zygote
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    old = os.umask(0o177)
    try:
        s.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    s.listen(128)
    s.setblocking(False)
    return s, os.stat(path).st_ino


def main(argv):
    sock_path, preloads = None, []
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--socket" and args:
            sock_path = args.pop(0)
        elif a == "--preload" and args:
            preloads += [m.strip() for m in args.pop(0).split(",") if m.strip()]
        elif a == "--profile":
            _PROFILE.append(True)
        else:
            print(f"usage: trenv_zygote.py --socket PATH [--preload mod1,mod2] [--profile] (bad: {a})", file=sys.stderr)
            return 2
    if not sock_path:
        print("trenv_zygote.py: --socket is required", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("trenv_zygote.py: must run as root (it joins sandboxes)", file=sys.stderr)
        return 2
    if sys.prefix != "/usr":
        print(f"trenv_zygote.py: must run on the system Python (/usr/bin/python3), not {sys.executable}", file=sys.stderr)
        return 2

    _wipe_environment()
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)  # belt and braces next to stdin EOF

    preloaded, skipped = [], []
    for name in preloads:
        reason = preload(name)
        if reason:
            skipped.append({"module": name, "reason": reason})
        else:
            preloaded.append(name)
    for name, mod in list(sys.modules.items()):
        problem = _module_problem(mod)
        if problem and mod is not sys.modules.get("__main__") and mod is not shim:
            print(f"trenv_zygote.py: module {name} {problem}; refusing to serve", file=sys.stderr)
            return 1
    ssl = sys.modules.get("ssl")
    if ssl is not None:  # instantiate OpenSSL's DRBG once here, not in every instance
        ssl.RAND_bytes(16)
    _warm_site()
    if _thread_count() != 1:
        print("trenv_zygote.py: a preload started a thread; fork would be unsafe", file=sys.stderr)
        return 1

    lsock, ino = _listen(sock_path)
    _ZYGOTE_SOCKETS.append(lsock)
    signal.signal(signal.SIGCHLD, _reap)
    signal.signal(signal.SIGTERM, _term)
    gc.collect()
    gc.freeze()  # everything so far is permanent: the GC must not dirty the shared pages
    try:
        info = {
            "pid": os.getpid(),
            "python": sys.version.split()[0],
            "preloaded": preloaded,
            "skipped": skipped,
            "load_ms": round((time.monotonic() - _T0) * 1000, 2),
        }
        sys.stdout.write("ready " + json.dumps(info, separators=(",", ":")) + "\n")
        sys.stdout.flush()
        while True:
            ready, _, _ = select.select([lsock, 0], [], [])
            if 0 in ready:
                try:
                    data = os.read(0, 4096)
                except BlockingIOError:
                    data = b"-"
                if not data:
                    return 0  # the daemon is gone
            if lsock in ready:
                for _ in range(64):
                    try:
                        conn, _ = lsock.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as exc:
                        log(f"accept: {exc}")
                        break
                    _ACCEPT_NS[0] = time.monotonic_ns()
                    _start_c1(conn)
    finally:
        if os.getpid() == _ZYGOTE_PID:
            try:
                if os.stat(sock_path).st_ino == ino:
                    os.unlink(sock_path)
            except OSError:
                pass
            lsock.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
