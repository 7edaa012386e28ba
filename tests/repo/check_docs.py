#!/usr/bin/env python3
"""Every link in the repository's Markdown resolves, and every repository path a doc names exists.

    check_docs.py [ROOT]      (default: the current directory)

Reads every *.md file under ROOT (hidden folders and the build outputs build/ and bin/ left out)
and reports, one line each, and exits 1 when there is any:
  - a relative link [text](path) or [text](path#anchor), image or reference definition, whose
    file or folder does not exist, or whose #anchor is no heading of the Markdown file it names;
  - an inline code span that names a repository path (`worker/engine/engine.c`, `tests/unit/<area>/`:
    a path whose first folder is one of ROOT's) that matches no file or folder. <placeholder> and *
    match any one name; a :LINE suffix is ignored;
  - an inline code span that names a source file alone (`engine.c`, `run_trio.sh`) when no file of
    the repository has that name.
Links to other sites (http:, https:, mailto:) are not fetched. Fenced code blocks are skipped.
Standard library only, so it runs before the test environment exists.
"""
import glob
import os
import re
import sys

from report import report

SKIPPED_DIRS = {"build", "bin", "node_modules", "__pycache__"}
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REF_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
PATH_LIKE = re.compile(r"^[A-Za-z0-9_.*<>-]+(/[A-Za-z0-9_.*<>-]+)*/?$")
LINE_SUFFIX = re.compile(r":\d+(-\d+)?$")
SOURCE_NAME = re.compile(r"^[\w.-]+\.(c|h|cu|cuh|py|sh)$")


def repository_files(root):
    for top, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not (top == root and d in SKIPPED_DIRS)
                         and d not in ("__pycache__", "node_modules"))
        for f in sorted(files):
            yield os.path.join(top, f)


def prose_lines(text):
    """(line number, line) of the lines outside fenced code blocks."""
    fence = None
    for n, line in enumerate(text.split("\n"), 1):
        m = FENCE.match(line)
        if m:
            if fence is None:
                fence = m.group(1)
            elif m.group(1) == fence:
                fence = None
            continue
        if fence is None:
            yield n, line


def slug(heading):
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation dropped,
    spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


_anchors = {}


def anchors(path):
    if path not in _anchors:
        seen, found = {}, set()
        with open(path, encoding="utf-8") as f:
            for _, line in prose_lines(f.read()):
                m = HEADING.match(line)
                if not m:
                    continue
                base = slug(m.group(2))
                k = seen.get(base, 0)
                seen[base] = k + 1
                found.add(base if k == 0 else f"{base}-{k}")
        _anchors[path] = found
    return _anchors[path]


def check_link(root, doc, target):
    """None when target resolves, else why not."""
    if SCHEME.match(target):
        return None
    path, _, anchor = target.partition("#")
    if path:
        base = root if path.startswith("/") else os.path.dirname(doc)
        full = os.path.normpath(os.path.join(base, path.lstrip("/")))
        if os.path.relpath(full, root).startswith(".."):
            return "points outside the repository"
        if not os.path.exists(full):
            return "no such file or folder"
    else:
        full = doc
    if anchor and full.endswith(".md") and os.path.isfile(full) and anchor.lower() not in anchors(full):
        return f"no heading #{anchor} in {os.path.relpath(full, root)}"
    return None


def check_code_path(root, tops, names, span):
    """None when span is no repository path or one that exists, else why not."""
    span = LINE_SUFFIX.sub("", span.strip())
    if SOURCE_NAME.match(span):
        return None if span in names else "names a file that no folder of the repository holds"
    if "/" not in span or not PATH_LIKE.match(span) or span.split("/", 1)[0] not in tops:
        return None
    pattern = re.sub(r"<[^>/]*>", "*", span)
    if glob.glob(os.path.join(root, glob.escape(pattern).replace("[*]", "*"))):
        return None
    return "names a path that does not exist"


def check(root):
    root = os.path.abspath(root)
    tops = {d for d in os.listdir(root)
            if os.path.isdir(os.path.join(root, d)) and not d.startswith(".") and d not in SKIPPED_DIRS}
    files = list(repository_files(root))
    names = {os.path.basename(f) for f in files}
    problems = []
    for doc in (f for f in files if f.endswith(".md")):
        with open(doc, encoding="utf-8") as f:
            text = f.read()
        rel = os.path.relpath(doc, root)
        for n, line in prose_lines(text):
            m = REF_DEF.match(line)
            targets = [m.group(1)] if m else []
            spans = [s.group(2) for s in CODE_SPAN.finditer(line)]
            targets += LINK.findall(CODE_SPAN.sub("", line))
            for t in targets:
                why = check_link(root, doc, t)
                if why:
                    problems.append(f"{rel}:{n}: link ({t}): {why}")
            for s in spans:
                why = check_code_path(root, tops, names, s)
                if why:
                    problems.append(f"{rel}:{n}: `{s}` {why}")
    return problems


def main(argv):
    root = argv[1] if len(argv) > 1 else "."
    return report(check(root), "broken link(s) or path(s) in the docs")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
