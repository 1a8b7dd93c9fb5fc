"""Ray Data backend for ``prepare shards`` (optional extra: ``pip install spiritlm[ray]``).

Chunks are the same as in the local backend and each Ray task runs the same
:func:`spiritlm.data.work.write_chunk`, so the shards are byte-identical to a local run (tested
on a local Ray instance). On a cluster, ``output_dir`` must be on storage every node can write
(the chunk files go to ``<output_dir>/_work``); the speech tokenizer runs batched inside each
task, on a GPU when ``ray_gpus_per_worker`` > 0. Ray is started locally with ``workers`` CPUs
unless a Ray runtime is already initialised (``ray.init(address=...)`` before calling).
"""

from __future__ import annotations

import json
from pathlib import Path


def run_chunks_ray(cfg, ctx, chunks: list, todo: list[int], wdir: Path) -> None:
    try:
        import ray
    except ImportError:
        raise ValueError("backend 'ray' needs Ray: pip install 'spiritlm[ray]' "
                         "(or set backend=local)") from None
    if not todo:
        return
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=cfg.workers, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        started = True
    try:
        items = [{"index": i, "items": json.dumps(chunks[i])} for i in todo]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        wd = str(wdir)

        def work(batch):
            from spiritlm.data.work import write_chunk

            for i, js in zip(batch["index"], batch["items"]):
                write_chunk(ctx, int(i), json.loads(js), Path(wd))
            return {"index": batch["index"]}

        kwargs = {"num_gpus": cfg.ray_gpus_per_worker} if cfg.ray_gpus_per_worker > 0 else {}
        done = ds.map_batches(work, batch_size=1, concurrency=cfg.workers, **kwargs).take_all()
        missing = set(todo) - {int(r["index"]) for r in done}
        if missing:
            raise RuntimeError(f"Ray did not process chunk(s) {sorted(missing)[:10]}; re-run to resume")
    finally:
        if started:
            ray.shutdown()
