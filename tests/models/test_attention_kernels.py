"""The fused, chunked and Triton attention kernels compute what the plain (timm) kernel computes, and chunked and
Triton bound memory. The Triton kernel runs in Triton's CPU interpreter here (``TRITON_INTERPRET=1``, set by
conftest.py before Triton is first imported); on a GPU the same kernels compile for CUDA.

Tolerances: fp32 rtol 1e-5 with atol 1e-6 x the reference tensor's largest magnitude (for entries near zero);
bf16 autocast rtol 1e-2 with atol 1e-2 x that magnitude (parameter gradients: see the bf16 test). Whole
encoders run in float64 (rtol 1e-9, atol 1e-12 x magnitude): fp32 rounding compounded over eight blocks
and their backward (~7e-6 of the magnitude, measured) would blur a comparison that float64 keeps sharp.
"""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import trained_like
from timm.models.swin_transformer import SwinTransformer
from timm.models.swin_transformer_v2 import SwinTransformerV2
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from swinssl import create_encoder, create_video_encoder
from swinssl.models import build_encoder, build_video_encoder
from swinssl.models.attention import window_attention
from swinssl.models.video_swin import WindowAttention3D, window_attention_module
from swinssl.models.windows import shift_mask

# (rtol, atol as a fraction of the reference's largest magnitude)
FP32, BF16, FP64 = (1e-5, 1e-6), (1e-2, 1e-2), (1e-9, 1e-12)
# The Triton kernel sums in another order (an online softmax over key blocks; the bias and scale gradients
# added over windows atomically): measured up to 1.7e-5 relative and 1.2e-6 of the magnitude in fp32.
FP32_REORDERED = (5e-5, 5e-6)
# 5 windows do not divide 4 or 8 windows a sample. Triton's interpreter cannot multiply bf16 matrices, so the
# Triton kernel's bf16 test is the CUDA one (test_triton_kernel_in_bf16_on_cuda, opt in with -m gpu).
KERNELS = [("fused", None), ("chunked", None), ("chunked", 5)]
FP32_KERNELS = KERNELS + [("triton", None)]
TINY_IMAGE = dict(embed_dim=16, depths=(2, 2), num_heads=(2, 2))
TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))


def image_attention(family: str, shifted: bool):
    """A block's attention of a built image encoder: 32 px / window 4 gives 4 windows of 16 tokens per image."""
    model = trained_like(build_encoder(family, img_size=32, window_size=4, **TINY_IMAGE))
    block = model.layers[0].blocks[1 if shifted else 0]
    assert (block.attn_mask is not None) == shifted
    return block.attn, lambda x: block.attn(x, block.attn_mask), torch.randn(3 * 4, 16, 16)


def video_attention(style: str):
    """Windows (2, 4, 4) over a padded (3, 7, 8) -> (4, 8, 8) grid, shifted on every axis: 8 windows a clip."""
    attn = trained_like(window_attention_module(16, 2, (2, 4, 4), style, (0, 0, 0)))
    mask = shift_mask((4, 8, 8), (3, 7, 8), (2, 4, 4), (1, 2, 2), torch.device("cpu"))
    return attn, lambda x: attn(x, (2, 4, 4), mask), torch.randn(3 * mask.shape[0], 32, 16)


CASES = {
    "image_v2": lambda: image_attention("swinv2", shifted=False),
    "image_v2_shifted": lambda: image_attention("swinv2", shifted=True),
    "image_v1_shifted": lambda: image_attention("swin", shifted=True),
    "video_v2_shifted_padded": lambda: video_attention("v2"),
    "video_v1_shifted_padded": lambda: video_attention("v1"),
}


def forward_backward(module, call, x, cotangent, kernel, chunk_windows=None, bf16=False):
    """Output and the gradients of <output, cotangent> w.r.t. the input and every parameter."""
    module.kernel, module.chunk_windows = kernel, chunk_windows
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = call(x)
    (out.float() * cotangent).sum().backward()
    grads = {"input": x.grad, **{name: param.grad for name, param in module.named_parameters()}}
    assert all(grad is not None for grad in grads.values())
    return {"output": out.detach().float(), **{name: grad.float() for name, grad in grads.items()}}


def assert_all_close(actual: dict, expected: dict, tolerance: tuple[float, float]) -> None:
    rtol, atol = tolerance
    assert actual.keys() == expected.keys()
    for name, reference in expected.items():
        torch.testing.assert_close(actual[name], reference, rtol=rtol, atol=atol * reference.abs().max().item(),
                                   msg=lambda message, name=name: f"{name}: {message}")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kernel, chunk_windows", FP32_KERNELS)
def test_kernels_equal_plain_forward_and_backward(case, kernel, chunk_windows):
    torch.manual_seed(0)
    module, call, x = CASES[case]()
    cotangent = torch.randn_like(x)
    expected = forward_backward(module, call, x, cotangent, "plain")
    actual = forward_backward(module, call, x, cotangent, kernel, chunk_windows)
    tolerance = FP32_REORDERED if kernel == "triton" else FP32
    assert_all_close(actual, expected, tolerance)
    with torch.no_grad():  # inference takes other SDPA code paths (on CPU: flash attention with a mask)
        assert_all_close({"output": call(x)}, {"output": expected["output"]}, tolerance)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("kernel, chunk_windows", KERNELS)
def test_kernels_in_bf16_match_plain_in_bf16(case, kernel, chunk_windows):
    """Output and input gradient within 1e-2 of plain under the same autocast. Parameter gradients sum bf16
    rounding over every window, so plain bf16 is itself up to ~36 % (of the largest entry) off the fp32
    values there (the SDPA kernels also round the bias to bf16, SDPA's mask dtype); for them each kernel must
    be as accurate as plain: its error against fp32 at most twice plain's, plus 1e-2."""
    torch.manual_seed(0)
    module, call, x = CASES[case]()
    cotangent = torch.randn_like(x)
    exact = forward_backward(module, call, x, cotangent, "plain")
    plain = forward_backward(module, call, x, cotangent, "plain", bf16=True)
    actual = forward_backward(module, call, x, cotangent, kernel, chunk_windows, bf16=True)
    first_order = ("output", "input")
    assert_all_close({key: actual[key] for key in first_order}, {key: plain[key] for key in first_order}, BF16)
    for name in exact.keys() - set(first_order):
        magnitude = exact[name].abs().max()
        plain_error = ((plain[name] - exact[name]).abs().max() / magnitude).item()
        error = ((actual[name] - exact[name]).abs().max() / magnitude).item()
        assert error <= 2 * plain_error + 1e-2, f"{name}: bf16 error {error:.4f}, plain's {plain_error:.4f}"


def test_chunks_read_the_mask_rows_of_their_own_windows():
    torch.manual_seed(0)
    q, k, v = (torch.randn(3 * 4, 2, 16, 8, dtype=torch.float64) for _ in range(3))
    bias = torch.randn(2, 16, 16, dtype=torch.float64)
    mask = (torch.rand(4, 16, 16, dtype=torch.float64) < 0.5) * -100.0
    expected = window_attention(q, k, v, bias, mask, kernel="plain")
    for chunk_windows in (1, 3, 5, 12, 50):  # chunks that cut through images, and one larger than the batch
        chunked = window_attention(q, k, v, bias, mask, kernel="chunked", chunk_windows=chunk_windows)
        torch.testing.assert_close(chunked, expected, rtol=1e-12, atol=1e-12)
    # the control: the mask matters here, so a chunk reading other windows' rows would be caught
    wrong = window_attention(q, k, v, bias, mask.roll(1, dims=0), kernel="plain")
    assert (wrong - expected).abs().max() > 1e-2


def image_encoder(family: str):
    # 64 px / window 4: stage grids 16/8/4/2, so shifted blocks with masks and a clipped last stage
    return build_encoder(family, img_size=64, window_size=4, **TINY), torch.randn(2, 3, 64, 64)


def video_encoder(arch: str, attention: str):
    # 6 frames -> 3 time steps in windows of 2 (padded); 24 px, three stages -> grids 6/3/2 (shifted and padded at
    # 6, clipped after, no one-token stage). Triton's interpreter runs one program per window and head:
    # factorized temporal attention (a window per grid cell) makes that thousands at 48 px, minutes on two cores.
    model = build_video_encoder(arch, num_frames=6, img_size=24, window_size=(2, 4, 4), attention=attention,
                                embed_dim=16, depths=(2, 2, 2), num_heads=(1, 2, 2))
    return model, torch.randn(2, 3, 6, 24, 24)


ENCODERS = {
    "image_v2": lambda: image_encoder("swinv2"),
    "image_v1": lambda: image_encoder("swin"),
    "video_v2_joint": lambda: video_encoder("video_swinv2", "joint"),
    "video_v1_factorized": lambda: video_encoder("video_swin", "factorized"),
}


def encoder_forward_backward(model, inputs, cotangent, kernel, chunk_windows=None):
    model.set_attention_kernel(kernel, chunk_windows)
    model.zero_grad(set_to_none=True)
    out = model.forward_features(inputs)
    (out * cotangent).sum().backward()
    return {"output": out.detach(), **{name: param.grad for name, param in model.named_parameters()}}


@pytest.mark.parametrize("family, timm_class", [("swinv2", SwinTransformerV2), ("swin", SwinTransformer)])
def test_plain_kernel_is_timm_bit_for_bit(family, timm_class):
    torch.manual_seed(0)
    model, images = image_encoder(family)
    model = trained_like(model)  # fresh V2 blocks are identities (zero res-post-norm), which would hide attention
    model.set_attention_kernel("plain")
    reference = timm_class(img_size=64, patch_size=4, window_size=4, num_classes=0, **TINY).eval()
    reference.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        assert torch.equal(model.forward_features(images), reference.forward_features(images))


@pytest.mark.parametrize("encoder", ENCODERS)
def test_whole_encoder_equals_plain_with_every_kernel(encoder):
    torch.manual_seed(0)
    model, inputs = ENCODERS[encoder]()
    model, inputs = trained_like(model).double(), inputs.double()
    cotangent = torch.randn_like(model.forward_features(inputs))
    expected = encoder_forward_backward(model, inputs, cotangent, "plain")
    for kernel, chunk_windows in (("fused", None), ("chunked", 3), ("triton", None)):
        actual = encoder_forward_backward(model, inputs, cotangent, kernel, chunk_windows)
        assert_all_close(actual, expected, FP64)


def test_kernel_choice_reaches_every_attention_module():
    image = create_encoder("swinv2", img_size=32, window_size=4, attn_kernel="chunked", attn_chunk_windows=3,
                           **TINY_IMAGE)
    video = create_video_encoder("video_swin", num_frames=4, img_size=32, window_size=(2, 4, 4),
                                 attention="factorized", attn_kernel="plain", **TINY)
    image_attn = [block.attn for stage in image.layers for block in stage.blocks]
    video_attn = [m for m in video.modules() if isinstance(m, WindowAttention3D)]
    assert len(video_attn) == 2 * sum(TINY["depths"])  # spatial and temporal in every block
    assert {(m.kernel, m.chunk_windows) for m in image_attn} == {("chunked", 3)}
    assert {(m.kernel, m.chunk_windows) for m in video_attn} == {("plain", None)}


@pytest.mark.parametrize("build", [
    lambda: build_encoder("swinv2", img_size=32, window_size=4, attn_kernel="flash", **TINY_IMAGE),
    lambda: build_encoder("swin", img_size=32, window_size=4, attn_kernel="chunked", attn_chunk_windows=0,
                          **TINY_IMAGE),
    lambda: build_video_encoder("video_swinv2", num_frames=4, img_size=32, window_size=(2, 4, 4),
                                attn_kernel="sdpa", **TINY),
    lambda: window_attention(*torch.zeros(3, 1, 1, 4, 2), torch.zeros(1, 4, 4), kernel="Fused"),
])
def test_a_bad_kernel_is_a_clear_error(build):
    with pytest.raises(ValueError, match=r"attention kernel|attn_chunk_windows") as error:
        build()
    assert "plain, fused, chunked" in str(error.value) or "positive int" in str(error.value)


class PeakMemory(TorchDispatchMode):
    """Peak bytes held by the storages that ops create while this mode is on (forward, backward, recomputation)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.live = {key: entry for key, entry in self.live.items() if not entry[0].expired()}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                self.live.setdefault(storage._cdata, (StorageWeakRef(storage), storage.nbytes()))
        self.peak = max(self.peak, sum(size for _, size in self.live.values()))
        return out


def test_chunked_kernel_bounds_the_memory_of_forward_and_backward():
    torch.manual_seed(0)
    windows, heads, tokens, dim = 256, 2, 64, 4  # one window's scores: 16x its q
    q, k, v = (torch.randn(windows, heads, tokens, dim, requires_grad=True) for _ in range(3))
    bias = torch.randn(heads, tokens, tokens, requires_grad=True)
    mask = (torch.rand(16, tokens, tokens) < 0.5) * -100.0
    scores_bytes = windows * heads * tokens * tokens * 4  # all windows' attention scores in fp32
    peaks = {}
    for kernel in ("plain", "chunked"):
        with PeakMemory() as memory:
            window_attention(q, k, v, bias, mask, kernel=kernel, chunk_windows=8).sum().backward()
        peaks[kernel] = memory.peak
    assert peaks["plain"] > 2 * scores_bytes  # the tracker sees plain's score matrices
    assert peaks["chunked"] < scores_bytes  # not even one full score matrix is ever alive
    assert peaks["chunked"] < peaks["plain"] / 4


def attention_inputs(batch_windows, heads, tokens, dim, windows, with_scale, dtype=torch.float32):
    """Random q, k, v (cosine-normalized when scaled, as Swin V2 passes them), bias, shift-like mask, scale."""
    q, k, v = (torch.randn(batch_windows, heads, tokens, dim, dtype=dtype) for _ in range(3))
    if with_scale:
        q, k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
    bias = 16 * torch.sigmoid(torch.randn(heads, tokens, tokens, dtype=dtype))
    mask = None if windows is None else (torch.rand(windows, tokens, tokens) < 0.3).to(dtype) * -100.0
    scale = torch.empty(heads, 1, 1, dtype=dtype).uniform_(1, 100) if with_scale else None
    return q, k, v, bias, mask, scale


@pytest.mark.parametrize("tokens, dim, windows, with_scale", [
    (16, 8, 4, True),  # 4x4 windows, shifted (masked), Swin V2
    (49, 32, 2, True),  # 7x7: blocks padded on both axes
    (20, 4, None, False),  # Swin V1 (q pre-scaled, no scale), no mask, a head dim below one tile
    (98, 16, 1, True),  # a 3D 2x7x7 window: 7 blocks of 16 tokens, the last one partial
    pytest.param(392, 16, 1, True, marks=pytest.mark.slow),  # Video Swin's 8x7x7 window (minutes in the interpreter)
])
def test_triton_kernel_matches_a_float64_reference_forward_and_backward(tokens, dim, windows, with_scale):
    torch.manual_seed(0)
    batch_windows = 2 * (windows or 3)
    inputs = attention_inputs(batch_windows, 2, tokens, dim, windows, with_scale)
    cotangent = torch.randn(batch_windows, 2, tokens, dim)

    def run(kernel, tensors):
        leaves = [t.clone().requires_grad_() if t is not None and t.dtype.is_floating_point and i != 4 else t
                  for i, t in enumerate(tensors)]
        out = window_attention(*leaves, kernel=kernel)
        (out * cotangent.to(out.dtype)).sum().backward()
        named = dict(zip(("q", "k", "v", "bias", "mask", "scale"), leaves))
        return {"output": out.detach(), **{name: t.grad for name, t in named.items() if t is not None and t.grad is not None}}

    expected = run("plain", [None if t is None else t.double() for t in inputs])
    actual = run("triton", inputs)
    assert actual.keys() == expected.keys() == {"output", "q", "k", "v", "bias"} | ({"scale"} if with_scale else set())
    assert actual["bias"].shape == (2, tokens, tokens) and actual["bias"].dtype == torch.float32
    assert_all_close(actual, {name: value.float() for name, value in expected.items()}, FP32_REORDERED)


def test_triton_kernel_never_stores_a_score_matrix_or_a_batch_sized_bias_gradient():
    torch.manual_seed(0)
    windows, heads, tokens, dim = 8, 1, 128, 4  # one window's scores: 32x its q
    q, k, v, bias, mask, scale = attention_inputs(windows, heads, tokens, dim, 4, with_scale=True)
    leaves = [t.requires_grad_() for t in (q, k, v, bias, scale)]
    scores_bytes = windows * heads * tokens * tokens * 4  # all windows' scores, or a batch-sized bias gradient
    with PeakMemory() as memory:
        window_attention(q, k, v, bias, mask, scale, kernel="triton").sum().backward()
    assert all(leaf.grad is not None for leaf in leaves)
    assert memory.peak < scores_bytes / 2  # plain keeps > 2x scores_bytes (see the chunked test)


def test_triton_kernel_falls_back_to_fused_where_it_cannot_run(monkeypatch, caplog):
    from swinssl.models import attention, triton_attention

    torch.manual_seed(0)
    q, k, v, bias, mask, scale = attention_inputs(8, 2, 16, 8, 4, with_scale=True)
    fused = window_attention(q, k, v, bias, mask, scale, kernel="fused")
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # a CPU without the interpreter
    assert "not on cpu" in triton_attention.supports(q, 0.0)
    attention._fall_back.cache_clear()
    with caplog.at_level(logging.WARNING, logger="swinssl.models.attention"):
        assert torch.equal(window_attention(q, k, v, bias, mask, scale, kernel="triton"), fused)
        window_attention(q, k, v, bias, mask, scale, kernel="triton")
    assert [r.getMessage() for r in caplog.records] == [
        "attn_kernel=triton: Triton kernels run on CUDA (or on the CPU with TRITON_INTERPRET=1), not on cpu; "
        "running the fused kernel instead (same function)."]  # once, not per call
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "dropout" in triton_attention.supports(q, 0.1)
    assert "cannot multiply torch.bfloat16" in triton_attention.supports(q.bfloat16(), 0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the kernel multiplies in autocast's dtype, as SDPA would
        assert "cannot multiply torch.bfloat16" in triton_attention.supports(q, 0.0)


def test_triton_kernel_compiles_without_graph_breaks():
    torch.manual_seed(0)
    q, k, v, bias, mask, scale = attention_inputs(8, 2, 16, 8, 4, with_scale=True)
    leaves = [t.requires_grad_() for t in (q, k, v, bias, scale)]

    def loss(q, k, v, bias, scale):
        return (window_attention(q, k, v, bias, mask, scale, kernel="triton") ** 2).sum()

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break is an error
    eager_grads = torch.autograd.grad(loss(*leaves), leaves)
    compiled_grads = torch.autograd.grad(compiled(*leaves), leaves)
    for eager, traced in zip(eager_grads, compiled_grads):
        torch.testing.assert_close(traced, eager)
