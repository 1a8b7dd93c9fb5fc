"""``model.compile``: the model compiled in place (torch.compile / inductor, CPU here). The same
losses as eager within float tolerance (inductor fuses and reorders reductions), the same
parameter names (checkpoints and exports unchanged), and the combination it cannot vouch for
refused."""

import numpy as np
import pytest

from spiritlm.config import ConfigError

pytest.importorskip("deepspeed")


def _cfg(run, *extra):
    from spiritlm.train.tiny import tiny_config

    return tiny_config(str(run), ["steps=3", "log.every=1", *extra])


def test_compiled_training_matches_eager_and_exports_the_same_keys(tmp_path):
    from safetensors.torch import load_file

    from spiritlm.train.trainer import Trainer

    eager = Trainer(_cfg(tmp_path / "eager", "checkpoint.export_hf=true"))
    eager.fit()
    compiled = Trainer(_cfg(tmp_path / "compiled", "checkpoint.export_hf=true", "model.compile=true"))
    assert compiled.model._compiled_call_impl is not None  # compiled in place, not wrapped
    compiled.fit()
    a = [r["loss"] for r in eager.history]
    b = [r["loss"] for r in compiled.history]
    assert np.allclose(a, b, rtol=0, atol=1e-4), (a, b)
    ke = load_file(str(tmp_path / "eager" / "hf" / "model.safetensors"))
    kc = load_file(str(tmp_path / "compiled" / "hf" / "model.safetensors"))
    assert sorted(ke) == sorted(kc) and not any("_orig_mod" in k for k in kc)
    assert max(float((ke[k] - kc[k]).abs().max()) for k in ke) < 1e-3


def test_compile_with_the_chunked_loss_is_refused(tmp_path):
    from spiritlm.components.config import validate_config

    with pytest.raises(ConfigError, match="model.compile=true with model.linear_ce=chunked"):
        validate_config(_cfg(tmp_path, "model.compile=true", "model.linear_ce=chunked"))
