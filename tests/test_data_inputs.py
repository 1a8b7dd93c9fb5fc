"""Broken inputs the data stage must refuse or drop with a reason, never keep silently (issue 19):
manifests with a BOM, manifest permissions, corrupt sample rates, digital silence, durations
that are not the audio's, NaN audio, `python -m spiritlm`."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_data_fixtures import make_corpus, prepare_overrides

from spiritlm.config import load_config
from spiritlm.data.prepare import PrepareConfig, prepare_shards
from spiritlm.manifest import read_manifest, write_manifest
from spiritlm.audio import AudioError, is_silent, load_audio, probe_audio

REPO = Path(__file__).resolve().parents[1]
MALFORMED = REPO.parent / "shared" / "data" / "real_speech" / "malformed_audio"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("inputs"), n=6, text_docs=3)


def test_python_dash_m_spiritlm():
    r = subprocess.run([sys.executable, "-m", "spiritlm", "--help"], capture_output=True, text=True,
                       cwd=REPO, timeout=120)
    assert r.returncode == 0 and "prepare" in r.stdout


def test_manifest_with_a_bom_is_read(corpus, tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + corpus["manifest"].read_bytes())
    assert [u.id for u in read_manifest(p)] == [u.id for u in corpus["utts"]]


def test_manifest_is_written_with_the_umask(corpus, tmp_path):
    old = os.umask(0o022)
    try:
        write_manifest(tmp_path / "m.jsonl", corpus["utts"])
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.jsonl").stat().st_mode) == 0o644


def test_implausible_sample_rate_is_rejected(tmp_path):
    wav = tmp_path / "x.wav"
    sf.write(wav, np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1, 16000)
    raw = bytearray(wav.read_bytes())
    raw[24:28] = (1_092_676).to_bytes(4, "little")  # the header's sample rate field
    wav.write_bytes(bytes(raw))
    for fn in (load_audio, probe_audio):
        with pytest.raises(AudioError, match="implausible sample rate 1092676 Hz"):
            fn(wav)


def test_silence_and_nan_are_named(tmp_path):
    sf.write(tmp_path / "z.wav", np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    assert is_silent(tmp_path / "z.wav")
    x = np.zeros(16000, np.float32)
    x[-5] = 0.01  # sound only at the very end: still not silent
    sf.write(tmp_path / "late.wav", x, 16000)
    assert not is_silent(tmp_path / "late.wav")
    x[100] = np.nan
    sf.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    from spiritlm.data.encoders import read_audio

    with pytest.raises(AudioError, match="NaN/inf samples"):
        read_audio(tmp_path / "nan.wav")


def test_bad_audio_is_dropped_with_its_reason(corpus, tmp_path):
    utts = read_manifest(corpus["manifest"])
    for u in utts:
        u.audio_path = str(corpus["root"] / u.audio_path)
    sf.write(tmp_path / "zero.wav", np.zeros(int(utts[0].duration * 16000), np.float32), 16000)
    utts[0].audio_path = str(tmp_path / "zero.wav")  # all-zero audio
    utts[1].duration = 100.0  # the manifest's duration is not the file's
    raw = bytearray(Path(utts[2].audio_path).read_bytes())
    raw[24:28] = (1_092_676).to_bytes(4, "little")
    (tmp_path / "rate.wav").write_bytes(bytes(raw))
    utts[2].audio_path = str(tmp_path / "rate.wav")
    write_manifest(tmp_path / "m.jsonl", utts)
    cfg = load_config(PrepareConfig, None, prepare_overrides(
        corpus, tmp_path / "out", f"inputs.manifests=[{tmp_path / 'm.jsonl'}]"))
    rep = prepare_shards(cfg)
    assert rep["dropped"] == {"audio_unreadable": 1, "duration_mismatch": 1, "silent_audio": 1}
    assert rep["kept"]["aligned"] == 3
    kept_s = sum(u.duration for u in utts[3:])
    assert rep["hours_kept"] == pytest.approx(kept_s / 3600, abs=1e-6)
    in_s = sum(u.duration for u in utts[:3]) - 100.0 + sf.info(utts[1].audio_path).duration + kept_s
    assert rep["hours_in"] == pytest.approx(in_s / 3600, abs=1e-6)  # the file's 3 s, not 100 s


def test_decoded_length_is_checked_too():
    from spiritlm.data.work import _decoded_duration_mismatch

    units = {"hubert": np.zeros(150, np.int64)}  # 6 s at 25 Hz
    assert _decoded_duration_mismatch(6.02, units, {"hubert": 25.0}) == ""
    assert "100.000 s" in _decoded_duration_mismatch(100.0, units, {"hubert": 25.0})


def test_pnmi_without_phone_labels_is_not_available():
    from spiritlm.tokenizer.tiny_hubert import unit_metrics
    from spiritlm.tokenizer.metrics import pnmi

    units = np.array([0, 1, 2, 1, 0, 2])
    assert pnmi(np.array(["sil"] * 6), units) is None  # what a corpus without phones gives
    m = unit_metrics([units], [np.array(["sil"] * 6, dtype=object)], 1.0, 3)
    assert m["pnmi"].startswith("not available")
    assert pnmi(np.array(list("aabbcc")), units) is not None
