"""Stages as separate OS processes on one machine: what `newsmon demo --bus kafka://…` does.

In production each stage is its own container (docker-compose); this starts the
same `newsmon stage NAME` commands as child processes, waits until the bus has
nothing left for any of them, and stops them with SIGTERM (each finishes its
batch, commits and leaves its group).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from newsmon.app.stages import STAGES
from newsmon.bus import Bus


def start_stages(names: list[str], env: dict[str, str] | None = None) -> list[subprocess.Popen]:
    return [
        subprocess.Popen([sys.executable, "-m", "newsmon.app.cli", "stage", name], env={**os.environ, **(env or {})})
        for name in names
    ]


def wait_until_drained(bus: Bus, names: list[str], procs: list[subprocess.Popen], *, timeout: float,
                       stop: threading.Event, on_tick: Callable[[], None] = lambda: None) -> None:
    """Return when every stage has committed everything on its input topic; raise if a stage died or time ran out."""
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"stage process {dead[0].args[-1]} exited with {dead[0].returncode}")
        if all(bus.backlog(name, STAGES[name]) == 0 for name in names):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the stages did not drain within {timeout:g} s")
        on_tick()
        stop.wait(1.0)


def stop_stages(procs: list[subprocess.Popen], timeout: float = 60) -> list[int]:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    codes = []
    for proc in procs:
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        # A stage still starting (its SIGTERM handler not installed yet) dies of the signal: it had consumed
        # nothing, so that is a clean stop too (the demo finds nothing new before the stages are up).
        codes.append(0 if code == -signal.SIGTERM else code)
    return codes
