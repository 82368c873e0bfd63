"""The machine a benchmark ran on, device peaks for MFU, and where results are written.

Benchmark numbers mean little without the machine: every result file carries
:func:`describe_machine` (CPU model, cores, load average, torch/CUDA versions, GPU name, git
commit). On a shared machine the load average says how far to trust absolute numbers; the
benchmarks therefore measure each baseline beside its candidate in the same run and quote
ratios.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

RESULTS_DIR = Path("results/bench")

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, by a substring of the CUDA device
# name, most specific first. MFU is achieved FLOP/s over this peak for every variant (fp32
# included), so variants compare on one scale: "how much of the machine is used".
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200", 989.0),  # same compute as the H100 SXM, more memory
    ("H100", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10G", 70.0),
    ("L4", 121.0),
)


def bf16_peak_tflops(device_name: str | None) -> float | None:
    """Dense bf16 peak of a CUDA device from its name; ``None`` when unknown (or CPU)."""
    if not device_name:
        return None
    for key, peak in BF16_PEAK_TFLOPS:
        if key in device_name:
            return peak
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state() -> dict[str, Any]:
    """Commit of the code and whether it had uncommitted changes (:mod:`mdfr.provenance`)."""
    # Lazy: the bench's machine description only; provenance runs git.
    from mdfr.provenance import UNKNOWN, current

    prov = current()
    commit = None if prov.commit == UNKNOWN else prov.commit
    return {"commit": commit, "dirty": prov.dirty, "source_digest": prov.source_digest}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def describe_machine(device: str = "cpu") -> dict[str, Any]:
    """A JSON-able description of this machine and software, for result files.

    Args:
        device: ``cpu`` or ``cuda``; CUDA fields are filled whenever CUDA is available.
    """
    import numpy as np
    import torch

    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "torch_threads": torch.get_num_threads(),
        "load_average": load_average(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": device,
        "gpu_name": None,
        "gpu_count": 0,
        "git": git_state(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu_name=torch.cuda.get_device_name(0),
            gpu_count=torch.cuda.device_count(),
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_sms=props.multi_processor_count,
            cudnn=torch.backends.cudnn.version(),
            gpu_bf16_peak_tflops=bf16_peak_tflops(torch.cuda.get_device_name(0)),
        )
    return info


def today() -> str:
    return _dt.date.today().isoformat()


def default_json_path(kind: str, device: str) -> Path:
    """``results/bench/<kind>-<device>-<date>.json`` (relative to the current directory)."""
    return RESULTS_DIR / f"{kind}-{device}-{today()}.json"


def write_json(doc: dict[str, Any], path: str | Path) -> list[Path]:
    """Write ``doc`` to ``path`` (and to ``$OUT`` when that is set: device machines copy it back).

    Returns:
        The files written.
    """
    # Lazy: the report package is not needed until a result is written.
    from mdfr.report.portable import portable

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Result files are committed under results/bench: paths of this checkout made relative.
    text = portable(json.dumps(doc, indent=1, default=_json_default)) + "\n"
    path.write_text(text)
    written = [path]
    out = os.environ.get("OUT")
    if out and Path(out).is_dir() and Path(out).resolve() != path.parent.resolve():
        extra = Path(out) / path.name
        extra.write_text(text)
        written.append(extra)
    return written


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def envelope(kind: str, device: str, config: dict[str, Any]) -> dict[str, Any]:
    """The common head of a result document; the caller adds ``results``."""
    return {
        "kind": kind,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "unix_time": round(time.time(), 1),
        "machine": describe_machine(device),
        "config": config,
    }
