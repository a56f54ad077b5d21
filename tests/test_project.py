"""The project's own promises: README commands, CI script, command line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from roost import __version__
from roost.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```sh\n(.*?)\n```", text, flags=re.S)


def test_readme_gives_run_and_test_commands() -> None:
    commands = _readme_commands()
    assert any("roost" in c and "pip install" in c for c in commands)
    assert any("pytest" in c and "pip install -e '.[test]'" in c for c in commands)


def test_ci_runs_the_readme_test_command() -> None:
    test_command = next(c for c in _readme_commands() if "pytest" in c)
    assert test_command in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_version_flag() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "roost.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == f"roost {__version__}"


def test_help_lists_subcommands(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in ("up", "pds", "relay", "feedgen", "plc", "repo", "firehose", "account"):
        assert name in out


def test_packaging_lists_every_package() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(config["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("roost", "pds", "relay", "feedgen", "plc")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert on_disk <= listed, f"add to pyproject packages: {sorted(on_disk - listed)}"
    assert "roost.lexicons" in listed
