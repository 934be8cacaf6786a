#!/usr/bin/env python3
"""Throughput of `model-router serve` with `"store": true` on every request: no store, the SQLite
store and the PostgreSQL store, each for a fixed time under the same closed-loop load, reported
as requests per second and as ratios to the run without a store.

One process holds a loopback OpenAI-compatible backend that answers at once (HTTP/1.1
keep-alive) and CLIENTS client threads, each with its own keep-alive connection to the router,
sending the next request when the last one returned. Every answer must be 200 and, with a
store, carry `x-router-store: stored ...` (the record was committed before the answer). Each
router is started for its run and stopped after it.

    scripts/bench-store.py --binary target/debug/model-router --pg-url postgres://postgres@127.0.0.1:5432/bench
"""

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "gpt-3.5-turbo-1106"
ANSWER = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": MODEL,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "4"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
}).encode()


class Backend(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(ANSWER)))
        self.end_headers()
        self.wfile.write(ANSWER)

    def log_message(self, *args):
        pass


def config_text(repo, backend_port, store):
    return f"""
[server]
listen = "127.0.0.1:0"
access_log = false

[router]
bundle = "{repo}/models/routerbench"

[[models]]
name = "{MODEL}"
input_price = 1.0
output_price = 2.0
context_window = 16385
deployments = ["backend"]

[[deployments]]
name = "backend"
kind = "openai"
base_url = "http://127.0.0.1:{backend_port}/v1"
model = "upstream"
{store}
"""


def start_router(binary, config):
    proc = subprocess.Popen([binary, "serve", "--config", config], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    seen = []
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if "on http://" in line:
            threading.Thread(target=lambda: proc.stderr.read(), daemon=True).start()
            host, port = line.split("on http://")[1].split()[0].rsplit(":", 1)
            return proc, int(port)
        seen.append(line.rstrip())
    proc.kill()
    sys.exit(f"the router did not start: {seen}")


def load(port, clients, seconds, stored):
    body = json.dumps({"model": MODEL, "store": stored, "metadata": {"bench": "1"},
                       "messages": [{"role": "user", "content": "What is 2+2?"}]})
    done, errors = [0] * clients, []
    stop_at = time.time() + seconds

    def client(c):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.time() < stop_at:
            conn.request("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
            response = conn.getresponse()
            response.read()
            store = response.getheader("x-router-store", "")
            if response.status != 200 or (stored and not store.startswith("stored")):
                errors.append((response.status, store))
                return
            done[c] += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    started = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.time() - started
    if errors:
        sys.exit(f"failed requests: {errors[:5]}")
    return sum(done) / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", default="target/debug/model-router")
    parser.add_argument("--pg-url", required=True, help="an empty database the run may fill (postgres://...)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--synchronous", default="full", choices=["full", "normal"])
    args = parser.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    backend = ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    backend.daemon_threads = True
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = [
            ("none", False, ""),
            ("sqlite", True, f'[store]\npath = "{tmp}/completions.db"\nsynchronous = "{args.synchronous}"\n'),
            ("postgres", True, f'[store]\nurl = "{args.pg_url}"\nsynchronous = "{args.synchronous}"\n'),
        ]
        for name, stored, store in runs:
            config = os.path.join(tmp, f"{name}.toml")
            with open(config, "w") as f:
                f.write(config_text(repo, backend.server_address[1], store))
            proc, port = start_router(args.binary, config)
            try:
                load(port, args.clients, 1.0, stored)  # warm-up: connections, first inserts
                results[name] = round(load(port, args.clients, args.seconds, stored), 1)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            print(f"{name}: {results[name]} requests/s", file=sys.stderr)
    report = {
        "clients": args.clients, "seconds": args.seconds, "synchronous": args.synchronous,
        "requests_per_s": results,
        "sqlite_over_none": round(results["sqlite"] / results["none"], 3),
        "postgres_over_none": round(results["postgres"] / results["none"], 3),
        "postgres_over_sqlite": round(results["postgres"] / results["sqlite"], 3),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
