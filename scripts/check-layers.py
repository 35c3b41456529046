#!/usr/bin/env python3
"""Keep the module layering of docs/architecture.md: a module of src/ may
import (`crate::NAME`) only modules of a lower layer. Fails, naming the
file and line, on an import across or up the layers, and on a top-level
module this list does not place. Run by scripts/test.sh."""
import pathlib
import re
import sys

# Top to bottom; modules on one line are one layer (they may not import
# each other).
LAYERS = [
    ["daemon"],
    ["mount"],
    ["fuse"],
    ["flusher", "restore", "verify", "advise"],
    ["retention"],
    ["fs", "views"],
    ["capture"],
    ["track", "remote"],
    ["repo"],
    ["index", "snapshot"],
    ["store", "chunking"],
    ["util"],
    ["error"],
]
RANK = {m: len(LAYERS) - i for i, layer in enumerate(LAYERS) for m in layer}

src = pathlib.Path(__file__).resolve().parent.parent / "src"
bad = []
for path in sorted(src.rglob("*.rs")):
    rel = path.relative_to(src)
    top = rel.parts[0].removesuffix(".rs")
    if top in ("main", "lib", "cli"):
        continue  # the binary and the crate root sit above everything
    if top not in RANK:
        bad.append(f"{rel}: module `{top}` has no layer in scripts/check-layers.py")
        continue
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.lstrip().startswith("//"):
            continue
        for m in re.findall(r"crate::([a-z_]+)", line):
            if m == top or m not in RANK:
                continue
            if RANK[m] >= RANK[top]:
                bad.append(f"{rel}:{n}: `{top}` imports `{m}`, which is not below it")
for b in bad:
    print(b, file=sys.stderr)
if bad:
    sys.exit(f"{len(bad)} import(s) break the layering (docs/architecture.md)")
print(f"layering ok: {len(RANK)} modules, no import up or across the layers")
