"""How Keras runs in a process: seeds, determinism, float policy and compilation.

A stage calls :func:`setup` before its first Keras work
(:meth:`hmoe.edge.run.Stage.start_keras`), in `dvc repro` and in the sweep alike.
What is and is not deterministic (docs/troubleshooting.md, "Same inputs, same
numbers"): on CPUs, TensorFlow runs uncompiled with op determinism, so a rerun gives
bit-identical numbers (and an exact resume); JAX on CPU compiles with XLA,
deterministic on one device. On GPUs the
compiled step is fast but not bit-identical run to run (atomics in reductions and
convolution autotuning): compilation is never switched off for determinism's sake.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from hmoe import paths
from hmoe.params import Params

logger = logging.getLogger("hmoe")

# `train.precision: auto`. On GPUs bfloat16 pays. On CPUs it pays where the CPU has bf16
# arithmetic: on the 2-core AMD EPYC (Zen 4, avx512_bf16, no AMX) the default network
# trained 1.27x faster per CPU-second in mixed_bfloat16 than in float32 under TensorFlow
# (bench/train_speed.py, docs/results.md) with the same accuracy. Without those
# instructions bfloat16 is emulated and slower. JAX's CPU backend stays in float32.
GPU_PRECISION = "mixed_bfloat16"
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
JAX_CACHE = ".cache/jax"  # JAX's persistent compilation cache, under the repository root


def setup(params: Params) -> tuple[str, str, bool, str]:
    """Seeds, determinism, float policy and the compilation decision; returns
    (policy, why, compiled, why).
    """
    import keras

    from hmoe.resume import reseed

    reseed(params.seed)
    jit, jit_why = resolve_jit(params.train.jit_compile)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if jit:  # TF drops XLA silently under op determinism: say so instead
            logger.warning(
                "compiled TensorFlow training (train.jit_compile) is not bit-identical run "
                "to run: op determinism is off"
            )
        else:  # same params and data -> same numbers (tests/pipeline/test_reliability.py)
            tf.config.experimental.enable_op_determinism()
    if backend == "jax":
        import jax

        jax.config.update("jax_compilation_cache_dir", str(paths.repo_root() / JAX_CACHE))
    policy, why = resolve_precision(params.train.precision)
    keras.mixed_precision.set_global_policy(policy)
    return policy, why, jit, jit_why


def gpus() -> list:
    """The GPUs Keras's backend sees."""
    import keras

    return [d for d in keras.distribution.list_devices() if "gpu" in str(d).lower()]


def resolve_jit(setting: bool | str) -> tuple[bool, str]:
    """``train.jit_compile``: auto compiles on JAX (CPU and GPU) and on TensorFlow GPUs;
    TensorFlow on a CPU runs uncompiled, where its op determinism holds.
    """
    import keras

    if isinstance(setting, bool):
        return setting, "set in params.yaml"
    backend = keras.backend.backend()
    if backend == "jax":
        return True, "auto: JAX compiles every step"
    if backend == "tensorflow" and gpus():
        return True, "auto: TensorFlow with a GPU"
    return False, f"auto: {backend} on a CPU runs uncompiled, with deterministic ops"


def resolve_precision(setting: str) -> tuple[str, str]:
    """The Keras dtype policy for ``train.precision`` and why it was chosen."""
    import keras

    return auto_precision(setting, keras.backend.backend(), len(gpus()), cpu_flags())


def auto_precision(
    setting: str, backend: str, n_gpus: int, flags: Sequence[str]
) -> tuple[str, str]:
    """``train.precision`` resolved for this machine (pure, so every branch is tested):
    an explicit policy wins; auto is bfloat16 on GPUs and on TensorFlow CPUs with bf16
    instructions, float32 elsewhere.
    """
    if setting != "auto":
        return setting, "set in params.yaml"
    if n_gpus:
        return GPU_PRECISION, f"auto: {n_gpus} GPU(s) visible"
    native = [f for f in CPU_BF16_FLAGS if f in flags]
    if backend == "tensorflow" and native:
        return "mixed_bfloat16", f"auto: the CPU has {'+'.join(native)} (bf16 measured faster)"
    if backend != "tensorflow":
        return "float32", f"auto: {backend} on a CPU runs float32"
    return "float32", "auto: the CPU has no bf16 instructions (avx512_bf16, amx_bf16)"


def cpu_flags() -> list[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    from pathlib import Path

    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])


def machine() -> str:
    """The accelerator or CPU this process computes on, by name."""
    import os
    import platform
    from pathlib import Path

    found = gpus()
    if found:
        return ", ".join(str(d) for d in found)
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    flags = cpu_flags()
    wanted = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model or platform.processor()} x{os.cpu_count()} ({' '.join(wanted) or 'no AVX-512'})"
