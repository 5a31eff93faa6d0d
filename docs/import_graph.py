"""Draw greenflow's import graph by layer, from the code itself.

    python docs/import_graph.py            # Graphviz DOT on stdout
    python docs/import_graph.py --table    # the layer-to-layer imports as text
    python docs/import_graph.py | dot -Tsvg -o docs/img/import-graph.svg

Reads every module of ``greenflow/`` (and ``cli/``, ``samples/``, ``benchmarks/``,
which install as ``greenflow.cli`` etc.) with `ast`, without importing anything, and
counts the imports between the layers named in `LAYERS`. Imports inside functions and
under ``TYPE_CHECKING`` count too: they are dependencies all the same. An edge that goes
from a lower layer to a higher one is drawn red. Every layer imports the vocabulary
(errors, `Party`, `FlowStatus`), so the picture leaves those edges out; ``--table``
lists them.
"""
from __future__ import annotations

import ast
import os
import sys
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Directory -> the package name it installs as (setup.cfg's package_dir).
PACKAGES = {"greenflow": "greenflow", "cli": "greenflow.cli",
            "samples": "greenflow.samples", "benchmarks": "greenflow.benchmarks"}

# Bottom to top: a layer may import the layers listed before it.
LAYERS: list[tuple[str, list[str]]] = [
    ("vocabulary", ["greenflow.errors", "greenflow.party", "greenflow.status",
                    "greenflow.log_limits"]),
    ("encoding", ["greenflow.wire", "greenflow.serialization", "greenflow.keys",
                  "greenflow.messages"]),
    ("flows", ["greenflow.flows"]),
    ("runtime", ["greenflow.runtime"]),
    ("storage", ["greenflow.storage"]),
    ("state machine", ["greenflow.statemachine"]),
    ("node", ["greenflow.node"]),
    ("network", ["greenflow.network"]),
    ("public API", ["greenflow"]),
    ("rpc", ["greenflow.rpc", "greenflow.console"]),
    ("cluster", ["greenflow.cluster"]),
    ("ledger", ["greenflow.ledger"]),
    ("testing", ["greenflow.testing"]),
    ("tools", ["greenflow.cli", "greenflow.samples", "greenflow.benchmarks"]),
]


def modules() -> dict[str, str]:
    """Module name -> file, for every module of the installed layout."""
    out = {}
    for directory, package in PACKAGES.items():
        base = os.path.join(ROOT, directory)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d not in ("__pycache__", "results"))
            rel = os.path.relpath(dirpath, base)
            pkg = package if rel == "." else package + "." + rel.replace(os.sep, ".")
            if pkg == "greenflow" and dirpath != base:
                continue
            if "__init__.py" not in filenames:
                continue
            for f in sorted(filenames):
                if f.endswith(".py"):
                    name = pkg if f == "__init__.py" else f"{pkg}.{f[:-3]}"
                    out[name] = os.path.join(dirpath, f)
    return out


def imports(name: str, path: str, known: set[str]) -> set[str]:
    """The greenflow modules ``name`` imports (resolved to the longest known prefix)."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    is_pkg = path.endswith("__init__.py")
    found = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = name.split(".")
                base = parts if is_pkg else parts[:-1]
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def layer_of(module: str) -> str:
    best, best_len = "", -1
    for layer, prefixes in LAYERS:
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best_len:
                best, best_len = layer, len(p)
    if module != "greenflow" and best_len <= len("greenflow"):
        raise SystemExit(f"{module} is in no layer: add it to LAYERS in {__file__}")
    return best


def layer_edges() -> Counter:
    mods = modules()
    known = set(mods)
    edges: Counter = Counter()
    for name, path in mods.items():
        src = layer_of(name)
        for target in imports(name, path, known):
            dst = layer_of(target)
            if dst != src:
                edges[(src, dst)] += 1
    return edges


def dot(edges: Counter) -> str:
    rank = {layer: i for i, (layer, _) in enumerate(LAYERS)}
    lines = ["digraph greenflow {", '  rankdir=BT; nodesep=0.25; ranksep=0.5; ratio=0.75;',
             '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb", '
             'fontname="Helvetica", fontsize=11];',
             '  edge [fontname="Helvetica", fontsize=9, color="#55606e"];']
    for layer, prefixes in LAYERS:
        shown = ", ".join(p.replace("greenflow.", "") if p != "greenflow" else "__init__"
                          for p in prefixes)
        if layer == LAYERS[0][0]:
            shown += " (imported by every layer; those edges are not drawn)"
        lines.append(f'  "{layer}" [label=<<b>{layer}</b><br/><font point-size="8">'
                     f'{_wrap(shown)}</font>>];')
    for (src, dst), n in sorted(edges.items(), key=lambda e: (rank[e[0][0]], rank[e[0][1]])):
        upward = rank[dst] > rank[src]
        if dst == LAYERS[0][0] and not upward:
            continue
        attrs = f'label="{n}"' + (', color="#c0392b", fontcolor="#c0392b", constraint=false'
                                  if upward else "")
        lines.append(f'  "{src}" -> "{dst}" [{attrs}];')
    lines.append(f'  {{ rank=max; "{LAYERS[0][0]}"; }}')
    lines.append("}")
    return "\n".join(lines) + "\n"


def _wrap(text: str, width: int = 44) -> str:
    out, line = [], ""
    for word in text.split(" "):
        if line and len(line) + len(word) > width:
            out.append(line.rstrip())
            line = ""
        line += word + " "
    out.append(line.rstrip())
    return "<br/>".join(out)


def main(argv: list[str]) -> None:
    edges = layer_edges()
    if argv[:1] == ["--table"]:
        rank = {layer: i for i, (layer, _) in enumerate(LAYERS)}
        for (src, dst), n in sorted(edges.items(), key=lambda e: (rank[e[0][0]], rank[e[0][1]])):
            mark = "  UPWARD" if rank[dst] > rank[src] else ""
            print(f"{src:>14} -> {dst:<14} {n:3}{mark}")
    else:
        sys.stdout.write(dot(edges))


if __name__ == "__main__":
    main(sys.argv[1:])
