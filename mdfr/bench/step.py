"""MDFRNet training-step throughput: patches/s, FLOPs per patch, achieved TFLOP/s and MFU.

One step is what :func:`mdfr.engine.train_trial` does per batch in ``mode: mdfr``: uint8
batches copied to the device and scaled to [0, 1], MDFRNet (SFR + FFR + FFS) in front of a
frozen CMI backbone, the paper's weighted loss, RMSprop. It is rebuilt here rather than called
through the engine because the engine needs a prepared dataset and a loader, whose speed is
measured separately (``mdfr bench loader``); inputs here are random patches already in (pinned)
host memory.

Variants (:data:`VARIANTS`) switch bf16 autocast, channels-last memory and ``torch.compile``, the
three switches of :class:`mdfr.config.TrainConfig`. Every variant except ``*_nosync`` reads each
loss part back with ``float()`` and checks ``isfinite`` every step, as the engine does; the
``nosync`` variant keeps them on the device, to measure what those host syncs cost a GPU.

FLOPs per patch come from :func:`mdfr.models.complexity.profile` of the same network (forward
and backward, counted convolutions/matmuls/FFTs); MFU is achieved FLOP/s over the device's dense
bf16 peak (:func:`mdfr.bench.machine.bf16_peak_tflops`), for every variant.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from mdfr.bench.machine import bf16_peak_tflops, envelope, load_average
from mdfr.config import LossConfig, ModelConfig, OptimConfig
from mdfr.errors import MdfrError, UsageError
from mdfr.losses import mdfr_loss
from mdfr.models import create_backbone, create_model
from mdfr.models.complexity import profile

PATCH = 64


@dataclass(frozen=True)
class Variant:
    """One way of running the same training step."""

    name: str
    bf16: bool = False  # torch.autocast(dtype=bfloat16) around model and loss
    channels_last: bool = False  # model and inputs in channels-last memory format
    compile: bool = False  # torch.compile(model), as TrainConfig.compile does
    host_sync: bool = True  # read the loss parts on the host every step, as the engine does


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("fp32"),
        Variant("fp32_channels_last", channels_last=True),
        Variant("fp32_compile", compile=True),
        Variant("bf16", bf16=True),
        Variant("bf16_channels_last", bf16=True, channels_last=True),
        Variant("bf16_channels_last_nosync", bf16=True, channels_last=True, host_sync=False),
        Variant("bf16_channels_last_compile", bf16=True, channels_last=True, compile=True),
    )
}
DEFAULT_VARIANTS: tuple[str, ...] = (
    "fp32",
    "bf16",
    "bf16_channels_last",
    "bf16_channels_last_nosync",
    "bf16_channels_last_compile",
)


@dataclass(frozen=True)
class StepSetup:
    """The network and batch a step benchmark trains.

    Attributes:
        width, depth: MDFRNet UNet shape (paper: 64, 4).
        backbone: CMI network in front of which MDFRNet trains (frozen, as in the paper).
        num_classes: camera models (29 in VISION).
        batch: patches per step.
        warmup: untimed steps first (cuDNN autotuning, compilation, allocator growth).
        steps: timed steps.
        seed: seeds weights and inputs.
    """

    width: int = 64
    depth: int = 4
    backbone: str = "dpec_convnext"
    num_classes: int = 29
    batch: int = 64
    warmup: int = 3
    steps: int = 10
    seed: int = 0


def default_setup(device: str, quick: bool, **overrides: Any) -> StepSetup:
    """Sizes that fit the device: paper width everywhere, few small steps on CPU.

    ``quick`` (tests) uses a tiny network. ``None`` overrides are ignored.
    """
    if quick:
        base = StepSetup(
            width=8, depth=2, backbone="test_dpec_convnext", batch=4, warmup=1, steps=2
        )
    elif device == "cuda":
        base = StepSetup(batch=256, warmup=5, steps=20)
    else:
        # Paper width costs ~27 GFLOP per patch and step: a few seconds per step on 2 cores.
        base = StepSetup(batch=4, warmup=1, steps=2)
    return StepSetup(**{**asdict(base), **{k: v for k, v in overrides.items() if v is not None}})


# --------------------------------------------------------------------------- the trainer


def build_mdfrnet(setup: StepSetup) -> torch.nn.Module:
    """MDFRNet (every switch on) with a frozen CMI backbone, on the CPU, seeded."""
    gen = torch.Generator().manual_seed(setup.seed)
    cmi = create_backbone(setup.backbone, num_classes=setup.num_classes)
    # A plausible amplitude increment (its values do not change the cost).
    increment = torch.rand(3, PATCH, PATCH, generator=gen)
    cfg = ModelConfig(backbone=setup.backbone, width=setup.width, depth=setup.depth)
    return create_model(
        "mdfrnet", cfg, num_classes=setup.num_classes, amplitude_increment=increment, cmi=cmi
    )


class StepRunner:
    """Engine-equivalent MDFRNet training steps on random patches.

    Args:
        setup: network and batch.
        device: ``cpu`` or ``cuda``.
        variant: precision, memory format, compilation and host-sync switches.
    """

    def __init__(self, setup: StepSetup, device: str, variant: Variant):
        self._loss = mdfr_loss
        torch.manual_seed(setup.seed)
        self.setup, self.variant = setup, variant
        self.device = torch.device(device)
        self.memory_format = (
            torch.channels_last if variant.channels_last else torch.contiguous_format
        )
        self.net = build_mdfrnet(setup)
        self.net.to(
            self.device,
            memory_format=torch.channels_last if variant.channels_last else torch.preserve_format,
        )
        self.net.train()  # MDFRNet keeps a frozen CMI net in eval mode, as in the engine
        params = [p for p in self.net.parameters() if p.requires_grad]
        o = OptimConfig()  # the paper's RMSprop, lr 2e-4, weight decay 1e-5
        self.opt = torch.optim.RMSprop(params, lr=o.lr, weight_decay=o.weight_decay)
        self.loss_cfg = LossConfig()
        self.model: Any = torch.compile(self.net) if variant.compile else self.net
        gen = torch.Generator().manual_seed(setup.seed + 1)
        shape = (setup.batch, 3, PATCH, PATCH)
        ori = torch.randint(0, 256, shape, dtype=torch.uint8, generator=gen)
        noise = torch.randint(-8, 9, shape, generator=gen)
        comp = (ori.to(torch.int16) + noise).clamp_(0, 255).to(torch.uint8)
        label = torch.randint(0, setup.num_classes, (setup.batch,), generator=gen)
        pin = self.device.type == "cuda"
        # Host batches as the loader hands them over (pinned on CUDA, like the engine's loader).
        self.host = tuple(t.pin_memory() if pin else t for t in (ori, comp, label))
        self.sums: dict[str, float] = {}
        self.device_sums: torch.Tensor | None = None
        self.patches = 0

    def _inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ori, comp, label = self.host
        mf = self.memory_format
        return (
            ori.to(self.device, non_blocking=True).float().div_(255).contiguous(memory_format=mf),
            comp.to(self.device, non_blocking=True).float().div_(255).contiguous(memory_format=mf),
            label.to(self.device, non_blocking=True),
        )

    def step(self) -> None:
        """One optimisation step (forward, loss, backward, RMSprop update)."""
        ori, comp, label = self._inputs()
        ctx = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.variant.bf16
            else contextlib.nullcontext()
        )
        with ctx:
            out = self.model(comp)
            parts = self._loss(out, ori, label, self.loss_cfg)
        loss = parts["loss"]
        if self.variant.host_sync and not torch.isfinite(loss):
            raise MdfrError("training step diverged (non-finite loss) on random data")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.variant.host_sync:
            for k, v in parts.items():
                self.sums[k] = self.sums.get(k, 0.0) + float(v.detach())
        else:
            stacked = torch.stack([v.detach().float() for v in parts.values()])
            self.device_sums = stacked if self.device_sums is None else self.device_sums + stacked
        self.patches += self.setup.batch

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# --------------------------------------------------------------------------- measuring


def flops_per_patch(setup: StepSetup) -> dict[str, int]:
    """Parameters and FLOPs per patch of the benchmarked network (on the CPU, batch 2)."""
    rng = torch.get_rng_state()
    try:
        net = build_mdfrnet(setup)
        prof = profile(net, batch=2, train=True)
    finally:
        torch.set_rng_state(rng)
    return prof


def skip_reason(variant: Variant, device: str, explicit: bool) -> str | None:
    """Why ``variant`` cannot (or by default should not) run on ``device``; ``None`` to run it."""
    if variant.compile and device == "cuda" and importlib.util.find_spec("triton") is None:
        return "torch.compile's CUDA backend needs Triton, which is not installed"
    if variant.compile and device == "cpu" and not explicit:
        return (
            "torch.compile on CPU builds C++ kernels for minutes at this size; name the "
            "variant in --variants to measure it anyway"
        )
    if not variant.host_sync and device == "cpu":
        return (
            "host syncs cost nothing on CPU (no asynchronous device queue); this variant "
            "only differs on CUDA"
        )
    if variant.bf16 and device == "cuda" and not torch.cuda.is_bf16_supported():
        return f"{torch.cuda.get_device_name(0)} has no bf16 support"
    return None


def measure(
    setup: StepSetup, device: str, variant: Variant, flops: int, peak_tflops: float | None
) -> dict[str, Any]:
    """Time ``setup.steps`` steps after ``setup.warmup`` untimed ones (the first timed alone)."""
    runner = StepRunner(setup, device, variant)
    try:
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        runner.step()
        runner.sync()
        first = time.perf_counter() - t0  # includes compilation and cuDNN autotuning
        for _ in range(max(setup.warmup - 1, 0)):
            runner.step()
        runner.sync()
        per_step: list[float] = []
        t0 = time.perf_counter()
        for _ in range(setup.steps):
            s0 = time.perf_counter()
            runner.step()
            if device == "cpu":  # free on CPU; on CUDA it would break the queue
                per_step.append(time.perf_counter() - s0)
        runner.sync()
        elapsed = time.perf_counter() - t0
        mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
        # What the process holds (allocator cache included): what packing trials compete for.
        reserved = torch.cuda.max_memory_reserved() / 2**30 if device == "cuda" else None
        losses = (
            {k: v / max(1, runner.patches // setup.batch) for k, v in runner.sums.items()}
            if runner.sums
            else {}
        )
    finally:
        del runner
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        if variant.compile:
            torch._dynamo.reset()
    patches_per_s = setup.steps * setup.batch / elapsed
    tflops = patches_per_s * flops / 1e12
    out: dict[str, Any] = {
        "name": variant.name,
        "status": "ok",
        **{k: v for k, v in asdict(variant).items() if k != "name"},
        "batch": setup.batch,
        "steps": setup.steps,
        "first_step_s": round(first, 4),
        "step_s": round(elapsed / setup.steps, 5),
        "patches_per_s": round(patches_per_s, 2),
        "tflops": round(tflops, 4),
        "mfu": round(tflops / peak_tflops, 4) if peak_tflops else None,
    }
    if per_step:
        out["step_s_median"] = round(statistics.median(per_step), 5)
        out["step_s_min"] = round(min(per_step), 5)
    if mem is not None:
        out["max_memory_gib"] = round(mem, 2)
        out["max_memory_reserved_gib"] = round(reserved, 2)
    if losses:
        out["mean_loss"] = round(losses.get("loss", float("nan")), 5)
    return out


def run_step_bench(
    device: str = "cpu",
    quick: bool = False,
    variants: Sequence[str] | None = None,
    peak_tflops: float | None = None,
    cudnn_benchmark: bool = True,
    log: Any = print,
    **setup_overrides: Any,
) -> dict[str, Any]:
    """Measure every variant; returns the result document (see module docstring).

    Args:
        device: ``cpu`` or ``cuda``.
        quick: tiny network and batch (tests).
        variants: names from :data:`VARIANTS` (default :data:`DEFAULT_VARIANTS`); naming a
            variant explicitly also runs those skipped by default (compile on CPU).
        peak_tflops: the device's peak for MFU (default: looked up from the GPU name; none
            for CPUs).
        cudnn_benchmark: let cuDNN autotune convolution algorithms (shapes are fixed).
        log: receives one line per measured variant.
        **setup_overrides: :class:`StepSetup` fields (``None`` = default).
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine")
    explicit = variants is not None
    names = list(variants or DEFAULT_VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise UsageError(
            f"unknown step variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}"
        )
    setup = default_setup(device, quick, **setup_overrides)
    if device == "cuda":
        torch.backends.cudnn.benchmark = cudnn_benchmark
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None
    peak = peak_tflops or bf16_peak_tflops(gpu)
    doc = envelope("step", device, _config(setup, device, quick, names, cudnn_benchmark))
    t0 = time.perf_counter()
    prof = flops_per_patch(setup)
    log(
        f"step: MDFRNet w={setup.width} d={setup.depth} + {setup.backbone}: "
        f"{prof['flops_train_step'] / 1e9:.2f} GFLOP per patch and step "
        f"({prof['trainable_params'] / 1e6:.2f} M trainable params); batch {setup.batch}"
    )
    results = [
        _run_variant(name, setup, device, explicit, prof["flops_train_step"], peak, log)
        for name in names
    ]
    doc["results"], doc["targets"] = _summary(results, prof, peak, time.perf_counter() - t0)
    doc["machine"]["load_average_end"] = load_average()
    return doc


def _config(
    setup: StepSetup, device: str, quick: bool, names: list[str], cudnn_benchmark: bool
) -> dict[str, Any]:
    cuda = device == "cuda"
    return {
        **asdict(setup),
        "quick": quick,
        "variants": names,
        "cudnn_benchmark": cudnn_benchmark if cuda else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32 if cuda else None,
        "tf32_conv": torch.backends.cudnn.allow_tf32 if cuda else None,
        "inputs": "random uint8 patches in (pinned) host memory, copied every step",
    }


def _run_variant(
    name: str,
    setup: StepSetup,
    device: str,
    explicit: bool,
    flops: int,
    peak: float | None,
    log: Any,
) -> dict[str, Any]:
    """One variant's result: measured, skipped (with the reason) or failed (with the error)."""
    variant = VARIANTS[name]
    reason = skip_reason(variant, device, explicit)
    if reason:
        log(f"  {name:28s} skipped: {reason}")
        return {"name": name, "status": "skipped", "reason": reason}
    try:
        r = measure(setup, device, variant, flops, peak)
    except Exception as e:  # one broken variant (e.g. a compiler error) must not hide the rest
        msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e) else ''}"
        log(f"  {name:28s} FAILED: {msg}")
        return {"name": name, "status": "failed", "reason": msg}
    mfu = f"  MFU {100 * r['mfu']:.1f}%" if r["mfu"] is not None else ""
    log(
        f"  {name:28s} {r['patches_per_s']:10.1f} patches/s  {r['step_s'] * 1e3:9.1f} ms/step"
        f"  {r['tflops']:8.3f} TFLOP/s{mfu}  (first step {r['first_step_s']:.1f} s)"
    )
    return r


def _summary(
    results: list[dict[str, Any]], prof: dict[str, Any], peak: float | None, seconds: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(results, targets) of the document: speed-ups against fp32, the best bf16 variant."""
    base = next((r for r in results if r["name"] == "fp32" and r["status"] == "ok"), None)
    if base:
        for r in results:
            if r["status"] == "ok":
                r["speedup_vs_fp32"] = round(r["patches_per_s"] / base["patches_per_s"], 3)
    best_bf16 = max(
        (r for r in results if r["status"] == "ok" and r.get("bf16")),
        key=lambda r: r["patches_per_s"],
        default=None,
    )
    out = {
        "params": prof["params"],
        "trainable_params": prof["trainable_params"],
        "flops_forward_per_patch": prof["flops_forward"],
        "flops_per_patch": prof["flops_train_step"],
        "peak_tflops": peak,
        "peak_note": "dense bf16 tensor-core peak of the device; MFU of every variant is against it"
        if peak
        else "no known peak for this device (CPU): MFU not computed",
        "variants": results,
        "best_bf16": best_bf16["name"] if best_bf16 else None,
        "seconds": round(seconds, 1),
    }
    targets = {
        "bf16_mfu_min": 0.40,
        "applies_to": "H100",
        "met": (best_bf16["mfu"] >= 0.40) if best_bf16 and best_bf16["mfu"] is not None else None,
    }
    return out, targets
