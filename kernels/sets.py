"""The two kernel sets behind one function boundary that the model calls.

`REFERENCE` calls plain PyTorch, which traces into ATen ops, what the ExecuTorch CPU runtime executes: the
specifications (`reference.py`) directly, or where the CPU runs another formulation faster, its `cpu.py`
(tested against the specification in float64). `OPS` calls the registered `torch.ops.gdn.*` ops, which
`torch.export` keeps opaque (any prefill length) and AOTInductor compiles with their Triton kernels on CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .attention import cpu as _attn_cpu
from .attention import op as _attn_op
from .attention import reference as _attn_ref
from .causal_conv1d import cpu as _conv_cpu
from .causal_conv1d import op as _conv_op
from .causal_conv1d import reference as _conv_ref
from .gated_delta_rule import cpu as _gdr_cpu
from .gated_delta_rule import op as _gdr_op
from .gated_delta_rule import reference as _gdr_ref
from .gemm import op as _gemm_op
from .gemm import reference as _gemm_ref
from .gemv import op as _gemv_op
from .gemv import reference as _gemv_ref
from .moe import cpu as _moe_cpu
from .moe import op as _moe_op
from .qgemm import op as _qgemm_op
from .qgemm import reference as _qgemm_ref
from .qgemv import op as _qgemv_op
from .qgemv import reference as _qgemv_ref
from .qmoe import op as _qmoe_op


def hkv_s_d_cache(n_kv: int, max_seq_len: int, head_dim: int, dtype) -> tuple[int, ...]:
    """The KV cache layout of reference.py and the Triton kernels: [Hkv, S, D]."""
    return (n_kv, max_seq_len, head_dim)


@dataclass(frozen=True)
class KernelSet:
    name: str
    causal_conv1d: Callable
    chunk_gated_delta_rule: Callable
    recurrent_gated_delta_rule: Callable
    moe_shared: Callable
    gemv: Callable
    norm_gemv: Callable
    qgemv: Callable
    norm_qgemv: Callable
    prefill_attention: Callable
    decode_attention: Callable
    gemm: Callable
    norm_gemm: Callable
    qgemm: Callable
    norm_qgemm: Callable
    # (n_kv, max_seq_len, head_dim, dtype) -> the KV cache buffer's shape, the layout the attention kernels take
    kv_cache_shape: Callable = hkv_s_d_cache
    # MoE on quantized experts (gdn::qmoe_shared); None: the model dequantizes them and calls moe_shared
    qmoe_shared: Callable | None = None
    # the fused decode steps (None: the model composes the unfused ops): the GDN conv + recurrence from the
    # in_proj output (gdn::conv_recurrent_gated_delta_rule), out_proj with the gated RMS norm in front
    conv_recurrent_gated_delta_rule: Callable | None = None
    gated_norm_gemv: Callable | None = None


REFERENCE = KernelSet(
    "reference",
    _conv_cpu.causal_conv1d,
    _gdr_cpu.chunk_gated_delta_rule,
    _gdr_ref.recurrent_gated_delta_rule,
    _moe_cpu.moe_shared,
    _gemv_ref.gemv,
    _gemv_ref.norm_gemv,
    _qgemv_ref.gemv,
    _qgemv_ref.norm_gemv,
    _attn_cpu.prefill_attention,
    _attn_cpu.decode_attention,
    _gemm_ref.gemm,
    _gemm_ref.norm_gemm,
    _qgemm_ref.gemm,
    _qgemm_ref.norm_gemm,
    _attn_cpu.cache_shape,
)
OPS = KernelSet(
    "ops",
    _conv_op.causal_conv1d,
    _gdr_op.chunk_gated_delta_rule,
    _gdr_op.recurrent_gated_delta_rule,
    _moe_op.moe_shared,
    _gemv_op.gemv,
    _gemv_op.norm_gemv,
    _qgemv_op.qgemv,
    _qgemv_op.norm_qgemv,
    _attn_op.prefill_attention,
    _attn_op.decode_attention,
    _gemm_op.gemm,
    _gemm_op.norm_gemm,
    _qgemm_op.qgemm,
    _qgemm_op.norm_qgemm,
    qmoe_shared=_qmoe_op.qmoe_shared,
    conv_recurrent_gated_delta_rule=_gdr_op.conv_recurrent_gated_delta_rule,
    gated_norm_gemv=_gemv_op.gated_norm_gemv,
)
KERNEL_SETS = {k.name: k for k in (REFERENCE, OPS)}
