"""deploy/engines/engines.py, which `make engines` runs, as a module: the tests start the same engines
the same way (``engines.start``)."""

from __future__ import annotations

import importlib.util
import sys

from tests.support.harness import REPO


def _load_engines():
    """deploy/engines/engines.py, which `make engines` runs: the tests start the same engines the same way."""
    spec = importlib.util.spec_from_file_location("engines", REPO / "deploy" / "engines" / "engines.py")
    module = sys.modules["engines"] = importlib.util.module_from_spec(spec)  # dataclasses look it up there
    spec.loader.exec_module(module)
    return module


engines = _load_engines()
