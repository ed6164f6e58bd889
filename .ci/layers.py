#!/usr/bin/env python3
"""The layer rule of src/lib.rs, checked: every `crate::`, `super::` and `self::` path in src/
is resolved to the file that defines it, and

1. a top-level module may use only the modules below it in LAYERS (or itself);
2. no two files use each other, directly or around a circle.

Prints each breach and exits non-zero if there is one. Run by .ci/run."""

import pathlib
import re
import sys

# Bottom up. A module may use what is listed before it.
LAYERS = [
    ["pb", "trace_context", "metrics"],
    ["vault"],
    ["domain"],
    ["store", "providers", "connection"],
    ["keys"],
    ["rpc"],
    ["api", "import"],
    ["grpc", "tls", "telemetry"],
    ["services", "config", "dev_postgres"],
    ["retention"],
    ["healthcheck", "server"],
    ["lib", "main"],
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"


def module_of(path):
    """The module path of a file: src/a/b.rs and src/a/b/mod.rs are ['a', 'b']."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    return parts


FILES = {tuple(module_of(p)): p for p in SRC.rglob("*.rs")}


def resolve(segments):
    """The file defining the longest module prefix of `segments`."""
    for end in range(len(segments), 0, -1):
        if tuple(segments[:end]) in FILES:
            return tuple(segments[:end])
    return None


def strip_comments(text):
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def paths_in(text):
    """Every path starting with crate::, super:: or self::, with `{...}` groups expanded."""
    found = []

    def expand(prefix, body):
        depth, start, items = 0, 0, []
        for index, char in enumerate(body):
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
            elif char == "," and depth == 0:
                items.append(body[start:index])
                start = index + 1
        items.append(body[start:])
        for item in items:
            item = item.strip()
            if not item:
                continue
            match = re.match(r"([\w:]*?)(?:::)?\{(.*)\}$", item, re.S)
            if match and "{" in item:
                expand(prefix + [s for s in match.group(1).split("::") if s], match.group(2))
            else:
                name = re.split(r"\s+as\s+", item)[0]
                found.append(prefix + [s for s in name.split("::") if s])

    for match in re.finditer(r"\b(crate|super|self)::", text):
        rest = text[match.end():]
        if rest.startswith("{"):
            depth = 0
            for index, char in enumerate(rest):
                depth += char == "{"
                depth -= char == "}"
                if depth == 0:
                    expand([match.group(1)], rest[1:index])
                    break
        else:
            word = re.match(r"[\w:]+", rest)
            if word:
                found.append([match.group(1)] + [s for s in word.group(0).split("::") if s])
    return found


def main():
    breaches = []
    edges = {}
    for module, path in FILES.items():
        text = strip_comments(path.read_text())
        is_mod_file = path.name in ("mod.rs", "lib.rs", "main.rs")
        here = list(module)
        targets = set()
        for segments in paths_in(text):
            head, rest = segments[0], segments[1:]
            if head == "crate":
                absolute = rest
            elif head == "self":
                absolute = here + rest if is_mod_file else here + rest
            else:  # super
                base = here if is_mod_file else here[:-1]
                while rest and rest[0] == "super":
                    base, rest = base[:-1], rest[1:]
                absolute = (base[:-1] if is_mod_file else base) + rest
            target = resolve(absolute)
            if target is None or target == module:
                continue
            # A file's own submodules are its parts, not its dependencies.
            if target[: len(module)] == module and len(target) > len(module):
                continue
            targets.add(target)
        edges[module] = targets
        top = module[0] if module else path.stem
        for target in targets:
            other = target[0]
            if other != top and RANK.get(other, 99) >= RANK.get(top, 99):
                breaches.append(f"{path.relative_to(SRC.parent)} uses crate::{other} (a layer not below {top})")
    # Circles among files.
    state = {}
    stack = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                circle = stack[stack.index(target):] + [target]
                breaches.append("circle: " + " -> ".join("/".join(m) or "lib" for m in circle))
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    for breach in breaches:
        print(breach)
    if breaches:
        print(f"\n{len(breaches)} breach(es) of the layer rule (src/lib.rs)", file=sys.stderr)
        return 1
    print(f"layer rule holds: {len(FILES)} files, no circles")
    return 0


if __name__ == "__main__":
    sys.exit(main())
