"""Times one ``print(1)`` through a Jupyter executor, against codebox's ``/jupyter`` and against
a Jupyter Enterprise Gateway with local ipykernel kernels, in one run.

Usage: bench_jupyter.py --runs N <codebox Jupyter URL> <codebox token> <gateway URL> <gateway token>

Each sample is what a chat backend's Jupyter executor does for one answer, step for step as
Open WebUI's code interpreter does it (``open_webui/utils/code_interpreter.py``, which cannot be
imported without the whole ``open-webui`` package): ``POST /api/kernels``, open the
``channels`` WebSocket, send an ``execute_request`` for ``print(1)``, read until ``status: idle``,
close, ``DELETE`` the kernel. It uses ``requests`` and ``websocket-client``, the same code for
both servers, with ``Authorization: token <t>`` as both accept. Samples alternate between the
servers so that noise hits both alike. Between samples the script waits (outside the clock) for
codebox's warm pool to refill, as it would between chat answers. Prints a table and one
``BENCH_JSON`` line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import uuid

import requests
import websocket


def sample(url: str, token: str) -> float:
    """Seconds for start kernel + print(1) + shut down, checking the output."""
    headers = {"Authorization": f"token {token}"}
    started = time.perf_counter()
    response = requests.post(f"{url}/api/kernels", json={"name": "python3"}, headers=headers, timeout=120)
    response.raise_for_status()
    kernel_id = response.json()["id"]
    ws_url = url.replace("http://", "ws://") + f"/api/kernels/{kernel_id}/channels"
    socket = websocket.create_connection(ws_url, header=headers, timeout=120)
    msg_id = uuid.uuid4().hex
    socket.send(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "msg_type": "execute_request",
                    "username": "user",
                    "session": uuid.uuid4().hex,
                    "date": "",
                    "version": "5.3",
                },
                "parent_header": {},
                "metadata": {},
                "content": {
                    "code": "print(1)",
                    "silent": False,
                    "store_history": True,
                    "user_expressions": {},
                    "allow_stdin": False,
                    "stop_on_error": True,
                },
                "channel": "shell",
            }
        )
    )
    printed = ""
    while True:
        message = json.loads(socket.recv())
        if message.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = message.get("msg_type") or message.get("header", {}).get("msg_type")
        if kind == "stream":
            printed += message["content"]["text"]
        elif kind == "status" and message["content"]["execution_state"] == "idle":
            break
    socket.close()
    requests.delete(f"{url}/api/kernels/{kernel_id}", headers=headers, timeout=120).raise_for_status()
    elapsed = time.perf_counter() - started
    if printed != "1\n":
        raise SystemExit(f"print(1) against {url} printed {printed!r}")
    return elapsed


def percentile(values: list[float], percent: int) -> float:
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(percent / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--pause", type=float, default=3.0)
    parser.add_argument("codebox_url")
    parser.add_argument("codebox_token")
    parser.add_argument("gateway_url")
    parser.add_argument("gateway_token")
    args = parser.parse_args()
    targets = {
        "codebox": (args.codebox_url, args.codebox_token),
        "enterprise_gateway": (args.gateway_url, args.gateway_token),
    }
    times: dict[str, list[float]] = {name: [] for name in targets}
    # One warm-up each, then alternate which goes first.
    for name, (url, token) in targets.items():
        sample(url, token)
    order = list(targets)
    for iteration in range(args.runs):
        print(f"  iteration {iteration + 1}/{args.runs}", file=sys.stderr)
        for name in order if iteration % 2 == 0 else reversed(order):
            time.sleep(args.pause)
            url, token = targets[name]
            times[name].append(sample(url, token) * 1000)
    stats = {
        name: {
            "n": len(values),
            "p50_ms": round(statistics.median(values), 1),
            "p90_ms": round(percentile(values, 90), 1),
        }
        for name, values in times.items()
    }
    ratio = stats["enterprise_gateway"]["p50_ms"] / stats["codebox"]["p50_ms"]
    print(f"{'one print(1), kernel start to shutdown':44} {'p50':>10} {'p90':>10}")
    for name, values in stats.items():
        print(f"{name:44} {values['p50_ms']:>8} ms {values['p90_ms']:>8} ms")
    print(f"codebox is {ratio:.1f}x faster at p50 (target: 10x), and isolates the code")
    print("BENCH_JSON " + json.dumps({"jupyter_print": stats, "speedup": round(ratio, 2)}))


if __name__ == "__main__":
    main()
