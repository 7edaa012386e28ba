"""What the tests of deploy/ share: where things are, the programs' own flags and environment
variables (from their --help), the YAML documents, and the tools installed from
tests/requirements.txt into the virtual environment."""
import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import binary

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PROGRAMS = ("sluice-controller", "sluice-worker", "sluice-gateway")


@functools.lru_cache(maxsize=None)
def help_text(program):
    """What `program --help` prints."""
    out = subprocess.run([binary(program), "--help"], capture_output=True, text=True, timeout=30)
    text = out.stdout + out.stderr
    assert out.returncode == 0, f"{program} --help failed:\n{text}"
    return text


@functools.lru_cache(maxsize=None)
def program_help(program):
    """(flags, env variables) that `program --help` lists."""
    text = help_text(program)
    flags = set(re.findall(r"^\s+(--[a-z0-9][a-z0-9-]*)", text, re.M))
    env = set(re.findall(r"\[env (SLUICE_[A-Z0-9_]+)\]", text))
    assert "--help" in flags and len(flags) > 5, f"cannot read {program}'s flags from:\n{text}"
    return frozenset(flags), frozenset(env)


def flags_of(program):
    return program_help(program)[0]


def env_of(program):
    return program_help(program)[1]


def default_of(program, flag):
    """The default `program --help` shows for flag (a number), e.g. 30 for --drain-timeout."""
    m = re.search(rf"^\s+{re.escape(flag)}\b.*\(default: ([0-9.]+)\)", help_text(program), re.M)
    assert m, f"{program} --help shows no default for {flag}"
    return float(m.group(1))


def flag_value(args, flag):
    """The value given to flag in an argument list (the last one wins), or None."""
    value = None
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(flag + "="):
            value = a.split("=", 1)[1]
    return value


def yaml_docs(path):
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]


def k8s_docs():
    """(file, document) for every Kubernetes object in deploy/k8s (kustomization.yaml apart)."""
    return [(p, d) for p in sorted((DEPLOY / "k8s").glob("*.yaml")) if p.name != "kustomization.yaml"
            for d in yaml_docs(p)]


def compose():
    return yaml_docs(DEPLOY / "docker" / "docker-compose.yml")[0]


def tool(name):
    """A command-line tool that tests/requirements.txt installs next to this Python."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    assert found, f"{name} is not installed: it comes from tests/requirements.txt (make pyenv)"
    return found
