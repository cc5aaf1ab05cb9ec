#!/usr/bin/env python3
"""The layers the compiler cannot check by itself, checked on every CI run.

1. The crate graph is the architecture: each workspace crate may depend (normal or build
   dependencies) only on crates of a lower layer (LAYERS below); two crates of one layer never
   depend on each other.
2. The core is pure: `trustgate-core`'s normal dependency tree holds no async runtime, HTTP
   stack or Kubernetes client (FORBIDDEN_IN_CORE).
3. No import cycles: inside each crate, no module reaches (through `crate::` paths in code
   that is not a test module) a module that reaches it back.

Exits 1 naming each breach. Run from the repository root: `python3 .ci/layers.py`.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

LAYERS = {
    "trustgate-core": 0,
    "trustgate-manifest": 1,
    "trustgate-runtime": 1,
    "trustgate-registry": 1,
    "trustgate-admission": 2,
    "trustgate-cluster": 2,
    "trustgate": 3,
    # A test tool (the hostile client of tests/e2e_bodies.rs): it may depend on nothing of ours.
    "trustgate-body-attacker": 0,
}

FORBIDDEN_IN_CORE = {
    "tokio", "tokio-util", "mio", "hyper", "hyper-util", "h2", "tower", "reqwest",
    "kube", "kube-client", "kube-runtime", "rustls", "tokio-rustls",
}

failures = []


def fail(message):
    failures.append(message)
    print(f"[layers] FAIL: {message}")


def crate_graph():
    meta = json.loads(subprocess.check_output(
        ["cargo", "metadata", "--format-version", "1", "--no-deps", "--locked"], text=True))
    names = {p["name"] for p in meta["packages"]}
    missing = names - LAYERS.keys()
    if missing:
        fail(f"workspace crates without a layer in .ci/layers.py: {sorted(missing)}")
    for package in meta["packages"]:
        name = package["name"]
        for dep in package["dependencies"]:
            if dep["name"] not in names or dep.get("kind") == "dev":
                continue
            if LAYERS.get(dep["name"], 99) >= LAYERS.get(name, -1):
                fail(f"{name} (layer {LAYERS.get(name)}) depends on {dep['name']} "
                     f"(layer {LAYERS.get(dep['name'])}): a crate depends only on lower layers")
    return meta


def core_is_pure():
    tree = subprocess.check_output(
        ["cargo", "tree", "--locked", "-p", "trustgate-core", "-e", "normal", "--prefix", "none",
         "--format", "{p}"], text=True)
    crates = {line.split()[0] for line in tree.splitlines() if line.strip()}
    bad = sorted(crates & FORBIDDEN_IN_CORE)
    if bad:
        fail(f"trustgate-core must stay pure, but its dependencies include {bad} "
             "(cargo tree -p trustgate-core -e normal -i CRATE shows the path)")
    return crates


def module_of(src: Path, file: Path):
    parts = list(file.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_tests(text):
    # Test modules may reach anything of their crate; they are cut from where they start.
    match = re.search(r"^\s*#\[cfg\(test\)\]\s*\n\s*mod \w+", text, re.M)
    return text[: match.start()] if match else text


def import_cycles(meta):
    for package in meta["packages"]:
        src = Path(package["manifest_path"]).parent / "src"
        files = sorted(src.rglob("*.rs"))
        modules = {module_of(src, f): f for f in files}
        edges = {m: set() for m in modules}
        for module, file in modules.items():
            text = strip_tests(file.read_text())
            # `use crate::a::{b, c::d}` and inline `crate::a::b::f()` paths alike.
            for path in re.findall(r"\bcrate((?:::[a-z_][a-z0-9_]*)+)", text):
                parts = tuple(p for p in path.split("::") if p)
                while parts and parts not in modules:
                    parts = parts[:-1]
                # A module naming itself, or a parent's re-export, is no edge.
                if parts and parts != module and module[: len(parts)] != parts:
                    edges[module].add(parts)
            for group in re.findall(r"\bcrate::\{([^}]*)\}", text):
                for item in group.split(","):
                    first = item.strip().split("::")[0].strip()
                    if (first,) in modules and (first,) != module:
                        edges[module].add((first,))
        for cycle in cycles(edges):
            names = " -> ".join("::".join(m) or "lib" for m in cycle + [cycle[0]])
            fail(f"{package['name']}: modules import each other: {names}")


def cycles(edges):
    """Each strongly connected group of more than one module (Tarjan), as a list."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    sys.setrecursionlimit(10000)
    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def main():
    meta = crate_graph()
    core = core_is_pure()
    import_cycles(meta)
    if failures:
        print(f"[layers] {len(failures)} breach(es)")
        return 1
    crates = ", ".join(f"{n} ({l})" for n, l in sorted(LAYERS.items(), key=lambda x: (x[1], x[0])))
    print(f"[layers] ok: crate layers {crates}; trustgate-core's {len(core)} dependencies hold no "
          "runtime, HTTP or Kubernetes client; no import cycles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
