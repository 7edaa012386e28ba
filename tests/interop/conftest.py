"""Other projects' programs against ours. Starting processes works as in tests/integration, whose
helpers are loaded from there (under another module name: both files are called conftest)."""
import importlib.util
import os
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "sluice_integration_helpers", Path(__file__).resolve().parents[1] / "integration" / "conftest.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)
sys.modules["sluice_integration_helpers"] = helpers

# Everything it has is here too: the `procs` fixture for the tests here, and the helpers for
# tests/integration's modules, which import them from "conftest" (this file, when pytest runs
# both folders at once).
globals().update({k: v for k, v in vars(helpers).items() if not k.startswith("_")})

# FastChat's modules write their logs into $LOGDIR (default: the working directory) as soon as
# they are imported; keep them out of the checkout.
os.environ.setdefault("LOGDIR", os.environ.get("PYTEST_TMPDIR", "/tmp"))
