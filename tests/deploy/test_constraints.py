"""constraints.txt pins exactly the runtime dependencies, and the test venv runs those pins."""

from __future__ import annotations

import importlib.metadata
import re

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers import ROOT

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)$")
PROJECT = "toolkit-jobs"


def pins() -> dict[str, str]:
    """Return constraints.txt as {canonical name: version}, failing on anything but name==x."""
    pinned: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"constraints.txt: not an exact pin: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pinned, f"constraints.txt pins {name} twice"
        pinned[name] = match.group(2)
    return pinned


def runtime_closure() -> set[str]:
    """Return the installed project's runtime requirements, transitively (with their extras)."""
    seen: set[tuple[str, str]] = set()
    todo: list[tuple[str, str]] = [(PROJECT, "")]
    while todo:
        distribution, extra = todo.pop()
        for text in importlib.metadata.requires(distribution) or []:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is not None and not marker.evaluate({"extra": extra}):
                continue
            name = canonicalize_name(requirement.name)
            # redis[hiredis] brings what redis declares under its `hiredis` extra.
            for wanted in ("", *sorted(requirement.extras)):
                if (name, wanted) not in seen:
                    seen.add((name, wanted))
                    todo.append((name, wanted))
    return {name for name, _ in seen}


def test_constraints_pin_exactly_the_runtime_dependencies() -> None:
    """Every runtime dependency, transitive ones included, is pinned, and nothing else is."""
    closure = runtime_closure()
    assert {"rq", "redis", "flask", "gunicorn", "werkzeug"} <= closure
    pinned = set(pins())
    assert not closure - pinned, f"not pinned in constraints.txt: {sorted(closure - pinned)}"
    assert not pinned - closure, f"pinned but not a dependency: {sorted(pinned - closure)}"
    assert canonicalize_name(PROJECT) not in pinned


def test_test_environment_runs_the_pinned_versions() -> None:
    """The venv the tests run in has exactly the pinned version of every runtime dependency."""
    for name, version in pins().items():
        assert importlib.metadata.version(name) == version, name
