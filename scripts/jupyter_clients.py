"""Drives codebox's /jupyter API with Jupyter clients codebox did not write, unchanged.

Usage: jupyter_clients.py <codebox Jupyter base URL, e.g. http://127.0.0.1:8080/jupyter> <token>

Runs one scenario per client and prints a JSON summary as the last line of stdout (anything the
clients print goes to stderr). The clients:

- ``jupyter_kernel_client``: Datalayer's ``JupyterKernelClient`` pointed straight at codebox,
  as at any Jupyter server.
- ``jupyter_server_gateway``: a real Jupyter Server started with ``--gateway-url`` naming codebox,
  so that it relays kernels to codebox as it would to Enterprise Gateway; the same
  ``JupyterKernelClient`` then talks to that Jupyter Server.

The scenario: start a kernel, run ``x = 6; print('hi'); x * 7``, draw a matplotlib figure, write
a file to /mnt/data and download it through the link codebox announces, raise
ZeroDivisionError, read ``x`` back to see the state persist, list, interrupt and restart the
kernel (``x`` is gone after the restart), then shut it down. Each
step records what the client saw; the Rust test (tests/jupyter_clients.rs) judges it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from importlib.metadata import version
from typing import Any

# A kernel's first execution starts its sandbox, which may take a while on a busy machine.
EXECUTE_TIMEOUT = 120.0


def texts(outputs: list[dict[str, Any]], output_type: str, key: str) -> list[str]:
    """The ``key`` representation of each output of ``output_type`` (text joined if split)."""
    found = []
    for output in outputs:
        if output.get("output_type") != output_type:
            continue
        value = (output.get("data") or {}).get(key)
        if isinstance(value, list):
            value = "".join(value)
        if value is not None:
            found.append(value)
    return found


def stdout_of(outputs: list[dict[str, Any]]) -> str:
    """Everything the cell printed to stdout."""
    return "".join(
        output.get("text", "")
        for output in outputs
        if output.get("output_type") == "stream" and output.get("name") == "stdout"
    )


def kernel_status(base_url: str, token: str, kernel_id: str) -> int:
    """The HTTP status of codebox's ``GET /api/kernels/<id>``."""
    request = urllib.request.Request(
        f"{base_url}/api/kernels/{kernel_id}", headers={"Authorization": f"token {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def scenario(kernel: Any, codebox_url: str, token: str, steps: dict[str, Any]) -> None:
    """Runs the scenario on a started ``JupyterKernelClient``, recording each step in ``steps``."""
    steps["kernel_id"] = kernel.id
    steps["kernel_on_codebox"] = kernel_status(codebox_url, token, kernel.id)
    info = kernel.kernel_info or {}
    steps["kernel_info"] = {
        "language": info.get("language_info", {}).get("name"),
        "implementation": info.get("implementation"),
    }

    reply = kernel.execute("x = 6\nprint('hi')\nx * 7", timeout=EXECUTE_TIMEOUT)
    steps["hello"] = {
        "status": reply["status"],
        "execution_count": reply["execution_count"],
        "stdout": stdout_of(reply["outputs"]),
        "results": texts(reply["outputs"], "execute_result", "text/plain"),
    }

    reply = kernel.execute(
        "import matplotlib.pyplot as plt\nplt.plot([x, x * 2])",
        timeout=EXECUTE_TIMEOUT,
    )
    pngs = texts(reply["outputs"], "display_data", "image/png")
    steps["figure"] = {
        "status": reply["status"],
        "pngs": len(pngs),
        "png_magic": all(base64.b64decode(png).startswith(b"\x89PNG\r\n\x1a\n") for png in pngs),
    }

    reply = kernel.execute(
        "open('/mnt/data/out.csv', 'w').write('a\\n1\\n')", timeout=EXECUTE_TIMEOUT
    )
    links = [
        match.group(1)
        for markdown in texts(reply["outputs"], "display_data", "text/markdown")
        for match in re.finditer(r"\[out\.csv\]\(([^)\s]+)\)", markdown)
    ]
    download = None
    if links:
        with urllib.request.urlopen(links[0], timeout=30) as response:
            download = response.read().decode()
    steps["file"] = {"status": reply["status"], "links": len(links), "content": download}

    reply = kernel.execute("1/0", timeout=EXECUTE_TIMEOUT)
    steps["error"] = {
        "status": reply["status"],
        "enames": [o.get("ename") for o in reply["outputs"] if o.get("output_type") == "error"],
    }

    reply = kernel.execute("x", timeout=EXECUTE_TIMEOUT)
    steps["state"] = {
        "status": reply["status"],
        "results": texts(reply["outputs"], "execute_result", "text/plain"),
    }

    steps["listed"] = kernel.id in [model["id"] for model in kernel.list_kernels()]
    kernel.interrupt()
    kernel.restart()
    reply = kernel.execute("'x' in globals()", timeout=EXECUTE_TIMEOUT)
    steps["restarted"] = {
        "status": reply["status"],
        "execution_count": reply["execution_count"],
        "results": texts(reply["outputs"], "execute_result", "text/plain"),
    }

    kernel.stop()
    steps["kernel_after_shutdown"] = kernel_status(codebox_url, token, steps["kernel_id"])


def run_client(name: str, versions: dict[str, str], body: Any) -> dict[str, Any]:
    """Runs one client's scenario; a failure is recorded, not raised."""
    record: dict[str, Any] = {"versions": versions, "steps": {}, "error": None}
    started = time.monotonic()
    try:
        body(record["steps"])
    except Exception:  # The summary carries the failure to the Rust test.
        record["error"] = traceback.format_exc()
    record["seconds"] = round(time.monotonic() - started, 2)
    print(f"{name}: {'failed' if record['error'] else 'done'} in {record['seconds']}s", file=sys.stderr)
    return record


def direct(codebox_url: str, token: str, steps: dict[str, Any]) -> None:
    """``JupyterKernelClient`` straight against codebox."""
    from jupyter_kernel_client import JupyterKernelClient

    kernel = JupyterKernelClient(server_url=codebox_url, token=token)
    kernel.start()
    try:
        scenario(kernel, codebox_url, token, steps)
    finally:
        with contextlib.suppress(Exception):
            kernel.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def through_gateway(codebox_url: str, token: str, steps: dict[str, Any]) -> None:
    """A Jupyter Server in gateway mode relaying to codebox, driven by ``JupyterKernelClient``."""
    from jupyter_kernel_client import JupyterKernelClient

    port = free_port()
    server_token = "gateway-test-" + os.urandom(8).hex()
    with tempfile.TemporaryDirectory(prefix="codebox-jupyter-gateway-") as home:
        env = dict(
            os.environ,
            HOME=home,
            JUPYTER_CONFIG_DIR=os.path.join(home, "config"),
            JUPYTER_DATA_DIR=os.path.join(home, "data"),
            JUPYTER_RUNTIME_DIR=os.path.join(home, "runtime"),
            JUPYTER_PLATFORM_DIRS="1",
            # The gateway passes KERNEL_* variables on as the kernel's env.
            KERNEL_USERNAME="alice",
        )
        log_path = os.path.join(home, "server.log")
        command = [
            sys.executable,
            "-m",
            "jupyter_server",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            "--ServerApp.open_browser=False",
            "--ServerApp.allow_root=True",
            f"--ServerApp.root_dir={home}",
            f"--IdentityProvider.token={server_token}",
            f"--GatewayClient.url={codebox_url}",
            f"--GatewayClient.auth_token={token}",
        ]
        with open(log_path, "wb") as log:
            server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            server_url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"jupyter_server exited with {server.returncode}")
                try:
                    request = urllib.request.Request(
                        f"{server_url}/api", headers={"Authorization": f"token {server_token}"}
                    )
                    with urllib.request.urlopen(request, timeout=5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("jupyter_server did not come up in 60 s") from None
                    time.sleep(0.2)
            # Kernel specs come from the gateway too.
            request = urllib.request.Request(
                f"{server_url}/api/kernelspecs", headers={"Authorization": f"token {server_token}"}
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                specs = json.load(response)
            steps["kernelspecs"] = {
                "default": specs.get("default"),
                "display_name": specs["kernelspecs"]["python3"]["spec"]["display_name"],
            }
            kernel = JupyterKernelClient(server_url=server_url, token=server_token)
            kernel.start()
            try:
                scenario(kernel, codebox_url, token, steps)
            finally:
                with contextlib.suppress(Exception):
                    kernel.stop()
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            with open(log_path, encoding="utf-8", errors="replace") as log:
                steps["server_log_tail"] = log.read()[-4000:]


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    codebox_url, token = sys.argv[1].rstrip("/"), sys.argv[2]
    real_stdout = sys.stdout
    # Whatever the clients print must not mix with the summary.
    sys.stdout = sys.stderr
    summary = {
        "clients": {
            "jupyter_kernel_client": run_client(
                "jupyter_kernel_client",
                {"jupyter_kernel_client": version("jupyter_kernel_client")},
                lambda steps: direct(codebox_url, token, steps),
            ),
            "jupyter_server_gateway": run_client(
                "jupyter_server_gateway",
                {
                    "jupyter_server": version("jupyter_server"),
                    "jupyter_kernel_client": version("jupyter_kernel_client"),
                },
                lambda steps: through_gateway(codebox_url, token, steps),
            ),
        }
    }
    sys.stdout = real_stdout
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
