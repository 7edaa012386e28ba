"""What a newcomer meets first: each program's --help (every worker subcommand listed, each
default said once) and a bare `make` that builds the programs."""
import re
import subprocess

import pytest

from conftest import REPO, binary

SUBCOMMANDS = ["tokenize", "detokenize", "chat-template", "bench"]


def help_text(*args):
    r = subprocess.run(list(args) + ["--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_worker_help_lists_every_subcommand_once():
    text = help_text(binary("sluice-worker"))
    for name in SUBCOMMANDS:
        lines = [l for l in text.splitlines() if re.match(rf"\s+{re.escape(name)}\s+\S", l)]
        assert len(lines) == 1, f"{name!r} in:\n{text}"
    # Each subcommand answers --help itself, under its own name.
    for name in SUBCOMMANDS:
        assert f"usage: sluice-worker {name}" in help_text(binary("sluice-worker"), name)


@pytest.mark.parametrize("args", [["sluice-controller"], ["sluice-gateway"], ["sluice-worker"]] +
                         [["sluice-worker", name] for name in SUBCOMMANDS])
def test_help_says_each_default_once(args):
    text = help_text(binary(args[0]), *args[1:])
    for line in text.splitlines():
        assert line.count("(default") <= 1, line


def test_chat_template_help_names_jinja_and_json():
    line = next(l for l in help_text(binary("sluice-worker")).splitlines() if "--chat-template" in l)
    assert "Jinja" in line and "JSON" in line, line


def test_bare_make_builds_the_programs(tmp_path):
    """`make` with no goal builds the three programs (it once built only libllhttp.a). A dry run
    into an empty build folder shows what a clean checkout would do."""
    r = subprocess.run(["make", "-n", "-C", str(REPO), f"BUILD={tmp_path}/build"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for program in ["sluice-controller", "sluice-worker", "sluice-gateway"]:
        assert f"-o {tmp_path}/build/bin/{program}" in r.stdout, program


@pytest.mark.parametrize("args", [["sluice-worker"], ["sluice-worker", "bench"]])
def test_cuda_options_are_flags_listed_and_checked(args):
    """The CUDA backend's options are flags in --help (the --cuda-options keys named there), and
    a bad --cuda-options item stops the program before it loads anything."""
    text = help_text(binary(args[0]), *args[1:])
    for flag in ["--enforce-eager", "--cuda-step-timeout", "--cuda-profile", "--no-cuda-warmup", "--no-overlap-steps"]:
        assert flag in text, flag
    line = next(l for l in text.splitlines() if "--cuda-options" in l)
    for key in ["gemv", "prefill_mma", "hopper", "split_parts", "fused_mlp", "early_trigger", "attn_early",
                "fused_qkv"]:
        assert key in line, key
    r = subprocess.run([binary(args[0])] + args[1:] + ["--model-path", "/nonexistent", "--cuda-options",
                                                       "split_parts=0,graphs=0"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r.stderr
    assert "unknown key in 'graphs=0'" in r.stderr, r.stderr
