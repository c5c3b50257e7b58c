"""Write deploy/constraints.txt: exact pins of newsmon's runtime dependencies, for the image.

The pins are the versions installed in the current environment (the ones the test suite ran
with), for the runtime requirements in pyproject.toml and everything they pull in; the test
extras are left out. Regenerate after changing [project].dependencies or upgrading the venv:

    .venv/bin/python deploy/lock.py > deploy/constraints.txt

It fails, naming the package, when a requirement is not installed or the installed version
is outside the range pyproject.toml allows (run `make test` or `pip install -e .` first).
"""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def runtime_pins(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, str]:
    """canonical name -> installed version, for the runtime requirements and their closure."""
    wanted = [Requirement(r) for r in tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]]
    pins: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    problems: list[str] = []
    while wanted:
        req = wanted.pop()
        name, extras = canonicalize_name(req.name), frozenset(req.extras)
        try:
            version = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{req}: not installed")
            continue
        if not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req}: {version} is installed")
        pins[name] = version
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for line in metadata.requires(req.name) or []:  # markers for this platform and Python, and the extras asked
            dep = Requirement(line)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in ("", *extras)):
                wanted.append(dep)
    if problems:
        raise SystemExit("cannot pin:\n  " + "\n  ".join(sorted(set(problems))))
    return pins


def main() -> None:
    pins = runtime_pins()
    sys.stdout.write(
        "# Exact versions of newsmon's runtime dependencies for the container image (Dockerfile:\n"
        "# pip wheel --constraint). Generated from the tested virtualenv; do not edit by hand:\n"
        "#   .venv/bin/python deploy/lock.py > deploy/constraints.txt\n"
        f"# Python {sys.version_info.major}.{sys.version_info.minor}; "
        "test-only packages are not included.\n"
    )
    for name in sorted(pins):
        sys.stdout.write(f"{name}=={pins[name]}\n")


if __name__ == "__main__":
    main()
