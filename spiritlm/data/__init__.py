"""Data preparation: corpora -> manifests -> (aligned) records -> Parquet shards -> reader.

Modules (each importable on its own; heavy imports stay inside functions):

* :mod:`spiritlm.data.records`    -- the three record kinds and per-word BPE ids
* :mod:`spiritlm.data.interleave` -- span sampling and interleaved token ids (numpy + reference)
* :mod:`spiritlm.data.shards`     -- the Parquet schema, metadata and atomic shard writer
* :mod:`spiritlm.data.prepare`    -- the restartable, parallel ``prepare shards`` pipeline
* :mod:`spiritlm.data.reader`     -- streaming, rank/worker-aware, resumable shard reader
* :mod:`spiritlm.data.importers`  -- LibriSpeech / folder / lhotse / demo / text-only importers
* :mod:`spiritlm.data.align`      -- word aligners (pocketsphinx, MFA) and alignment import
* :mod:`spiritlm.data.encoders`   -- speech unit encoders (``spiritlm.unit_encoder.UnitEncoder``) and a deterministic fake
"""
