"""A compiled decode step: one δ-mem layer, one token per conversation on the CPU, in one native call.

At one token the δ-mem step is ~20 tiny tensor ops per layer, each costing more dispatch than arithmetic; this
module runs the same math (`kernels/decode_step.c`, the eager version being `fastpath._decode_host`) as one C
function called through ctypes. The library is compiled on first use with the system's C compiler (`$CC`, else
`cc`) into the project's cache (`$DELTAMEM_CACHE/kernels`, by default `~/.cache/deltamem-agents/kernels`), keyed by
the source, the flags and the CPU's features; it takes well under a second. Without a compiler,
or with `DELTAMEM_NATIVE=0`, `available()` is False and the eager fast path runs instead (same results up to
float rounding; tests/core/test_native.py checks the two agree).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .fastpath import FusedWeights
    from .memory import DeltaMemLayer

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("kernels") / "decode_step.c"
_MODES = {"standard": 0, "lambda_outside": 1, "no_lambda": 2}
_LOCK = threading.Lock()
_LIB: ctypes.CDLL | None = None
_TRIED = False
_ENABLED = os.environ.get("DELTAMEM_NATIVE", "1") not in ("0", "false", "no", "off")

_c_void_p, _c_int = ctypes.c_void_p, ctypes.c_int
# layer, rows, x, S, S_new, q_proj output, its row stride, δo, row flags, all states zero
_ARGTYPES = [_c_void_p, _c_int, _c_void_p, _c_void_p, _c_void_p, _c_void_p, _c_int, _c_void_p, _c_void_p, _c_int]
ROW_WRITE, ROW_VALID = 1, 2  # row flags (uint8): a write candidate; not a padding row
MAX_READ_DIM = 1024  # the kernel keeps a layer's projections on the stack: larger states take the eager path


class _Layer(ctypes.Structure):
    """A layer's constant arguments, as `dm_layer` in kernels/decode_step.c."""

    _fields_ = [("proj", _c_void_p), ("bias", _c_void_p), ("corr_t", _c_void_p)] + \
        [(n, _c_int) for n in ("d", "H", "r", "G", "normalize", "mode", "q_rows", "o_rows")] + \
        [("threshold", ctypes.c_float)]


def cache_dir() -> Path:
    """Where built libraries go: `kernels/` under the project's cache root (the same as backbone.cache_dir)."""
    return Path(os.environ.get("DELTAMEM_CACHE", Path.home() / ".cache" / "deltamem-agents")) / "kernels"


def set_enabled(flag: bool) -> bool:
    """Use the compiled step when it is available (False: the eager fast path); returns the old value."""
    global _ENABLED
    old, _ENABLED = _ENABLED, bool(flag)
    return old


def available() -> bool:
    """Enabled and the library is built and loaded (built on the first call)."""
    return _ENABLED and _load() is not None


def _load() -> ctypes.CDLL | None:
    global _LIB, _TRIED
    if _TRIED:
        return _LIB
    with _LOCK:
        if not _TRIED:
            try:
                _LIB = _open(_build())
            except (OSError, AttributeError, subprocess.SubprocessError) as e:  # no compiler, build or symbol
                log.info("δ-mem native decode step unavailable (%s); using the eager fast path", e)
                _LIB = None
            _TRIED = True
    return _LIB


def _build() -> Path:
    """The compiled library for this source, compiled if it is not cached yet (atomic: concurrent builds are safe)."""
    src = _SOURCE.read_bytes()
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise OSError("no C compiler found (set CC)")
    base = ["-O3", "-std=c99", "-fopenmp-simd", "-fPIC", "-shared"]
    errors = []
    for flags in (base + ["-march=native"], base):  # a compiler without -march=native gets the portable build
        key = hashlib.sha256(src + " ".join([cc, *flags, _cpu_flags()]).encode()).hexdigest()[:16]
        out = cache_dir() / f"decode_step-{key}.so"
        if out.exists():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
            tmp_out = Path(tmp) / out.name
            proc = subprocess.run([cc, *flags, str(_SOURCE), "-o", str(tmp_out), "-lm"], capture_output=True,
                                  text=True, timeout=120)
            if proc.returncode == 0:
                os.replace(tmp_out, out)
                return out
            errors.append(proc.stderr.strip()[:300])
    raise OSError(f"{cc} failed: {' | '.join(errors)}")


def _cpu_flags() -> str:
    """This CPU's feature flags (Linux), so that a cache shared between machines never loads a library built for
    instructions this one lacks (the library is built with -march=native)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        import platform

        return platform.processor() + platform.machine()


def _open(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.dm_decode_rows.argtypes = _ARGTYPES
    lib.dm_decode_rows.restype = _c_int
    return lib


def usable(x: Tensor, out: Tensor) -> bool:
    """This layer's call can take the compiled step: fp32 and contiguous input and q_proj output (the caller
    checked the rest once per call: one token per row on the CPU, an fp32 contiguous state, the row flags)."""
    return x.dtype is torch.float32 and out.dtype is torch.float32 and x.is_contiguous() and out.is_contiguous()


def state_usable(S: Tensor) -> bool:
    """The carried state S[n,B,H,r,r] can be read and written by pointer (and is small enough for the kernel)."""
    return (S.dtype is torch.float32 and S.is_contiguous() and S.device.type == "cpu"
            and S.shape[-3] * S.shape[-1] <= MAX_READ_DIM)


def row_flags(valid: Tensor, written: Tensor | None) -> Tensor:
    """valid[B], written[B] (None: nothing written) -> the kernel's per-row flags (uint8)."""
    flags = valid.to(torch.uint8) * ROW_VALID
    return flags if written is None else flags | (written & valid).to(torch.uint8)


def _layer(layer: DeltaMemLayer, fw: FusedWeights) -> tuple[int, int]:
    """(address of the layer's `dm_layer`, δo rows), cached with the fused weights it points into."""
    cfg = layer.cfg
    cached = fw.native
    if cached is not None and cached[0] is cfg:
        return cached[1], cached[2]
    corr_t = None if fw.corr is None else fw.corr.t().contiguous()
    o_rows = 0 if fw.corr is None else fw.corr.shape[0] - fw.q_out
    st = _Layer(proj=fw.proj.data_ptr(), bias=fw.bias.data_ptr(), corr_t=None if corr_t is None else corr_t.data_ptr(),
                d=fw.proj.shape[1], H=cfg.num_state_heads, r=cfg.rank, G=fw.proj.shape[0] - 3 * cfg.read_dim,
                normalize=int(cfg.normalize_qk), mode=_MODES[cfg.state_update_mode],
                q_rows=fw.q_out if corr_t is not None else 0, o_rows=o_rows, threshold=float(cfg.write_threshold))
    fw.native = (cfg, ctypes.addressof(st), o_rows, st, corr_t)  # the struct and corr_t kept alive beside pointers
    return fw.native[1], o_rows


def step_ptr(layer: DeltaMemLayer, fw: FusedWeights, x: Tensor, out: Tensor, S_ptr: int, S_new_ptr: int,
             flags_ptr: int, state_zero: bool) -> Tensor | None:
    """The compiled step on raw pointers, for x[B,1,d]: the rows' states S[B,H,r,r] (fp32) at S_ptr, the new ones
    (always filled) at S_new_ptr, which must not alias S_ptr; the rows' flags (uint8, `row_flags`) at flags_ptr.
    δq is added to `out` in place; returns δo [B,1,o_out], or None (no o head, or every read exactly zero)."""
    lib = _LIB if _LIB is not None else _load()
    assert lib is not None, "native step without the library (check available())"
    addr, o_rows = _layer(layer, fw)
    B = x.shape[0]
    do = torch.empty(B, 1, o_rows) if o_rows and not state_zero else None
    bits = lib.dm_decode_rows(addr, B, x.data_ptr(), S_ptr, S_new_ptr, out.data_ptr(), out.shape[-1],
                              None if do is None else do.data_ptr(), flags_ptr, state_zero)
    return do if bits & 2 else None


def decode_step(layer: DeltaMemLayer, fw: FusedWeights, x: Tensor, S: Tensor, out: Tensor, write: bool | Tensor,
                state_zero: bool, valid: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """x[B,1,d] (fp32), S[B,H,r,r] -> (new S, δo [B,1,o_out] or None); δq is added to `out` (q_proj's output) in
    place (the tensor form of `step_ptr`). `write`: every row a write candidate or none, or a bool per row;
    `valid`: the rows that are not padding (default all)."""
    B = x.shape[0]
    if not (usable(x, out) and state_usable(S) and x.shape == (B, 1, fw.proj.shape[1]) and S.shape[0] == B
            and out.shape[:2] == (B, 1)):
        raise ValueError("the native step takes one fp32 contiguous token per row, q_proj output and state on the CPU")
    valid = torch.ones(B, dtype=torch.bool) if valid is None else valid
    written = write if isinstance(write, Tensor) else (torch.full((B,), True) if write else None)
    flags = row_flags(valid, written)
    S_new = torch.empty_like(S)
    do = step_ptr(layer, fw, x, out, S.data_ptr(), S_new.data_ptr(), flags.data_ptr(), bool(state_zero))
    return S_new, do
