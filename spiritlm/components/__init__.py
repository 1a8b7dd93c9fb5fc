"""What every model family shares, below the families (torchtitan's ``components``): the training
recipe schema (``config``), document mixtures (``mixture``) and packing (``packing``), per-type
losses and run logs (``metrics``), the LM head's cross-entropy without the logits
(``linear_ce``), DeepSpeed checkpoints and HF export (``checkpoint``), and log-likelihood scoring
of token sequences (``scoring``). Nothing here names a model family."""
