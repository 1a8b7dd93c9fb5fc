"""Model families, each in its own folder and registered through a ``ModelSpec`` (``spec.py``).

    from spiritlm.models import model_spec, model_spec_of, detect_family
    spec = model_spec("continuous")          # or model_spec_of(cfg): cfg.model_type, default "unit_lm"

Families: ``unit_lm`` (Spirit LM: LLaMA + speech units interleaved with text), ``continuous``
(audio frames through a projector), ``streaming`` (chunk-synchronous), ``hybrid`` (units plus
continuous frames). The trainer, the eval suite, ``generate`` and ``transcribe`` consult the
registry and never name a family; how to add one: docs/architecture.md.
"""

from spiritlm.models.spec import (BUILTIN, SETTINGS, Capabilities, ModelSpec, config_class_of_recipe,
                                  detect_family, load_builtin, load_model_dir, locate_model, model_spec, model_spec_of, names,
                                  register, require, unregister, what_it_can_do)

__all__ = ["BUILTIN", "SETTINGS", "Capabilities", "ModelSpec", "config_class_of_recipe", "detect_family",
           "load_builtin", "load_model_dir", "locate_model", "model_spec", "model_spec_of", "names", "register", "require",
           "unregister", "what_it_can_do"]
