"""Run step 1 over many clips: worker processes, sharding across machines, resume, failures.

Nothing is lost on a crash: every clip is cached atomically as soon as it is done, a re-run
skips done clips (and, unless asked, clips that already failed), and every failure is kept
with its reason. The run never stops on a bad clip; it ends with a summary.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from flowvq.data.preprocess.extract import (
    ClipError,
    ExtractConfig,
    cache_paths,
    check_settings,
    extract_clip,
    read_failure,
    write_cached,
    write_failure,
)
from flowvq.data.preprocess.layouts import ClipSpec

__all__ = ["RunSummary", "collect_failures", "run_extraction", "select_shard"]

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """What one extraction run did."""

    total: int = 0  # clips of this shard
    done_before: int = 0
    failed_before: int = 0
    extracted: int = 0
    failed: int = 0
    left: int = 0  # not attempted (a --limit run)
    reasons: dict[str, int] = field(default_factory=dict)  # failures of this run by reason
    seconds: float = 0.0

    def __str__(self) -> str:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.reasons.items())) or "none"
        return (
            f"{self.total} clips: {self.extracted} extracted, {self.failed} failed ({reasons}), "
            f"{self.done_before} already done, {self.failed_before} failed before (not retried), "
            f"{self.left} left for a later run; {self.seconds:.1f} s"
        )


def select_shard(specs: Sequence[ClipSpec], num_shards: int = 1, shard_index: int = 0) -> list[ClipSpec]:
    """Every ``num_shards``-th clip (sorted by id) from ``shard_index``: the same on every machine."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"--shard_index {shard_index} must be in 0..{num_shards - 1} (--num_shards {num_shards})")
    ordered = sorted(specs, key=lambda s: s.clip_id)
    return ordered[shard_index::num_shards]


def _work(task: tuple[ClipSpec, ExtractConfig, str, str | None]) -> tuple[str, str | None, str]:
    """Extract and cache one clip; a failure is recorded, never raised (returns id, reason, message)."""
    spec, config, cache, coefficients = task
    try:
        loaded = None
        if coefficients is not None:
            from flowvq.data.deep3d import load_coefficients

            loaded = load_coefficients(coefficients)
        result = extract_clip(spec, config, loaded)
        write_cached(cache, spec.clip_id, result)
        cache_paths(cache, spec.clip_id)[1].unlink(missing_ok=True)  # a retried clip is no longer failed
        return spec.clip_id, None, ""
    except ClipError as error:
        write_failure(cache, spec, error.kind, str(error))
        return spec.clip_id, error.kind, str(error)
    except Exception as error:  # noqa: BLE001 - a batch job records every failure and goes on
        where = traceback.extract_tb(error.__traceback__)[-1]
        message = f"{type(error).__name__}: {error} (at {Path(where.filename).name}:{where.lineno})"
        write_failure(cache, spec, "error", message)
        return spec.clip_id, "error", message


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.getLogger("absl").setLevel(logging.ERROR)


def run_extraction(
    specs: Sequence[ClipSpec],
    cache: str | Path,
    config: ExtractConfig,
    workers: int = 1,
    num_shards: int = 1,
    shard_index: int = 0,
    retry_failed: bool = False,
    limit: int | None = None,
    coefficients: dict[str, str] | None = None,
    progress: bool = True,
    settings: dict[str, Any] | None = None,
) -> RunSummary:
    """Extract this shard's clips into ``cache`` that are not there yet.

    Arguments:
        specs: all clips (the shard is selected here).
        workers: processes on this machine (1: in this process).
        num_shards, shard_index: this machine's part of the clip list.
        retry_failed: try clips again that failed in an earlier run.
        limit: extract at most this many clips in this run (the rest stay for a later run).
        coefficients: clip id -> coefficient file, for imports (:mod:`flowvq.data.deep3d`).
        settings: extra settings that must match across runs on the same cache.
    """
    started = time.perf_counter()
    cache = Path(cache)
    check_settings(cache, {**config.to_dict(), **(settings or {})})
    mine = select_shard(specs, num_shards, shard_index)
    summary = RunSummary(total=len(mine))
    todo = []
    for spec in mine:
        done, failed = cache_paths(cache, spec.clip_id)
        if done.is_file():
            summary.done_before += 1
        elif failed.is_file() and not retry_failed:
            summary.failed_before += 1
        else:
            todo.append(spec)
    if limit is not None:
        summary.left = max(0, len(todo) - limit)
        todo = todo[:limit]
    tasks = [(s, config, str(cache), (coefficients or {}).get(s.clip_id)) for s in todo]
    reasons: Counter[str] = Counter()
    bar = tqdm(
        total=len(tasks), desc=f"extract shard {shard_index + 1}/{num_shards}", unit="clip", disable=not progress
    )

    def account(result: tuple[str, str | None, str]) -> None:
        clip_id, reason, message = result
        if reason is None:
            summary.extracted += 1
        else:
            summary.failed += 1
            reasons[reason] += 1
            log.warning("clip %s failed (%s): %s", clip_id, reason, message)
        bar.update(1)
        bar.set_postfix(failed=summary.failed)

    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            account(_work(task))
    else:
        context = multiprocessing.get_context("spawn")  # mediapipe's graph does not survive fork
        with context.Pool(min(workers, len(tasks)), initializer=_init_worker, maxtasksperchild=200) as pool:
            for result in pool.imap_unordered(_work, tasks):
                account(result)
    bar.close()
    if summary.failed or summary.failed_before:
        collect_failures(cache)
    summary.reasons = dict(reasons)
    summary.seconds = time.perf_counter() - started
    return summary


def collect_failures(cache: str | Path, out: str | Path | None = None) -> Path:
    """Gather every ``failed/*.json`` into ``failures.jsonl`` (in ``out``, default the cache)."""
    cache = Path(cache)
    entries = [read_failure(p) for p in sorted((cache / "failed").glob("*.json"))]
    path = Path(out or cache) / "failures.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(e) + "\n" for e in entries))
    os.replace(tmp, path)
    return path
