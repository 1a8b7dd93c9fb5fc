"""The demo, at the top of the house: it drives the library's public steps and nothing in the
library imports it.

- ``main``: ``spiritlm demo``, the interleaving ablation on the embedded corpus (``DemoConfig``,
  ``run_demo``) and its public steps (``train_config``, ``train_step``, ``eval_config``,
  ``eval_step``, ``shards_step``, ``compare_step``, ...), which the parts reuse;
- ``parts``: the registry of named comparisons on the main demo's cached steps (``PARTS``,
  ``DemoContext``) and ``cached``: a context read back from a finished demo folder
  (``spiritlm demo-parts``);
- the parts themselves: ``ablations``, ``over_steps``, ``full_report`` (studies of the unit LM)
  and ``continuous`` (+ ``continuous_table``), ``streaming``, ``hybrid`` (one per model family);
- ``files``: recipe paths and the file hashes that key the cached steps.

A new comparison is one module here plus one line in ``parts.PARTS``.
"""

from spiritlm.demo.main import DemoConfig, run_demo

__all__ = ["DemoConfig", "run_demo"]
