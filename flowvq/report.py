"""Benchmark results in one form: ``benchmarks/results/<name>.json`` and ``.md``, one machine description.

Every benchmark writes its rows through :func:`write_report`, so each result says the same
things the same way: the command that made it, the machine (CPU model, cores the process
may use, torch threads, accelerator, memory, library versions, git commit) and the rows as a
markdown table.

Example::

    from flowvq.report import write_report

    rows = [{"stage": "ExpFlow", "frames_per_s": 412.0}, {"stage": "VQIG", "frames_per_s": 96.5}]
    write_report("generate_speed", rows, title="Generation speed", notes=["batch 1, fp32"])
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["RESULTS", "describe_machine", "machine", "markdown_table", "write_report"]

#: Where results go: ``benchmarks/results/`` of the checkout.
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def machine() -> dict[str, Any]:
    """What ran the benchmark: CPU, usable cores, torch threads, accelerator, memory, versions, commit."""
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    accelerator = None
    if torch.cuda.is_available():
        accelerator = torch.cuda.get_device_name(0)
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("lightning", "numpy"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            pass
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no")) if commit else None
    return {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "usable_cpus": usable,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "accelerator": accelerator,
        "memory_gib": _memory_gib(),
        "platform": platform.platform(),
        "versions": versions,
        "commit": commit,
        "dirty": dirty,
    }


def describe_machine(info: dict[str, Any] | None = None) -> str:
    """One line for a person: ``Intel Xeon ..., 2 of 2 CPUs, 2 torch threads, no GPU, 8 GiB, torch 2.x, commit abc (+changes)``."""
    info = info or machine()
    parts = [
        info["cpu"],
        f"{info['usable_cpus']} of {info['cpus']} CPUs",
        f"{info['torch_threads']} torch thread(s)",
        info["accelerator"] or "no GPU",
    ]
    if info.get("memory_gib"):
        parts.append(f"{info['memory_gib']} GiB")
    parts.append(", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    if info.get("commit"):
        parts.append(f"commit {info['commit']}" + (" (+uncommitted changes)" if info.get("dirty") else ""))
    return ", ".join(parts)


def _cell(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 10 ** (digits + 3) else f"{value:.3g}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, digits: int = 2) -> str:
    """Rows (dicts) as a markdown table; ``columns``: which keys and in what order (default: all, first seen first)."""
    if not rows:
        return "(no rows)\n"
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(c), digits) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_report(
    name: str,
    rows: Sequence[dict[str, Any]],
    title: str | None = None,
    notes: Sequence[str] = (),
    columns: Sequence[str] | None = None,
    out: str | Path | None = None,
    command: str | None = None,
    extra: dict[str, Any] | None = None,
    digits: int = 2,
    machine_info: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``<out>/<name>.json`` (command, machine, rows, notes, extra) and ``<out>/<name>.md``.

    Arguments:
        name: file stem.
        rows: one dict per table row.
        title: the markdown heading (default: ``name``).
        notes: sentences printed under the table (what was measured, caveats).
        columns: the table's columns (default: every key of the rows).
        out: folder (default :data:`RESULTS`).
        command: the command that made the result (default: this process's command line).
        extra: more JSON (not in the table).
        digits: decimals of floats in the table.
        machine_info: the machine of the run when the report is written afterwards by another
            process (default: :func:`machine` of this one).

    Returns:
        the JSON and markdown paths.
    """
    out = Path(out) if out is not None else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    command = command or " ".join([Path(sys.executable).name, *sys.argv])
    info = machine_info or machine()
    record = {"name": name, "command": command, "machine": info, "rows": list(rows), "notes": list(notes)}
    if extra:
        record["extra"] = extra
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    text = [f"# {title or name}", "", f"Command: `{command}`", "", f"Machine: {describe_machine(info)}", ""]
    text.append(markdown_table(rows, columns, digits))
    if notes:
        text += ["", *[f"- {note}" for note in notes]]
    md_path = out / f"{name}.md"
    md_path.write_text("\n".join(text).rstrip() + "\n")
    return json_path, md_path
