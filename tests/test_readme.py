"""The README's commands exist: every `spiritlm ...` line names real subcommands and flags, and
every recipe or script it names is in the repository (the demo itself runs in test_demo_e2e)."""

import argparse
import re
import shlex
from pathlib import Path

from spiritlm.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _command_lines() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                lines.append(line)
    return lines


def _subparsers(p: argparse.ArgumentParser) -> dict:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return a.choices
    return {}


def test_readme_spiritlm_commands_parse():
    parser = build_parser()
    checked = 0
    for line in _command_lines():
        if not line.startswith("spiritlm "):
            continue
        words = shlex.split(line)[1:]
        p, i = parser, 0
        while i < len(words) and words[i] in _subparsers(p):
            p = _subparsers(p)[words[i]]
            i += 1
        assert p is not parser, f"README names an unknown command: {line}"
        options = {s for a in p._actions for s in a.option_strings}
        for w in words[i:]:
            flag = w.split("=", 1)[0]
            if flag.startswith("--"):
                assert flag in options, f"{flag} is not an option of `{line}`"
            if "|" in w:  # `bench vocab|tokenizer|...`: each alternative is a choice
                choices = next(a.choices for a in p._actions if a.dest == "name")
                assert set(w.split("|")) <= set(choices), line
        checked += 1
    assert checked >= 10


def test_readme_recipes_and_scripts_exist():
    named = set(re.findall(r"\b((?:tokenizers|data_prep|train|eval)/[\w.-]+\.(?:toml|sh|sbatch|md))", README))
    assert named, "the README names no recipes"
    missing = sorted(n for n in named if not (ROOT / n).is_file())
    assert not missing, f"README names files that do not exist: {missing}"
    assert "make demo" in README and "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()
