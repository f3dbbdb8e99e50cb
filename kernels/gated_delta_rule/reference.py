"""The gated delta rule in plain PyTorch: the specification the Triton kernels are tested against.

Per value head h (key head h // (Hv // Hk)), with q, k L2-normalised and q scaled by K**-0.5:
    S <- S * exp(g_t)
    S <- S + k_t (beta_t (v_t - S^T k_t))^T
    o_t = S^T q_t
S is [K, V]. Everything is computed in float32; o is returned in v's dtype and S stays float32.

`chunk_gated_delta_rule` evaluates the same recurrence 64 tokens at a time in the WY form. It has no
data-dependent control flow, and with T <= 64 the chunk loop runs once, so it traces into plain ATen
ops under `torch.export` for a prefill bounded by the chunk size (the ExecuTorch CPU path).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..causal_conv1d.reference import causal_conv1d

CHUNK = 64
BLOCK = 16  # rows of the diagonal blocks of the triangular inverse


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def gates(a: torch.Tensor, b: torch.Tensor, A_log: torch.Tensor, dt_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a, b [..., Hv] raw projections; A_log, dt_bias [Hv] -> g (log decay, <= 0), beta, both float32."""
    g = -A_log.float().exp() * F.softplus(a.float() + dt_bias.float())
    return g, b.float().sigmoid()


def _heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[1, T, Hk, K], [1, T, Hk, K], [1, T, Hv, V] -> float32 [Hv, T, K], [Hv, T, K], [Hv, T, V]."""
    group = v.shape[2] // q.shape[2]
    q = l2norm(q[0].float()) * q.shape[-1] ** -0.5
    k = l2norm(k[0].float())
    if group > 1:
        q = q.repeat_interleave(group, dim=1)
        k = k.repeat_interleave(group, dim=1)
    return q.transpose(0, 1), k.transpose(0, 1), v[0].float().transpose(0, 1)


def _unit_lower_inverse(a: torch.Tensor) -> torch.Tensor:
    """(I + a)^-1 for a strictly lower triangular a [H, L, L], L <= CHUNK, without a triangular solver (not
    an ExecuTorch portable op): forward substitution inside BLOCK x BLOCK diagonal blocks, row r of every
    block in one step, then block forward substitution down the block rows. Trained models' keys are
    nearly parallel, which makes this matrix badly conditioned: a product of repeated squarings lost every
    digit by row ~40 in float32 there (DESIGN.md)."""
    L = a.shape[-1]
    idx = torch.arange(L, device=a.device)
    eye = torch.eye(L, dtype=a.dtype, device=a.device)
    same = (idx[:, None] // BLOCK) == (idx[None, :] // BLOCK)
    a_diag = torch.where(same, a, torch.zeros_like(a))
    d = eye.expand_as(a)
    # fixed step counts (L may be symbolic under torch.export): steps past L match no row. Rows are selected
    # by m * new + (1 - m) * old with a 0/1 mask m, exactly the chosen value for finite ones: elementwise ops
    # XNNPACK runs inside the surrounding partition, where a where() would split it
    for r in range(1, BLOCK):
        # rows with in-block index r: d_i = e_i - sum_j a_ij d_j over the final rows j < i of its block
        m = (idx % BLOCK == r)[:, None].to(a.dtype)
        d = m * (eye - torch.bmm(a_diag, d)) + (1 - m) * d
    a_off = a - a_diag
    x = d
    for b in range(1, CHUNK // BLOCK):
        # block row b: X_b = D_b - D_bb sum_{k<b} A_bk X_k, the rows X_k (k < b) being final
        m = (idx // BLOCK == b)[:, None].to(a.dtype)
        x = m * (x - torch.bmm(d, torch.bmm(a_off, x))) + (1 - m) * x
    return x


def _chunk(q, k, v, g, beta, state):
    """One chunk. q, k [H, L, K]; v [H, L, V]; g, beta [H, L]; state [H, K, V] -> o [H, L, V], new state.
    bmm, not @, throughout: the same kernel, but @'s batch broadcasting copies each operand in ExecuTorch's
    edge dialect."""
    G = g.cumsum(-1)  # [H, L]
    L = q.shape[1]
    causal = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    strictly_lower = torch.ones(L, L, dtype=torch.bool, device=q.device).tril(-1)
    # decay between positions j <= i: exp(G_i - G_j); masked before exp so it never overflows
    diff = G.unsqueeze(-1) - G.unsqueeze(-2)
    decay = torch.where(causal, diff, torch.full_like(diff, float("-inf"))).exp()  # [H, L, L]
    k_beta = k * beta.unsqueeze(-1)
    a = torch.bmm(k_beta, k.transpose(-1, -2)) * decay
    t_inv = _unit_lower_inverse(torch.where(strictly_lower, a, torch.zeros_like(a)))
    u = torch.bmm(t_inv, v * beta.unsqueeze(-1))  # [H, L, V]
    w = torch.bmm(t_inv, k_beta * G.exp().unsqueeze(-1))  # [H, L, K]
    v_new = u - torch.bmm(w, state)
    attn = torch.bmm(q, k.transpose(-1, -2)) * decay
    o = torch.bmm(q * G.exp().unsqueeze(-1), state) + torch.bmm(attn, v_new)
    g_last = G[:, -1:]  # [H, 1]
    k_decayed = k * (g_last - G).exp().unsqueeze(-1)
    state = state * g_last.exp().unsqueeze(-1) + torch.bmm(k_decayed.transpose(-1, -2), v_new)
    return o, state


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
    reset: torch.Tensor,
) -> torch.Tensor:
    """Prefill. q, k [1, T, Hk, K]; v [1, T, Hv, V]; g, beta [1, T, Hv]; state [1, Hv, K, V] float32;
    reset [1] bool (treat the incoming state as zero). Writes the final state into `state`;
    returns o [1, T, Hv, V] in v's dtype."""
    T = q.shape[1]
    qh, kh, vh = _heads(q, k, v)
    gh, bh = g[0].float().transpose(0, 1), beta[0].float().transpose(0, 1)  # [Hv, T]
    s = torch.where(reset, torch.zeros_like(state), state)[0].float()
    outs, start = [], 0
    # no range(T): with T <= CHUNK known from an export's bounds this loop traces once, T stays symbolic
    while True:
        end = start + CHUNK
        o, s = _chunk(qh[:, start:end], kh[:, start:end], vh[:, start:end], gh[:, start:end], bh[:, start:end], s)
        outs.append(o)
        start = end
        if start >= T:
            break
    o = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
    state.copy_(s.unsqueeze(0))
    return o.transpose(0, 1).unsqueeze(0).to(v.dtype)


def recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    state: torch.Tensor,
    reset: torch.Tensor,
    count: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode, one token, gates computed from the raw projections. q, k [1, 1, Hk, K]; v [1, 1, Hv, V];
    a, b [1, 1, Hv]; A_log, dt_bias [Hv]; state [1, Hv, K, V] float32 (updated in place); reset [1] bool;
    count [1] int64 or None: 0 makes the token a pad, g = beta = 0 and k = v = 0 selected over whatever its
    inputs hold, so the state stays bit-equal. Returns o [1, 1, Hv, V] in v's dtype."""
    g, beta = gates(a, b, A_log, dt_bias)
    qh, kh, vh = _heads(q, k, v)  # [Hv, 1, K], [Hv, 1, K], [Hv, 1, V]
    if count is not None:
        real = count > 0  # [1]
        g, beta = torch.where(real, g, 0.0), torch.where(real, beta, 0.0)
        kh, vh = torch.where(real, kh, 0.0), torch.where(real, vh, 0.0)
    s = torch.where(reset, torch.zeros_like(state), state)[0].float()
    s = s * g[0, 0].exp()[:, None, None]
    kv = (kh.transpose(-1, -2) * s).sum(-2, keepdim=True)  # [Hv, 1, V]: S^T k
    delta = (vh - kv) * beta[0, 0][:, None, None]
    s = s + kh.transpose(-1, -2) * delta
    o = torch.bmm(qh, s)  # [Hv, 1, V]
    state.copy_(s.unsqueeze(0))
    return o.transpose(0, 1).unsqueeze(0).to(v.dtype)


def fused_heads(projected: torch.Tensor, conv_state: torch.Tensor, state: torch.Tensor) -> tuple[int, int, int, int]:
    """-> (Hk, K, Hv, V) of a fused decode call: Hv, K, V from the state [1, Hv, K, V], Hk from the conv's
    channels (conv_dim = 2 Hk K + Hv V). One clear line for shapes that do not fit together."""
    conv_dim = conv_state.shape[-1]
    Hv, K, V = state.shape[1:] if state.dim() == 4 else (0, 1, 0)
    Hk = (conv_dim - Hv * V) // (2 * K)
    want = conv_dim + Hv * V + 2 * Hv
    if Hv == 0 or Hk <= 0 or 2 * Hk * K + Hv * V != conv_dim or Hv % Hk or tuple(projected.shape) != (1, want):
        raise ValueError(f"fused GDN decode wants projected [1, conv_dim + Hv V + 2 Hv] with conv_dim = 2 Hk K + Hv V "
                         f"and Hk dividing Hv; got projected {tuple(projected.shape)}, conv state "
                         f"{tuple(conv_state.shape)}, state {tuple(state.shape)}")
    return Hk, K, Hv, V


def conv_recurrent_gated_delta_rule(
    projected: torch.Tensor,
    conv_state: torch.Tensor,
    conv_weight: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    state: torch.Tensor,
    reset: torch.Tensor,
    count: torch.Tensor | None = None,
) -> torch.Tensor:
    """One GDN decode step from the in_proj output: the causal conv (+ SiLU) of qkv, then the recurrence.
    projected [1, conv_dim + Hv V + 2 Hv] = [q | k | v | z | b | a] (q, k [Hk K], v and z [Hv V], b, a [Hv]);
    conv_state [1, W - 1, conv_dim] and state [1, Hv, K, V] float32, both updated in place; conv_weight
    [conv_dim, W]; A_log, dt_bias [Hv]; reset [1] bool; count [1] int64 or None (0: a pad, both states kept).
    Returns o [1, Hv, V] in projected's dtype (before the gated norm; z is not read)."""
    Hk, K, Hv, V = fused_heads(projected, conv_state, state)
    conv_dim = conv_state.shape[-1]
    qkv, _, b, a = projected.split([conv_dim, Hv * V, Hv, Hv], dim=-1)
    y = causal_conv1d(qkv.unsqueeze(0), conv_state, conv_weight, reset, count)  # [1, 1, conv_dim]
    q, k, v = y.split([Hk * K, Hk * K, Hv * V], dim=-1)
    o = recurrent_gated_delta_rule(
        q.reshape(1, 1, Hk, K), k.reshape(1, 1, Hk, K), v.reshape(1, 1, Hv, V), a.reshape(1, 1, Hv),
        b.reshape(1, 1, Hv), A_log, dt_bias, state, reset, count,
    )
    return o[0]


def naive_recurrence(q, k, v, g, beta, state):
    """Token by token, float64-friendly (runs in the inputs' dtype): the ground truth for tests.
    Same shapes as `chunk_gated_delta_rule`; returns (o [1, T, Hv, V], final state [1, Hv, K, V])."""
    group = v.shape[2] // q.shape[2]
    qh = l2norm(q[0]) * q.shape[-1] ** -0.5
    kh = l2norm(k[0])
    qh, kh = qh.repeat_interleave(group, 1), kh.repeat_interleave(group, 1)
    s = state[0].clone()
    outs = []
    for t in range(q.shape[1]):
        s = s * g[0, t].exp()[:, None, None]
        kv = torch.einsum("hkv,hk->hv", s, kh[t])
        delta = (v[0, t] - kv) * beta[0, t][:, None]
        s = s + torch.einsum("hk,hv->hkv", kh[t], delta)
        outs.append(torch.einsum("hkv,hk->hv", s, qh[t]))
    return torch.stack(outs).unsqueeze(0), s.unsqueeze(0)
