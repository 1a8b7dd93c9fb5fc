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


def _line(*prefix: str) -> list[str]:
    """The words of the first README command line that starts with these words."""
    for line in _command_lines():
        words = shlex.split(line)
        if words[:len(prefix)] == list(prefix):
            return words
    raise AssertionError(f"the README has no `{' '.join(prefix)}` command")


def _opt(words: list[str], flag: str) -> str:
    return words[words.index(flag) + 1]


def _sets(words: list[str]) -> list[str]:
    return [words[i + 1] for i, w in enumerate(words) if w == "--set"]


def test_readme_real_data_walkthrough_hands_each_output_to_the_next_step():
    """Every file the walkthrough reads is what an earlier step writes: manifest -> alignment ->
    shards (with the fitted tokenizer and a text corpus) -> training sources -> the evaluated model."""
    from spiritlm.config import load_config
    from spiritlm.data.prepare import PrepareConfig
    from spiritlm.components.config import TrainConfig

    manifest = _opt(_line("spiritlm", "prepare", "manifest", "librispeech"), "-o")
    align = _line("spiritlm", "prepare", "align")
    assert align[3] == manifest, "align reads another manifest than `prepare manifest` writes"
    tok = _opt(_line("spiritlm", "tokenizer", "fit", "tokenizers/base.toml"), "--out")
    shards = _line("spiritlm", "prepare", "shards", "data_prep/librispeech.toml")
    p = load_config(PrepareConfig, ROOT / shards[3], _sets(shards))
    assert p.inputs.manifests == [_opt(align, "-o")], "shards read another manifest than align writes"
    assert p.speech.tokenizer_dir == tok, "shards use another speech tokenizer than `tokenizer fit` writes"
    assert p.inputs.text_corpora, "the training recipes read a text folder: give shards a text corpus"
    train = next(shlex.split(x) for x in _command_lines() if x.startswith("train/launch_deepspeed.sh"))
    t = load_config(TrainConfig, ROOT / train[1], _sets(train))
    kinds = {"aligned" if p.records.mode == "aligned" else "interleaved", "speech", "text"}
    for src in t.data.sources:
        assert Path(src.path).parent == Path(p.output_dir) and Path(src.path).name in kinds, src.path
    evals = [shlex.split(x) for x in _command_lines() if x.startswith("spiritlm eval ") and "--model" in x]
    mine = [w for w in evals if _opt(w, "--model") == f"{t.run_dir}/hf"]
    assert mine, "the walkthrough does not evaluate the model it trains"
    from spiritlm.eval.suite import EvalConfig

    e = load_config(EvalConfig, ROOT / mine[0][2], _sets(mine[0]))
    assert e.speech_encoder_args["directory"] == tok, "the evaluation encodes speech with another tokenizer"
