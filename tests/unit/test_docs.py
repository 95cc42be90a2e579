"""Keep the docs honest: every config key, CLI command and file the README names exists, and back."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from raypipe.cli import build_parser
from raypipe.config import SECTIONS, load_config

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_config_key_is_documented_and_every_documented_key_exists() -> None:
    documented = set(re.findall(r"^\| `([a-z_]+(?:\.[a-z_0-9]+)?)` \|", README, flags=re.M))
    actual = {f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    actual |= {"input", "output", "input_format"}
    assert actual - documented == set(), "keys missing from the README's configuration table"
    assert documented - actual == set(), "the README documents keys that do not exist"


def test_every_cli_command_is_in_the_readme() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name in commands:
        assert f"raypipe {name}" in README, name


@pytest.mark.parametrize("script", ["scripts/quickstart", "scripts/test", ".ci/run"])
def test_quick_start_scripts_exist_and_are_executable(script: str) -> None:
    path = ROOT / script
    assert path.is_file() and os.access(path, os.X_OK)
    assert f"`{script}`" in README or script == ".ci/run" or f"\n{script}\n" in README


def test_ci_runs_the_readme_test_command() -> None:
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("name", ["local-cpu.yaml", "s3-gpu.yaml"])
def test_example_configs_are_valid(name: str) -> None:
    config = load_config(str(ROOT / "jobs" / "configs" / name))
    assert config.input and config.output


def test_files_the_readme_links_exist() -> None:
    for link in re.findall(r"\]\(([^)#]+)\)", README):
        assert (ROOT / link).exists(), link


def test_documented_defaults_are_the_real_defaults() -> None:
    import yaml

    rows = re.findall(r"^\| `([a-z_]+)\.([a-z_0-9]+)` \| `([^`]*)`", README, flags=re.M)
    checked = 0
    for section, key, cell in rows:
        default = getattr(SECTIONS[section](), key)
        if default is None or cell.isupper() or cell.startswith("$"):
            continue  # an environment variable or "none" stands for the default
        assert yaml.safe_load(cell) == default, f"{section}.{key}: README says {cell}, code says {default!r}"
        checked += 1
    assert checked >= 40  # every row with a literal default


def readme_commands() -> list[str]:
    """Every ``raypipe ...`` command line the README shows, in code blocks and inline code, without
    environment assignments, usage notation (``[--flag]``, ``a\\|b``) and bare command names in prose."""
    found: set[str] = set()
    for block in re.findall(r"```[a-z]*\n(.*?)```", README, flags=re.S):
        found.update(line.strip().removeprefix("$ ") for line in block.replace("\\\n", " ").splitlines())
    found.update(code.strip() for code in re.findall(r"`([^`\n]+)`", README))
    commands = []
    names = {"raypipe", "audit", "jobs", "models", "anonymize", "estimate", "submit", "report", "status"}
    for line in sorted(found):
        for part in re.split(r" && | ; ", re.sub(r"^(\S+=\S+ )+", "", line)):
            words = part.strip().split()
            if words[:1] != ["raypipe"] or re.match(r"raypipe (dry run|run \S+) ->", part.strip()):
                continue  # not a command, or the job's own output
            if any(mark in part for mark in ("[", "\\|", "...")) or set(words) <= names:
                continue
            commands.append(part.strip())
    return commands


def test_every_command_the_readme_shows_parses_with_the_cli() -> None:
    import contextlib
    import io
    import shlex

    commands = readme_commands()
    assert len(commands) >= 20 and "raypipe anonymize data/train/ out/" in commands
    parser = build_parser()
    refused = []
    for command in commands:
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(shlex.split(command)[1:])
        except SystemExit as exc:
            if exc.code not in (0, None):
                refused.append(f"{command}: {errors.getvalue().strip().splitlines()[-1:]}")
    assert refused == []
