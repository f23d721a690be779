"""The command line: every stage's sub-command is reachable and documented."""

from __future__ import annotations

import pytest

from batterytwin import cli


def test_each_command_is_registered_by_its_package():
    for command, package in cli.COMMANDS.items():
        parser = cli.build_parser(command)
        choices = parser._subparsers._group_actions[0].choices
        assert command in choices, (command, package)


def test_full_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in cli.COMMANDS:
        assert command in out


def test_stage_help_describes_options(capsys):
    with pytest.raises(SystemExit):
        cli.main(["ingest", "--help"])
    out = capsys.readouterr().out
    for option in ("--format", "--dataset", "--crop", "--bin", "--voxel-size-um", "--nan-fill", "--max-memory-mb"):
        assert option in out
