"""check_docs.py on small trees made here: what resolves passes, each kind of break is reported."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_docs  # noqa: E402


def tree(root, files):
    for path, text in files.items():
        p = root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


GOOD = {
    "README.md": "See [the guide](docs/guide.md), [its setup](docs/guide.md#set-it-up-twice), "
    "[a folder](src/) and [the site](https://example.com/missing.md).\n"
    "Code: `src/x.c`, `src/x.c:12`, `src/<name>.c`, `src/*.h`, `x.c`, `tools/run.sh`, `/health`, "
    "`nowhere/at/all.c` (not a folder of the repository), `config.json`.\n"
    "```sh\n[broken](nothing.md) `src/gone.c`\n```\n",
    "docs/guide.md": "# Guide\n\n## Set it up: twice!\n\n[back](../README.md), [here](#guide), [ref]\n\n"
    "[ref]: ../src/x.h\n",
    "src/x.c": "",
    "src/x.h": "",
    "tools/run.sh": "",
    "build/notes.md": "[generated, not checked](missing.md)\n",
}


def test_a_tree_whose_links_resolve_passes(tmp_path):
    assert check_docs.check(tree(tmp_path, GOOD)) == []


def test_each_kind_of_break_is_reported_with_its_line(tmp_path, capsys):
    files = dict(GOOD)
    files["docs/bad.md"] = (
        "# Bad\n"
        "[gone](gone.md)\n"
        "[wrong anchor](guide.md#no-such-heading)\n"
        "[outside](../../elsewhere.md)\n"
        "`src/gone.c` and `src/<name>.cu` and `gone.c`\n"
        "[ref]: ../src/missing.h\n"
    )
    root = tree(tmp_path, files)
    problems = check_docs.check(root)
    assert problems == [
        "docs/bad.md:2: link (gone.md): no such file or folder",
        "docs/bad.md:3: link (guide.md#no-such-heading): no heading #no-such-heading in docs/guide.md",
        "docs/bad.md:4: link (../../elsewhere.md): points outside the repository",
        "docs/bad.md:5: `src/gone.c` names a path that does not exist",
        "docs/bad.md:5: `src/<name>.cu` names a path that does not exist",
        "docs/bad.md:5: `gone.c` names a file that no folder of the repository holds",
        "docs/bad.md:6: link (../src/missing.h): no such file or folder",
    ]
    assert check_docs.main(["check_docs.py", str(root)]) == 1
    assert "docs/bad.md:2:" in capsys.readouterr().out


def test_duplicate_headings_get_numbered_anchors(tmp_path):
    root = tree(tmp_path, {"a.md": "# Notes\n## Notes\n[second](#notes-1) [third](#notes-2)\n"})
    assert check_docs.check(root) == ["a.md:3: link (#notes-2): no heading #notes-2 in a.md"]

