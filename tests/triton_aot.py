"""Ahead-of-time compilation of Triton kernels for a GPU this machine does not have.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` builds PTX and a cubin with no GPU
and no driver; the ptxas bundled in the triton wheel (``triton/backends/nvidia/bin/ptxas -v``) then reports
registers and spills. Tests run under ``TRITON_INTERPRET=1``, where ``@triton.jit`` gives interpreter
objects that cannot be compiled, so the compilation runs in a subprocess with ``TRITON_INTERPRET=0`` that
imports the kernel by module name (or by file path for a module that is not importable by name).

Usage::

    report = aot_compile(_my_kernel, {"x_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"}, {"BLOCK": 128}, arch=90)
    assert report.spills == 0, report.ptxas_log

Signature values are Triton type strings (``"*fp32"``, ``"*bf16"``, ``"i32"``, ``"i64"``, ``"fp32"``) and
``"constexpr"`` for each constexpr argument, whose value goes in ``constexprs`` (ints, floats, bools, or
dtype names such as ``"fp16"`` given as ``{"dtype": "fp16"}``). :func:`aot_compile_many` compiles several
variants in one subprocess (one torch/triton import instead of one per variant).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import textwrap

__all__ = ["AotReport", "aot_compile", "aot_compile_many"]


@dataclasses.dataclass(frozen=True)
class AotReport:
    """What ptxas said about one compiled variant."""

    arch: int
    registers: int
    spills: int  # spill store bytes + spill load bytes
    spill_stores: int
    spill_loads: int
    shared_bytes: int
    ptx: str
    ptxas_log: str


def aot_compile(
    fn: object,
    signature: dict[str, str],
    constexprs: dict[str, object],
    arch: int,
    *,
    num_warps: int = 4,
    num_stages: int = 3,
    timeout: float = 600,
) -> AotReport:
    """Compile ``fn`` (a ``@triton.jit`` function, interpreted or not) for ``sm_{arch}`` and run ptxas -v."""
    variant = {"signature": signature, "constexprs": constexprs, "arch": arch, "num_warps": num_warps}
    variant["num_stages"] = num_stages
    return aot_compile_many(fn, [variant], timeout=timeout)[0]


def aot_compile_many(fn: object, variants: list[dict], *, timeout: float = 600) -> list[AotReport]:
    """Compile several variants of ``fn`` in one subprocess; each variant is a dict with keys ``signature``,
    ``constexprs``, ``arch`` and optionally ``num_warps`` (4) and ``num_stages`` (3)."""
    module, name, path = _locate(fn)
    job = {"module": module, "name": name, "path": path, "variants": variants, "sys_path": sys.path}
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run(
        [sys.executable, "-c", _WORKER],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"AOT compilation of {module}.{name} failed:\n{proc.stderr[-8000:]}")
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    return [_report(r["arch"], r["ptx"], r["ptxas_log"]) for r in results]


def _locate(fn: object) -> tuple[str, str, str]:
    """(module name, function name, source file) of a jit function, interpreted or not, or a plain function."""
    inner = fn
    while hasattr(inner, "fn"):  # JITFunction / InterpretedFunction / autotuner wrappers
        inner = inner.fn
    if not inspect.isfunction(inner):
        raise TypeError(f"fn: expected a @triton.jit function, got {type(fn).__name__}")
    module = inner.__module__
    try:
        importable = module != "__main__" and importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        importable = False
    return (module if importable else ""), inner.__name__, inspect.getfile(inner)


def _report(arch: int, ptx: str, log: str) -> AotReport:
    def number(pattern: str) -> int:
        match = re.search(pattern, log)
        return int(match.group(1)) if match else 0

    registers = re.search(r"Used (\d+) registers", log)
    if registers is None:
        raise RuntimeError(f"could not read the register count from the ptxas log:\n{log}")
    stores = number(r"(\d+) bytes spill stores")
    loads = number(r"(\d+) bytes spill loads")
    return AotReport(
        arch=arch,
        registers=int(registers.group(1)),
        spills=stores + loads,
        spill_stores=stores,
        spill_loads=loads,
        shared_bytes=number(r"(\d+) bytes smem"),
        ptx=ptx,
        ptxas_log=log,
    )


# Runs with TRITON_INTERPRET=0: reads a job (JSON) on stdin, prints one JSON list of {arch, ptx, ptxas_log}.
_WORKER = textwrap.dedent(
    """
    import importlib, importlib.util, json, os, re, subprocess, sys, tempfile
    job = json.load(sys.stdin)
    sys.path[:] = job["sys_path"]
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if job["module"]:
        module = importlib.import_module(job["module"])
    else:
        spec = importlib.util.spec_from_file_location("_aot_kernel_module", job["path"])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    fn = getattr(module, job["name"])
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")

    def constant(value):
        if isinstance(value, dict) and "dtype" in value:
            return getattr(tl, value["dtype"]) if hasattr(tl, value["dtype"]) else tl.dtype(value["dtype"])
        return value

    results = []
    for variant in job["variants"]:
        constexprs = {k: constant(v) for k, v in variant["constexprs"].items()}
        src = ASTSource(fn=fn, signature=variant["signature"], constexprs=constexprs)
        options = {"num_warps": variant.get("num_warps", 4), "num_stages": variant.get("num_stages", 3)}
        compiled = triton.compile(src, target=GPUTarget("cuda", variant["arch"], 32), options=options)
        ptx = compiled.asm["ptx"]
        gpu_name = re.search(r"^\\.target\\s+(sm_\\w+)", ptx, re.MULTILINE).group(1)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "kernel.ptx")
            with open(path, "w") as f:
                f.write(ptx)
            proc = subprocess.run(
                [ptxas, "-v", f"--gpu-name={gpu_name}", path, "-o", os.path.join(tmp, "kernel.cubin")],
                capture_output=True, text=True,
            )
        if proc.returncode != 0:
            raise SystemExit(f"ptxas failed for {variant}:\\n{proc.stderr}")
        results.append({"arch": variant["arch"], "ptx": ptx, "ptxas_log": proc.stderr + proc.stdout})
    print(json.dumps(results))
    """
)
