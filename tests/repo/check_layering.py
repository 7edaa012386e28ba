#!/usr/bin/env python3
"""The libraries' dependency graph is the one the Makefile declares, and it has no cycle.

    check_layering.py LIBDIR AREA=LIB,LIB,... [AREA=...]    (the Makefile's AREA_* lines)

An area is a library and the libraries it links, itself first (AREA_backend := backend sampler
model ...), or a program that links a set of libraries (AREA_worker). The check fails, with one
line per problem, when:
  - the declared graph (area -> each other library it lists) has a cycle;
  - an area lists a library without what that library's own area lists (its links would fail);
  - a library's objects use a symbol that another library defines and the area does not list
    that library: an edge the Makefile does not declare. This is read from the archives with nm,
    so it sees every object, not only those a test happens to pull in (a test links its area's
    libraries in one --start-group, which would link a cycle without complaint).
LIBDIR holds libsluice_<name>.a for each library; a library listed by no area, or whose archive
is missing, is reported too. Standard library only.
"""
import os
import subprocess
import sys

from report import report

# nm's letters for a symbol an object defines (weak ones, W and V, are left out: a weak
# definition is a fallback, not an edge) and for one it uses.
DEFINED = set("ABCDGRSTiu")
UNDEFINED = "U"


def parse_areas(args):
    areas = {}
    for a in args:
        name, sep, libs = a.partition("=")
        if not sep or not name:
            raise ValueError(f"not AREA=LIB,LIB: {a!r}")
        areas[name] = [x for x in libs.replace(",", " ").split() if x]
    return areas


def archive_symbols(path):
    """(defined, used): the global symbols the archive's objects define and use."""
    out = subprocess.run(["nm", "-P", "-g", path], check=True, capture_output=True, text=True).stdout
    defined, used = set(), set()
    for line in out.splitlines():
        f = line.split()
        if len(f) < 2 or line.endswith(":"):
            continue
        if f[1] == UNDEFINED:
            used.add(f[0])
        elif f[1] in DEFINED:
            defined.add(f[0])
    return defined, used - defined


def find_cycle(graph):
    """A list of nodes closing a cycle in graph (node -> successors), or None."""
    state = {}  # 1: on the current path, 2: done

    def visit(node, path):
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


def check(libdir, areas):
    problems = []
    libs = {a for a, listed in areas.items() if listed and listed[0] == a}
    for area, listed in sorted(areas.items()):
        for lib in listed:
            if lib not in libs:
                problems.append(f"{area}: lists {lib}, which is no library (no AREA_{lib} that starts with {lib})")
    graph = {a: [x for x in areas[a][1:] if x != a] for a in libs}
    cycle = find_cycle(graph)
    if cycle:
        problems.append("the libraries link in a cycle: " + " -> ".join(cycle))
    for area, listed in sorted(areas.items()):
        for lib in listed:
            missing = [x for x in areas.get(lib, []) if x not in listed]
            if lib != area and missing:
                problems.append(f"{area}: lists {lib} but not what {lib} links: {' '.join(missing)}")
    symbols = {}
    for lib in sorted(libs):
        path = os.path.join(libdir, f"libsluice_{lib}.a")
        if not os.path.isfile(path):
            problems.append(f"{lib}: no archive {path}")
            continue
        symbols[lib] = archive_symbols(path)
    owner = {}
    for lib, (defined, _) in sorted(symbols.items()):
        for sym in defined:
            if sym in owner:
                problems.append(f"{sym} is defined by both {owner[sym]} and {lib}")
            owner.setdefault(sym, lib)
    for lib, (_, used) in sorted(symbols.items()):
        edges = {}
        for sym in used:
            other = owner.get(sym)
            if other and other != lib and other not in areas[lib]:
                edges.setdefault(other, []).append(sym)
        for other, syms in sorted(edges.items()):
            syms.sort()
            more = f" and {len(syms) - 3} more" if len(syms) > 3 else ""
            problems.append(f"{lib} uses {other} ({', '.join(syms[:3])}{more}), which AREA_{lib} does not list")
    return problems


def main(argv):
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    return report(check(argv[1], parse_areas(argv[2:])), "layering problem(s)")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
