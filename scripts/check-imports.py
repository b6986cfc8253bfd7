#!/usr/bin/env python3
"""Import cycles between the module files of the library crate under src/.

A module is a file: `foo.rs` and `foo/mod.rs` are module `foo`, `lib.rs` is the crate root
(`main.rs` and `bin/` are other crates and are skipped). An edge A -> B means code in file A
names module B or an item of it: `use crate::..`, `use super::..`, `use self::..`, a path
expression `crate::x::y`, `super::x`, or a path through a child module the file declares
(`mod child;` then `child::f()` or `use child::X`). Comments and string literals are ignored;
inline modules (`mod tests { .. }`) belong to their file, with `super::` resolved from inside
them.

The rule: the edges form a DAG. A child may use its ancestors' items, siblings may use
each other one way, and a parent may use a child only if the child does not use it back
(directly or through others). One exception: a re-export (`pub use child::X`,
`pub(crate) use ..`) from a parent to its own descendant is a facade, not a use, and
makes no edge. Method calls on a type whose `impl` blocks live in a child file are not
paths and make no edge either: splitting one type's impl by role across `foo.rs` and
`foo/*.rs` is how a type grows files without a cycle.

Usage: scripts/check-imports.py [--report] [PREFIX ...]
  PREFIX  module paths whose cycles fail the check (default: broker app), e.g. `broker`
  --report  also list cycles everywhere else under src/ (never fails for those)
Exit 1 when a cycle touches a checked prefix; each cycle is printed as a -> b -> a.
"""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def module_of(rel):
    """Module path (tuple) of a file relative to src/, or None for other crates."""
    parts = rel[:-3].split(os.sep)
    if parts[0] in ("main", "bin"):
        return None
    if parts == ["lib"]:
        return ()
    if parts[-1] == "mod":
        parts = parts[:-1]
    return tuple(parts)


def strip_code(text):
    """The source with comments, string and char literals blanked (line breaks kept)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    out.append("\n" if text[i] == "\n" else "")
                    i += 1
            continue
        m = re.compile(r'b?r(#*)"').match(text, i)
        if m and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = text.find('"' + m.group(1), m.end())
            end = n if end < 0 else end + 1 + len(m.group(1))
            out.append("\n" * text.count("\n", i, end) + '""')
            i = end
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append("\n" * text.count("\n", i, j) + '""')
            i = j + 1
            continue
        if c == "'":
            m = re.compile(r"'(\\.[^']*|[^\\'])'").match(text, i)
            if m:
                out.append("' '")
                i = m.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


def expand_use(tree):
    """All paths of a use tree: `a::{b, c::{d, self}}` -> [a::b, a::c::d, a::c]."""
    tree = re.sub(r"\s+as\s+\w+", "", tree)
    tree = re.sub(r"\s+", "", tree)

    def split_top(s):
        parts, depth, cur = [], 0, ""
        for ch in s:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        if cur:
            parts.append(cur)
        return parts

    def walk(prefix, s):
        if not s:
            return [prefix] if prefix else []
        if "{" in s:
            head, body = s.split("{", 1)
            body = body[: body.rfind("}")]
            head = head.rstrip(":")
            base = prefix + [p for p in head.split("::") if p]
            paths = []
            for part in split_top(body):
                paths += walk(base, part) if part not in ("self",) else [base]
            return paths
        segs = [p for p in s.split("::") if p]
        if segs and segs[-1] == "self":
            segs = segs[:-1]
        return [prefix + segs]

    return walk([], tree)


USE = re.compile(r"\b(pub(\([^)]*\))?\s+)?use\s+([^;]+);")
PATH = re.compile(r"(?<![\w:])((?:crate|super|self)(?:::(?:super|[A-Za-z_]\w*))+)")
MOD_DECL = re.compile(r"^\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", re.M)
INLINE_MOD = re.compile(r"(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*\{")


def inline_depths(code):
    """For each character offset, how many inline `mod x {` blocks enclose it (as a
    list of (start, end, depth) spans)."""
    spans, stack, depth = [], [], 0
    pending = {m.end() - 1 for m in INLINE_MOD.finditer(code)}
    level = 0
    for i, ch in enumerate(code):
        if ch == "{":
            level += 1
            if i in pending:
                stack.append((i, level))
        elif ch == "}":
            if stack and stack[-1][1] == level:
                start, _ = stack.pop()
                spans.append((start, i, len(stack) + 1))
            level -= 1
    return spans


def depth_at(spans, offset):
    return max([d for (s, e, d) in spans if s < offset < e], default=0)


def resolve(path, here, modules):
    """The module file `path` (list of segments) names, seen from module `here`."""
    segs = list(path)
    if segs[0] == "crate":
        base, segs = [], segs[1:]
    elif segs[0] in ("super", "self"):
        base = list(here)
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                if not base:
                    return None
                base.pop()
            segs = segs[1:]
    else:
        base = list(here)
    full = base + segs
    for k in range(len(full), -1, -1):
        if tuple(full[:k]) in modules:
            return tuple(full[:k])
    return None


def collect():
    files = {}
    for dirpath, _, names in os.walk(ROOT):
        for name in names:
            if name.endswith(".rs"):
                rel = os.path.relpath(os.path.join(dirpath, name), ROOT)
                mod = module_of(rel)
                if mod is not None:
                    files[mod] = rel
    edges = {m: {} for m in files}
    for mod, rel in files.items():
        code = strip_code(open(os.path.join(ROOT, rel), encoding="utf-8").read())
        spans = inline_depths(code)
        children = {c for c in MOD_DECL.findall(code) if mod + (c,) in files}

        def add(path, offset, reexport=False):
            d = depth_at(spans, offset)
            here = mod + ("<inline>",) * d
            if path[0] not in ("crate", "super", "self"):
                if path[0] not in children or d:
                    return
            target = resolve(path, here, files)
            if target is None or target == mod:
                return
            if reexport and target[: len(mod)] == mod:
                return  # facade: a parent re-exporting its descendant
            line = code.count("\n", 0, offset) + 1
            edges[mod].setdefault(target, f"{rel}:{line}")

        uses = []
        for m in USE.finditer(code):
            uses.append((m.start(), m.end()))
            for path in expand_use(m.group(3)):
                if path:
                    add(path, m.start(), reexport=bool(m.group(1)))
        outside = lambda off: not any(s <= off < e for s, e in uses)
        for m in PATH.finditer(code):
            if outside(m.start()):
                add(m.group(1).split("::"), m.start())
        if children:
            child_path = re.compile(r"(?<![\w:])(" + "|".join(sorted(children)) + r")::(\w+)")
            for m in child_path.finditer(code):
                if outside(m.start()):
                    add([m.group(1), m.group(2)], m.start())
    return files, edges


def cycles(edges):
    """Strongly connected components with more than one module (Tarjan), each shown
    as one cycle through it."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
                out.append(comp)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def one_cycle(comp, edges, start):
    """A shortest cycle through `start` inside its component (BFS)."""
    members = set(comp)
    prev, queue = {start: None}, [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges[v]):
            if w not in members:
                continue
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return list(reversed(path)) + [start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return comp


def name(mod):
    return "::".join(mod) or "crate"


def main(argv):
    report = "--report" in argv
    prefixes = [tuple(a.split("::")) for a in argv if not a.startswith("--")] or [
        ("broker",),
        ("app",),
    ]
    _, edges = collect()
    failed = False
    for comp in sorted(cycles(edges), key=lambda c: sorted(c)):
        checked = any(m[: len(p)] == p for m in comp for p in prefixes)
        if not checked and not report:
            continue
        seen = set()
        for start in sorted(comp):
            cyc = one_cycle(comp, edges, start)
            ring = cyc[:-1]
            key = min(tuple(ring[i:] + ring[:i]) for i in range(len(ring)))
            if key in seen:
                continue
            seen.add(key)
            steps = " -> ".join(name(m) for m in cyc)
            where = ", ".join(edges[a][b] for a, b in zip(cyc, cyc[1:]))
            label = "cycle" if checked else "cycle (report only)"
            print(f"{label}: {steps}\n    ({where})")
        failed |= checked
    if not failed:
        print("no import cycles in " + ", ".join(name(p) for p in prefixes))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
