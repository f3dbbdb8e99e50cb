"""Train `GDNForCausalLM` with its own modules: a batched, stateless training forward, an initialisation,
and a writer that saves the parameters in Hugging Face layout (the exact inverse of the loader's recipes).

The inference forward is batch 1 and keeps its state in buffers; `train_logits` runs the same modules on
[B, T] token blocks from a zero state. The gated delta rule is the reference chunked kernel (plain PyTorch,
differentiable) with the batch folded into the heads; attention is causal SDPA (the inference path's math
over a full causal mask); the routed experts loop over experts, which equals the reference gather exactly.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from gdn.export.checkpoint import recipes
from gdn.export.model import Attention, GatedDeltaNet, GDNForCausalLM, SparseMoE, apply_rotary
from gdn.kernels.gated_delta_rule.reference import gates
from gdn.kernels.moe.reference import route, shared_expert


def gdn_forward(m: GatedDeltaNet, x: torch.Tensor) -> torch.Tensor:
    """x [B, T, H] -> [B, T, H], starting from a zero state."""
    B, T, _ = x.shape
    qkv, z, b, a = m.in_proj(x).split([m.conv_dim, m.value_dim, m.hv, m.hv], dim=-1)
    reset = torch.ones(1, dtype=torch.bool)
    conv_state = qkv.new_zeros(B, m.conv_weight.shape[1] - 1, m.conv_dim)
    qkv = m.kernels.causal_conv1d(qkv, conv_state, m.conv_weight, reset)
    key_dim = m.hk * m.dk
    q, k, v = qkv.split([key_dim, key_dim, m.value_dim], dim=-1)
    g, beta = gates(a, b, m.A_log, m.dt_bias)  # [B, T, Hv]

    def fold(t: torch.Tensor, heads: int) -> torch.Tensor:
        # [B, T, heads * d] -> [1, T, B * heads, d]: batch rows become extra heads of one sequence
        return t.view(B, T, heads, -1).transpose(0, 1).reshape(1, T, B * heads, -1)

    state = x.new_zeros(1, B * m.hv, m.dk, m.dv, dtype=torch.float32)
    o = m.kernels.chunk_gated_delta_rule(fold(q, m.hk), fold(k, m.hk), fold(v, m.hv), fold(g, m.hv)[..., 0],
                                         fold(beta, m.hv)[..., 0], state, reset)
    o = o[0].view(T, B, m.hv, m.dv).transpose(0, 1)  # [B, T, Hv, V]
    o = m.norm(o, z.view(B, T, m.hv, m.dv))
    return m.out_proj(o.reshape(B, T, m.value_dim))


def attention_forward(m: Attention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H]; cos, sin [T, rot] -> [B, T, H], causal over the block."""
    B, T, _ = x.shape
    D, q_out, kv_out = m.head_dim, m.n_heads * m.head_dim, m.n_kv * m.head_dim
    qg, k, v = m.qkv_proj(x).split([2 * q_out, kv_out, kv_out], dim=-1)
    q, gate = qg.view(B, T, m.n_heads, 2 * D).chunk(2, dim=-1)
    q = apply_rotary(m.q_norm(q), cos, sin).transpose(1, 2)  # [B, Hq, T, D]
    k = apply_rotary(m.k_norm(k.view(B, T, m.n_kv, D)), cos, sin).transpose(1, 2)
    v = v.view(B, T, m.n_kv, D).transpose(1, 2)
    group = m.n_heads // m.n_kv
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, q_out)
    return m.o_proj(out * torch.sigmoid(gate.reshape(B, T, q_out)))


def moe_forward(m: SparseMoE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, H] -> (output [N, H], load-balancing loss: E * sum_e tokens share_e * mean router prob_e)."""
    E, S = m.n_experts, m.shared_inter
    rs = m.router_shared(x)
    logits, act, gate = rs[:, :E], rs[:, E : E + 2 * S], rs[:, E + 2 * S : E + 2 * S + 1]
    weights, idx = route(logits, m.top_k, m.renormalize)  # [N, k]
    # token copies sorted by expert: one gather, one contiguous block per expert, one scatter back
    flat = idx.flatten()  # [N * k]
    order = flat.argsort(stable=True)
    tok = order // m.top_k
    counts = torch.bincount(flat, minlength=E).tolist()
    inter = m.down.shape[-1]
    outs = []
    for e, xe in enumerate(x[tok].split(counts)):
        gu = xe @ m.gate_up[e].T  # [n_e, 2I]
        outs.append((F.silu(gu[:, :inter]) * gu[:, inter:]) @ m.down[e].T)
    routed = torch.cat(outs) * weights.flatten()[order, None]
    out = shared_expert(act, gate, m.shared_down_proj.weight).index_add(0, tok, routed)
    share = torch.tensor(counts, dtype=torch.float32) / flat.numel()
    balance = E * (share * F.softmax(logits, dim=-1, dtype=torch.float32).mean(0)).sum()
    return out, balance


def train_logits(model: GDNForCausalLM, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens [B, T] -> (logits [B, T, vocab], mean load-balancing loss over the MoE layers)."""
    B, T = tokens.shape
    x = model.embed_tokens(tokens)
    cos, sin = model.rotary(torch.arange(T), x.dtype)
    balance = x.new_zeros(())
    for layer in model.layers:
        h = layer.input_layernorm(x)
        h = gdn_forward(layer.linear_attn, h) if layer.is_linear else attention_forward(layer.self_attn, h, cos, sin)
        x = x + h
        h = layer.post_attention_layernorm(x).view(B * T, -1)
        if isinstance(layer.mlp, SparseMoE):
            h, b = moe_forward(layer.mlp, h)
            balance = balance + b
        else:
            h = layer.mlp(h)
        x = x + h.view(B, T, -1)
    return model.lm_head(model.norm(x)), balance / len(model.layers)


@torch.no_grad()
def initialise(model: GDNForCausalLM, gen: torch.Generator, std: float = 0.02) -> None:
    """Normal(0, std) matrices (output projections scaled by 1/sqrt(2 * layers)), zero-centred norms at 0,
    GDN decays A = U(1, 16) and dt_bias = softplus^-1 of a log-uniform step in [1e-3, 0.1]."""
    residual = std / math.sqrt(2 * len(model.layers))
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if name.endswith("A_log"):
            p.copy_(torch.empty(p.shape).uniform_(1.0, 16.0, generator=gen).log())
        elif leaf == "dt_bias":
            dt = torch.exp(torch.empty(p.shape).uniform_(math.log(1e-3), math.log(0.1), generator=gen))
            p.copy_(dt + torch.log(-torch.expm1(-dt)))
        elif "norm" in name:
            p.fill_(1.0 if name.endswith("linear_attn.norm.weight") else 0.0)
        elif leaf == "conv_weight":
            bound = 1 / math.sqrt(p.shape[1])
            p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=gen))
        elif any(s in name for s in ("o_proj", "out_proj", "down_proj", ".down")):
            p.copy_(torch.randn(p.shape, generator=gen) * residual)
        else:
            p.copy_(torch.randn(p.shape, generator=gen) * std)


def hf_state_dict(model: GDNForCausalLM, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The checkpoint tensors the loader would read back into exactly these parameters.

    Each recipe piece writes a checkpoint tensor into a region of a parameter; writing the piece's element
    indices into a marker tensor shows which parameter element each checkpoint element came from."""
    params = dict(model.named_parameters())
    out: dict[str, torch.Tensor] = {}
    for name, pieces in recipes(model.cfg, set()).items():
        value = params[name].detach().reshape(-1)
        for piece in pieces:
            marker = torch.full(params[name].shape, -1.0, dtype=torch.float64)
            numel = math.prod(piece.shape)
            piece.write(marker, torch.arange(numel, dtype=torch.float64).view(piece.shape))
            where = (marker.reshape(-1) >= 0).nonzero()[:, 0]
            t = torch.empty(numel, dtype=value.dtype)
            t[marker.reshape(-1)[where].long()] = value[where]
            out[piece.key] = t.view(piece.shape).to(dtype).contiguous()
    return out


def save_weights(model: GDNForCausalLM, path: Path, dtype: torch.dtype) -> None:
    save_file(hf_state_dict(model, dtype), str(path), metadata={"format": "pt"})
