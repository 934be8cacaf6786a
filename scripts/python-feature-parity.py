#!/usr/bin/env python3
"""Checks that the Python extension's dependencies build with the same features alone as in the
workspace build, so that `maturin develop` (which builds python/ alone) reuses what
`cargo test --workspace` compiled instead of rebuilding hundreds of crates.

Cargo enables a dependency's features per build, from the packages selected: a crate that some
other workspace member uses with more features is compiled a second time for python/ alone. The
fix is listed in python/Cargo.toml ("feature parity"): depend on that crate there with the
workspace's features. Prints each mismatch; exits 1 if there is one.
"""
import subprocess
import sys


def features(*selection):
    out = subprocess.run(
        ["cargo", "tree", *selection, "--prefix", "none", "--no-dedupe", "-f", "{p}|{f}"],
        check=True, capture_output=True, text=True,
    ).stdout
    seen = {}
    for line in out.splitlines():
        if "|" in line:
            package, enabled = line.replace(" (*)", "").split("|", 1)
            seen.setdefault(package, set()).add(enabled)
    return seen


workspace = features("--workspace")
python = features("-p", "model-router-python")
mismatches = [
    (package, sorted(enabled), sorted(workspace.get(package, set())))
    for package, enabled in sorted(python.items())
    if enabled != workspace.get(package, set())
]
for package, alone, together in mismatches:
    print(f"{package}: python/ alone {alone}, workspace {together}")
if mismatches:
    print(f"{len(mismatches)} crates differ: add them to python/Cargo.toml's feature-parity list")
sys.exit(1 if mismatches else 0)
