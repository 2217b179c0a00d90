"""Parsers of the deployment files the tests check: Dockerfile, docker-compose.yml, .env.example."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import yaml

from tests.helpers import ROOT

ENV_LINE = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its keyword (upper case) and the rest of its line."""

    keyword: str
    args: str


def dockerfile() -> list[Instruction]:
    """Return the Dockerfile's instructions, continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends in a continuation line"
    return instructions


def exec_form(text: str, where: str) -> list[str]:
    """Return the argv of a JSON-array (exec form) command, failing on the shell form."""
    try:
        argv = json.loads(text)
    except ValueError:
        raise AssertionError(f"{where} is not in JSON-array form: {text!r}") from None
    assert isinstance(argv, list), f"{where} is not a JSON array: {text!r}"
    assert argv, f"{where} is empty"
    assert all(isinstance(arg, str) for arg in argv), f"{where} has a non-string: {text!r}"
    return argv


def healthcheck_argv(instruction: Instruction) -> list[str]:
    """Return the argv of a HEALTHCHECK instruction's CMD."""
    options, separator, command = instruction.args.partition("CMD ")
    assert separator, f"HEALTHCHECK without CMD: {instruction.args!r}"
    assert all(option.startswith("--") for option in options.split()), options
    return exec_form(command.strip(), "the Dockerfile's HEALTHCHECK")


def compose() -> dict[str, Any]:
    """Return docker-compose.yml as parsed by PyYAML (anchors and merge keys resolved)."""
    parsed = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(parsed, dict), "docker-compose.yml is not a mapping"
    return parsed


def env_example() -> dict[str, str]:
    """Return the variables of .env.example with their example values, failing on a bad line."""
    variables: dict[str, str] = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = ENV_LINE.match(line)
        assert match, f".env.example: not NAME=value: {line!r}"
        name, value = match.groups()
        assert name not in variables, f".env.example sets {name} twice"
        variables[name] = value
    return variables
