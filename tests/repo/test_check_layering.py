"""check_layering.py on archives built here: declared edges pass, an undeclared use, a cycle and
an area missing what its libraries link are each reported."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_layering  # noqa: E402

# Three libraries: top uses mid, mid uses base; base uses nothing of ours.
SOURCES = {
    "base": "int base_value(void) { return 1; }\n",
    "mid": "int base_value(void);\nint mid_value(void) { return base_value() + 1; }\n",
    "top": "int mid_value(void);\nint top_value(void) { return mid_value() + 1; }\n",
}


@pytest.fixture(scope="module")
def libdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("lib")
    cc = os.environ.get("CC", "cc")
    for name, src in SOURCES.items():
        c, o = d / f"{name}.c", d / f"{name}.o"
        c.write_text(src)
        subprocess.run([cc, "-c", str(c), "-o", str(o)], check=True)
        subprocess.run(["ar", "rcs", str(d / f"libsluice_{name}.a"), str(o)], check=True)
    return str(d)


def areas(*specs):
    return check_layering.parse_areas(list(specs))


def test_declared_edges_pass(libdir):
    assert check_layering.check(libdir, areas("base=base", "mid=mid,base", "top=top mid base",
                                              "program=top,mid,base")) == []


def test_an_undeclared_use_is_reported(libdir):
    assert check_layering.check(libdir, areas("base=base", "mid=mid", "top=top,mid")) == [
        "mid uses base (base_value), which AREA_mid does not list",
    ]


def test_a_declared_cycle_is_reported(libdir):
    # Every use is declared, so only the cycle (which a --start-group link would accept) fails.
    assert check_layering.check(libdir, areas("base=base,top,mid", "mid=mid,base,top", "top=top,mid,base")) == [
        "the libraries link in a cycle: base -> top -> mid -> base",
    ]


def test_an_area_must_list_what_its_libraries_link(libdir):
    assert check_layering.check(libdir, areas("base=base", "mid=mid,base", "top=top,mid", "program=top,mid")) == [
        "program: lists mid but not what mid links: base",
        "top: lists mid but not what mid links: base",
    ]


def test_a_library_no_area_declares_or_without_an_archive_is_reported(libdir):
    assert check_layering.check(libdir, areas("base=base", "mid=mid,base", "top=top,mid,base,extra",
                                              "gone=gone")) == [
        "top: lists extra, which is no library (no AREA_extra that starts with extra)",
        f"gone: no archive {os.path.join(libdir, 'libsluice_gone.a')}",
    ]


def test_main_fails_on_a_problem(libdir, capsys):
    assert check_layering.main(["check_layering.py", libdir, "base=base", "mid=mid", "top=top,mid,base"]) == 1
    assert "mid uses base" in capsys.readouterr().out
    assert check_layering.main(["check_layering.py", libdir, "base=base", "mid=mid,base", "top=top,mid,base"]) == 0
