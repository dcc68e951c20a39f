"""Run step 1 over many clips: worker processes, sharding across machines, resume, failures.

Nothing is lost on a crash: every clip is cached atomically as soon as it is done, a re-run
skips done clips (and, unless asked, clips that already failed), and every failure is kept
with its reason. The run never stops on a bad clip; it ends with a summary.

Worker processes are started once and keep their FaceMesh and face detector for every clip
they extract. They leave Ctrl-C to the main process (which ends them and says how to
resume), and they end quietly when the main process dies.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from flowvq.data.preprocess.extract import (
    ClipError,
    ExtractConfig,
    FaceModels,
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


Loader = Callable[[str], dict]  # coefficient file -> {"exp": [T, E], "pose": [T, P]}
Task = tuple[ClipSpec, ExtractConfig, str, str | None, Loader | None]


def _work(task: Task, models: FaceModels) -> tuple[str, str | None, str]:
    """Extract and cache one clip; a failure is recorded, never raised (returns id, reason, message)."""
    spec, config, cache, coefficients, load = task
    try:
        loaded = load(coefficients) if coefficients is not None and load is not None else None
        result = extract_clip(spec, config, loaded, models)
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


#: A worker process's face models, made once by :func:`_init_worker`.
_worker_models: FaceModels | None = None
_parent: int | None = None


def _init_worker(refine_landmarks: bool = True) -> None:
    global _worker_models, _parent
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.getLogger("absl").setLevel(logging.ERROR)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    _parent = os.getppid()

    def watch_parent() -> None:
        while os.getppid() == _parent:
            time.sleep(0.2)
        os._exit(0)  # the main process is gone: nobody will read a result

    threading.Thread(target=watch_parent, daemon=True).start()
    _worker_models = FaceModels(refine_landmarks)


def _pool_work(task: Task) -> tuple[str, str | None, str]:
    result = _work(task, _worker_models)
    if os.getppid() != _parent:
        os._exit(0)
    return result


class _Terminated(Exception):
    pass


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated(signal.Signals(signum).name)


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
    load_coefficients: Loader | None = None,
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
        load_coefficients: reads one coefficient file (a picklable function).
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
    tasks = [(s, config, str(cache), (coefficients or {}).get(s.clip_id), load_coefficients) for s in todo]
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

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        if not tasks:
            pass
        elif workers <= 1 or len(tasks) <= 1:
            with FaceModels(config.refine_landmarks) as models:
                for task in tasks:
                    account(_work(task, models))
        else:
            context = multiprocessing.get_context("spawn")  # mediapipe's graph does not survive fork
            pool = context.Pool(
                min(workers, len(tasks)),
                initializer=_init_worker,
                initargs=(config.refine_landmarks,),
                maxtasksperchild=500,
            )
            with pool:  # leaving it (also by Ctrl-C or SIGTERM) ends the workers
                for result in pool.imap_unordered(_pool_work, tasks):
                    account(result)
    except (KeyboardInterrupt, _Terminated) as error:
        bar.close()
        what = "interrupted" if isinstance(error, KeyboardInterrupt) else f"stopped by {error}"
        print(
            f"{what}: {summary.extracted + summary.done_before} of {summary.total} clips of this shard are "
            f"extracted in {str(cache)!r}; run the same command again to go on from there"
        )
        raise SystemExit(130 if isinstance(error, KeyboardInterrupt) else 143) from None
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    bar.close()
    if summary.failed or summary.failed_before:
        collect_failures(cache)
    summary.reasons = dict(reasons)
    summary.seconds = time.perf_counter() - started
    return summary


def collect_failures(cache: str | Path, out: str | Path | None = None, extra: Sequence[dict[str, Any]] = ()) -> Path:
    """Gather every ``failed/*.json`` (and ``extra`` entries, e.g. the quality gate's) into
    ``failures.jsonl`` (in ``out``, default the cache)."""
    cache = Path(cache)
    entries = [read_failure(p) for p in sorted((cache / "failed").glob("*.json"))] + list(extra)
    path = Path(out or cache) / "failures.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(e) + "\n" for e in entries))
    os.replace(tmp, path)
    return path
