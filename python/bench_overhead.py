"""Per-call overhead of the Python bindings over Rust, measured in one run.

    cargo build -p router-embed --example route_timing
    python python/bench_overhead.py [CALLS] [ROUNDS]

Times Routing::route in Rust (the route_timing example) and Router.route in Python on the same
prompt with the same bundle, both dev builds as CI makes them, in alternating rounds, and prints
the fastest round of each and their ratio (the fastest: the one least disturbed by other work).
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


def rust_round(calls):
    out = subprocess.run(
        [REPO / "target" / "debug" / "examples" / "route_timing", BUNDLE, str(calls), PROMPT],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def python_round(router, calls):
    start = time.perf_counter()
    for _ in range(calls):
        router.route(PROMPT)
    return (time.perf_counter() - start) * 1e6 / calls


def main():
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    router = model_router.Router.load(str(BUNDLE))
    model = router.route(PROMPT)["model"]  # warm-up
    rust_us, python_us = [], []
    for _ in range(rounds):
        rust = rust_round(calls)
        assert model == rust["model"], (model, rust["model"])
        rust_us.append(rust["per_call_us"])
        python_us.append(python_round(router, calls))
    rust_best, python_best = min(rust_us), min(python_us)
    print(f"{rounds} rounds x {calls} calls, fastest round: Rust {rust_best:.1f} us/route, "
          f"Python {python_best:.1f} us/route, ratio {python_best / rust_best:.2f}")


if __name__ == "__main__":
    main()
