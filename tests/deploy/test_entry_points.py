"""Every command the Dockerfile, docker-compose.yml and the Procfile run is a real entry point."""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import importlib.util
import re
import shlex
import tomllib
from pathlib import Path, PurePosixPath

import pytest

from tests.deploy.files import Instruction, compose, dockerfile, exec_form, healthcheck_argv
from tests.e2e.test_procfile import procfile
from tests.helpers import BIN, ROOT

# The one service that runs a program of someone else's: the official Redis image, pinned to a
# minor version and a base, never `latest`.
REDIS_SERVICE = "redis"
REDIS_IMAGE = re.compile(r"^redis:\d+\.\d+(\.\d+)?-(alpine|bookworm)$")
SERVICES = {"redis", "api", "worker", "rq-dashboard"}
APP_SPEC = re.compile(r"^([A-Za-z_][\w.]*):([A-Za-z_]\w*)(\(\))?$")
PYTHONS = {"python", "python3"}


def commands() -> list[tuple[str, list[str]]]:
    """Return every command of our code in the deployment files, each with where it comes from."""
    found: list[tuple[str, list[str]]] = []
    for instruction in dockerfile():
        if instruction.keyword in ("CMD", "ENTRYPOINT"):
            found.append((f"Dockerfile {instruction.keyword}", exec_form(instruction.args, "")))
        elif instruction.keyword == "HEALTHCHECK":
            found.append(("Dockerfile HEALTHCHECK", healthcheck_argv(instruction)))
    for name, service in compose()["services"].items():
        if name == REDIS_SERVICE:
            continue
        if "command" in service:
            command = service["command"]
            assert isinstance(command, list), f"compose {name}: command is not a list"
            found.append((f"compose {name} command", command))
        test = service.get("healthcheck", {}).get("test")
        if test is not None:
            assert test[0] == "CMD", f"compose {name}: healthcheck test is not [CMD, ...]"
            found.append((f"compose {name} healthcheck", test[1:]))
    for name, line in procfile().items():
        found.append((f"Procfile {name}", shlex.split(line)))
    return found


COMMANDS = commands()


def module_is_runnable(name: str) -> None:
    """Assert that `python -m name` would run a module of this project that has a main entry."""
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        spec = None
    assert spec is not None, f"no module {name!r}: `python -m {name}` would fail"
    assert spec.origin is not None, f"{name!r} is a namespace package, not runnable"
    origin = Path(spec.origin)
    assert ROOT in origin.parents, f"{name!r} is not this project's ({origin})"
    if spec.submodule_search_locations is not None:
        assert importlib.util.find_spec(f"{name}.__main__") is not None, (
            f"package {name!r} has no __main__ module"
        )
    else:
        text = origin.read_text()
        assert 'if __name__ == "__main__":' in text, f"module {name!r} has no main entry"


def gunicorn_app_is_callable(argv: list[str]) -> None:
    """Assert that gunicorn is installed as a console script and its app spec names a callable."""
    script = BIN / "gunicorn"
    assert script.is_file(), f"{script} is not installed"
    scripts = importlib.metadata.entry_points(group="console_scripts", name="gunicorn")
    assert scripts, "gunicorn is not a console script of any installed distribution"
    specs = [match for arg in argv[1:] if (match := APP_SPEC.match(arg))]
    assert len(specs) == 1, f"expected one app spec in {argv}"
    module_name, attribute, call = specs[0].groups()
    module = importlib.import_module(module_name)
    target = getattr(module, attribute, None)
    assert target is not None, f"{module_name} has no {attribute}"
    assert callable(target), f"{module_name}:{attribute} is not callable"
    # 'api:create_app()' calls a factory; without the parentheses it must be the app itself.
    assert call == "()", f"{specs[0].string}: gunicorn must call the factory"


@pytest.mark.parametrize(("origin", "argv"), COMMANDS, ids=[origin for origin, _ in COMMANDS])
def test_command_resolves_to_an_entry_point_of_the_project(origin: str, argv: list[str]) -> None:
    """Each command is gunicorn calling an app factory, or `python -m` of a runnable module."""
    if argv[0] == "gunicorn":
        gunicorn_app_is_callable(argv)
    elif argv[0] in PYTHONS:
        assert argv[1] == "-m", f"{origin}: run modules with -m, not {argv}"
        module_is_runnable(argv[2])
    else:
        raise AssertionError(f"{origin}: {argv[0]!r} is not an entry point of this project")


def test_every_service_and_command_is_covered() -> None:
    """The commands checked include the API, the worker, the dashboard and both health checks."""
    assert set(compose()["services"]) == SERVICES
    argvs = [argv for _, argv in COMMANDS]
    assert ["gunicorn", "api:create_app()"] in argvs
    assert ["python", "-m", "worker"] in argvs
    assert ["python", "-m", "api.dashboard"] in argvs
    assert ["python", "-m", "api.healthcheck"] in argvs
    assert ["python", "-m", "worker.healthcheck"] in argvs


def test_redis_service_is_the_pinned_official_image_and_skipped() -> None:
    """The redis service runs the official image pinned to a version; its commands are Redis's."""
    redis = compose()["services"][REDIS_SERVICE]
    assert REDIS_IMAGE.match(redis["image"]), redis["image"]
    assert "build" not in redis
    assert redis["command"][0] == "redis-server"
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def copied() -> dict[str, str]:
    """Return what the Dockerfile COPYs: each source with its absolute destination in the image."""
    workdir = PurePosixPath("/")
    sources: dict[str, str] = {}
    for instruction in dockerfile():
        if instruction.keyword == "WORKDIR":
            workdir = workdir / instruction.args
        elif instruction.keyword == "COPY":
            parts = [part for part in instruction.args.split() if not part.startswith("--")]
            *srcs, dest = parts
            for src in srcs:
                target = workdir / dest
                if not dest.endswith("/") and len(srcs) == 1 and src.rstrip("/") != ".":
                    sources[src.rstrip("/")] = str(target)
                else:
                    sources[src.rstrip("/")] = str(target / PurePosixPath(src).name)
    return sources


def final_workdir(instructions: list[Instruction]) -> str:
    """Return the working directory the image's commands run in."""
    workdirs = [i.args for i in instructions if i.keyword == "WORKDIR"]
    assert workdirs, "the Dockerfile sets no WORKDIR"
    assert workdirs[-1].startswith("/"), "the final WORKDIR is not absolute"
    return workdirs[-1]


def test_dockerfile_copies_what_the_entry_points_need() -> None:
    """The image holds every package, gunicorn.conf.py in its WORKDIR, and what pip builds from."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        pyproject = tomllib.load(f)
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {path.name for path in ROOT.iterdir() if (path / "__init__.py").is_file()}
    packages = {name for name in packages if any(fnmatch.fnmatch(name, p) for p in patterns)}
    assert packages >= {"api", "worker", "shared"}
    workdir = final_workdir(dockerfile())
    sources = copied()
    for package in packages:
        assert sources.get(package) == f"{workdir}/{package}", f"{package} is not copied"
    assert sources.get("gunicorn.conf.py") == f"{workdir}/gunicorn.conf.py"
    # `pip install .` builds from pyproject.toml, which names README.md as the readme.
    for name in ("pyproject.toml", "README.md", "constraints.txt"):
        assert name in sources, f"{name} is not copied"


def test_dockerignore_keeps_what_the_image_copies() -> None:
    """No .dockerignore pattern excludes a file or package the Dockerfile copies."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns), "exceptions would need a real matcher"
    for source in copied():
        for pattern in patterns:
            assert not fnmatch.fnmatch(source, pattern.removeprefix("**/")), (
                f".dockerignore {pattern!r} excludes {source}"
            )
    assert {".venv", ".git", ".env"} <= set(patterns)


def test_dockerfile_runs_as_non_root_with_exec_form_commands() -> None:
    """The image runs as non-root, from a pinned base, with JSON-array CMD and HEALTHCHECK."""
    instructions = dockerfile()
    base = [i.args for i in instructions if i.keyword == "FROM"]
    assert base == ["python:3.11-slim-bookworm"]
    users = [i.args for i in instructions if i.keyword == "USER"]
    assert users, "the image runs as root"
    assert users[-1].split(":")[0] not in ("root", "0")
    keywords = [i.keyword for i in instructions]
    assert keywords.count("CMD") == 1
    assert keywords.count("HEALTHCHECK") == 1
    pip = [i.args for i in instructions if i.keyword == "RUN" and "pip install" in i.args]
    assert "pip install --no-cache-dir -c constraints.txt ." in pip
