"""Every flag deploy/ passes to a program is one that program has (its --help lists it), and
every environment variable it sets is one a program or the image's entrypoint reads: a flag
renamed or misspelt would otherwise surface only when someone deploys."""
import json
import re
import shlex
from pathlib import Path

import pytest

from deploy_files import DEPLOY, PROGRAMS, compose, env_of, flags_of, k8s_docs
from systemd_units import UNITS, env_files_of, exec_start, exec_start_variables, env_file

# Flags of other tools that deploy/'s files and instructions use.
OTHER_TOOLS = {
    "--no-install-recommends": "apt-get install",
    "--from": "Dockerfile COPY --from=stage",
    "--strip-debug": "strip",
    "--system": "useradd",
    "--uid": "useradd",
    "--no-create-home": "useradd",
    "--shell": "useradd",
    "--config": "hadolint",
    "--man": "systemd-analyze verify",
    "--root": "systemd-analyze verify",
    "--offline": "systemd-analyze security",
    "--now": "systemctl enable --now",
    "--build": "docker compose up --build",
    "--build-arg": "docker build --build-arg",
    "--from-literal": "kubectl create secret",
    "--from-file": "kubectl create secret",
    "--dry-run": "kubectl apply --dry-run",
    "--rm": "docker run --rm",
    "--gpus": "docker run --gpus",
    "--timeout": "kubectl rollout status --timeout",
    "--fail": "curl --fail",
    "--silent": "curl --silent",
    "--max-time": "curl --max-time",
}
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")


def text_files():
    return [p for p in sorted(DEPLOY.rglob("*")) if p.is_file() and p.suffix not in {".json"}]


def program_of(word):
    """The sluice program a command word runs: its name, or a path to it in a bin/ folder (not
    e.g. kubectl's deployment/sluice-worker)."""
    name = Path(word).name
    if name in PROGRAMS and (word == name or word.endswith("bin/" + name)):
        return name
    return None


# The variables deploy/systemd's units expand into a program's arguments.
ARGS_VARIABLE = re.compile(r"SLUICE_(CONTROLLER|GATEWAY|WORKER)(?:_INSTANCE)?_ARGS=(.*)", re.S)


def invocations_in_shell(text, where):
    """(where, program, args) for each command line in shell text that runs a sluice program,
    or sets the variable a unit passes to one: the words after it up to the end of its command
    (&, |, ;, or the line's end)."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            words = line.split()
        program = None
        for w in words:
            if w in {"&", "&&", "|", "||", ";"}:
                program = None
            elif program_of(w):
                program = program_of(w)
                out.append((where, program, []))
            elif ARGS_VARIABLE.match(w):
                m = ARGS_VARIABLE.match(w)
                program = "sluice-" + m.group(1).lower()
                out.append((where, program, m.group(2).split()))
            elif program:
                out[-1][2].append(w)
    return out


def code_blocks(markdown):
    return re.findall(r"^```[a-z]*\n(.*?)^```", markdown, re.M | re.S)


def invocations():
    found = []
    for unit in UNITS:
        words = exec_start(unit)
        found.append((unit, program_of(words[0]), words[1:]))
    for name, service in compose()["services"].items():
        found.append((f"docker-compose.yml {name}", program_of(service["command"][0]), service["command"][1:]))
    for path, doc in k8s_docs():
        if doc["kind"] == "Deployment":
            for c in doc["spec"]["template"]["spec"]["containers"]:
                found.append((f"{path.name} {c['name']}", program_of(c["args"][0]), c["args"][1:]))
    for dockerfile in (DEPLOY / "docker").glob("Dockerfile*"):
        for cmd in re.findall(r"^CMD (\[.*\])$", dockerfile.read_text(), re.M):
            words = json.loads(cmd)
            found.append((dockerfile.name, program_of(words[0]), words[1:]))
    for md in DEPLOY.rglob("*.md"):
        for block in code_blocks(md.read_text()):
            found += invocations_in_shell(block, md.name)
    for script in DEPLOY.rglob("*.sh"):
        found += invocations_in_shell(script.read_text(), script.name)
    return found


def test_deploy_runs_every_program():
    programs = {p for _, p, _ in invocations()}
    assert programs == set(PROGRAMS), programs


@pytest.mark.parametrize("program", PROGRAMS)
def test_flags_passed_to_a_program_are_its_own(program):
    bad = []
    for where, p, args in invocations():
        if p != program:
            continue
        for a in args:
            if a.startswith("--") and a.split("=", 1)[0] not in flags_of(program):
                bad.append(f"{where}: {a}")
    assert not bad, f"{program} has no such flags (see {program} --help):\n" + "\n".join(bad)


def test_every_flag_in_deploy_belongs_to_a_program_or_a_known_tool():
    known = set(OTHER_TOOLS).union(*(flags_of(p) for p in PROGRAMS))
    bad = [f"{p.relative_to(DEPLOY)}: {flag}" for p in text_files() for flag in FLAG.findall(p.read_text())
           if flag not in known]
    assert not bad, "flags that no program has (nor OTHER_TOOLS here):\n" + "\n".join(bad)


def test_systemd_env_files_set_only_what_is_read():
    readers = {}
    for unit, program in UNITS.items():
        for path in env_files_of(unit):
            readers.setdefault(path, set()).update(env_of(program) | exec_start_variables(unit))
    assert readers
    for path, read in readers.items():
        for var in env_file(path):
            assert var in read, f"{path.name} sets {var}, which neither the programs nor the units read"
    example = env_file(DEPLOY / "systemd" / "worker-0.env")
    assert set(example) <= exec_start_variables("sluice-worker@.service")


def test_compose_and_k8s_environment_is_read():
    entrypoint_reads = {"SLUICE_INTERNAL_TOKEN_FILE"}
    for name, service in compose()["services"].items():
        program = program_of(service["command"][0])
        for var in service.get("environment", {}):
            assert var in env_of(program) | entrypoint_reads, f"docker-compose.yml {name}: {var}"
    for path, doc in k8s_docs():
        if doc["kind"] != "Deployment":
            continue
        for c in doc["spec"]["template"]["spec"]["containers"]:
            program = program_of(c["args"][0])
            for env in c.get("env", []):
                used_in_args = any(f"$({env['name']})" in a for a in c["args"])
                assert env["name"] in env_of(program) or used_in_args, f"{path.name} {c['name']}: {env['name']}"
