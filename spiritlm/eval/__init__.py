"""Evaluation and inference for Spirit LM-style models.

Modules (import what you need; nothing heavy is imported here):

* :mod:`spiritlm.eval.model` -- ``load_model(dir) -> (model, SpiritTokenizer)`` with the
  speech-vocabulary check; ``CachedEncoder`` over the speech unit encoder (``spiritlm.unit_encoder``).
* :mod:`spiritlm.components.scoring` -- ``Scorer(model, tok, encoder).score([Request(ctx, cont)])``:
  batched, shared-context log-likelihoods (``Score.logprob``, ``n_tokens``, ``mean``).
* :mod:`spiritlm.eval.zerospeech` -- sWUGGY / sBLIMP (+ text versions, submission writer).
* :mod:`spiritlm.eval.storycloze` -- StoryCloze / Topic-StoryCloze in T, S, T->S, S->T.
* :mod:`spiritlm.eval.stsp`, :mod:`spiritlm.eval.fewshot` -- STSP; few-shot ASR / TTS.
* :mod:`spiritlm.eval.generate` -- ``generate(model, tok, [("text", ...), ("speech", ...)],
  output_modality=...)`` with modality-restricted decoding.
* :mod:`spiritlm.eval.suite` -- ``EvalConfig`` + ``run_suite`` (``spiritlm eval``).
* :mod:`spiritlm.eval.report` -- Table-4 Markdown, JSON, JSONL, PNG; ``paired_compare``.
* :mod:`spiritlm.eval.mini` -- ``build_mini_benchmarks(out_dir, seed, sizes)``.
* :mod:`spiritlm.eval.bench` -- ``bench_eval()`` (``spiritlm bench eval``).
* :mod:`spiritlm.eval.testing` -- tiny random model directory and a fake speech encoder.
"""
