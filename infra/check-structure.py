#!/usr/bin/env python3
"""The code's shape, checked in CI (infra/lint.sh): what rustfmt and clippy don't see.

- No source file over MAX_FILE lines, test files (`tests/`, `*tests*.rs`) aside.
- No function over MAX_FN lines, the hand-written SIMD kernels' bodies aside (KERNELS).
- No cycle between the top-level modules of a crate: `crate::a` may use `crate::b` or the
  reverse, not both (through any chain). Crates can't form cycles at all (Cargo refuses).

Prints every finding and exits 1 if there is one. Usage: infra/check-structure.py [--list]
(`--list` also prints the longest files and functions and each crate's module graph).
"""

import os
import re
import sys
from collections import defaultdict

MAX_FILE = 800
MAX_FN = 120
# Kernel bodies: long straight-line SIMD code, split only where the math splits.
KERNELS = ("shared/engine/src/executor/kernels/",)
CRATES = {
    "featurize (CLI)": "src",
    "featurize-engine": "shared/engine/src",
    "featurize-core": "shared/core/src",
    "featurize-aws": "shared/aws/src",
    "featurize-testkit": "shared/testkit/src",
}
SKIP_DIRS = {"target", ".git", ".venv", "node_modules", "build"}
FN = re.compile(r'\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern "C"\s+)?fn\s+(\w+)')


def rust_files(root="."):
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in SKIP_DIRS]
        for f in files:
            if f.endswith(".rs"):
                yield os.path.normpath(os.path.join(d, f))


def is_test_file(path):
    return path.startswith("tests/") or "/tests/" in path or "tests" in os.path.basename(path)


def code_only(line):
    """The line without string literals, char literals and its comment."""
    line = re.sub(r'"([^"\\]|\\.)*"', '""', line)
    line = re.sub(r"'(\\.|[^\\'])'", "''", line)
    return line.split("//")[0]


def functions(path):
    """(name, first line, length) of every fn with a body."""
    lines = open(path, encoding="utf-8").read().split("\n")
    out = []
    for i, line in enumerate(lines):
        m = FN.match(line)
        if not m:
            continue
        depth, opened, j = 0, False, i
        while j < len(lines):
            code = code_only(lines[j])
            for ch in code:
                if ch == "{":
                    depth, opened = depth + 1, True
                elif ch == "}":
                    depth -= 1
            if opened and depth <= 0:
                break
            if not opened and code.rstrip().endswith(";"):
                break
            j += 1
        if opened:
            out.append((m.group(7), i + 1, j - i + 1))
    return out


def module_graph(src):
    """Top-level module -> the top-level modules it imports (`crate::x`), tests aside."""
    modules = {}
    for path in rust_files(src):
        rel = os.path.relpath(path, src)[:-3].split(os.sep)
        if rel[-1] in ("mod", "lib", "main"):
            rel = rel[:-1]
        modules["::".join(rel)] = path
    graph = defaultdict(set)
    for name, path in modules.items():
        if not name or is_test_file(path):
            continue
        text = open(path, encoding="utf-8").read()
        cut = text.find("#[cfg(test)]")
        text = text if cut < 0 else text[:cut]
        text = "\n".join(code_only(l) for l in text.split("\n"))
        top = name.split("::")[0]
        for used in re.findall(r"crate::((?:\w+::)*\w+)", text):
            other = used.split("::")[0]
            if other != top and other in modules:
                graph[top].add(other)
    return graph


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main():
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    listing = "--list" in sys.argv
    problems = []
    sizes, fns = [], []
    for path in sorted(rust_files()):
        n = open(path, encoding="utf-8").read().count("\n")
        sizes.append((n, path))
        if n > MAX_FILE and not is_test_file(path):
            problems.append(f"{path}: {n} lines (a source file is at most {MAX_FILE})")
        if path.startswith(KERNELS):
            continue
        for name, line, length in functions(path):
            fns.append((length, f"{path}:{line} {name}"))
            if length > MAX_FN:
                problems.append(f"{path}:{line}: fn {name} is {length} lines (at most {MAX_FN})")
    for crate, src in CRATES.items():
        graph = module_graph(src)
        for comp in cycles(graph):
            edges = ", ".join(f"{a} -> {b}" for a in comp for b in sorted(graph[a]) if b in comp)
            problems.append(f"{crate}: the modules {{{', '.join(comp)}}} import each other ({edges})")
        if listing:
            print(f"== {crate} module graph")
            for a in sorted(graph):
                print(f"  {a} -> {', '.join(sorted(graph[a]))}")
    if listing:
        print("== longest files")
        for n, p in sorted(sizes, reverse=True)[:15]:
            print(f"  {n:5} {p}")
        print("== longest functions")
        for n, p in sorted(fns, reverse=True)[:15]:
            print(f"  {n:5} {p}")
    for p in problems:
        print(p)
    print(f"structure: {len(problems)} finding(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
