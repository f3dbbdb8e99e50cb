"""Attention as the ExecuTorch CPU runtime runs it: the CPU kernels of prefill_attention and decode_attention
(kernels/sets.py's REFERENCE set), with `reference.py`'s contract (arguments, in-place cache writes, outputs within
tolerance of the dense float64 softmax, pads, stale entries never reaching the output).

float32 on CPU tensors: ExecuTorch's LLM custom ops, whose kernels the executorch wheel ships in
`libcustom_ops_aot_lib.so` (the runner loads it with the program). `llama::update_cache` copies the chunk's rows
into the cache at a start position read at run time, and `llama::custom_sdpa` attends causally over cache positions
0 .. start + T - 1 only (a flash-attention loop in the runtime: no score tensor in the program, no work past the
positions in use). Both take a cache of [B, S, heads, D] with the positions on dim 1: the model stores float32 caches
as [Hkv, S, 1, D] (`cache_shape`), the bytes of [Hkv, S, D], each KV head a batch entry with one head, and the
query heads that share it ride in its head dim ([Hkv, T, G, D]), which custom_sdpa reads as grouped-query attention.

The window: the call's T rows occupy cache slots start .. start + T - 1, start = clamp(input_pos[0], 0, S - T), the
rows' positions in order. Real tokens n (pads follow them) sit at positions p0 .. p0 + n - 1 < S; when pads would
run past the cache's end (p0 + T > S) the window starts shift = p0 - start slots earlier and every row is rolled
down by shift, so row j holds token j - shift (mod T) and its causal range is start + j = the token's position.
A slot whose row is a pad keeps its value: update_cache writes back what it held. custom_sdpa multiplies every
value row of its last key block by its probability, 0 x stale NaN being NaN: so during the call the pads' value
slots hold zeros, and their old values are written back after it.

Other dtypes or devices (bf16 CPU artifacts, the reference kernels on CUDA): `[Hkv, S, D]` caches, prefill through
the reference's key chunks and decode through `attend`, one dense softmax over every cache position (two bmm's for
XNNPACK): those read the whole cache each call.
"""

from __future__ import annotations

import functools

import torch

from . import reference
from .reference import check_args, pad_rows_zero, write_cache


def cache_shape(n_kv: int, max_seq_len: int, head_dim: int, dtype: torch.dtype) -> tuple[int, ...]:
    """The KV cache buffer's shape: [Hkv, S, 1, D] where the runtime's ops take it (float32), else [Hkv, S, D].
    A model built with that layout calls the ops: they are registered here, before any trace reaches them."""
    if dtype == torch.float32:
        load_runtime_ops()
        return (n_kv, max_seq_len, 1, head_dim)
    return (n_kv, max_seq_len, head_dim)


@functools.cache
def load_runtime_ops() -> None:
    """Registers torch.ops.llama.*: the runner's loader (the library, its kernels, the log hook that drops the
    per-call temp-allocator line), then the wheel's module with the shapes export traces with."""
    from gdn.runner.methods import load_llm_ops

    load_llm_ops()
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401


def _runtime_ops_fit(q: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Static properties only: the cache layout, the dtype, the device."""
    return k_cache.dim() == 4 and q.dtype == torch.float32 and q.device.type == "cpu"


def _flat(cache: torch.Tensor) -> torch.Tensor:
    """[Hkv, S, 1, D] -> [Hkv, S, D] (a view), for the formulations that take the reference's layout."""
    return cache.view(cache.shape[0], cache.shape[1], cache.shape[-1]) if cache.dim() == 4 else cache


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                      v_cache: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """reference.prefill_attention's contract, on either cache layout (module docstring)."""
    kc, vc = _flat(k_cache), _flat(v_cache)
    if not _runtime_ops_fit(q, k_cache):
        return reference.prefill_attention(q, k, v, kc, vc, input_pos)
    check_args(q, k, v, kc, vc, input_pos, decode=False)
    return _runtime_attention(q, k, v, k_cache, v_cache, input_pos, decode=False)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                     v_cache: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """Write the token's k, v at input_pos, then its attention over the caches (reference.py's contract)."""
    kc, vc = _flat(k_cache), _flat(v_cache)
    check_args(q, k, v, kc, vc, input_pos, decode=True)
    if not _runtime_ops_fit(q, k_cache):
        write_cache(k, v, kc, vc, input_pos)
        return attend(q, kc, vc, input_pos)
    return _runtime_attention(q, k, v, k_cache, v_cache, input_pos, decode=True)


def _window(input_pos: torch.Tensor, S: int, decode: bool):
    """-> start [1] (the window's first slot), src [T] (the token each row holds), back [T] (the row of each
    token), lead [T] (rows before the first token's: slots of earlier positions, which pads of the roll occupy).
    One token: its own slot (a decode pad: slot 0), no roll (src, back, lead None)."""
    T = input_pos.shape[0]
    first = input_pos[:1].clamp(min=0)  # [1]
    if decode:
        return first, None, None, None
    start = first.clamp(max=S - T)
    rows = torch.arange(T, device=input_pos.device)
    shift = first - start  # [1]: > 0 only when pads would run past the cache's end; < T (first < S)
    # + T: a non-negative dividend (ExecuTorch's integer remainder of a negative one is negative)
    return start, torch.remainder(rows - shift + T, T), torch.remainder(rows + shift, T), rows < shift


def _start_int(start: torch.Tensor, T: int, S: int) -> int:
    """start as the SymInt the ops take; the checks give export the bounds the ops' shape functions assert."""
    s = start.item()
    torch._check(s >= 0)
    torch._check(s < S)
    torch._check(s + T <= S)
    return s


def _rows(new: torch.Tensor, cache: torch.Tensor, slots: torch.Tensor, src: torch.Tensor, real: torch.Tensor,
          fill: torch.Tensor | None) -> torch.Tensor:
    """The window's rows for update_cache [Hkv, T, 1, D]: token src[j]'s new row where real, else `fill` (None:
    what the slot holds)."""
    kept = cache.index_select(1, slots) if fill is None else fill  # [Hkv, T, 1, D]
    rolled = _roll(new, src).transpose(0, 1).unsqueeze(2)  # [Hkv, T, 1, D]
    return torch.where(real[None, :, None, None], rolled, kept).contiguous()


def _runtime_attention(q, k, v, k_cache, v_cache, input_pos, decode: bool) -> torch.Tensor:
    if not torch.compiler.is_compiling():
        load_runtime_ops()  # eager callers that built their caches themselves (cache_shape loads them otherwise)
    T, H, D = q.shape
    Hkv, S = k_cache.shape[0], k_cache.shape[1]
    start, src, back, lead = _window(input_pos, S, decode)
    real = _roll(input_pos >= 0, src)  # [T]: the row holds a real token
    slots = start + torch.arange(T, device=q.device)  # [T]
    p = _start_int(start, T, S)
    torch.ops.llama.update_cache(_rows(k, k_cache, slots, src, real, None), k_cache, p)
    # one token reads only keys up to its own (a decode pad: key 0, its row zeroed after)
    kept_v = None if decode else v_cache.index_select(1, slots)  # [Hkv, T, 1, D]: restored after the call
    # the pads' value slots past the real tokens read as 0 during the call; those before them hold real positions
    zero = None if decode else torch.where(lead[None, :, None, None], kept_v, 0.0)
    torch.ops.llama.update_cache(_rows(v, v_cache, slots, src, real, zero), v_cache, p)
    qh = _roll(q, src).view(T, Hkv, H // Hkv, D).transpose(0, 1).contiguous()  # [Hkv, T, G, D]
    o = torch.ops.llama.custom_sdpa(qh, k_cache, v_cache, p, None, 0.0, True)  # [Hkv, T, G, D]
    if not decode:
        torch.ops.llama.update_cache(_rows(v, v_cache, slots, src, real, kept_v), v_cache, p)
    o = o.transpose(0, 1).reshape(T, H, D)
    return pad_rows_zero(_roll(o, back), input_pos)


def _roll(x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    return x if rows is None else x.index_select(0, rows)


def attend(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
    """q [T, H, D] against the caches [Hkv, S, D]: query i sees positions 0 .. input_pos[i] -> [T, H, D]. One dense
    softmax over every cache position; stale entries masked in the scores and zeroed in the values."""
    T, H, D = q.shape
    Hkv, S = k_cache.shape[0], k_cache.shape[1]
    G = H // Hkv
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    # [Hkv, G T, D], row g * T + t: the query heads sharing a KV head stacked
    qh = q.to(ct).reshape(T, Hkv, G, D).permute(1, 2, 0, 3).reshape(Hkv, G * T, D) * D**-0.5
    keys = torch.arange(S, device=q.device)
    visible = keys[None, :] <= input_pos.repeat(G)[:, None]  # [G T, S]
    # bmm, not @: matmul's broadcasting would copy the whole cache (an expand) in the edge dialect
    s = torch.where(visible, torch.bmm(qh, k_cache.to(ct).transpose(1, 2)), float("-inf"))  # [Hkv, G T, S]
    p = torch.softmax(s, dim=-1)
    # a select, not a product (0 x NaN is NaN), over a [1, S, 1] mask: cheaper than masked_fill's expanded [S, D]
    keep = (keys <= input_pos.amax(0, keepdim=True))[None, :, None]
    v = torch.where(keep, v_cache.to(ct), torch.zeros((), dtype=ct))  # [Hkv, S, D]
    o = torch.bmm(p, v)  # [Hkv, G T, D]
    return pad_rows_zero(o.reshape(Hkv, G, T, D).permute(2, 0, 1, 3).reshape(T, H, D), input_pos).to(q.dtype)
