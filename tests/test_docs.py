"""Documentation is part of the feature: the README's test command is CI's, every setting, command, mapper and
event key is documented."""

from __future__ import annotations

import re
from pathlib import Path

from collector.cli.commands import _parser
from collector.mappers import MAPPERS
from collector.settings import SETTINGS, settings_table_markdown
from storage.catalogue import CATALOGUE

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = "\n".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))


def _readme_test_command() -> str:
    section = README.split("Test it", 1)[1]
    return re.search(r"```\n(.+?)\n```", section, re.DOTALL).group(1).strip()


def test_ci_runs_the_readme_test_command():
    command = _readme_test_command()
    assert "pytest" in command
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines


def test_quickstart_is_two_commands():
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```\n(.+?)\n```", quickstart, re.DOTALL)
    assert len(blocks) == 2 and all(len(block.strip().splitlines()) == 1 for block in blocks)


def test_every_setting_is_documented():
    configuration = (ROOT / "docs" / "configuration.md").read_text()
    assert settings_table_markdown() in configuration, "regenerate the table from collector/settings.py"
    for setting in SETTINGS:
        assert f"`{setting.flag}`" in configuration and f"`{setting.env}`" in configuration, setting.name


def test_every_command_is_in_the_readme():
    commands = _parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in commands:
        assert f"`callscope {name}" in README, name


def test_every_mapper_and_event_key_is_documented():
    conventions = (ROOT / "docs" / "conventions.md").read_text()
    for mapper in MAPPERS:
        assert f"`{mapper.name}`" in conventions, mapper.name
    for event_type in CATALOGUE:
        assert event_type.event in DOCS or event_type.event in conventions, event_type.event


def test_docs_links_resolve():
    for target in re.findall(r"\]\(((?:docs/)?[\w./-]+\.md)\)", README):
        assert (ROOT / target).exists(), target


def test_the_readme_counts_the_event_catalogue_right():
    match = re.search(r"\((\d+) event types in (\d+) categories", README)
    assert match, "the README says how many event types the call log knows"
    assert (int(match.group(1)), int(match.group(2))) == (len(CATALOGUE), len({e.category for e in CATALOGUE}))
