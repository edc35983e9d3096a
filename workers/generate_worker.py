"""`python -m workers.generate_worker`: a generate worker whose pool fits its batch.

With batching on, one process holds the model and a threads pool of
`GENERATE_MAX_BATCH` task threads, each feeding one sequence to the shared batch
(jobs beyond that stay queued in Redis, with their `queue_position`). With batching
off it is the classic prefork worker with one process. Extra arguments go to
`celery worker` (`-n gen@%h`, `--loglevel DEBUG` …).
"""

from __future__ import annotations

import sys

from app.core.config import Settings, get_settings


def worker_argv(settings: Settings, extra: list[str]) -> list[str]:
    """The `celery worker` arguments for this host's generate worker."""
    if settings.generate_batching == "off":
        pool = ["--pool", "prefork", "-c", "1"]
    else:
        import torch

        from workers.tasks.generate import batch_limits

        cuda = settings.model_device != "cpu" and torch.cuda.is_available()
        max_batch, _ = batch_limits(cuda=cuda)
        pool = ["--pool", "threads", "-c", str(max_batch)]
    return ["worker", "-Q", "generate", *pool, "--loglevel", "INFO", *extra]


def main() -> None:
    from workers.celery_app import celery_app

    celery_app.worker_main(worker_argv(get_settings(), sys.argv[1:]))


if __name__ == "__main__":
    main()
