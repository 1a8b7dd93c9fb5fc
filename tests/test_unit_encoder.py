"""One audio -> units protocol for the data stage and the evaluation (spiritlm.unit_encoder)."""

import numpy as np
import pytest

from spiritlm.config import ConfigError
from spiritlm.data.encoders import HashUnitEncoder
from spiritlm.data.work import checked_encoder
from spiritlm.eval.model import CachedEncoder
from spiritlm.eval.testing import FakeSpeechEncoder, write_tone
from spiritlm.unit_encoder import DEFAULT_FRAME_RATES, UnitEncoder, as_unit_encoder


def test_the_data_stage_encoder_serves_the_evaluation(tmp_path):
    wavs = [write_tone(tmp_path / f"{i}.wav", 0.3 + 0.1 * i) for i in range(3)]
    enc = HashUnitEncoder(expressive=True)
    assert isinstance(enc, UnitEncoder)
    batch = enc.encode_many(wavs)
    cached = CachedEncoder(enc)
    for w, b in zip(wavs, batch):  # one file through the evaluation = that file in the data stage's batch
        one = cached(w)
        assert one.keys() == b.keys() and all(np.array_equal(one[s], b[s]) for s in b)
    cached.prefetch(wavs)  # already cached: nothing encoded again
    # a waveform, as the evaluation passes generated speech
    import soundfile as sf

    wav, _ = sf.read(str(wavs[0]), dtype="float32")
    assert np.array_equal(cached(wav)["hubert"], batch[0]["hubert"])


def test_a_function_is_adapted_and_a_bad_file_is_its_result(tmp_path):
    fake = FakeSpeechEncoder()
    enc = as_unit_encoder(fake)
    assert isinstance(enc, UnitEncoder) and enc.name == "FakeSpeechEncoder"
    assert enc.frame_rates == DEFAULT_FRAME_RATES and not enc.batched
    good = write_tone(tmp_path / "a.wav")
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    out = enc.encode_many([good, bad])
    assert np.array_equal(out[0]["hubert"], fake(str(good))["hubert"]) and isinstance(out[1], Exception)


def test_something_that_encodes_nothing_is_refused_by_name():
    with pytest.raises(TypeError, match="not a speech unit encoder"):
        as_unit_encoder(42)
    with pytest.raises(TypeError, match="not a speech unit encoder"):
        CachedEncoder(object())


def test_the_data_stage_wants_the_whole_protocol():
    # a function has no name or frame rates of its own: the shards would carry guessed ones
    with pytest.raises(ConfigError, match=r"lacks \['name', 'frame_rates', 'encode', 'encode_many'\]"):
        checked_encoder(lambda paths: [], "speech.encoder 'x:y'")
    enc = HashUnitEncoder(expressive=False)
    assert checked_encoder(enc, "here") is enc
