"""Every option of every command (plugin commands included) is in the README's command reference."""

from __future__ import annotations

import re
from pathlib import Path

import click
import typer

README = Path(__file__).resolve().parents[1] / "README.md"


def _all_commands():
    """(path, click command) for every visible command and group, with the plugins' commands added."""
    from dermbench import cli, plugins

    app = typer.Typer()
    for info in cli.app.registered_commands:
        app.registered_commands.append(info)
    for group in cli.app.registered_groups:
        app.registered_groups.append(group)
    errors = plugins.add_commands(app)  # on a copy: the real app gets them only in main()
    assert not errors, errors
    root = typer.main.get_command(app)

    def walk(cmd, path):
        if path:
            yield path, cmd
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            if not getattr(sub, "hidden", False):
                yield from walk(sub, [*path, name])

    return list(walk(root, []))


def _reference_sections() -> dict[str, str]:
    text = README.read_text()
    assert "## Command reference" in text, "README has no 'Command reference' section"
    ref = text.split("## Command reference", 1)[1].split("\n## ", 1)[0]
    sections = {}
    for block in re.split(r"\n#### ", "\n" + ref)[1:]:
        head, _, body = block.partition("\n")
        name = head.strip().strip("`").split()
        words = [w for w in name[1:] if not w.isupper()]  # drop "dermbench" and ARGUMENT placeholders
        sections[" ".join(words)] = body
    return sections


def test_every_option_of_every_command_is_in_the_readme_reference():
    sections = _reference_sections()
    commands = _all_commands()
    names = {" ".join(p) for p, _ in commands}
    assert {"run", "leaderboard", "compare", "demo", "pretrain", "audit", "plugins check"} <= names
    missing = []
    for path, cmd in commands:
        key = " ".join(path)
        if key not in sections:
            missing.append(f"section for `dermbench {key}`")
            continue
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.hidden:
                for flag in p.opts + p.secondary_opts:
                    if f"`{flag}`" not in sections[key]:
                        missing.append(f"dermbench {key} {flag}")
    assert not missing, "README 'Command reference' lacks: " + ", ".join(missing)


def test_one_vocabulary_across_commands():
    """Output folders are --out everywhere (old names hidden); results folders are --results and default to
    where `run` writes."""
    commands = dict((" ".join(p), c) for p, c in _all_commands())

    def opt(cmd, flag):
        return next((p for p in commands[cmd].params if flag in getattr(p, "opts", [])), None)

    for cmd in ("run", "demo", "audit", "leaderboard", "pretrain"):
        assert opt(cmd, "--out") is not None and not opt(cmd, "--out").hidden, cmd
        old = opt(cmd, "--output")
        assert old is None or old.hidden, f"{cmd} --output must be a hidden alias"
    run_out = opt("run", "--out").default
    for cmd in ("leaderboard", "compare"):
        assert [str(x) for x in opt(cmd, "--results").default] == [str(run_out)]
