"""`import model_router` against the shipped default bundle (models/routerbench) and the command line.

The command-line comparison needs the `model-router` binary: $MODEL_ROUTER_BIN, else
target/debug/model-router of this checkout (`cargo build --bin model-router`; CI's `cargo test`
builds it first).
"""

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

import model_router

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "models" / "routerbench"

PROMPTS = [
    "What is the capital of Australia?",
    "Write a Python function that returns the n-th Fibonacci number.",
    "Prove that there are infinitely many prime numbers.",
    "Translate 'good morning, how are you?' into French and German.",
    "Summarise the plot of Hamlet in two sentences.",
    "hi",
    "Explain the difference between TCP and UDP to a five-year-old.",
    "Solve for x: 3x + 7 = 22. Show your steps.",
    "Write a SQL query that returns the ten customers with the highest total order value.",
    "你好，请介绍一下你自己。",
    "Compose a limerick about a cat who learns to code in Rust.",
]

# (keyword arguments of Router.route, the same options on the command line)
OPTIONS = [
    ({}, []),
    ({"mode": "cost"}, ["--mode", "cost"]),
    ({"mode": "quality", "max_tokens": 300}, ["--mode", "quality", "--max-tokens", "300"]),
    ({"band": 0.1, "subset": ["claude-v2", "gpt-3.5-turbo-1106", "mistralai/mistral-7b-chat"]},
     ["--band", "0.1", "--subset", "claude-v2,gpt-3.5-turbo-1106,mistralai/mistral-7b-chat"]),
]


@pytest.fixture(scope="module")
def router():
    return model_router.Router.load(str(BUNDLE))


def cli_binary():
    binary = Path(os.environ.get("MODEL_ROUTER_BIN", REPO / "target" / "debug" / "model-router"))
    assert binary.is_file(), f"{binary} is missing: run `cargo build --bin model-router` first"
    return binary


@pytest.mark.parametrize("kwargs,flags", OPTIONS)
def test_the_same_decision_as_the_command_line(router, kwargs, flags):
    binary = cli_binary()
    for prompt in PROMPTS:
        out = subprocess.run(
            [binary, "route", "--json", "--model", str(BUNDLE), *flags, prompt],
            check=True, capture_output=True, text=True,
        ).stdout
        assert router.route(prompt, **kwargs) == json.loads(out), prompt


def test_a_batch_gives_each_prompt_its_single_decision(router):
    inputs = PROMPTS + [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why is the sky blue?"}]]
    batch = router.route_batch(inputs, mode="cost", max_tokens=200)
    assert len(batch) == len(inputs)
    for item, decision in zip(inputs, batch):
        single = router.route(item, mode="cost", max_tokens=200)
        assert decision["model"] == single["model"]
        for model, score in single["scores"].items():
            assert decision["scores"][model] == pytest.approx(score, abs=1e-5), model
    assert router.route_batch([]) == []


def test_scores_are_the_decisions_scores(router):
    scores = router.scores(PROMPTS[1])
    assert set(scores) == set(router.models)
    assert scores == router.route(PROMPTS[1])["scores"]
    assert all(0.0 <= q <= 1.0 for q in scores.values())


def test_a_chat_routes_on_the_system_prompt_and_the_recent_turns(router):
    old = [{"role": "user", "content": f"old question {i}"} for i in range(10)]
    chat = [{"role": "system", "content": "You are a careful mathematician."}, *old,
            {"role": "user", "content": "Prove that sqrt(2) is irrational."}]
    # Six recent turns by default: the old questions 5..9 and the last one, after the system prompt.
    text = "\n\n".join(["You are a careful mathematician.", *(f"old question {i}" for i in range(5, 10)),
                        "Prove that sqrt(2) is irrational."])
    assert router.scores(chat) == router.scores(text)
    # The token estimate covers every message, so it exceeds the routing text's.
    assert router.route(chat)["input_tokens"] > router.route(text)["input_tokens"]
    assert router.scores([{"role": "user", "content": None}]) == router.scores("")


def test_needs_filter_models(router):
    # The shipped catalog gives tools to two models and vision to none.
    decision = router.route(PROMPTS[0], needs=["tools"])
    assert len(decision["eligible"]) == 2, decision
    assert all(why == {"reason": "missing_capabilities", "missing": ["tools"]} for why in decision["excluded"].values())
    with pytest.raises(model_router.RoutingError, match="lacks vision"):
        router.route(PROMPTS[0], needs=["vision"])
    with pytest.raises(model_router.RoutingError, match="unknown capability `telepathy`"):
        router.route(PROMPTS[0], needs=["telepathy"])


def test_errors_carry_the_routers_message(router):
    with pytest.raises(model_router.RoutingError, match="no/such/bundle"):
        model_router.Router.load("/no/such/bundle")
    with pytest.raises(model_router.RoutingError, match="unknown routing mode `cheap`"):
        router.route("hi", mode="cheap")
    with pytest.raises(model_router.RoutingError, match=re.escape("band must be a fraction in [0, 1], got 1.5")):
        router.route("hi", band=1.5)
    with pytest.raises(model_router.RoutingError, match="names `gpt-9`, which the router bundle does not predict"):
        router.route("hi", subset=["gpt-9"])
    with pytest.raises(model_router.RoutingError, match="no eligible model"):
        router.route("hi", max_tokens=2**31)
    with pytest.raises(model_router.RoutingError, match="needs at least one message"):
        router.route([])
    with pytest.raises(model_router.RoutingError, match="^input 1: a chat to route needs at least one message$"):
        router.route_batch(["hi", []])


def test_wrong_python_types_raise_type_errors(router):
    for bad in [5, None, [("user", "hi")], [{"content": "hi"}], [{"role": "user", "content": 5}]]:
        with pytest.raises(TypeError):
            router.route(bad)


def test_scoring_releases_the_gil(router):
    """Another thread runs Python while a batch is being scored, which it could not under the GIL."""
    prompts = [f"{PROMPTS[i % len(PROMPTS)]} (variant {i})" for i in range(40000)]
    ready, woke = threading.Event(), []

    def other():
        ready.set()
        time.sleep(0.02)
        woke.append(time.perf_counter())

    thread = threading.Thread(target=other)
    thread.start()
    ready.wait()
    start = time.perf_counter()
    # An unknown subset model fails every decision after scoring, so the call runs no Python
    # code (no json.loads) in which the GIL could change hands.
    with pytest.raises(model_router.RoutingError):
        router.route_batch(prompts, subset=["gpt-9"])
    end = time.perf_counter()
    thread.join()
    took, ran = end - start, woke[0] - start
    assert took > 0.1, f"the batch took only {took:.3f} s; the check needs a longer one"
    # Under the GIL the other thread could only run once the call had returned.
    assert ran < took / 2, f"the other thread ran at +{ran:.3f} s, the call ended at +{took:.3f} s"


def test_the_readme_example_runs():
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Embedding\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "README.md's Embedding section has no python example"
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        exec(compile(blocks[0], "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
