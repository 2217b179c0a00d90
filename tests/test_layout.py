"""The layout holds: api/ never imports worker/, the client imports none of the service, no
import cycles, a light health probe."""

from __future__ import annotations

import subprocess
import sys

import grimp
import pytest

from tests.helpers import ROOT

PACKAGES = ("api", "shared", "worker", "toolkit_jobs")
# The Docker health check runs `python -m api.healthcheck` every 30 s: it needs the settings
# and http.client, never Flask, RQ or the dashboard.
MAX_PROBE_MODULES = 150


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    """Return the import graph of the project's own packages, function-level imports included."""
    return grimp.build_graph(*PACKAGES, cache_dir=None)


@pytest.mark.parametrize(
    ("importer", "imported"), [("api", "worker"), ("shared", "api"), ("shared", "worker")]
)
def test_no_side_imports_the_other(graph: grimp.ImportGraph, importer: str, imported: str) -> None:
    """api/ never reaches worker/, and shared/ reaches neither, directly or through others."""
    chain = graph.find_shortest_chain(importer=importer, imported=imported, as_packages=True)
    assert chain is None, f"{importer} imports {imported}: {' -> '.join(chain or ())}"


@pytest.mark.parametrize("imported", ["api", "shared", "worker"])
def test_the_client_imports_none_of_the_service(graph: grimp.ImportGraph, imported: str) -> None:
    """toolkit_jobs, the client users import, reaches none of api/, shared/, worker/: it speaks
    HTTP only."""
    chain = graph.find_shortest_chain(importer="toolkit_jobs", imported=imported, as_packages=True)
    assert chain is None, f"toolkit_jobs imports {imported}: {' -> '.join(chain or ())}"


def test_no_import_cycles(graph: grimp.ImportGraph) -> None:
    """No module of the project imports itself back through other modules."""
    cycles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            back = graph.find_shortest_chain(importer=imported, imported=module)
            if back is not None:
                cycles.append(" -> ".join((module, *back)))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_api_health_probe_imports_few_modules() -> None:
    """Importing api.healthcheck loads fewer than 150 modules, Flask and RQ not among them."""
    probe = (
        "import sys, api.healthcheck; print(len(sys.modules)); print(' '.join(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    count, loaded = int(out[0]), set(out[1].split())
    assert count < MAX_PROBE_MODULES, f"{count} modules: {sorted(loaded)}"
    assert not loaded & {"flask", "rq", "redis", "rq_dashboard", "prometheus_client"}
