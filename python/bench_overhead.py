"""Per-call overhead of the Python bindings over Rust, measured in one run.

    cargo build -p router-embed --example route_timing
    python python/bench_overhead.py [CALLS]

Times Routing::route in Rust (the route_timing example) and Router.route in Python on the same
prompt with the same bundle, both dev builds as CI makes them, and prints both and their ratio.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import model_router

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "models" / "routerbench"
PROMPT = "Write a Python function that returns the n-th Fibonacci number, with a docstring and tests."


def main():
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    rust = json.loads(subprocess.run(
        [REPO / "target" / "debug" / "examples" / "route_timing", BUNDLE, str(calls), PROMPT],
        check=True, capture_output=True, text=True,
    ).stdout)
    router = model_router.Router.load(str(BUNDLE))
    model = router.route(PROMPT)["model"]  # warm-up
    start = time.perf_counter()
    for _ in range(calls):
        router.route(PROMPT)
    python_us = (time.perf_counter() - start) * 1e6 / calls
    assert model == rust["model"], (model, rust["model"])
    print(f"{calls} calls: Rust {rust['per_call_us']:.1f} us/route, Python {python_us:.1f} us/route, "
          f"ratio {python_us / rust['per_call_us']:.2f}")


if __name__ == "__main__":
    main()
