#!/usr/bin/env python3
"""Size rules of ARCHITECTURE.md: no file under src/ (or bench/src/ and
crates/*/src/, the other workspace members) over MAX_FILE lines, no function over MAX_FN lines (tables excepted by
an `// size: table` comment on the line before the fn).

Usage: scripts/check-sizes.py [--report]   (exit 1 on a violation; --report lists the top 15)
"""
import os
import re
import sys

MAX_FILE = 1000
MAX_FN = 150
ROOTS = ("src", os.path.join("bench", "src"), os.path.join("crates", "tollgate-sys", "src"))
FN = re.compile(r"^\s*(pub(\([a-z:]+\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")


def strip(line):
    """The line without string/char literals and // comments (good enough for brace counts)."""
    out, i, n = [], 0, len(line)
    while i < n:
        c = line[i]
        if c == "/" and i + 1 < n and line[i + 1] == "/":
            break
        if c == '"':
            i += 1
            while i < n and line[i] != '"':
                i += 2 if line[i] == "\\" else 1
            i += 1
            continue
        if c == "'" and i + 2 < n and (line[i + 2] == "'" or line[i + 1] == "\\"):
            j = line.find("'", i + 2 if line[i + 1] != "\\" else i + 3)
            i = j + 1 if j > 0 else i + 1
            continue
        out.append(c)
        i += 1
    return "".join(out)


def functions(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    for idx, line in enumerate(lines):
        m = FN.match(line)
        if not m:
            continue
        if idx > 0 and "size: table" in lines[idx - 1]:
            continue
        depth, opened = 0, False
        for end in range(idx, len(lines)):
            s = strip(lines[end])
            if not opened and ";" in s and "{" not in s:
                break  # a declaration without a body (trait method)
            depth += s.count("{") - s.count("}")
            if "{" in s:
                opened = True
            if opened and depth <= 0:
                yield m.group(6), idx + 1, end - idx + 1
                break


def main():
    report = "--report" in sys.argv
    bad, fns, files = [], [], []
    for root, _, names in (walk for top in ROOTS for walk in os.walk(top)):
        for name in names:
            if not name.endswith(".rs"):
                continue
            path = os.path.join(root, name)
            n = sum(1 for _ in open(path, encoding="utf-8"))
            files.append((n, path))
            if n > MAX_FILE:
                bad.append(f"{path}: {n} lines (max {MAX_FILE})")
            for fname, line, length in functions(path):
                fns.append((length, f"{path}:{line} fn {fname}"))
                if length > MAX_FN:
                    bad.append(f"{path}:{line}: fn {fname} is {length} lines (max {MAX_FN})")
    if report:
        for n, p in sorted(files, reverse=True)[:15]:
            print(f"{n:6} {p}")
        for n, p in sorted(fns, reverse=True)[:15]:
            print(f"{n:6} {p}")
    for b in bad:
        print(b)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
