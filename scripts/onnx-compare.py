#!/usr/bin/env python3
"""The BERT tier next to ONNX Runtime on all-MiniLM-L6-v2: same machine, same prompts, same thread
count, both sides in one run. Not part of CI; scripts/onnx-compare.sh sets up its venv.

The ONNX side: the model's safetensors weights exported (by `export`, below) straight into the
graph ONNX Runtime's BERT optimizer produces for CPU — its fused contrib ops `Attention`,
`SkipLayerNormalization` and `BiasGelu` — so ONNX Runtime runs at its best, not on a naive
graph. Each call tokenises with the `tokenizers` package, runs the session and mean-pools and
normalises in numpy: the same work as the BERT tier's encoder (`model-router bench --lengths`).
The exported model is checked against the reference embeddings in shared/fixtures before timing.

For each round, thread count and length it runs `model-router bench --lengths N` (RAYON_NUM_THREADS)
and then ONNX Runtime (intra_op_num_threads), and prints the median over rounds of each side's p50.
With one thread it also prints CPU time per call, which other processes on a busy machine disturb
far less than wall time: ONNX Runtime's from `time.process_time()` around its timed calls,
model-router's as `bench --lengths` reports it (its threads' scheduler statistics).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file
from tokenizers import Tokenizer

OPSET = 17
MS_DOMAIN = "com.microsoft"


def export(snapshot: Path, path: Path) -> None:
    """Writes all-MiniLM-L6-v2 (any Hugging Face BertModel with absolute positions) as ONNX."""
    config = json.loads((snapshot / "config.json").read_text())
    weights = load_file(str(snapshot / "model.safetensors"))
    prefix = "" if "embeddings.word_embeddings.weight" in weights else "bert."
    w = lambda name: weights[prefix + name].astype(np.float32)
    hidden, heads, eps = config["hidden_size"], config["num_attention_heads"], config["layer_norm_eps"]
    inits, nodes = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op, inputs, output, domain="", **attrs):
        nodes.append(helper.make_node(op, inputs, [output], name=output, domain=domain, **attrs))
        return output

    # Embeddings: word + position + token type 0, then layer norm.
    words = node("Gather", [const("word", w("embeddings.word_embeddings.weight")), "input_ids"], "words")
    zero, one, two = (const(f"i{v}", np.array([v], np.int64)) for v in (0, 1, 2))
    seq = node("Slice", [node("Shape", ["input_ids"], "shape"), one, two], "seq")
    position = node("Slice", [const("pos", w("embeddings.position_embeddings.weight")), zero, seq, zero], "position")
    summed = node("Add", [node("Add", [words, position], "words_pos"),
                          const("type0", w("embeddings.token_type_embeddings.weight")[0])], "embedded")
    x = node("LayerNormalization", [summed, const("emb_g", w("embeddings.LayerNorm.weight")),
                                    const("emb_b", w("embeddings.LayerNorm.bias"))], "x0", epsilon=eps, axis=-1)
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        att = p + "attention."
        qkv_w = np.concatenate([w(att + f"self.{n}.weight").T for n in ("query", "key", "value")], axis=1)
        qkv_b = np.concatenate([w(att + f"self.{n}.bias") for n in ("query", "key", "value")])
        context = node("Attention", [x, const(f"qkv_w{i}", qkv_w), const(f"qkv_b{i}", qkv_b)], f"context{i}",
                       domain=MS_DOMAIN, num_heads=heads)
        projected = node("MatMul", [context, const(f"ao_w{i}", w(att + "output.dense.weight").T)], f"ao{i}")
        x = node("SkipLayerNormalization", [projected, x, const(f"ao_g{i}", w(att + "output.LayerNorm.weight")),
                                            const(f"ao_beta{i}", w(att + "output.LayerNorm.bias")),
                                            const(f"ao_b{i}", w(att + "output.dense.bias"))],
                 f"attended{i}", domain=MS_DOMAIN, epsilon=eps)
        inner = node("MatMul", [x, const(f"in_w{i}", w(p + "intermediate.dense.weight").T)], f"inner{i}")
        inner = node("BiasGelu", [inner, const(f"in_b{i}", w(p + "intermediate.dense.bias"))], f"gelu{i}",
                     domain=MS_DOMAIN)
        out = node("MatMul", [inner, const(f"out_w{i}", w(p + "output.dense.weight").T)], f"out{i}")
        x = node("SkipLayerNormalization", [out, x, const(f"out_g{i}", w(p + "output.LayerNorm.weight")),
                                            const(f"out_beta{i}", w(p + "output.LayerNorm.bias")),
                                            const(f"out_b{i}", w(p + "output.dense.bias"))],
                 f"x{i + 1}", domain=MS_DOMAIN, epsilon=eps)
    graph = helper.make_graph(
        nodes, "minilm",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "seq"])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, "seq", hidden])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(MS_DOMAIN, 1)])
    onnx.save(model, str(path))


class OnnxEncoder:
    """Tokenise, run, mean-pool, normalise: one prompt to one embedding."""

    def __init__(self, model: Path, tokenizer: Path, threads: int, max_tokens: int = 512):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.tokenizer = Tokenizer.from_file(str(tokenizer))
        self.tokenizer.enable_truncation(max_tokens)
        self.tokenizer.no_padding()

    def embed(self, text: str) -> np.ndarray:
        ids = np.array([self.tokenizer.encode(text).ids], dtype=np.int64)
        hidden = self.session.run(None, {"input_ids": ids})[0][0]
        pooled = hidden.mean(axis=0)
        return pooled / max(float(np.linalg.norm(pooled)), 1e-12)


def check_against_fixture(model: Path, tokenizer: Path, fixture: Path) -> float:
    """The lowest cosine between the export's embeddings and the reference ones (which were
    computed with prompts truncated at the longest case's token count)."""
    cases = json.loads(fixture.read_text())["cases"]
    encoder = OnnxEncoder(model, tokenizer, 1, max(int(case["n_tokens"]) for case in cases))
    worst = 1.0
    for case in cases:
        got = encoder.embed(case["text"])
        expected = np.array(case["embedding"], dtype=np.float64)
        worst = min(worst, float(got @ expected / np.linalg.norm(expected)))
    return worst


def warm_ups(iterations: int) -> int:
    """Untimed calls before the timed ones, as `model-router bench` makes them."""
    return max(1, min(10, iterations // 10))


def time_onnx(encoder: OnnxEncoder, prompt: str, iterations: int) -> tuple[float, float]:
    """p50 wall time and mean CPU time, in µs, of one embedding, after a warm-up."""
    for _ in range(warm_ups(iterations)):
        encoder.embed(prompt)
    times = []
    cpu_start = time.process_time()
    for _ in range(iterations):
        start = time.perf_counter()
        encoder.embed(prompt)
        times.append((time.perf_counter() - start) * 1e6)
    return statistics.median(times), (time.process_time() - cpu_start) * 1e6 / iterations


def time_router(binary: str, length: int, threads: int, iterations: int) -> dict:
    """`model-router bench --lengths LENGTH --json` with RAYON_NUM_THREADS = threads."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    done = subprocess.run([binary, "bench", "--lengths", str(length), "--iterations", str(iterations), "--json"],
                          env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--snapshot", type=Path, required=True, help="the all-MiniLM-L6-v2 hub-cache snapshot")
    parser.add_argument("--binary", required=True, help="the model-router binary")
    parser.add_argument("--fixture", type=Path, help="reference embeddings to check the export against")
    parser.add_argument("--work", type=Path, required=True, help="where the exported model is written")
    parser.add_argument("--lengths", default="16,32,128,512")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    lengths = [int(n) for n in args.lengths.split(",")]
    thread_counts = [int(n) for n in args.threads.split(",")]

    model = args.work / "minilm.onnx"
    export(args.snapshot, model)
    encoders = {t: OnnxEncoder(model, args.snapshot / "tokenizer.json", t) for t in thread_counts}
    if args.fixture and args.fixture.exists():
        worst = check_against_fixture(model, args.snapshot / "tokenizer.json", args.fixture)
        print(f"ONNX export vs the reference embeddings: lowest cosine {worst:.6f}")

    results = {(t, n): ([], [], [], []) for t in thread_counts for n in lengths}
    profile = "?"
    for round_ in range(args.rounds):
        for threads in thread_counts:
            for length in lengths:
                report = time_router(args.binary, length, threads, args.iterations)
                profile = report["profile"]
                row = report["lengths"][0]
                ours, theirs, ours_cpu, theirs_cpu = results[(threads, length)]
                ours.append(row["p50_us"])
                ours_cpu.append(row["cpu_us"] if row["cpu_us"] is not None else float("nan"))
                wall, cpu = time_onnx(encoders[threads], row["prompt"], args.iterations)
                theirs.append(wall)
                theirs_cpu.append(cpu)
                print(f"round {round_ + 1}: {threads} thread(s), {length} tokens: model-router {ours[-1]:.0f} µs, "
                      f"ONNX Runtime {theirs[-1]:.0f} µs", file=sys.stderr)

    print(f"model-router ({profile} build) vs ONNX Runtime {ort.__version__}, all-MiniLM-L6-v2, one prompt "
          f"(tokenize + forward + pool), median over {args.rounds} rounds of each side's p50")
    print(f"{'threads':>7} {'tokens':>6} {'model-router µs':>16} {'ONNX Runtime µs':>16} {'ratio':>7}"
          f" {'CPU µs: ours':>13} {'ORT':>9} {'ratio':>7}")
    for threads in thread_counts:
        for length in lengths:
            ours, theirs, ours_cpu, theirs_cpu = (statistics.median(v) for v in results[(threads, length)])
            cpu = f" {ours_cpu:>13.0f} {theirs_cpu:>9.0f} {ours_cpu / theirs_cpu:>7.2f}" if threads == 1 else ""
            print(f"{threads:>7} {length:>6} {ours:>16.0f} {theirs:>16.0f} {ours / theirs:>7.2f}{cpu}")
    print("ratio = model-router / ONNX Runtime (below 1: model-router is faster); CPU µs: one thread only")
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
