"""Times one ``print(1)`` through a Jupyter client codebox did not write, against codebox's
``/jupyter`` and against a Jupyter Enterprise Gateway with local ipykernel kernels, in one run.

Usage: bench_jupyter.py --runs N <codebox Jupyter URL> <codebox token> <gateway URL> <gateway token>

Each sample is what a chat backend's Jupyter executor does for one answer (Open WebUI's, for
one): start a kernel, execute ``print(1)`` over the channels WebSocket, read the output, shut
the kernel down. The client is Datalayer's ``JupyterKernelClient`` (its context manager starts
and stops the kernel), the same for both servers; samples alternate between them so that noise
hits both alike. Between samples the script waits (outside the clock) for codebox's warm pool
to refill, as it would between chat answers. Prints a table and one ``BENCH_JSON`` line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

from jupyter_kernel_client import JupyterKernelClient


def sample(url: str, token: str) -> float:
    """Seconds for start kernel + print(1) + shut down, checking the output."""
    started = time.perf_counter()
    with JupyterKernelClient(server_url=url, token=token) as kernel:
        reply = kernel.execute("print(1)", timeout=120)
    elapsed = time.perf_counter() - started
    printed = "".join(
        output.get("text", "")
        for output in reply.get("outputs", [])
        if output.get("output_type") == "stream"
    )
    if reply.get("status") != "ok" or printed != "1\n":
        raise SystemExit(f"print(1) against {url} gave {reply!r}")
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
    print(f"{'one print(1) through JupyterKernelClient':44} {'p50':>10} {'p90':>10}")
    for name, values in stats.items():
        print(f"{name:44} {values['p50_ms']:>8} ms {values['p90_ms']:>8} ms")
    print(f"codebox is {ratio:.1f}x faster at p50 (target: 10x), and isolates the code")
    print("BENCH_JSON " + json.dumps({"jupyter_print": stats, "speedup": round(ratio, 2)}))


if __name__ == "__main__":
    main()
