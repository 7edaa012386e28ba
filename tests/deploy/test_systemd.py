"""deploy/systemd: the units pass `systemd-analyze verify` and its offline security review,
install.sh lays them out as they expect, and what they promise matches the programs (drain
times, reload on SIGHUP)."""
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from conftest import binary, need_stories, start_controller, start_gateway, start_worker
from deploy_files import default_of, flag_value, tool
from systemd_units import SYSTEMD, UNITS, directives, env_file, exec_start

INSTALL = SYSTEMD / "install.sh"
# systemd-analyze security's exposure score, 0 (locked down) to 10: each unit stays below.
MAX_EXPOSURE = 2.0


def systemd_analyze():
    """systemd-analyze, or a skip saying why it cannot run here (make deps installs it from
    Debian's systemd package; it needs no running systemd for what these tests ask)."""
    path = shutil.which("systemd-analyze")
    if not path:
        pytest.skip("systemd-analyze is not installed (Debian's systemd package; make deps)")
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except OSError as e:
        pytest.skip(f"systemd-analyze cannot run here: {e}")
    if out.returncode != 0:
        pytest.skip(f"systemd-analyze cannot run here: {out.stderr.strip()}")
    return path


def install(root, *args, env=None):
    full = dict(os.environ, DESTDIR=str(root), **(env or {}))
    return subprocess.run(["sh", str(INSTALL), *args], capture_output=True, text=True, env=full, timeout=60)


@pytest.fixture
def root(tmp_path):
    """A root directory as install.sh leaves it on a machine with two GPUs, with the programs
    in /usr/local/bin (make install) and systemd's own units, which `systemd-analyze --root`
    resolves the units' dependencies (network-online.target, ...) against."""
    root = tmp_path / "root"
    out = install(root, "2")
    assert out.returncode == 0, out.stderr
    (root / "usr/local/bin").mkdir(parents=True)
    for program in UNITS.values():
        shutil.copy2(binary(program), root / "usr/local/bin" / program)
    # Other commands the units run (ExecReload=/bin/kill, ...), from this machine: verify
    # looks for every Exec*= program under the root.
    for unit in UNITS:
        for key, values in directives(unit).items():
            for value in values if key.startswith("Exec") else []:
                command = value.lstrip("-+!@:").split()[0]
                if command.startswith("/") and not command.startswith("/usr/local/bin/sluice-") \
                        and Path(command).exists():
                    (root / command[1:]).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(Path(command).resolve(), root / command[1:])
    system = Path("/usr/lib/systemd/system")
    if system.is_dir():
        shutil.copytree(system, root / "usr/lib/systemd/system", symlinks=True)
    return root


INSTANCES = ["sluice.target", "sluice-controller.service", "sluice-gateway.service",
             "sluice-worker@0.service", "sluice-worker@1.service"]


def test_units_pass_systemd_analyze_verify(root):
    analyze = systemd_analyze()
    out = subprocess.run([analyze, "verify", "--man=no", f"--root={root}", *INSTANCES],
                         capture_output=True, text=True, timeout=60)
    # verify only warns (exit 0) about an unknown directive or a misspelt section: any word
    # from it is a failure here.
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out.stdout + out.stderr


def test_verify_catches_a_broken_unit(root):
    """The check above can fail: a misspelt directive and a program that is not installed."""
    analyze = systemd_analyze()
    unit = root / "etc/systemd/system/sluice-controller.service"
    unit.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict"))
    (root / "usr/local/bin/sluice-gateway").unlink()
    out = subprocess.run([analyze, "verify", "--man=no", f"--root={root}", *INSTANCES],
                         capture_output=True, text=True, timeout=60)
    assert "ProtectSytem" in out.stderr and "sluice-gateway" in out.stderr, out.stderr


@pytest.mark.parametrize("unit", ["sluice-controller.service", "sluice-gateway.service", "sluice-worker@0.service"])
def test_units_are_hardened(root, unit):
    analyze = systemd_analyze()
    out = subprocess.run([analyze, "security", "--offline=true", f"--root={root}", "--no-pager", unit],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out.stdout)
    assert out.returncode == 0 and m, out.stdout + out.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE, out.stdout


@pytest.mark.parametrize("unit", UNITS)
def test_units_restart_on_failure_as_a_dynamic_user(unit):
    d = directives(unit)
    for key, value in [("Restart", "on-failure"), ("DynamicUser", "yes"), ("NoNewPrivileges", "yes"),
                       ("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("PrivateTmp", "yes")]:
        assert d.get(key) == [value], f"{unit}: {key}={d.get(key)}, want {value}"
    assert d["ExecStart"][0].split()[0] == f"/usr/local/bin/{UNITS[unit]}"


def test_worker_instance_sees_only_its_gpu():
    d = directives("sluice-worker@.service")
    assert "CUDA_VISIBLE_DEVICES=%i" in d["Environment"]
    assert "/etc/sluice/worker-%i.env" in d["EnvironmentFile"]


@pytest.mark.parametrize("unit", ["sluice-gateway.service", "sluice-worker@.service"])
def test_stop_timeout_outlasts_the_drain(unit):
    """systemd sends SIGKILL TimeoutStopSec= after SIGTERM: a drain must end before."""
    program = UNITS[unit]
    args = exec_start(unit)
    drain = float(flag_value(args, "--drain-timeout") or default_of(program, "--drain-timeout"))
    (stop,) = directives(unit)["TimeoutStopSec"]
    m = re.fullmatch(r"(\d+)s?", stop)
    assert m and int(m.group(1)) > drain, f"{unit}: TimeoutStopSec={stop} with a drain of {drain} s"


def sighup_survivor(procs, program):
    """Whether program, started as the tests start it, is still serving 1 s after a SIGHUP. It
    starts with SIGHUP's default action, as systemd starts a service, whatever this test run
    inherited (under nohup, say, an ignored SIGHUP would pass to the program)."""
    before = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        if program == "sluice-controller":
            p = start_controller(procs)
        elif program == "sluice-gateway":
            p = start_gateway(procs, "http://127.0.0.1:9")
        else:
            p = start_worker(procs, need_stories() / "hf")
    finally:
        signal.signal(signal.SIGHUP, before)
    p.p.send_signal(signal.SIGHUP)
    deadline = time.time() + 1.0
    while time.time() < deadline and p.p.poll() is None:
        time.sleep(0.05)
    if p.p.poll() is not None:
        return False
    return requests.get(p.url + "/health", timeout=5).status_code == 200


@pytest.mark.parametrize("unit", UNITS)
def test_exec_reload_exactly_when_the_program_reloads_on_sighup(procs, unit):
    """`systemctl reload` sends what ExecReload= says: a unit offers it only when its program
    survives a SIGHUP. The gateway reloads its API keys and rate limits on SIGHUP and its unit
    has ExecReload=/bin/kill -HUP $MAINPID; the controller and the worker keep SIGHUP's default
    action (it stops them), so theirs have none."""
    reloads = "ExecReload" in directives(unit)
    survives = sighup_survivor(procs, UNITS[unit])
    assert reloads == survives, (
        f"{UNITS[unit]} {'survives' if survives else 'is stopped by'} a SIGHUP but {unit} "
        f"{'has' if reloads else 'has no'} ExecReload=" + ("" if reloads else ": add ExecReload=/bin/kill -HUP $MAINPID"))


def test_install_lays_out_one_env_file_per_gpu_and_keeps_edits(tmp_path):
    root = tmp_path / "root"
    assert install(root, "3").returncode == 0
    etc = root / "etc/sluice"
    for name in ["sluice.env", "controller.env", "gateway.env", "worker.env", "api-keys"]:
        assert (etc / name).exists(), name
    assert oct((etc / "sluice.env").stat().st_mode & 0o777) == "0o600"  # holds the token
    ports = [env_file(etc / f"worker-{i}.env")["SLUICE_WORKER_PORT"] for i in range(3)]
    assert ports == ["21002", "21003", "21004"] and not (etc / "worker-3.env").exists()
    for unit in ["sluice.target", *UNITS]:
        assert (root / "etc/systemd/system" / unit).read_text() == (SYSTEMD / unit).read_text()

    # An administrator's edits survive a second run (new units are still installed).
    (etc / "worker.env").write_text("SLUICE_WORKER_ARGS=--model-path /srv/models/mine\n")
    assert install(root, "3").returncode == 0
    assert "/srv/models/mine" in (etc / "worker.env").read_text()


def test_install_starts_the_key_file_with_a_key_the_real_gateway_takes(procs, tmp_path):
    """A key file with no key refuses every client, so install.sh writes one random key: the
    gateway started on that file refuses a request without it and takes one with it. A second
    run keeps the file (and its key) as it is."""
    root = tmp_path / "root"
    assert install(root, "1").returncode == 0
    path = root / "etc/sluice/api-keys"
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    keys = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    assert len(keys) == 1 and re.fullmatch(r"sk-[0-9a-f]{48}", keys[0]), keys
    assert install(root, "1").returncode == 0
    assert keys[0] in path.read_text()
    other = tmp_path / "other"
    assert install(other, "1").returncode == 0
    assert keys[0] not in (other / "etc/sluice/api-keys").read_text(), "two installs, one key"

    controller = start_controller(procs)
    gateway = start_gateway(procs, controller.url, "--api-key-file", str(path))
    assert requests.get(gateway.url + "/v1/models", timeout=5).status_code == 401
    r = requests.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {keys[0]}"}, timeout=5)
    assert r.status_code == 200, r.text


def test_install_registers_workers_under_worker_host(tmp_path):
    root = tmp_path / "root"
    assert install(root, "2", env={"WORKER_HOST": "gpu-1.example.internal"}).returncode == 0
    args = exec_start("sluice-worker@.service", etc=root / "etc/sluice")
    assert args[:3] == ["/usr/local/bin/sluice-worker", "--port", "21002"]
    assert flag_value(args, "--worker-address") == "http://gpu-1.example.internal:21002"
    one = env_file(root / "etc/sluice/worker-1.env")["SLUICE_WORKER_INSTANCE_ARGS"]
    assert one == "--worker-address http://gpu-1.example.internal:21003"


def test_install_refuses_a_gpu_count_that_is_not_a_number(tmp_path):
    out = install(tmp_path / "root", "two")
    assert out.returncode == 2 and "GPUS must be a number" in out.stderr


def test_shell_scripts_pass_shellcheck():
    scripts = [INSTALL, SYSTEMD.parent / "docker" / "entrypoint.sh"]
    out = subprocess.run([tool("shellcheck"), *map(str, scripts)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
