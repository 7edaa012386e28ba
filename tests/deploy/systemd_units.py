"""Reading deploy/systemd: unit files, the environment files they load, and the command line
each ExecStart= gives its program once systemd has expanded the environment."""
import re
import shlex

from deploy_files import DEPLOY

SYSTEMD = DEPLOY / "systemd"
UNITS = {"sluice-controller.service": "sluice-controller",
         "sluice-gateway.service": "sluice-gateway",
         "sluice-worker@.service": "sluice-worker"}


def directives(unit):
    """{key: [values]} of a unit file's [Service] and [Unit] sections (comments dropped)."""
    out = {}
    for line in (SYSTEMD / unit).read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;[":
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def env_file(path):
    """{variable: value} of an environment file, as systemd reads one (KEY=VALUE lines, values
    optionally quoted)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def env_files_of(unit, etc=SYSTEMD, instance="0"):
    """The files a unit's EnvironmentFile= lines name, with etc standing for /etc/sluice: by
    default deploy/systemd, whose examples install as /etc/sluice/X (a template's
    worker-%i.env is the example worker-0.env)."""
    names = []
    for value in directives(unit).get("EnvironmentFile", []):
        path = value.lstrip("-").replace("%i", instance)
        assert path.startswith("/etc/sluice/"), f"{unit}: EnvironmentFile={value} is not in /etc/sluice"
        names.append(etc / path[len("/etc/sluice/"):])
    return names


def environment(unit, etc=SYSTEMD):
    env = {}
    for value in directives(unit).get("Environment", []):
        for assignment in shlex.split(value):
            k, _, v = assignment.partition("=")
            env[k] = v
    for path in env_files_of(unit, etc):
        env.update(env_file(path))
    return env


def exec_start(unit, etc=SYSTEMD):
    """ExecStart='s program and its arguments, with $VAR split into words and ${VAR} kept as
    one word, as systemd does; variables no file sets expand to nothing."""
    (line,) = directives(unit)["ExecStart"]
    env = environment(unit, etc)
    words = []
    for word in shlex.split(line):
        m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", word)
        if m:
            words += env.get(m.group(1), "").split()
            continue
        words.append(re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), word))
    return words


def exec_start_variables(unit):
    (line,) = directives(unit)["ExecStart"]
    return set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", line))
