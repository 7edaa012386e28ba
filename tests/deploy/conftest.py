"""Checks of deploy/: systemd units, container images and compose file, Kubernetes manifests,
the Grafana dashboard, and the flags they all pass. Starting the real binaries works as in
tests/integration, whose helpers are loaded from there (under another module name: both files
are called conftest)."""
import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "sluice_integration_helpers", Path(__file__).resolve().parents[1] / "integration" / "conftest.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)
sys.modules["sluice_integration_helpers"] = helpers

# The `procs` fixture for the tests here, and the helpers for their imports.
globals().update({k: v for k, v in vars(helpers).items() if not k.startswith("_")})
