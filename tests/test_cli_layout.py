"""The command layer (issue 31): every command in ``spiritlm/commands/<name>_cmd.py``, reachable from
``spiritlm ...`` and listed with a one-line help; library modules keep no ``__main__`` block and
import no command."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import spiritlm.cli as cli
from spiritlm.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "spiritlm"
MAIN_RE = re.compile(r"""__name__\s*==\s*["']__main__["']""")

# the subcommands this layer added for actions that used to be `python -m <library module>` only
NEW_COMMANDS = [
    ["streaming", "distill"],
    ["streaming", "export"],
    ["streaming", "align"],
    ["streaming", "decode"],
    ["streaming", "longform"],
    ["streaming", "chunks"],
    ["continuous", "wer"],
    ["continuous", "compare"],
    ["hybrid", "features"],
    ["prepare", "measure-aligner"],
    ["demo-parts"],
]


def _sub(p: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in p._actions if isinstance(a, argparse._SubParsersAction)), None)


def _walk(p: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(path, subparsers action) for every level of subcommands under ``p``."""
    s = _sub(p)
    if s is None:
        return
    yield path, s
    for name, child in s.choices.items():
        yield from _walk(child, path + (name,))


def test_only_the_package_main_has_a_main_block():
    offenders = [str(f.relative_to(ROOT)) for f in sorted(PKG.rglob("*.py"))
                 if f != PKG / "__main__.py" and MAIN_RE.search(f.read_text(encoding="utf-8"))]
    assert offenders == []
    assert MAIN_RE.search((PKG / "__main__.py").read_text())


def test_commands_live_in_one_layer():
    registered = set(cli.STAGE_MODULES)
    assert all(m.startswith("spiritlm.commands.") and m.endswith("_cmd") for m in registered), registered
    on_disk = {f"spiritlm.commands.{f.stem}" for f in (PKG / "commands").glob("*_cmd.py")}
    assert on_disk == registered  # a command module nobody registers would be unreachable
    stray = sorted(str(f.relative_to(ROOT)) for f in PKG.rglob("cli.py") if f != PKG / "cli.py")
    assert stray == [], "a stage's cli.py belongs in spiritlm/commands/<name>_cmd.py"


def test_no_library_module_imports_the_command_layer():
    pat = re.compile(r"^\s*(from|import)\s+spiritlm\.(commands|cli)\b|^\s*from\s+spiritlm\s+import\s+(commands|cli)\b",
                     re.M)
    offenders = [str(f.relative_to(ROOT)) for f in sorted(PKG.rglob("*.py"))
                 if f.parent != PKG / "commands" and f not in (PKG / "cli.py", PKG / "__main__.py")
                 and pat.search(f.read_text(encoding="utf-8"))]
    assert offenders == []


def test_every_subcommand_has_a_help_line():
    parser = build_parser()
    levels = list(_walk(parser))
    assert levels and levels[0][0] == ()
    for path, s in levels:
        helps = {a.dest: a.help for a in s._choices_actions}
        for name in s.choices:
            h = helps.get(name)
            assert h and h.strip() and h != argparse.SUPPRESS, f"`spiritlm {' '.join(path + (name,))}` has no help"
    top = levels[0][1]
    assert {"prepare", "train", "eval", "tokenizer", "streaming", "continuous", "hybrid", "demo-parts"} <= set(top.choices)
    text = parser.format_help()
    for name in top.choices:
        assert re.search(rf"^\s+{re.escape(name)}\b", text, re.M), f"{name} missing from `spiritlm --help`"


@pytest.mark.parametrize("words", NEW_COMMANDS, ids=lambda w: " ".join(w))
def test_new_subcommand_help_runs(words, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*words, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: spiritlm {' '.join(words)}")
    assert len(out.splitlines()) > 3  # options are described, not just the usage line


def test_help_runs_as_a_process():
    r = subprocess.run([sys.executable, "-m", "spiritlm", "streaming", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    for action in ("distill", "export", "align", "decode", "longform", "chunks"):
        assert action in r.stdout
    r = subprocess.run([sys.executable, "-m", "spiritlm", "--help"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "demo-parts" in r.stdout and "continuous" in r.stdout, r.stderr


def test_group_without_action_prints_its_help(capsys):
    assert main(["streaming"]) == 2
    assert "distill" in capsys.readouterr().out


def test_handlers_call_the_library(tmp_path, monkeypatch, capsys):
    """The thin wrappers pass their arguments on to the library functions."""
    seen = {}
    monkeypatch.setattr("spiritlm.models.streaming.stream_encoder.export_chunked",
                        lambda *a: seen.setdefault("export", a) and tmp_path / "new")
    assert main(["streaming", "export", "M", "S", str(tmp_path / "new"), "--left-chunks", "3"]) == 0
    assert seen["export"] == ("M", "S", str(tmp_path / "new"), 3)

    monkeypatch.setattr("spiritlm.models.continuous.compare.summarize", lambda d: {"dir": d})
    monkeypatch.setattr("spiritlm.models.continuous.compare.table", lambda rows: f"TABLE {sorted(rows)}\n")
    out = tmp_path / "cmp.md"
    assert main(["continuous", "compare", "a=A", "b=B", "--out", str(out)]) == 0
    assert out.read_text() == "TABLE ['a', 'b']\n"
    assert json.loads(out.with_suffix(".json").read_text()) == {"a": {"dir": "A"}, "b": {"dir": "B"}}
    assert main(["continuous", "compare", "no-name"]) == 1  # one clear error line
    assert "NAME=EVAL_DIR" in capsys.readouterr().err

    class Cache:
        feats = {"u1": 0, "u2": 0}
        dir = "FEATS"

    def build(shards, manifests, out_dir, cfg):
        seen["features"] = (shards, manifests, out_dir, cfg.kind, cfg.n_mels)
        return Cache()

    monkeypatch.setattr("spiritlm.models.hybrid.features.build_feature_store", build)
    assert main(["hybrid", "features", "--shards", "S1", "S2", "--manifest", "M", "--out", "O", "--n-mels", "8"]) == 0
    assert seen["features"] == (["S1", "S2"], ["M"], "O", "logmel", 8)
    assert "2 records -> FEATS" in capsys.readouterr().out

    monkeypatch.setattr("spiritlm.data.align.measure_manifest",
                        lambda m, limit, out: seen.setdefault("measure", (m, limit, out)) and {"utterances": 1})
    assert main(["prepare", "measure-aligner", "man.jsonl", "--limit", "7"]) == 0
    assert seen["measure"] == ("man.jsonl", 7, None)
    assert json.loads(capsys.readouterr().out) == {"utterances": 1}
