"""deploy/docker: the Dockerfiles pass hadolint, copy sources that exist and that the build
context keeps, the entrypoint hands a secret's token to the programs, and docker-compose.yml
is a valid Compose file whose services fit together. No Docker engine runs here, so nothing
is built or started (deploy/README.md says so)."""
import os
import re
import shutil
import subprocess
from fnmatch import fnmatch

import pytest

from deploy_files import DEPLOY, REPO, compose, flag_value, tool

DOCKER = DEPLOY / "docker"
DOCKERFILES = ["Dockerfile", "Dockerfile.cpu"]
ENTRYPOINT = DOCKER / "entrypoint.sh"


def test_dockerfiles_pass_hadolint():
    out = subprocess.run([tool("hadolint"), "--config", str(DOCKER / ".hadolint.yaml"),
                          *[str(DOCKER / f) for f in DOCKERFILES]], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install -y curl\n")
    out = subprocess.run([tool("hadolint"), "--config", str(DOCKER / ".hadolint.yaml"), str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "DL3006" in out.stdout, out.stdout  # untagged base image


def copy_sources(dockerfile):
    """The build-context paths a Dockerfile's COPY lines read (not those from another stage)."""
    sources = []
    for line in (DOCKER / dockerfile).read_text().splitlines():
        words = line.split()
        if not words or words[0] != "COPY" or any(w.startswith("--from") for w in words):
            continue
        sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def ignored(path, patterns):
    return any(fnmatch(path, p) or path.startswith(p.rstrip("/") + "/") for p in patterns)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_copied_sources_exist_and_the_context_keeps_them(dockerfile):
    sources = copy_sources(dockerfile)
    assert "Makefile" in sources and "deploy/docker/entrypoint.sh" in sources
    patterns = [l.strip() for l in (DOCKER / f"{dockerfile}.dockerignore").read_text().splitlines()
                if l.strip() and not l.startswith("#")]
    for src in sources:
        assert (REPO / src).exists(), f"{dockerfile} copies {src}, which is not in the repository"
        assert not ignored(src, patterns), f"{dockerfile}.dockerignore leaves out {src}, which {dockerfile} copies"
    # Every folder the Makefile builds the three programs from is copied.
    for folder in ["common", "controller", "gateway", "worker", "kernels"]:
        assert folder in sources, f"{dockerfile} does not copy {folder}/"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_images_run_as_a_user_through_the_entrypoint(dockerfile):
    text = (DOCKER / dockerfile).read_text()
    stages = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(stages) >= 2, f"{dockerfile} is not multi-stage"
    last = text[text.rindex("\nFROM "):]
    assert re.search(r"^USER\s+10001$", last, re.M), "the image must not run as root"
    assert 'ENTRYPOINT ["/usr/local/bin/sluice-entrypoint"]' in last
    # The final stage ships the binaries built in the build stage, not the toolchain.
    assert re.search(r"^COPY --from=build /src/bin/sluice-controller /src/bin/sluice-gateway /src/bin/sluice-worker", last, re.M)


def test_cuda_image_builds_on_nvidia_devel_and_ships_on_the_runtime():
    text = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:\$\{CUDA_VERSION\}-devel-\$\{UBUNTU\} AS build$", text, re.M)
    assert re.search(r"^FROM nvidia/cuda:\$\{CUDA_VERSION\}-runtime-\$\{UBUNTU\}$", text, re.M)


def entrypoint(*cmd, env):
    full = {"PATH": os.environ["PATH"], **env}
    return subprocess.run(["sh", str(ENTRYPOINT), *cmd], capture_output=True, text=True, env=full, timeout=30)


def test_entrypoint_reads_the_token_from_a_secret_file(tmp_path):
    secret = tmp_path / "internal_token"
    secret.write_text("s3cret-token\n")
    out = entrypoint("env", env={"SLUICE_INTERNAL_TOKEN_FILE": str(secret)})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "SLUICE_INTERNAL_TOKEN=s3cret-token" in lines  # without the file's newline
    assert not any(l.startswith("SLUICE_INTERNAL_TOKEN_FILE=") for l in lines)


def test_entrypoint_passes_a_token_from_the_environment_through():
    out = entrypoint("env", env={"SLUICE_INTERNAL_TOKEN": "from-env"})
    assert out.returncode == 0 and "SLUICE_INTERNAL_TOKEN=from-env" in out.stdout.splitlines()


def test_entrypoint_refuses_two_tokens_or_an_unreadable_file(tmp_path):
    secret = tmp_path / "t"
    secret.write_text("a")
    both = entrypoint("true", env={"SLUICE_INTERNAL_TOKEN": "b", "SLUICE_INTERNAL_TOKEN_FILE": str(secret)})
    assert both.returncode == 2 and "not both" in both.stderr
    missing = entrypoint("true", env={"SLUICE_INTERNAL_TOKEN_FILE": str(tmp_path / "none")})
    assert missing.returncode == 2 and "cannot read" in missing.stderr


def test_compose_file_matches_the_compose_specification():
    out = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec",
                          str(DOCKER / "docker-compose.yml")], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_compose_schema_check_catches_a_bad_file(tmp_path):
    bad = tmp_path / "docker-compose.yml"
    bad.write_text((DOCKER / "docker-compose.yml").read_text().replace("stop_grace_period:", "stop_grace_periode:"))
    out = subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(bad)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "stop_grace_periode" in out.stdout + out.stderr


def seconds(duration):
    m = re.fullmatch(r"(\d+)(s|m)", duration)
    assert m, duration
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1)


def test_compose_services_fit_together():
    c = compose()
    services = c["services"]
    assert {"controller", "gateway"} <= set(services)
    workers = {n: s for n, s in services.items() if s["command"][0] == "sluice-worker"}
    assert len(workers) >= 2, "one worker per GPU"
    gpus = []
    for name, s in services.items():
        cmd = s["command"]
        port = flag_value(cmd, "--port")
        # The healthcheck asks this service's own /health on the port it listens on.
        assert s["healthcheck"]["test"] == ["CMD", "curl", "-fsS", f"http://127.0.0.1:{port}/health"], name
        assert flag_value(cmd, "--host") == "0.0.0.0", name
        assert "internal_token" in s["secrets"], f"{name} has no internal token, which --host 0.0.0.0 needs"
        assert s["environment"]["SLUICE_INTERNAL_TOKEN_FILE"] == "/run/secrets/internal_token"
        drain = float(flag_value(cmd, "--drain-timeout") or 30)
        assert seconds(s["stop_grace_period"]) > drain, f"{name}: stop_grace_period within the drain"
        for secret in s["secrets"]:
            assert secret in c["secrets"], f"{name} uses secret {secret}, which is not declared"
        if name != "controller":
            assert s["depends_on"]["controller"]["condition"] == "service_healthy", name
            assert flag_value(cmd, "--controller-address") == "http://controller:21001", name
    for name, s in workers.items():
        # Registered under the name other containers reach it by, on the port it listens on.
        assert flag_value(s["command"], "--worker-address") == f"http://{name}:{flag_value(s['command'], '--port')}"
        (device,) = s["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        gpus += device["device_ids"]
        assert s["image"] == "sluice:cuda" and flag_value(s["command"], "--device") == "cuda"
    assert len(gpus) == len(set(gpus)) == len(workers), f"each worker gets its own GPU: {gpus}"
    gateway = services["gateway"]
    assert flag_value(gateway["command"], "--api-key-file") == "/run/secrets/api_keys"
    assert "api_keys" in gateway["secrets"]


def test_docker_compose_config_where_docker_compose_runs(tmp_path):
    """`docker compose config` checks the file as Docker Compose itself reads it, without an
    engine; only where the compose plugin is installed (this machine has none)."""
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode != 0:
        pytest.skip("docker compose is not installed here: the schema check above stands in for it")
    project = tmp_path / "project"
    shutil.copytree(DOCKER, project)
    (project / "secrets").mkdir()
    (project / "secrets" / "internal_token").write_text("t\n")
    (project / "secrets" / "api-keys").write_text("")
    shutil.copy(project / "example.env", project / ".env")
    out = subprocess.run([docker, "compose", "-f", str(project / "docker-compose.yml"), "config", "--quiet"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
