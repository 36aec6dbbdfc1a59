"""The Triton attention kernel compiled for CUDA: bf16 accuracy (which Triton's CPU interpreter cannot check)
and the memory it saves. Opt in on a GPU machine, alone (other modules switch Triton to its interpreter):

    python -m pytest -m gpu tests/models/test_triton_cuda.py
"""

from __future__ import annotations

import pytest
import torch

from conftest import trained_like
from swinssl.models import build_encoder
from swinssl.models.attention import window_attention

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def compiled_kernels():
    from swinssl.models import triton_attention

    if not torch.cuda.is_available():
        pytest.fail("the gpu tests need CUDA")
    if triton_attention.interpreting():
        pytest.fail("TRITON_INTERPRET is on; run: python -m pytest -m gpu tests/models/test_triton_cuda.py")


def random_inputs(batch_windows, heads, tokens, dim, windows, dtype):
    q, k, v = (torch.randn(batch_windows, heads, tokens, dim, device="cuda", dtype=dtype) for _ in range(3))
    q, k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    bias = 16 * torch.sigmoid(torch.randn(heads, tokens, tokens, device="cuda"))
    mask = (torch.rand(windows, tokens, tokens, device="cuda") < 0.3).float() * -100.0
    scale = torch.empty(heads, 1, 1, device="cuda").uniform_(1, 100)
    return q, k, v, bias, mask, scale


def gradients(kernel, inputs, cotangent, bf16=False):
    """Output and the gradients of q, k, v, bias and scale, in fp32; ``bf16``: under bf16 autocast, as in training."""
    q, k, v, bias, mask, scale = inputs
    q, k, v, bias, scale = (t.detach().clone().requires_grad_() for t in (q, k, v, bias, scale))
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        out = window_attention(q, k, v, bias, mask, scale, kernel=kernel)
    (out.float() * cotangent).sum().backward()
    return [out.float()] + [t.grad.float() for t in (q, k, v, bias, scale)]


@pytest.mark.parametrize("tokens, dim", [(144, 32), (392, 32), (49, 16)])  # 12x12, 8x7x7, 7x7
def test_triton_kernel_in_fp32_and_bf16_matches_plain_on_cuda(tokens, dim):
    torch.manual_seed(0)
    inputs64 = random_inputs(32, 4, tokens, dim, 8, torch.float64)
    cotangent = torch.randn(32, 4, tokens, dim, device="cuda", dtype=torch.float64)
    exact = gradients("plain", inputs64, cotangent)
    inputs = [t.float() for t in inputs64]
    for bf16, tolerance in ((False, 5e-5), (True, None)):
        ours = gradients("triton", inputs, cotangent.float(), bf16)
        plain = gradients("plain", inputs, cotangent.float(), bf16)
        for name, mine, reference, truth in zip(("out", "q", "k", "v", "bias", "scale"), ours, plain, exact):
            magnitude = truth.abs().max()
            error = ((mine - truth).abs().max() / magnitude).item()
            if tolerance is not None:  # fp32: close to the float64 truth
                assert error < tolerance, f"{name} fp32: {error:.2e}"
            else:  # bf16: as accurate as plain in the same precision
                plain_error = ((reference - truth).abs().max() / magnitude).item()
                assert error <= 2 * plain_error + 1e-2, f"{name} bf16: {error:.4f}, plain {plain_error:.4f}"


def test_triton_backward_needs_less_memory_than_fused_on_cuda():
    """SwinV2-B stage 1 at 192 px / window 12, batch 32: 16 windows x 4 heads x 144 tokens per image."""
    torch.manual_seed(0)
    inputs = random_inputs(32 * 16, 4, 144, 32, 16, torch.float32)
    cotangent = torch.randn(32 * 16, 4, 144, 32, device="cuda")
    peaks = {}
    for kernel in ("fused", "triton"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        gradients(kernel, inputs, cotangent, bf16=True)
        torch.cuda.synchronize()
        peaks[kernel] = torch.cuda.max_memory_allocated() - before
    assert peaks["triton"] < peaks["fused"], peaks


def test_whole_encoder_trains_with_the_triton_kernel_under_bf16_autocast():
    torch.manual_seed(0)
    # trained_like: fresh V2 blocks are identities (zero res-post-norm), which would hide attention
    model = trained_like(build_encoder("swinv2", img_size=64, window_size=4, embed_dim=32, depths=(2, 2),
                                       num_heads=(2, 4))).cuda()
    images = torch.randn(4, 3, 64, 64, device="cuda")
    results = {}
    for kernel in ("fused", "triton"):
        model.set_attention_kernel(kernel)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model.forward_features(images)
        out.float().square().mean().backward()
        results[kernel] = (out.float(), torch.cat([p.grad.flatten().float() for p in model.parameters()]))
    for ours, theirs in zip(results["triton"], results["fused"]):
        assert ((ours - theirs).abs().max() / theirs.abs().max()).item() < 3e-2
