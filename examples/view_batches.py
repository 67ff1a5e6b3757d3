"""Augmented view pairs of each batch, prepared ahead on worker threads (no framework imports).

The two views come from :func:`m2t_core.augment.two_views` in NumPy on the CPU. Preparing the next
batches' views while the accelerator runs the current step keeps a GPU busy; NumPy releases the GIL
in its array operations, so several worker threads help on a many-core machine. The batches and their
random generators come from :class:`m2t_core.datasets.BatchIterator`, so prefetching changes no value:
batch ``s`` of epoch ``e`` has the same views however many threads compute them, in whatever order,
and after a resume.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from m2t_core.augment import AugmentConfig, two_views
from m2t_core.datasets import Batch, BatchIterator

__all__ = ["ViewPair", "prefetched_views"]


class ViewPair(NamedTuple):
    """One training batch and its two augmented views (``[B, H, W, C]`` float32, channels last)."""

    batch: Batch
    view1: np.ndarray
    view2: np.ndarray


def _make_pair(batch: Batch, config: AugmentConfig) -> ViewPair:
    v1, v2 = two_views(batch.images, batch.rng, config)
    return ViewPair(batch, v1, v2)


def prefetched_views(
    loader: BatchIterator,
    epoch: int,
    config: AugmentConfig,
    *,
    start_step: int = 0,
    workers: int = 1,
    depth: int | None = None,
) -> Iterator[ViewPair]:
    """Yield the view pairs of ``epoch`` from batch ``start_step`` on, in batch order, computed ahead.

    Closing the generator early (``break``, an exception, Ctrl-C) cancels the batches not started
    and waits for those in progress.

    Args:
        loader: The training batches.
        epoch: 0-based epoch.
        config: The augmentation recipe.
        start_step: First batch (to resume mid-epoch).
        workers: Threads computing views.
        depth: Batches in flight (default ``2 * workers``).

    Yields:
        :class:`ViewPair` tuples in batch order.

    Raises:
        ValueError: ``workers`` or ``depth`` below 1.
        Exception: whatever the augmentation raised, re-raised in the consumer's thread.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    depth = 2 * workers if depth is None else depth
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    batches = loader.epoch(epoch, start_step=start_step)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"views-epoch-{epoch}")
    in_flight: deque[Future[ViewPair]] = deque()
    try:
        for batch in batches:
            in_flight.append(pool.submit(_make_pair, batch, config))
            if len(in_flight) >= depth:
                break
        while in_flight:
            pair = in_flight.popleft().result()
            nxt = next(batches, None)
            if nxt is not None:
                in_flight.append(pool.submit(_make_pair, nxt, config))
            yield pair
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
