"""trenv runtime shim for Python handlers.

Run by the daemon inside a sandbox as ``python3 trenv_shim.py`` with:

* cwd ``/app`` (the agent's folder, read-only),
* the event JSON on stdin (read to EOF; empty stdin means ``{}``),
* ``TRENV_HANDLER`` (``path/to/file.py:function``), ``TRENV_INVOCATION_ID``,
  ``TRENV_DEADLINE_MS`` (unix epoch ms) and ``TRENV_AGENT`` in the environment,
* fd 3: the "chan" pipe for structured messages.

Everything the shim itself has to say goes to fd 3 as JSON lines (one compact
object per line); stdout and stderr belong to the user's code. Messages:
``loaded``, ``start``, ``log``, then exactly one ``result`` or ``error``.
``mono_ns`` is CLOCK_MONOTONIC in nanoseconds, as a decimal string.

Exit codes: 0 success, 1 handler error, 2 load error, 3 result not JSON.

``load()`` and ``invoke()`` are kept apart so a long-lived template server can
load the module once and invoke it many times.
"""

import asyncio
import importlib.util
import inspect
import json
import os
import sys
import threading
import time
import traceback

EXIT_OK, EXIT_HANDLER, EXIT_LOAD, EXIT_RESULT = 0, 1, 2, 3
CHAN_FD = 3
_SHIM_FILE = os.path.abspath(__file__)
_ASYNCIO_DIR = os.path.dirname(os.path.abspath(asyncio.__file__))

# /app is read-only; and on a developer's host we must not litter it either.
sys.dont_write_bytecode = True


class LoadError(Exception):
    """The handler spec is malformed, or its file or function cannot be loaded."""


class Chan:
    """Writes JSON lines to the chan fd; safe to use from several threads."""

    def __init__(self, fd=CHAN_FD):
        try:
            os.fstat(fd)
        except OSError:
            # Run by hand without fd 3: fall back to stderr so nothing is lost.
            fd = 2
        self._fd = fd
        self._lock = threading.Lock()

    def send(self, kind, strict=False, **fields):
        """Write one message, or raise (writing nothing) if it cannot be JSON.

        NaN/Infinity always raise ValueError. Other non-JSON values are
        repr()'d, unless strict (used for results): then they raise TypeError.
        """
        msg = {"t": kind, **fields, "mono_ns": str(time.monotonic_ns())}
        line = json.dumps(
            msg,
            ensure_ascii=False,
            separators=(",", ":"),
            allow_nan=False,  # NaN/Infinity are not JSON: raise ValueError
            default=None if strict else repr,  # a bad log field must not break logging
        )
        data = (line + "\n").encode("utf-8", "replace")
        with self._lock:
            while data:  # a pipe may take a long line in several writes
                data = data[os.write(self._fd, data):]


def flush_std_streams():
    """Push the user's buffered stdout/stderr out before we report anything."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # closed or broken by user code: nothing left to flush


class Logger:
    """``context.logger``: structured logs, e.g. ``logger.info("fetched", url=u, ms=12)``."""

    def __init__(self, chan):
        self._chan = chan

    def _log(self, level, msg, fields):
        flush_std_streams()  # keeps prints and structured logs in order
        try:
            self._chan.send("log", level=level, msg=str(msg), fields=fields)
        except ValueError:  # e.g. a NaN somewhere in fields
            fields = {k: repr(v) for k, v in fields.items()}
            self._chan.send("log", level=level, msg=str(msg), fields=fields)

    def debug(self, msg, /, **fields):
        self._log("debug", msg, fields)

    def info(self, msg, /, **fields):
        self._log("info", msg, fields)

    def warn(self, msg, /, **fields):
        self._log("warn", msg, fields)

    warning = warn

    def error(self, msg, /, **fields):
        self._log("error", msg, fields)


class Context:
    """The second argument of every handler."""

    def __init__(self, invocation_id, deadline_ms, agent, logger):
        self.invocation_id = invocation_id
        self.deadline_ms = deadline_ms  # unix epoch ms, or None if no deadline
        self.agent = agent
        self.logger = logger

    def remaining_ms(self):
        """Milliseconds left before the deadline (never negative; inf if none)."""
        if self.deadline_ms is None:
            return float("inf")
        return max(0, self.deadline_ms - int(time.time() * 1000))


def _is_runtime_frame(tb):
    filename = tb.tb_frame.f_code.co_filename
    return (
        filename == _SHIM_FILE
        or filename.startswith(_ASYNCIO_DIR)
        or filename.startswith("<frozen importlib")
    )


def _describe(exc, user_frames=True):
    """The ``error`` object of an ``error`` message.

    The stack starts at the first frame of user code (the shim's, asyncio's and
    importlib's frames are dropped); with user_frames=False it has no frames.
    """
    tb = exc.__traceback__ if user_frames else None
    while tb is not None and _is_runtime_frame(tb):
        tb = tb.tb_next
    stack = "".join(traceback.format_exception(type(exc), exc, tb))
    return {"type": type(exc).__name__, "message": str(exc), "stack": stack}


def load(spec, app_dir="."):
    """Import ``file.py:function`` (relative to app_dir) and return the function.

    Raises LoadError for a bad spec or a missing file/function; exceptions
    raised while importing the module propagate unchanged.
    """
    file_part, sep, func_name = (spec or "").rpartition(":")
    if not sep or not file_part.endswith(".py") or not func_name.isidentifier():
        raise LoadError(
            f"bad handler {spec!r}: expected 'file.py:function', e.g. 'main.py:handler'"
        )
    path = os.path.abspath(os.path.join(app_dir, file_part))
    if not os.path.isfile(path):
        raise LoadError(f"handler file {file_part!r} not found in {os.path.abspath(app_dir)}")

    # Let the module import its siblings and packages in the agent folder, the
    # same as `python file.py` would; the shim's own folder is not on the path.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(_SHIM_FILE)]
    for d in (os.path.abspath(app_dir), os.path.dirname(path)):
        if d not in sys.path:
            sys.path.insert(0, d)

    name = os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # so pickle, dataclasses etc. can find it
    module_spec.loader.exec_module(module)

    func = getattr(module, func_name, None)
    if func is None:
        raise LoadError(f"{file_part} has no function {func_name!r}")
    if not callable(func):
        raise LoadError(f"{file_part}:{func_name} is not callable")
    return func


def invoke(handler, event, context, chan):
    """Call the handler once and report its result on chan. Returns the exit code."""
    chan.send("start")
    try:
        value = handler(event, context)
        if inspect.isawaitable(value):
            value = asyncio.run(_await(value))
    except BaseException as exc:  # SystemExit/KeyboardInterrupt are handler errors too
        flush_std_streams()
        chan.send("error", phase="handler", error=_describe(exc))
        return EXIT_HANDLER

    flush_std_streams()
    try:
        chan.send("result", strict=True, value=value)
    except (TypeError, ValueError, RecursionError) as exc:
        chan.send("error", phase="result", error=_describe(exc, user_frames=False))
        return EXIT_RESULT
    return EXIT_OK


async def _await(awaitable):
    return await awaitable


def read_event(stream):
    """Parse the whole of stream as the event; empty input is ``{}``."""
    raw = stream.read()
    try:
        return json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise ValueError(f"the event on stdin is not JSON: {exc}") from None


def context_from_env(env, chan):
    deadline = env.get("TRENV_DEADLINE_MS")
    return Context(
        invocation_id=env.get("TRENV_INVOCATION_ID", ""),
        deadline_ms=int(deadline) if deadline else None,
        agent=env.get("TRENV_AGENT", ""),
        logger=Logger(chan),
    )


def run_once():
    """One invocation, the way the daemon runs the shim: load the handler named by
    ``TRENV_HANDLER`` from the cwd, read the event from stdin, invoke it, report on
    chan. Returns the exit code. Also the entry the fork zygote (trenv_zygote.py)
    calls in each instance after it has joined its sandbox."""
    chan = Chan()
    try:
        handler = load(os.environ.get("TRENV_HANDLER", ""))
    except BaseException as exc:
        flush_std_streams()
        chan.send("error", phase="load", error=_describe(exc))
        return EXIT_LOAD
    if os.environ.get("TRENV_EVENT_ENVELOPE") == "1":
        frozen_generators()
    chan.send("loaded")

    try:
        event = read_event(sys.stdin.buffer)
        if os.environ.get("TRENV_EVENT_ENVELOPE") == "1":
            event = open_envelope(event, chan)
    except (ValueError, TypeError) as exc:  # not JSON: the handler cannot be called with it
        chan.send("error", phase="handler", error=_describe(exc, user_frames=False))
        return EXIT_HANDLER
    return invoke(handler, event, context_from_env(os.environ, chan), chan)


_FROZEN_GENERATORS = []


def reseed_loaded_modules():
    """Re-seed the generators of modules a clone may have inherited loaded (numpy, OpenSSL via
    ssl, multiprocessing's authkey), from the kernel's (already re-seeded) randomness. Shared by
    the microVM envelope path here and the fork zygote (trenv_zygote.py)."""
    np = sys.modules.get("numpy")
    if np is not None:
        try:
            np.random.seed()
        except Exception:
            pass
    ssl = sys.modules.get("ssl")
    if ssl is not None:
        try:
            ssl.RAND_add(os.urandom(32), 32.0)
        except Exception:
            pass
    mp = sys.modules.get("multiprocessing.process")
    if mp is not None:  # the authkey is os.urandom(32) taken at import time
        try:
            mp.current_process().authkey = os.urandom(32)
        except Exception:
            pass


def frozen_generators():
    """Remember the random.Random() objects that exist once the agent is loaded: a snapshot taken
    now freezes their state into every clone. Walking the heap here, before the snapshot, keeps it
    off every clone's start (SystemRandom draws from the kernel, which the guest agent re-seeds)."""
    import gc
    import random
    _FROZEN_GENERATORS[:] = [
        o for o in gc.get_objects()
        if isinstance(o, random.Random) and not isinstance(o, random.SystemRandom) and o is not random._inst
    ]


def open_envelope(msg, chan):
    """A shim started once and snapshotted after ``loaded`` (a microVM template) is resumed in
    many clones with the same memory. Then stdin carries an envelope instead of the bare event:
    ``{"trenv": {"seed": "<hex>", "env": {...}}, "event": <event>}``. Apply ``env`` (this
    invocation's environment; ``TRENV_EVENT_ENVELOPE`` itself is kept), re-seed what the
    snapshot froze, and return the event."""
    if not isinstance(msg, dict) or not isinstance(msg.get("trenv"), dict):
        raise TypeError('TRENV_EVENT_ENVELOPE is set but stdin is not an envelope {"trenv": {...}, "event": ...}')
    meta = msg["trenv"]
    for k, v in (meta.get("env") or {}).items():
        if k != "TRENV_EVENT_ENVELOPE":
            os.environ[k] = str(v)
    seed = meta.get("seed")
    if seed is not None:
        import random
        random.seed(bytes.fromhex(seed) + os.urandom(16))
        # random.Random() objects made before the snapshot (module level) hold the same state in
        # every clone: re-seed each one (found before the snapshot, see frozen_generators())
        for obj in _FROZEN_GENERATORS:
            obj.seed(os.urandom(32))
        reseed_loaded_modules()
        chan.send("log", level="debug", msg="trenv: re-seeded", fields={"random": "seeded from the envelope + os.urandom"})
    return msg.get("event", {})


main = run_once  # the CLI entry (kept for callers of the old name)

if __name__ == "__main__":
    sys.exit(run_once())
