"""The Gated-DeltaNet hybrid decoder (Qwen3-Next, Qwen3.5, Qwen3.5-MoE), batch 1, made for torch.export.

All decode state lives in registered buffers sized once (KV caches, conv and recurrent states) and is
updated in place. `forward(tokens [1, T], input_pos [T]) -> logits [1, vocab]` of the last real position.
A call whose input_pos[0] == 0 starts a new sequence: the GDN states are read as zero (on the device,
no host branch), and stale KV entries are masked by position.

Pads (for graphs captured per length bucket, and multi-step decode that stops inside a block): a token whose
input_pos is -1 is a pad. In prefill the pads are a suffix: n >= 1 real tokens at contiguous positions p0 ..
p0 + n - 1, then T - n pads; a decode call with input_pos [-1] is a no-op step. Every state buffer (KV caches,
conv and recurrent states) ends as after the call without the pads, and the logits are those of token n - 1 (a
decode pad's logits are finite and meaningless): the pads themselves change nothing bit for bit (a decode no-op
leaves every buffer bit-equal), but a projection may round a real row differently at another row count T (the
GEMM's blocking). A pad's token id may be anything. Nothing is checked on the host (the positions live on the
device): other layouts are outside the contract.

Projections that read the same input are stored fused (one matrix per layer input), a layout the
loader writes once: GDN `in_proj` = [qkv | z | b | a], attention `qkv_proj` = [q+gate | k | v],
MLP `gate_up_proj` = [gate | up], MoE `router_shared` = [router | shared gate_up | shared gate].
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gdn.kernels import KERNEL_SETS, KernelSet
from gdn.kernels.gemv.reference import rms_norm

from .config import LINEAR, ModelConfig
from .quant import QuantEmbedding, QuantLinear, QuantScheme, dense_weight, make_linear


def project(layer: nn.Module, x: torch.Tensor, kernels: KernelSet, decode: bool, act: str = "none") -> torch.Tensor:
    """layer(x) (an nn.Linear or a QuantLinear). One token (decode): the mat-vec kernel, after `act` (a GEMM's
    grid is too small for one row at these widths, kernels/gemv/DESIGN.md). More tokens: the set's GEMM (one
    exported graph for every chunk length, kernels/gemm/DESIGN.md); a QuantLinear through the quantized forms
    (qgemv, qgemm: dequantized in registers on CUDA, dequantize then multiply in the reference set)."""
    if isinstance(layer, QuantLinear):
        q = (layer.qweight, layer.scales, layer.bits, layer.group)
        return kernels.qgemv(x, *q, act) if decode else kernels.qgemm(x, *q)
    return kernels.gemv(x, layer.weight, act) if decode else kernels.gemm(x, layer.weight)


class RMSNorm(nn.Module):
    """x / rms(x) * (1 + w), computed in float32 (the Qwen3-Next / Qwen3.5 zero-centred convention)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def norm_project(x, delta, norm: RMSNorm, proj: nn.Module, kernels: KernelSet, decode: bool):
    """-> (r = x + delta, n = norm(r), proj(n)). One token in one kernel (the set's norm_gemv or norm_qgemv),
    which loads its weights while the kernel before it drains and leaves the add and the norm no kernel of their
    own; more tokens through the set's norm_gemm (the norm once per row, then the GEMM); a quantized proj through
    norm_qgemv / norm_qgemm (the reference set: dequantized first, then the float reference)."""
    if isinstance(proj, QuantLinear):
        op = kernels.norm_qgemv if decode else kernels.norm_qgemm
        y, r, n = op(x, delta, norm.weight, norm.eps, proj.qweight, proj.scales, proj.bits, proj.group)
    elif decode:
        y, r, n = kernels.norm_gemv(x, delta, norm.weight, norm.eps, proj.weight)
    else:
        y, r, n = kernels.norm_gemm(x, delta, norm.weight, norm.eps, proj.weight)
    return r, n, y


class GatedRMSNorm(nn.Module):
    """w * (x / rms(x)) * silu(z), per head (plain weight, not zero-centred)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:
            # a cast keeps x's strides (a slice of the padded chunk), whose contiguity check guards on T
            x = x.clone(memory_format=torch.contiguous_format)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        out = self.weight * xf.to(x.dtype)
        return (out * F.silu(z.float())).to(x.dtype)


class Rotary(nn.Module):
    """Partial rotate-half rotary embedding on the first `rotary_dim` dims of each head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dim = cfg.rotary_dim
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, input_pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = input_pos.float()[:, None] * self.inv_freq  # [T, rot/2]
        emb = torch.cat([freqs, freqs], dim=-1)  # [T, rot]
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, H, D]; cos, sin [T, rot]."""
    rot = cos.shape[-1]
    xr, xp = x[..., :rot], x[..., rot:]
    x1, x2 = xr[..., : rot // 2], xr[..., rot // 2 :]
    rotated = torch.cat([-x2, x1], dim=-1)
    xr = xr * cos[:, None] + rotated * sin[:, None]
    return torch.cat([xr, xp], dim=-1)


class Attention(nn.Module):
    """Gated full attention with q/k RMSNorm, partial rotary, GQA and a static KV cache."""

    def __init__(self, cfg: ModelConfig, max_seq_len: int, dtype: torch.dtype, kernels: KernelSet,
                 quant: QuantScheme | None = None):
        super().__init__()
        self.kernels = kernels
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q_out, kv_out = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        self.qkv_proj = make_linear(cfg.hidden_size, 2 * q_out + 2 * kv_out, quant)
        self.o_proj = make_linear(q_out, cfg.hidden_size, quant)
        self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        # [Hkv, S, D] (float32 CPU kernels: [Hkv, S, 1, D], the same bytes): no leading batch dim, so the attention
        # ops take the caches without a view (the edge dialect turns views into copies, a whole cache per step)
        cache = kernels.kv_cache_shape(self.n_kv, max_seq_len, self.head_dim, dtype)
        self.register_buffer("k_cache", torch.zeros(cache, dtype=dtype))
        self.register_buffer("v_cache", torch.zeros(cache, dtype=dtype))

    @property
    def input_proj(self) -> nn.Module:
        return self.qkv_proj

    def forward(self, qkv, input_pos, cos, sin, decode: bool):
        """qkv [T, 2 q_out + 2 kv_out]: the normed input's `input_proj` (the decoder layer computes it). A pad
        (input_pos -1) writes no cache entry; its output row is 0 (kernels/attention/reference.py)."""
        T, D = qkv.shape[0], self.head_dim
        q_out, kv_out = self.n_heads * D, self.n_kv * D
        qg, k, v = qkv.split([2 * q_out, kv_out, kv_out], dim=-1)
        q, gate = qg.view(T, self.n_heads, 2 * D).chunk(2, dim=-1)  # [T, H, D] each
        q = apply_rotary(self.q_norm(q), cos, sin)
        k = apply_rotary(self.k_norm(k.view(T, self.n_kv, D)), cos, sin)
        attend = self.kernels.decode_attention if decode else self.kernels.prefill_attention
        # writes k, v into the caches at input_pos, then attends over positions 0..input_pos only
        out = attend(q, k, v.view(T, self.n_kv, D), self.k_cache, self.v_cache, input_pos)  # [T, H, D]
        return project(self.o_proj, out.reshape(T, q_out) * torch.sigmoid(gate.reshape(T, q_out)), self.kernels, decode)


class GatedDeltaNet(nn.Module):
    """Linear attention with the gated delta rule, a causal conv over q/k/v and a gated output norm."""

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, state_dtype: torch.dtype, kernels: KernelSet,
                 quant: QuantScheme | None = None):
        super().__init__()
        self.kernels = kernels
        self.hk, self.hv = cfg.linear_num_key_heads, cfg.linear_num_value_heads
        self.dk, self.dv = cfg.linear_key_head_dim, cfg.linear_value_head_dim
        self.conv_dim, self.value_dim = cfg.conv_dim, cfg.value_dim
        self.in_proj = make_linear(cfg.hidden_size, self.conv_dim + self.value_dim + 2 * self.hv, quant)
        self.conv_weight = nn.Parameter(torch.zeros(self.conv_dim, cfg.linear_conv_kernel_dim))
        self.dt_bias = nn.Parameter(torch.ones(self.hv))
        self.A_log = nn.Parameter(torch.zeros(self.hv))
        self.norm = GatedRMSNorm(self.dv, cfg.rms_norm_eps)
        self.out_proj = make_linear(self.value_dim, cfg.hidden_size, quant)
        conv_state = (1, cfg.linear_conv_kernel_dim - 1, self.conv_dim)
        self.register_buffer("conv_state", torch.zeros(conv_state, dtype=dtype))
        self.register_buffer("recurrent_state", torch.zeros(1, self.hv, self.dk, self.dv, dtype=state_dtype))

    @property
    def input_proj(self) -> nn.Module:
        return self.in_proj

    def forward(self, projected, reset, decode: bool, valid=None, count=None):
        """projected [T, conv_dim + value_dim + 2 Hv]: the normed input's `in_proj` (the decoder layer computes it).
        valid [T] bool (False: a pad) and count [1] int64 (the real tokens, which come first), or both None (no
        pads). A pad leaves both states as they were: the conv zeroes its q, k, v and keeps the last real inputs;
        its g and beta are 0 (no decay, no write), selected (where, or in the decode kernel by count) rather than
        multiplied, so its garbage (NaN included) never enters."""
        if decode and self.kernels.conv_recurrent_gated_delta_rule is not None:
            return self.fused_decode(projected, reset, count)
        T = projected.shape[0]
        sizes = [self.conv_dim, self.value_dim, self.hv, self.hv]
        qkv, z, b, a = projected.split(sizes, dim=-1)
        # [1, T, conv_dim], the pads' rows 0
        qkv = self.kernels.causal_conv1d(qkv.unsqueeze(0), self.conv_state, self.conv_weight, reset, count)
        key_dim = self.hk * self.dk
        q, k, v = qkv.split([key_dim, key_dim, self.value_dim], dim=-1)
        q, k = q.view(1, T, self.hk, self.dk), k.view(1, T, self.hk, self.dk)
        v = v.view(1, T, self.hv, self.dv)
        a, b = a.view(1, T, self.hv), b.view(1, T, self.hv)
        if decode:
            # count 0 (a pad): the kernel selects g = beta = 0 itself, no extra launch per layer and step
            o = self.kernels.recurrent_gated_delta_rule(
                q, k, v, a, b, self.A_log, self.dt_bias, self.recurrent_state, reset, count
            )
        else:
            g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias.float())  # [1, T, Hv]
            beta = b.float().sigmoid()
            if valid is not None:
                real = valid[None, :, None]  # [1, T, 1]
                g, beta = torch.where(real, g, 0.0), torch.where(real, beta, 0.0)
            o = self.kernels.chunk_gated_delta_rule(q, k, v, g, beta, self.recurrent_state, reset)
        return self.output(o[0], z, decode)

    def fused_decode(self, projected, reset, count):
        """One token through the set's fused step: conv, gates, norms and recurrence read `projected` [1, ...]
        whole (no split of q, k, v), then `output`."""
        o = self.kernels.conv_recurrent_gated_delta_rule(
            projected, self.conv_state, self.conv_weight, self.A_log, self.dt_bias, self.recurrent_state, reset, count
        )  # [1, Hv, V]
        return self.output(o, projected[:, self.conv_dim : self.conv_dim + self.value_dim], True)

    def output(self, o, z, decode: bool):
        """o [T, Hv, V], z [T, value_dim] -> out_proj(norm(o, z)). One token with the set's gated_norm_gemv (and a
        float out_proj): the gated norm inside the projection's kernel."""
        T = o.shape[0]
        if decode and self.kernels.gated_norm_gemv is not None and not isinstance(self.out_proj, QuantLinear):
            return self.kernels.gated_norm_gemv(o.reshape(1, self.value_dim), z, self.norm.weight, self.norm.eps,
                                                self.out_proj.weight)
        o = self.norm(o, z.view(T, self.hv, self.dv))  # [T, Hv, V]
        return project(self.out_proj, o.reshape(T, self.value_dim), self.kernels, decode)


class MLP(nn.Module):
    def __init__(self, hidden: int, inter: int, kernels: KernelSet, quant: QuantScheme | None = None):
        super().__init__()
        self.inter, self.kernels = inter, kernels
        self.gate_up_proj = make_linear(hidden, 2 * inter, quant)
        self.down_proj = make_linear(inter, hidden, quant)

    @property
    def input_proj(self) -> nn.Module:
        return self.gate_up_proj

    def forward(self, gate_up, decode: bool):
        """gate_up [T, 2I]: the normed input's `gate_up_proj` (the decoder layer computes it)."""
        if decode:
            return project(self.down_proj, gate_up, self.kernels, True, "silu_mul")
        gate, up = gate_up.split([self.inter, self.inter], dim=-1)
        return project(self.down_proj, F.silu(gate) * up, self.kernels, False)


class SparseMoE(nn.Module):
    """Top-k routed experts plus a shared expert with a sigmoid gate."""

    def __init__(self, cfg: ModelConfig, kernels: KernelSet, quant: QuantScheme | None = None):
        super().__init__()
        self.kernels = kernels
        self.n_experts, self.top_k, self.renormalize = cfg.num_experts, cfg.num_experts_per_tok, cfg.norm_topk_prob
        self.shared_inter = cfg.shared_expert_intermediate_size
        H, I = cfg.hidden_size, cfg.moe_intermediate_size
        self.router_shared = make_linear(H, self.n_experts + 2 * self.shared_inter + 1, quant)
        if quant is None:
            self.gate_up = nn.Parameter(torch.zeros(self.n_experts, 2 * I, H))
            self.down = nn.Parameter(torch.zeros(self.n_experts, H, I))
        else:  # stacked like the float experts; each row group-quantized along its input dim
            self.gate_up = QuantLinear((self.n_experts, 2 * I, H), quant)
            self.down = QuantLinear((self.n_experts, H, I), quant)
        self.shared_down_proj = make_linear(self.shared_inter, H, quant)

    @property
    def input_proj(self) -> nn.Module:
        return self.router_shared

    def packed(self) -> tuple[torch.Tensor, ...]:
        """The quantized experts' and shared down projection's (qweight, scales) pairs, in gdn::qmoe_shared's order."""
        return tuple(t for m in (self.gate_up, self.down, self.shared_down_proj) for t in (m.qweight, m.scales))

    def forward(self, x, router_shared, decode: bool):
        """x [T, H] normed; router_shared: its `router_shared` projection (the decoder layer computes it)."""
        # one op for router, routed experts and the gated shared expert: at decode the shared expert's
        # silu*up, down projection and gate fuse into the routed down kernel (kernels/moe/DESIGN.md)
        if isinstance(self.gate_up, QuantLinear) and self.kernels.qmoe_shared is not None:
            return self.kernels.qmoe_shared(x, router_shared, *self.packed(), self.top_k, self.renormalize,
                                            self.gate_up.bits, self.gate_up.group)
        # quantized experts on a set without qmoe_shared (the CPU reference): dequantized, then the float op
        return self.kernels.moe_shared(x, router_shared, dense_weight(self.gate_up), dense_weight(self.down),
                                       dense_weight(self.shared_down_proj), self.top_k, self.renormalize)


class DecoderLayer(nn.Module):
    """Residual stream x -> x + mixer(norm(x)) -> x + mlp(norm(x)), with each sum left to the next norm:
    `forward` returns the stream and the pending sublayer output, which the next layer (or the final norm) adds.
    At decode each add, norm and the projection after them are one kernel (gdn::norm_gemv)."""

    def __init__(self, cfg: ModelConfig, i: int, max_seq_len: int, dtype, state_dtype, kernels: KernelSet,
                 quant: QuantScheme | None = None):
        super().__init__()
        self.kernels = kernels
        self.is_linear = cfg.layer_types[i] == LINEAR
        self.is_moe = bool(cfg.moe_layers[i])
        if self.is_linear:
            self.linear_attn = GatedDeltaNet(cfg, dtype, state_dtype, kernels, quant)
        else:
            self.self_attn = Attention(cfg, max_seq_len, dtype, kernels, quant)
        if self.is_moe:
            self.mlp = SparseMoE(cfg, kernels, quant)
        else:
            self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, kernels, quant)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, delta, input_pos, reset, cos, sin, decode: bool, valid=None, count=None):
        """x [T, H] and delta [T, H] (None before the first layer): the stream is x + delta. valid [T] and
        count [1]: which tokens are real, and how many (pads come last); None: no pads.
        -> (the stream before this layer's MLP output, that output)."""
        mixer = self.linear_attn if self.is_linear else self.self_attn
        x, _, p = norm_project(x, delta, self.input_layernorm, mixer.input_proj, self.kernels, decode)
        if self.is_linear:
            h = self.linear_attn(p, reset, decode, valid, count)
        else:
            h = self.self_attn(p, input_pos, cos, sin, decode)
        x, n, p = norm_project(x, h, self.post_attention_layernorm, self.mlp.input_proj, self.kernels, decode)
        return x, self.mlp(n, p, decode) if self.is_moe else self.mlp(p, decode)


class GDNForCausalLM(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        max_seq_len: int = 2048,
        dtype: torch.dtype = torch.float32,
        state_dtype: torch.dtype = torch.float32,
        kernels: str = "reference",
        quant: QuantScheme | None = None,
    ):
        super().__init__()
        ks = KERNEL_SETS[kernels]
        self.cfg, self.max_seq_len, self.kernels, self.quant = cfg, max_seq_len, kernels, quant
        V, H = cfg.vocab_size, cfg.hidden_size
        self.embed_tokens = nn.Embedding(V, H) if quant is None else QuantEmbedding((V, H), quant)
        self.rotary = Rotary(cfg)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, i, max_seq_len, dtype, state_dtype, ks, quant) for i in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(H, cfg.rms_norm_eps)
        self.lm_head = make_linear(H, V, quant)
        self.tie_weights()

    def tie_weights(self) -> None:
        """A tied lm_head reads the embedding table: the same parameter, or quantized, the same module."""
        if not self.cfg.tie_word_embeddings:
            return
        if self.quant is None:
            self.lm_head.weight = self.embed_tokens.weight
        else:
            self.lm_head = self.embed_tokens

    @property
    def kernel_set(self) -> KernelSet:
        return KERNEL_SETS[self.kernels]

    def forward(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """tokens [1, T] int64, input_pos [T] int64 (-1: a pad, module docstring) -> logits [1, vocab] of the last
        real position. T == 1 (a static shape) takes the one-token decode kernels."""
        return self.run(tokens, input_pos, decode=tokens.shape[1] == 1)

    def prefill(self, tokens: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        """Like forward, but always the chunked path, so T may be dynamic down to 1."""
        return self.run(tokens, input_pos, decode=False)

    def run(self, tokens: torch.Tensor, input_pos: torch.Tensor, decode: bool) -> torch.Tensor:
        valid = input_pos >= 0  # [T]: False for a pad
        count = valid.sum(0, keepdim=True)  # [1]: the real tokens, which come first
        # a pad's id may be anything: it reads row 0 of the table instead, so its rows stay finite
        x, delta = self.embed_tokens(torch.where(valid, tokens[0], 0)), None  # [T, H]
        reset = input_pos[:1] == 0  # [1]
        cos, sin = self.rotary(input_pos, x.dtype)
        for layer in self.layers:
            x, delta = layer(x, delta, input_pos, reset, cos, sin, decode, valid, count)
        # one row in both methods (the last real position): the last add, the norm and lm_head in one mat-vec kernel
        if decode:
            x, delta = x[-1:], delta[-1:]
        else:
            last = (count - 1).clamp(min=0)  # [1], on the device
            x, delta = x.index_select(0, last), delta.index_select(0, last)
        _, _, logits = norm_project(x, delta, self.norm, self.lm_head, self.kernel_set, decode=True)
        return logits

    def state_buffers(self) -> dict[str, torch.Tensor]:
        """The mutable decode state, by buffer name."""
        return {n: b for n, b in self.named_buffers() if n.rsplit(".", 1)[-1] in STATE_BUFFERS}


STATE_BUFFERS = ("k_cache", "v_cache", "conv_state", "recurrent_state")
