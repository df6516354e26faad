"""Tests for runner.py, the interpreter that lives inside each codebox sandbox.

Each test starts the runner the way the supervisor does, `python3 -c <source>`
with its stdin and stdout as the channel, and speaks the framed protocol of
PROTOCOL.md to it. The runner is started with the interpreter running
these tests (sys.executable), so the figure tests run where that interpreter has
matplotlib and are skipped elsewhere.

Run: python3 images/python/test_runner.py
"""

import base64
import importlib.util
import json
import os
import queue
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest

SOURCE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runner.py")
with open(SOURCE_PATH, encoding="utf-8") as source_file:
    SOURCE = source_file.read()

HAVE_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
needs_matplotlib = unittest.skipUnless(HAVE_MATPLOTLIB, "matplotlib is not installed here")


class Run:
    """The frames one exec produced, up to and including its `done`."""

    def __init__(self, frames):
        self.frames = frames
        self.done = frames[-1]

    def of(self, kind):
        return [frame for frame in self.frames if frame["t"] == kind]

    def text(self, name):
        return "".join(frame["text"] for frame in self.of("stream") if frame["name"] == name)

    @property
    def stdout(self):
        return self.text("stdout")

    @property
    def stderr(self):
        return self.text("stderr")

    def index(self, predicate):
        return next(i for i, frame in enumerate(self.frames) if predicate(frame))


class Kernel:
    """A runner process and the frames it sends."""

    def __init__(self, preload=None):
        self.dir = tempfile.TemporaryDirectory()
        env = dict(os.environ)
        self.diag = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SOURCE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.diag,
            cwd=self.dir.name,
            env=env,
        )
        self.frames = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.next_id = 1
        self.ready = self.next_frame(timeout=120)
        if preload is not None:
            self.send({"op": "preload", "modules": preload})
            self.preloaded = self.next_frame(timeout=120)

    def _read(self):
        out = self.proc.stdout
        while True:
            head = out.read(4)
            if len(head) < 4:
                self.frames.put(None)
                return
            (size,) = struct.unpack(">I", head)
            body = out.read(size)
            assert size <= 8 << 20, size
            self.frames.put(json.loads(body))

    def next_frame(self, timeout=30):
        frame = self.frames.get(timeout=timeout)
        if frame is None:
            raise AssertionError(f"the runner exited: {self.proc.wait(5)} {self.diagnostics()}")
        return frame

    def send_raw(self, data):
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, obj):
        body = json.dumps(obj).encode()
        self.send_raw(struct.pack(">I", len(body)) + body)

    def start(self, code, init_code=None):
        exec_id = self.next_id
        self.next_id += 1
        self.send({"op": "exec", "id": exec_id, "code": code, "init_code": init_code})
        return exec_id

    def collect(self, exec_id, timeout=60):
        frames, deadline = [], time.monotonic() + timeout
        while True:
            frame = self.next_frame(timeout=max(0.1, deadline - time.monotonic()))
            if frame.get("id") != exec_id:
                continue  # Output between execs, labelled null.
            frames.append(frame)
            if frame["t"] == "done":
                return Run(frames)

    def execute(self, code, init_code=None, timeout=60):
        return self.collect(self.start(code, init_code), timeout)

    def wait_for_stdout(self, exec_id, text, timeout=30):
        seen, deadline = "", time.monotonic() + timeout
        while text not in seen:
            frame = self.next_frame(timeout=max(0.1, deadline - time.monotonic()))
            if frame["t"] == "stream" and frame["id"] == exec_id and frame["name"] == "stdout":
                seen += frame["text"]

    def diagnostics(self):
        self.diag.seek(0)
        return self.diag.read().decode("utf-8", "replace")

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.diag.close()
        self.dir.cleanup()


class RunnerTestCase(unittest.TestCase):
    preload = None  # No preload request: the runner imports nothing ahead.

    def setUp(self):
        self.kernel = Kernel(self.preload)
        self.addCleanup(self.kernel.close)

    def run_ok(self, code, **kwargs):
        run = self.kernel.execute(code, **kwargs)
        self.assertEqual(run.done["status"], "ok", run.frames)
        self.assertEqual(run.done["exit_code"], 0)
        return run


class ProtocolTests(RunnerTestCase):
    def test_ready_frame(self):
        ready = self.kernel.ready
        self.assertEqual(ready["t"], "ready")
        self.assertEqual(ready["pid"], self.kernel.proc.pid)
        self.assertEqual(ready["python"], ".".join(map(str, sys.version_info[:3])))

    def test_state_persists_across_execs(self):
        self.run_ok("x = 41")
        self.assertEqual(self.run_ok("print(x + 1)").stdout, "42\n")

    def test_last_expression_is_a_result(self):
        run = self.run_ok("a = 40\na + 2")
        self.assertEqual([frame["data"] for frame in run.of("result")], [{"text/plain": "42"}])
        self.assertEqual(self.run_ok("print(_)").stdout, "42\n")

    def test_result_with_html(self):
        code = (
            "class T:\n"
            "    def _repr_html_(self):\n"
            "        return '<b>t</b>'\n"
            "    def __repr__(self):\n"
            "        return 'T()'\n"
            "T()"
        )
        (result,) = self.run_ok(code).of("result")
        self.assertEqual(result["data"], {"text/plain": "T()", "text/html": "<b>t</b>"})

    def test_no_result_for_none_or_assignment(self):
        for code in ("None", "y = 5", "print('p')", "def f():\n    pass\nf()"):
            self.assertEqual(self.run_ok(code).of("result"), [], code)

    def test_exception_is_an_error_and_the_interpreter_lives_on(self):
        self.run_ok("pass")
        run = self.kernel.execute("def f():\n    return 1 / 0\n\nf()")
        self.assertEqual((run.done["status"], run.done["exit_code"]), ("error", 1))
        (error,) = run.of("error")
        self.assertEqual(error["ename"], "ZeroDivisionError")
        self.assertEqual(error["evalue"], "division by zero")
        traceback_text = "".join(error["traceback"])
        self.assertIn('File "<cell 2>", line 4', traceback_text)
        self.assertIn("return 1 / 0", traceback_text)
        self.assertTrue(traceback_text.startswith("Traceback (most recent call last):"))
        self.assertNotIn('File "<string>"', traceback_text)  # The runner's own frames are cut.
        self.assertEqual(run.stderr, traceback_text)
        self.assertEqual(self.run_ok("print('still here')").stdout, "still here\n")

    def test_syntax_error(self):
        run = self.kernel.execute("print('never')\nx = = 1")
        self.assertEqual(run.done["status"], "error")
        (error,) = run.of("error")
        self.assertEqual(error["ename"], "SyntaxError")
        self.assertIn("<cell 1>", "".join(error["traceback"]))
        self.assertIn("SyntaxError", run.stderr)
        self.assertEqual(run.stdout, "")

    def test_system_exit(self):
        run = self.kernel.execute("import sys\nprint('before')\nsys.exit(3)")
        self.assertEqual((run.done["exit_code"], run.stdout, run.of("error")), (3, "before\n", []))
        self.assertEqual(self.run_ok("sys.exit()").of("error"), [])
        self.assertEqual(self.run_ok("raise SystemExit(0)").of("error"), [])
        run = self.kernel.execute("sys.exit('bye')")
        self.assertEqual((run.done["exit_code"], run.stderr, run.of("error")), (1, "bye\n", []))
        self.assertEqual(self.run_ok("print('alive')").stdout, "alive\n")
        self.assertEqual(self.run_ok("exit()").of("error"), [])  # It also closes sys.stdin.
        self.assertEqual(self.run_ok("print(repr(sys.stdin.read()))").stdout, "''\n")

    def test_init_code_runs_first_and_its_error_does_not_stop_the_cell(self):
        run = self.run_ok("print(setting)", init_code="setting = 'from init'")
        self.assertEqual(run.stdout, "from init\n")
        run = self.kernel.execute("print('cell ran')", init_code="print('init ran')\n1 / 0\n")
        self.assertEqual(run.stdout, "init ran\ncell ran\n")
        (error,) = run.of("error")
        self.assertEqual(error["ename"], "ZeroDivisionError")
        self.assertIn("<init 2>", "".join(error["traceback"]))
        self.assertIn("ZeroDivisionError", run.stderr)
        self.assertEqual(run.done["exit_code"], 0)
        self.assertEqual(self.run_ok("", init_code="41").of("result"), [])  # No init result.

    def test_subprocess_output_is_captured_in_order(self):
        code = (
            "import os, subprocess\n"
            "print('a')\n"
            "os.system('echo hi')\n"
            "subprocess.run(['echo', 'x'])\n"
            "os.system('echo oops >&2')\n"
            "print('b')"
        )
        run = self.run_ok(code)
        self.assertEqual(run.stdout, "a\nhi\nx\nb\n")
        self.assertEqual(run.stderr, "oops\n")

    def test_large_output_arrives_complete_and_in_order(self):
        run = self.run_ok("for i in range(100000):\n    print(f'{i:09d}')")
        expected = "".join(f"{i:09d}\n" for i in range(100000))
        self.assertEqual(len(expected), 1_000_000)
        self.assertEqual(run.stdout, expected)
        code = "import sys\nsys.stdout.write('y' * 3_000_000)\nprint('end', file=sys.stderr)"
        run = self.run_ok(code)
        self.assertEqual(run.stdout, "y" * 3_000_000)
        self.assertEqual(run.stderr, "end\n")

    def test_stdout_and_stderr_are_separate(self):
        code = "import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.stdout.write('é\\n')"
        run = self.run_ok(code)
        self.assertEqual((run.stdout, run.stderr), ("out\né\n", "err\n"))

    def test_text_like_the_sync_marker_is_passed_through(self):
        code = "import sys\nsys.stdout.write('a\\x00codebox-sync:12')"
        self.assertEqual(self.run_ok(code).stdout, "a\x00codebox-sync:12")

    def test_output_between_execs_has_no_id(self):
        code = "import threading, time\nthreading.Timer(0.3, print, ['later']).start()"
        self.run_ok(code)
        text = ""
        while text != "later\n":  # print() writes the text and its newline apart.
            frame = self.kernel.next_frame()
            self.assertEqual((frame["t"], frame["id"]), ("stream", None))
            text += frame["text"]

    def test_output_and_results_keep_their_order(self):
        run = self.run_ok("print('a')\ndisplay(5)\nprint('b')")
        first = run.index(lambda f: f["t"] == "stream" and "a" in f["text"])
        result = run.index(lambda f: f["t"] == "result")
        last = run.index(lambda f: f["t"] == "stream" and "b" in f["text"])
        self.assertLess(first, result)
        self.assertLess(result, last)

    def test_display(self):
        code = (
            "display(1, 'a')\n"
            "class P:\n"
            "    def _repr_png_(self):\n"
            "        return b'\\x89PNG fake'\n"
            "display(P())"
        )
        run = self.run_ok(code)
        results = [frame["data"] for frame in run.of("result")]
        self.assertEqual(results, [{"text/plain": "1"}, {"text/plain": "'a'"}])
        (image,) = run.of("image")
        self.assertEqual(base64.b64decode(image["png"]), b"\x89PNG fake")

    def test_sigint_interrupts_a_running_cell(self):
        code = "import time\nprint('sleeping', flush=True)\ntime.sleep(30)\nprint('woke')"
        exec_id = self.kernel.start(code)
        self.kernel.wait_for_stdout(exec_id, "sleeping")
        started = time.monotonic()
        self.kernel.proc.send_signal(signal.SIGINT)
        run = self.kernel.collect(exec_id, timeout=10)
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual((run.done["status"], run.done["exit_code"]), ("interrupted", 130))
        (error,) = run.of("error")
        self.assertEqual(error["ename"], "KeyboardInterrupt")
        self.assertNotIn("woke", run.stdout)
        self.assertEqual(self.run_ok("print('next')").stdout, "next\n")

    def test_sigint_handler_replaced_by_code_is_put_back(self):
        self.run_ok("import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)")
        self.test_sigint_interrupts_a_running_cell()

    def test_sigint_while_idle_is_ignored(self):
        for _ in range(3):
            self.kernel.proc.send_signal(signal.SIGINT)
            time.sleep(0.1)
        self.assertEqual(self.run_ok("print('fine')").stdout, "fine\n")
        self.assertIsNone(self.kernel.proc.poll())

    def test_replaced_streams_are_restored(self):
        code = "import io, sys\nsys.stdout = sys.stderr = io.StringIO()\nprint('hidden')"
        run = self.run_ok(code)
        self.assertEqual(run.stdout, "")
        run = self.run_ok("import sys\nprint('visible')\nprint('err', file=sys.stderr)")
        self.assertEqual((run.stdout, run.stderr), ("visible\n", "err\n"))
        self.run_ok("sys.stdout.close()")
        self.assertEqual(self.run_ok("print('reopened')").stdout, "reopened\n")

    def test_redirected_fd_is_restored(self):
        self.run_ok("import os\nos.dup2(os.open(os.devnull, os.O_WRONLY), 1)\nos.system('echo x')")
        self.assertEqual(self.run_ok("os.system('echo back')").stdout, "back\n")

    def test_stdin_is_empty_and_channel_fds_are_not_inherited(self):
        self.assertEqual(self.run_ok("import sys\nprint(repr(sys.stdin.read()))").stdout, "''\n")
        if not os.path.isdir("/proc/self/fd"):
            self.skipTest("no /proc")
        code = "import subprocess\nsubprocess.run(['ls', '/proc/self/fd'], close_fds=False)"
        self.assertEqual(self.run_ok(code).stdout.split(), ["0", "1", "2", "3"])

    def test_namespace_is_clean_main(self):
        code = (
            "print(sorted(name for name in globals() if not name.startswith('__')))\n"
            "import __main__\n"
            "print(__name__, __main__.__dict__ is globals())"
        )
        run = self.run_ok(code)
        self.assertEqual(run.stdout, "[]\n__main__ True\n")

    def test_bad_frames_are_ignored(self):
        self.kernel.send_raw(struct.pack(">I", 5) + b"nope!")
        self.kernel.send({"op": "frobnicate"})
        self.kernel.send({"op": "exec", "id": "1", "code": "print(1)"})
        self.assertEqual(self.run_ok("print('ok')").stdout, "ok\n")
        self.assertIn("ignored", self.kernel.diagnostics())

    def test_oversized_request_ends_the_runner(self):
        self.kernel.send_raw(struct.pack(">I", (64 << 20) + 1))
        self.assertEqual(self.kernel.proc.wait(10), 2)

    def test_eof_on_stdin_exits_cleanly(self):
        # A thread still running must not keep the interpreter alive.
        self.run_ok("import threading\nthreading.Timer(60, print).start()")
        self.kernel.proc.stdin.close()
        self.assertEqual(self.kernel.proc.wait(10), 0)


@needs_matplotlib
class FigureTests(RunnerTestCase):
    def assert_png(self, image):
        self.assertTrue(base64.b64decode(image["png"]).startswith(b"\x89PNG\r\n\x1a\n"))

    def test_open_figure_is_sent_after_the_cell(self):
        run = self.run_ok("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nprint('drawn')")
        (image,) = run.of("image")
        self.assert_png(image)
        self.assertEqual(self.run_ok("print(len(plt.get_fignums()))").of("image"), [])

    def test_show_then_another_figure(self):
        code = (
            "import matplotlib.pyplot as plt\n"
            "plt.plot([1, 2])\n"
            "plt.show()\n"
            "print('between')\n"
            "plt.figure()\n"
            "plt.bar([1], [2])\n"
            "None"
        )
        run = self.run_ok(code)
        images = run.of("image")
        self.assertEqual(len(images), 2)
        for image in images:
            self.assert_png(image)
        between = run.index(lambda f: f["t"] == "stream" and "between" in f["text"])
        self.assertLess(run.frames.index(images[0]), between)
        self.assertLess(between, run.frames.index(images[1]))
        run = self.run_ok("print('next')")
        self.assertEqual(run.of("image"), [])

    def test_figure_as_last_value_and_after_an_error(self):
        code = "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([3, 1])\nfig"
        run = self.run_ok(code)
        self.assertEqual((len(run.of("image")), run.of("result")), (1, []))
        run = self.kernel.execute("plt.plot([1])\nraise ValueError('late')")
        self.assertEqual(run.done["status"], "error")
        self.assertEqual(len(run.of("image")), 1)
        error, image = run.of("error")[0], run.of("image")[0]
        self.assertLess(run.frames.index(error), run.frames.index(image))

    def test_display_figure(self):
        code = "from matplotlib.figure import Figure\nfig = Figure()\nfig.add_subplot().plot([1])\n"
        run = self.run_ok(code + "display(fig)")
        self.assert_png(run.of("image")[0])


@needs_matplotlib
class DefaultPreloadTests(RunnerTestCase):
    preload = ["numpy", "pandas", "openpyxl", "matplotlib.pyplot", "no_such_module"]

    def test_preload_answers_once_done_and_skips_what_is_missing(self):
        self.assertEqual(self.kernel.preloaded, {"t": "preloaded"})
        run = self.run_ok("import sys\nprint('matplotlib.pyplot' in sys.modules)")
        self.assertEqual(run.stdout, "True\n")

    def test_preloaded_pyplot_show_sends_figures(self):
        code = (
            "import sys\n"
            "print('matplotlib.pyplot' in sys.modules)\n"
            "import matplotlib.pyplot as plt\n"
            "plt.plot([1])\n"
            "plt.show()\n"
            "print(len(plt.get_fignums()))"
        )
        run = self.run_ok(code)
        self.assertEqual(run.stdout, "True\n0\n")
        self.assertEqual(len(run.of("image")), 1)


if __name__ == "__main__":
    unittest.main()
