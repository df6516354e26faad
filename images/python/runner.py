"""The codebox runner: one live Python interpreter inside a sandbox container.

The supervisor starts this program as the container's main process with
`python3 -c <this source>` and keeps it alive across the cells of a chat, the way
a Jupyter kernel lives across the cells of a notebook. It speaks the framed
protocol of PROTOCOL.md, beside it, over its own stdin and stdout: each frame is
a 4-byte big-endian length followed by one UTF-8 JSON object.

Why it is built the way it is:

- The channel is private. At start the runner moves the supervisor's stdio to
  descriptors made by os.dup, which child processes do not inherit, and points
  fd 0 at /dev/null. What code prints, or what a program it starts writes, is
  then never mistaken for a frame, and nothing it runs reads the next request.
- fds 1 and 2 become pipes that a reader thread forwards as `stream` frames.
  They are real file descriptors, so what subprocesses and C libraries write is
  captured along with print().
- Nothing here enforces anything. Time, memory, process and output limits are
  applied by the supervisor from outside the container, and the supervisor
  trusts nothing this program says, since the code it runs can rewrite any of
  it. The runner only has to be correct for honest code.
- Only the standard library is used, and no file is needed (there is no
  __file__ under -c), so any image with python3 (3.11 or newer) can run it.
"""

import ast
import base64
import builtins
import codecs
import importlib
import importlib.machinery
import io
import json
import linecache
import os
import platform
import re
import select
import signal
import struct
import sys
import threading
import traceback
import types

MAX_REQUEST = 64 << 20  # The largest frame accepted from the supervisor.
MAX_FRAME = 8 << 20  # The largest frame the supervisor accepts from the runner.
MAX_TEXT = 256 << 10  # Bytes of each rendering of a result, and of an error's message.
MAX_TRACEBACK = 1 << 20  # Characters of traceback lines kept in an error frame.
# The largest PNG whose base64 text, with the rest of its frame, fits in MAX_FRAME:
# 6 MiB less a few hundred bytes.
MAX_PNG = (MAX_FRAME - 1024) // 4 * 3
STREAM_CHUNK = 64 << 10
SYNC_TIMEOUT = 5.0  # Seconds to wait for the pipes to drain, so that nothing hangs for good.

# A marker is written into both pipes to learn when everything written before it
# has been forwarded. Its token is random per sync, so that a stale marker (one
# that timed out) is told apart and dropped; the NUL bytes keep it unlike text.
SYNC_PREFIX = b"\x00codebox-sync:"
SYNC_RE = re.compile(re.escape(SYNC_PREFIX) + rb"([0-9a-f]{16})\x00")
SYNC_LEN = len(SYNC_PREFIX) + 17
HEX_DIGITS = b"0123456789abcdef"

# Traceback entries from this source are the runner's own and are cut from the
# front of the user's tracebacks. Under -c its file name is "<string>".
RUNNER_FILE = (lambda: None).__code__.co_filename


class FdWriter(io.FileIO):
    """A raw writer for fd 1 or 2 whose write() writes everything it is given.

    TextIOWrapper ignores short writes, and a signal landing in the middle of a
    write to a pipe can make one, so the loop has to live here.
    """

    def write(self, data):
        view = memoryview(data).cast("B")
        size = len(view)
        while view:
            view = view[super().write(view) or 0 :]
        return size


def text_stream(fd):
    """A text stream that hands every write straight to fd, so output is never stuck."""
    raw = FdWriter(fd, "w", closefd=False)
    return io.TextIOWrapper(
        raw, encoding="utf-8", errors="backslashreplace", line_buffering=True, write_through=True
    )


def cut(text, limit=MAX_TEXT):
    """text cut to at most limit bytes of UTF-8, at a character boundary."""
    if len(text) <= limit // 4:
        return text
    data = text.encode("utf-8", "replace")
    return text if len(data) <= limit else data[:limit].decode("utf-8", "ignore")


def partial_sync_length(data):
    """How many bytes at the end of data could be the start of a sync marker."""
    start = data.rfind(b"\x00", max(0, len(data) - SYNC_LEN + 1))
    if start < 0:
        return 0
    tail = data[start:]
    head, digits = tail[: len(SYNC_PREFIX)], tail[len(SYNC_PREFIX) :]
    if SYNC_PREFIX.startswith(head) and all(byte in HEX_DIGITS for byte in digits):
        return len(tail)
    return 0


def user_traceback(tb):
    """tb without the runner's own entries in front of the user's code."""
    while tb is not None and tb.tb_frame.f_code.co_filename == RUNNER_FILE:
        tb = tb.tb_next
    return tb


def traceback_lines(lines):
    """Traceback lines bounded to fit in a frame, keeping the end, where the message is."""
    lines, size = [cut(line) for line in lines], 0
    for start in range(len(lines) - 1, -1, -1):
        size += len(lines[start])
        if size > MAX_TRACEBACK:
            return [f"[{start + 1} earlier lines not shown]\n"] + lines[start + 1 :]
    return lines


def is_figure(obj):
    """Whether obj is a matplotlib Figure; matplotlib is never imported to find out."""
    figure = sys.modules.get("matplotlib.figure")
    return figure is not None and isinstance(obj, figure.Figure)


class PyplotWatch:
    """A meta path finder that has plt.show replaced as soon as pyplot is imported.

    Code may import pyplot and call plt.show() in the same cell, so looking for
    pyplot between cells would be too late.
    """

    def __init__(self, on_import):
        self.on_import = on_import

    def find_spec(self, name, path=None, target=None):
        if name != "matplotlib.pyplot":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return None  # Left to the other finders; restore() patches it after the cell.
        exec_module = spec.loader.exec_module

        def exec_then_patch(module):
            exec_module(module)
            self.on_import(module)

        spec.loader.exec_module = exec_then_patch
        return spec


class Runner:
    """The interpreter's state, its channel to the supervisor and the cells it runs."""

    def __init__(self):
        self.pid = os.getpid()
        # Set per cell: a notebook client shows the error frame, not the traceback twice.
        self.quiet_tracebacks = False
        self.main_thread = threading.get_ident()
        self.frame_lock = threading.Lock()
        self.exec_id = None  # Labels stream frames; the reader thread reads it.
        self.cell = 0
        # SIGINT raises KeyboardInterrupt only while armed (user code runs), and
        # is held back while the main thread writes a frame, so that the channel
        # never carries half a frame.
        self.armed = self.sending = self.deferred = False
        self.sync_lock = threading.Lock()
        self.sync_token, self.sync_seen = None, set()
        self.synced = threading.Event()
        # The user's __main__ is a fresh module, so that no runner name leaks into
        # it and pickle finds the classes the user defines. The runner's own module
        # is kept referenced.
        self.runner_module = sys.modules["__main__"]
        self.main_module = types.ModuleType("__main__")
        self.main_module.__builtins__ = builtins
        self.namespace = self.main_module.__dict__

        def show(*args, **kwargs):
            """codebox's plt.show(): sends every open figure as an image, then closes it."""
            self.show_all()

        self.show = show

    # Start-up.

    def start(self):
        self.chan_in, self.chan_out, self.diag = os.dup(0), os.dup(1), os.dup(2)
        self.null = os.open(os.devnull, os.O_RDONLY)
        self.pipes, self.write_ends = {}, {}
        for name in ("stdout", "stderr"):
            read_end, write_end = os.pipe()
            self.pipes[read_end] = name
            # A private write end stays open for sync markers, and to point fd 1
            # and 2 back at the pipes should code move them.
            self.write_ends[name] = write_end
        # restore() puts /dev/null and the pipes on fds 0 to 2, makes the streams
        # over them and installs the SIGINT handler: the state every cell starts in.
        self.stdin = self.stdout = self.stderr = None
        self.restore()
        sys.__stdin__, sys.__stdout__, sys.__stderr__ = self.stdin, self.stdout, self.stderr
        # The reader thread blocks SIGINT: delivered to it, the signal would not
        # wake the main thread from a blocking call such as time.sleep().
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            threading.Thread(target=self.pump, name="codebox-output", daemon=True).start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        sys.modules["__main__"] = self.main_module
        builtins.display = self.display
        os.environ.setdefault("MPLBACKEND", "Agg")
        sys.meta_path.insert(0, PyplotWatch(self.patch_pyplot))
        self.send({"t": "ready", "pid": self.pid, "python": platform.python_version()})

    def preload(self, names):
        # Asked for by the supervisor for a sandbox that will wait in its warm pool, so that
        # the first cell of a new message does not pay for these imports. A sandbox started
        # for a waiting run is not asked: its code imports what it uses.
        for name in names:
            try:
                if name == "matplotlib.pyplot":
                    importlib.import_module("matplotlib").use("Agg")
                module = importlib.import_module(name)
                if name == "matplotlib.pyplot":
                    # The first figure rendered loads fonts and builds caches (about 0.3 s):
                    # done here, while the sandbox waits in the pool, not in a user's run.
                    figure = module.figure()
                    figure.gca().set_title("warm")
                    figure.savefig(io.BytesIO(), format="png")
                    module.close(figure)
            except Exception:
                pass  # A module that is missing or broken only means a slower first import.

    def patch_pyplot(self, pyplot):
        if getattr(pyplot, "show", None) is not self.show:
            pyplot.show = self.show

    # The channel.

    def log(self, message):
        try:
            os.write(self.diag, f"codebox runner: {message}\n".encode("utf-8", "replace"))
        except OSError:
            pass

    def send(self, frame):
        """Writes one frame to the supervisor; any thread may call it."""
        if os.getpid() != self.pid:
            return  # A forked child's frames would be interleaved with the parent's.
        body = json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
        body = body.encode("utf-8", "replace")  # Lone surrogates become "?".
        if len(body) > MAX_FRAME:
            self.log(f"dropped a {frame['t']} frame of {len(body)} bytes")
            return
        data = memoryview(struct.pack(">I", len(body)) + body)
        on_main = threading.get_ident() == self.main_thread
        if on_main:
            self.sending = True
        try:
            with self.frame_lock:
                while data:
                    data = data[os.write(self.chan_out, data) :]
        except OSError as error:
            self.log(f"the channel is gone ({error}); exiting")
            os._exit(1)
        finally:
            if on_main:
                self.sending = False
        if on_main and self.deferred:
            self.deferred = False
            if self.armed:
                raise KeyboardInterrupt

    def read_exact(self, size):
        data = bytearray()
        while len(data) < size:
            chunk = os.read(self.chan_in, min(size - len(data), 1 << 20))
            if not chunk:
                return None
            data += chunk
        return bytes(data)

    def serve(self):
        while True:
            head = self.read_exact(4)
            if head is None:
                os._exit(0)  # End of input: the supervisor is done with this interpreter.
            (size,) = struct.unpack(">I", head)
            if size > MAX_REQUEST:
                self.log(f"a request of {size} bytes is over the {MAX_REQUEST} allowed; exiting")
                os._exit(2)
            body = self.read_exact(size)
            if body is None:
                os._exit(0)
            try:
                request = json.loads(body)
            except (ValueError, RecursionError) as error:
                self.log(f"ignored a frame that is not JSON: {error}")
                continue
            if (
                isinstance(request, dict)
                and request.get("op") == "exec"
                and type(request.get("id")) is int
                and isinstance(request.get("code"), str)
                and isinstance(request.get("init_code"), (str, type(None)))
            ):
                self.execute(request)
            elif (
                isinstance(request, dict)
                and request.get("op") == "preload"
                and isinstance(request.get("modules"), list)
                and all(isinstance(name, str) for name in request["modules"])
            ):
                self.preload(request["modules"])
                self.send({"t": "preloaded"})
            else:
                self.log(f"ignored a request it does not know: {body[:200]!r}")

    # Output: the reader thread, and the sync that orders its frames.

    def pump(self):
        try:
            new_decoder = codecs.getincrementaldecoder("utf-8")
            decoders = {name: new_decoder("replace") for name in self.pipes.values()}
            held = dict.fromkeys(self.pipes.values(), b"")
            while True:
                ready, _, _ = select.select(list(self.pipes), [], [])
                for fd in ready:
                    name = self.pipes[fd]
                    data = held[name] + os.read(fd, STREAM_CHUNK - len(held[name]))
                    held[name] = self.forward(name, data, decoders[name])
        except BaseException:
            # Without its reader the interpreter would block on its next print.
            self.log("the output reader failed:\n" + traceback.format_exc())
            os._exit(1)

    def forward(self, name, data, decoder):
        """Sends data as stream frames, minus sync markers; returns the bytes held back."""
        while (match := SYNC_RE.search(data)) is not None:
            # What came before a marker is flushed whole, so each sync ends clean.
            self.send_text(name, decoder.decode(data[: match.start()], True))
            with self.sync_lock:
                if match.group(1) == self.sync_token:
                    self.sync_seen.add(name)
                    if len(self.sync_seen) == len(self.pipes):
                        self.synced.set()
            data = data[match.end() :]
        keep = partial_sync_length(data)
        self.send_text(name, decoder.decode(data[: len(data) - keep]))
        return data[len(data) - keep :]

    def send_text(self, name, text):
        if text:
            self.send({"t": "stream", "id": self.exec_id, "name": name, "text": text})

    def sync(self):
        """Returns once everything written to fd 1 and 2 so far has been sent."""
        for stream in (self.stdout, self.stderr):
            try:
                stream.flush()
            except Exception:
                pass  # A stream the code closed; restore() replaces it.
        token = os.urandom(8).hex().encode()
        with self.sync_lock:
            self.sync_token, self.sync_seen = token, set()
            self.synced.clear()
        for write_end in self.write_ends.values():
            # One write under PIPE_BUF bytes: other writers cannot split it.
            os.write(write_end, SYNC_PREFIX + token + b"\x00")
        if not self.synced.wait(SYNC_TIMEOUT):
            self.log("the output pipes did not drain in time")

    def publish(self, frame):
        """Sends a frame after the output written before it, so the order is kept."""
        if threading.get_ident() == self.main_thread:
            self.sync()
        self.send(frame)

    # Rich output.

    def display(self, *objs):
        """Shows each object, like IPython's display(): figures and PNGs as images."""
        for obj in objs:
            if is_figure(obj):
                self.send_figure(obj)
                continue
            render_png = getattr(obj, "_repr_png_", None)
            if callable(render_png) and not isinstance(obj, type):
                png = render_png()
                if isinstance(png, bytes):
                    self.send_png(png)
                    continue
            self.send_result(obj)

    def send_result(self, obj):
        data = {"text/plain": cut(repr(obj))}
        render_html = getattr(obj, "_repr_html_", None)
        if callable(render_html) and not isinstance(obj, type):
            try:
                html = render_html()
            except Exception:
                html = None  # A broken HTML view still leaves the plain text.
            if isinstance(html, str):
                data["text/html"] = cut(html)
        self.publish({"t": "result", "id": self.exec_id, "data": data})

    def send_figure(self, fig):
        try:
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", bbox_inches="tight")
        finally:
            pyplot = sys.modules.get("matplotlib.pyplot")
            if pyplot is not None:
                pyplot.close(fig)
        self.send_png(buffer.getvalue())

    def send_png(self, png):
        if len(png) > MAX_PNG:
            self.stderr.write(
                f"codebox: a figure was not sent: its PNG is {len(png)} bytes,"
                f" more than the {MAX_PNG} allowed\n"
            )
            return
        png = base64.b64encode(png).decode("ascii")
        self.publish({"t": "image", "id": self.exec_id, "png": png})

    def show_all(self):
        pyplot = sys.modules.get("matplotlib.pyplot")
        for number in pyplot.get_fignums() if pyplot else ():
            self.send_figure(pyplot.figure(number))

    # Running cells.

    def on_sigint(self, signum, frame):
        if not self.armed:
            return  # Between cells there is nothing to interrupt.
        if self.sending:
            self.deferred = True  # send() raises it once the frame is whole.
            return
        raise KeyboardInterrupt

    def call_user(self, function, *args):
        """Runs user code with SIGINT armed; returns (value, the exception or None).

        An interrupt that lands as the code returns, before disarming, is still
        caught here rather than in the runner's own code.
        """
        try:
            self.deferred = False
            self.armed = True
            value = function(*args)
            self.armed = False
            return value, None
        except BaseException as error:  # SystemExit and KeyboardInterrupt included.
            self.armed = False
            return None, error

    def run(self, source, filename, want_result):
        """Runs source in the namespace; returns the exception it ended with, or None."""
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        try:
            tree = ast.parse(source, filename)
            last = None
            if want_result and tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
                last = compile(last, filename, "eval", dont_inherit=True)
            body = compile(tree, filename, "exec", dont_inherit=True)
        except Exception as error:  # A SyntaxError, or a ValueError for NUL bytes.
            return error.with_traceback(None)
        return self.call_user(self.run_compiled, body, last)[1]

    def run_compiled(self, body, last):
        exec(body, self.namespace)
        value = None if last is None else eval(last, self.namespace)
        if value is not None:
            builtins._ = value
            # A figure is shown as an image; anything else as a result, even with
            # a _repr_png_, as the protocol says.
            if is_figure(value):
                self.send_figure(value)
            else:
                self.send_result(value)

    def report(self, error):
        """Reports how code ended, in frames and on stderr; returns (status, exit_code)."""
        if error is None:
            return "ok", 0
        if isinstance(error, SystemExit):
            code = error.code
            if code is None:
                return "ok", 0
            # Ints the supervisor can hold (i64) are the exit code; the rest is printed.
            if isinstance(code, int) and -(1 << 63) <= code < 1 << 63:
                return ("ok" if code == 0 else "error"), int(code)
            try:
                self.stderr.write(f"{code}\n")
            except Exception:
                pass
            return "error", 1
        lines = traceback.format_exception(type(error), error, user_traceback(error.__traceback__))
        if not self.quiet_tracebacks:
            # As `python3 -` would print it; a notebook client shows the error frame alone.
            self.stderr.write("".join(lines))
        try:
            evalue = str(error)
        except Exception:
            evalue = "<exception str() failed>"
        frame = {"t": "error", "id": self.exec_id, "ename": type(error).__name__}
        self.publish(dict(frame, evalue=cut(evalue), traceback=traceback_lines(lines)))
        if isinstance(error, KeyboardInterrupt):
            return "interrupted", 130
        return "error", 1

    def restore(self):
        """Puts back what code may have replaced: streams, fds 0-2, SIGINT, plt.show."""
        # The streams are made anew if code closed them (the builtin exit() closes stdin).
        if self.stdin is None or self.stdin.closed:
            self.stdin = open(0, encoding="utf-8", closefd=False)
        if self.stdout is None or self.stdout.closed:
            self.stdout = text_stream(1)
        if self.stderr is None or self.stderr.closed:
            self.stderr = text_stream(2)
        sys.stdout, sys.stderr, sys.stdin = self.stdout, self.stderr, self.stdin
        os.dup2(self.null, 0)
        os.dup2(self.write_ends["stdout"], 1)
        os.dup2(self.write_ends["stderr"], 2)
        if signal.getsignal(signal.SIGINT) != self.on_sigint:
            signal.signal(signal.SIGINT, self.on_sigint)
        if "matplotlib.pyplot" in sys.modules:
            self.patch_pyplot(sys.modules["matplotlib.pyplot"])

    def reap(self):
        # The supervisor kills every process a cell leaves behind, from outside; the dead
        # children of this process stay zombies until reaped, and each would hold a slot of
        # the sandbox's process limit for good. A Popen object of an earlier cell then finds
        # its child gone, which subprocess reports as an exit status of 0.
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    def execute(self, request):
        self.reap()
        self.quiet_tracebacks = request.get("quiet_tracebacks") is True
        self.exec_id = request["id"]
        self.cell += 1
        status, exit_code = "ok", 0
        try:
            if request.get("init_code"):
                # An error in init_code is reported and the cell still runs; its
                # status is the cell's. Only an interrupt stops the cell.
                error = self.run(request["init_code"], f"<init {self.cell}>", False)
                self.restore()
                if isinstance(error, KeyboardInterrupt):
                    status, exit_code = self.report(error)
                else:
                    self.report(error)
            if status != "interrupted":
                error = self.run(request["code"], f"<cell {self.cell}>", True)
                self.restore()
                status, exit_code = self.report(error)
            # The figures the cell left open are shown, even after an error.
            error = self.call_user(self.show_all)[1]
            if error is not None:
                # Figures after the one that failed would otherwise show in the next cell.
                if "matplotlib.pyplot" in sys.modules:
                    sys.modules["matplotlib.pyplot"].close("all")
                self.restore()
                late = self.report(error)
                if status == "ok":
                    status, exit_code = late
        except Exception:
            self.log("failed to run a request:\n" + traceback.format_exc())
            status, exit_code = "error", 1
        finally:
            try:
                self.restore()
            except Exception:
                self.log("failed to restore after a cell:\n" + traceback.format_exc())
            self.sync()
            self.send({"t": "done", "id": self.exec_id, "status": status, "exit_code": exit_code})
            self.exec_id = None


def main():
    runner = Runner()
    runner.start()
    runner.serve()


if __name__ == "__main__":
    main()
