"""torch's mutation analysis of our PDL kernels, as export runs it (no GPU needed: Triton builds the TTIR for
sm_90 without one). It must name exactly the tensors each kernel stores to. With GDC on, torch 2.11's own
analysis gives up on Triton's griddepcontrol (inline assembly, not pure) and names every argument, which made
the export copy every argument, weights included, and broke artifacts; gdn.kernels.pdl has it analyse the
kernel with GDC off, whose stores are the same."""

from __future__ import annotations

import pytest
import torch
from torch._higher_order_ops import triton_kernel_wrap
from triton.backends.compiler import GPUTarget
from triton.runtime.driver import driver

from gdn.kernels import pdl  # noqa: F401  (installs the analysis of GDC kernels)
from gdn.kernels.attention import triton_decode as A
from gdn.kernels.gemv.triton_gemv import _gemv_kernel
from gdn.kernels.gemv.triton_norm_gemv import _norm_gemv_kernel
from gdn.kernels.moe import decode as D

H, I, E, K, S = 256, 128, 64, 8, 96


class Sm90:
    """Triton's active driver for the analysis: the target it compiles the TTIR for."""

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


@pytest.fixture
def sm90():
    before = driver._active  # None until a launch needs one; reset_active() would create a CUDA driver
    driver.set_active(Sm90())
    yield
    driver._active = before


def t(*shape, dtype=torch.bfloat16):
    return torch.randn(*shape).to(dtype)


def gemv_case():
    args = dict(x_ptr=t(1, H), w_ptr=t(E, H), y_ptr=t(1, E), s_wn=H, N=E, K=H, SILU_MUL=False, BN=4, BK=H)
    return _gemv_kernel, args, ["y_ptr"]


def norm_gemv_case(delta: bool):
    args = dict(x_ptr=t(1, H), d_ptr=t(1, H), g_ptr=t(H), w_ptr=t(E, H), y_ptr=t(1, E), r_ptr=t(1, H), n_ptr=t(1, H),
                s_wn=H, N=E, K=H, EPS=1e-6, HAS_DELTA=delta, BN=4, BK=H, SLICE=H // 16, SLICE_P2=H // 16)
    return _norm_gemv_kernel, args, ["y_ptr", "r_ptr", "n_ptr"]


def route_case():
    args = dict(logits_ptr=t(1, E), col_stride=1, ids_ptr=t(K, dtype=torch.int32),
                weights_ptr=t(K, dtype=torch.float32), E=E, E_P2=E, TOP_K=K, K_P2=K, RENORM=True)
    return D.decode_route_kernel, args, ["ids_ptr", "weights_ptr"]


def gate_up_case():
    args = dict(x_ptr=t(1, H), w_ptr=t(E, 2 * I, H), h_ptr=t(K, I, dtype=torch.float32),
                ids_ptr=t(K, dtype=torch.int32), H=H, I=I, BLOCK_I=2, BLOCK_H=H)
    return D.decode_gate_up_kernel, args, ["h_ptr"]


def down_case():
    args = dict(h_ptr=t(K, I, dtype=torch.float32), ids_ptr=t(K, dtype=torch.int32),
                weights_ptr=t(K, dtype=torch.float32), down_ptr=t(E, H, I), out_ptr=t(1, H), shared_act_ptr=t(1, 2 * S),
                shared_act_stride=1, shared_gate_ptr=t(1, 1), shared_down_ptr=t(H, S), H=H, I=I, S=S, TOP_K=K, K_P2=K,
                BLOCK_OUT=4, BLOCK_INNER=128)
    return D.decode_down_kernel, args, ["out_ptr"]


def attention_split_case():
    G, D, NS = 4, 64, 8
    args = dict(q_ptr=t(1, 2 * G, D), k_ptr=t(1, 2, D), v_ptr=t(1, 2, D), kc_ptr=t(2, S, D), vc_ptr=t(2, S, D),
                pos_ptr=t(1, dtype=torch.int64), m_ptr=t(2 * G, NS, dtype=torch.float32),
                l_ptr=t(2 * G, NS, dtype=torch.float32), acc_ptr=t(2 * G, NS, D, dtype=torch.float32), S=S,
                s_qh=D, s_kh=D, s_vh=D, s_ch=S * D, QK_SCALE=0.1, G=G, D=D, BD=D, BG=16, BN=16, NSPLIT=NS,
                UPCAST=False)
    return A._split_kernel, args, ["kc_ptr", "vc_ptr", "m_ptr", "l_ptr", "acc_ptr"]


def attention_combine_case():
    G, D, NS = 4, 64, 8
    args = dict(m_ptr=t(2 * G, NS, dtype=torch.float32), l_ptr=t(2 * G, NS, dtype=torch.float32),
                acc_ptr=t(2 * G, NS, D, dtype=torch.float32), o_ptr=t(1, 2 * G, D), pos_ptr=t(1, dtype=torch.int64),
                S=S, s_oh=D, D=D, BDC=D, BS=NS, BN=16, NSPLIT=NS)
    return A._combine_kernel, args, ["o_ptr"]


CASES = {"gemv": gemv_case, "norm_gemv": lambda: norm_gemv_case(True),
         "norm_gemv-no_delta": lambda: norm_gemv_case(False),
         "attention-split": attention_split_case, "attention-combine": attention_combine_case,
         "moe-route": route_case, "moe-gate_up": gate_up_case, "moe-down": down_case}


def grid_flags(kernel, gdc: bool) -> dict:
    """GDC, and PDL for the kernels that have both forms (the MoE decode kernels exist only in their PDL form)."""
    return {"GDC": gdc, **({"PDL": gdc} if "PDL" in kernel.arg_names else {})}


@pytest.mark.parametrize("gdc", [False, True], ids=["GDC-off", "GDC-on"])
@pytest.mark.parametrize("case", list(CASES))
def test_mutation_analysis_names_the_stores(sm90, case, gdc):
    kernel, args, stores = CASES[case]()
    got = triton_kernel_wrap.identify_mutated_tensors(kernel, {**args, **grid_flags(kernel, gdc)}, {})
    assert sorted(got) == sorted(stores)


def test_torch_alone_names_every_argument_of_a_gdc_kernel(sm90):
    """Why gdn.kernels.pdl wraps the analysis; if a torch release analyses griddepcontrol, this fails and the
    wrapper can go."""
    kernel, args, _ = gemv_case()
    alone = triton_kernel_wrap.identify_mutated_tensors.__wrapped__
    assert sorted(alone(kernel, {**args, "PDL": True, "GDC": True}, {})) == ["w_ptr", "x_ptr", "y_ptr"]
