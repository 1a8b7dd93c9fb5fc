"""Repository layout rules: stage folders hold recipes, not packages."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["tokenizers", "data_prep", "train", "eval"]


def test_stage_folders_are_not_packages():
    for stage in STAGES:
        assert (ROOT / stage).is_dir(), f"missing stage folder {stage}/"
        assert not (ROOT / stage / "__init__.py").exists(), f"{stage}/__init__.py would shadow"


def test_repo_root_does_not_shadow_huggingface_tokenizers():
    # Run from the repo root, as `python -m pytest` does (the root is on sys.path first).
    code = "import tokenizers, transformers; print(tokenizers.__file__); tokenizers.Tokenizer"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "site-packages" in out.stdout and str(ROOT / "tokenizers") not in out.stdout


def test_cli_help_lists_stages():
    out = subprocess.run([sys.executable, "-m", "spiritlm", "--help"], cwd=ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "vocab" in out.stdout
