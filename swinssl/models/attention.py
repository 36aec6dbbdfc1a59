"""Window attention kernels shared by the image and the video Swin models.

All kernels compute softmax(scale * q k^T + bias + mask) v over windows of N tokens, for q, k, v of shape
(B * nW, heads, N, d) with windows batch-major (window i uses mask row i mod nW, as timm lays them out):

- ``plain``: explicit matmul, softmax, matmul, in timm's order of operations. This is the reference and
  gives bit for bit what timm's ``WindowAttention`` (V1 and V2) computes.
- ``fused``: one ``F.scaled_dot_product_attention`` call with the position bias and shift mask as its
  additive mask. The windows of an image go into SDPA's head axis, (B, nW * heads, N, d), so the
  (nW * heads, N, N) mask is broadcast over the batch instead of being copied per image, which is what
  an arbitrary-mask kernel (CUDA's efficient attention) reads without materializing B copies.
- ``chunked``: the fused kernel on ``chunk_windows`` windows at a time, each chunk checkpointed
  (non-reentrant) when autograd records, so that one chunk's attention matrices are alive at a time in
  forward and in backward; the Swin V2 paper's sequential self-attention for high resolutions. It pays
  one more forward pass of attention in backward.
- ``triton``: :mod:`swinssl.models.triton_attention`, FlashAttention-style Triton kernels that never store
  a score matrix and give the bias its gradient at (heads, N, N). CUDA only (or Triton's CPU interpreter,
  for the tests); elsewhere, with attention dropout, or without Triton it runs ``fused`` and says so once.

Why ``chunked`` still matters next to ``fused``: the position bias is learned, so SDPA must return its
gradient. On CUDA, efficient attention then allocates that gradient at the broadcast size, (B, nW *
heads, N, N), as large as the plain kernel's score matrix; on CPU, SDPA falls back to its math kernel,
which keeps the full score matrices as plain does. Without autograd (inference) neither happens.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from swinssl.models.registry import ATTENTION_KERNELS as KERNELS

log = logging.getLogger(__name__)

# Default chunk: as many windows as keep one chunk's scores (windows x heads x N x N) within 2**24 elements,
# 64 MiB in fp32: e.g. 269 windows of 12x12 tokens with 3 heads, 4 windows of 32x32 tokens with 4 heads.
CHUNK_SCORES = 2**24


def check_kernel(kernel: str, chunk_windows: int | None = None) -> None:
    """A one-line error for an unknown kernel name or a chunk size that is not a positive int."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown attention kernel {kernel!r}; choose one of: {', '.join(KERNELS)}")
    if chunk_windows is not None and (not isinstance(chunk_windows, int) or chunk_windows < 1):
        raise ValueError(f"attn_chunk_windows must be a positive int or None, got {chunk_windows!r}")


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    kernel: str = "fused",
    chunk_windows: int | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """(B * nW, heads, N, d) q, k, v -> (B * nW, heads, N, d) attention output.

    ``bias`` (heads, N, N) is the relative position bias; ``mask`` (nW, N, N) the additive shift/padding
    mask or None. ``scale`` (e.g. a (heads, 1, 1) clamped logit scale) multiplies q k^T: ``plain``
    applies it to the scores as timm does, the others fold it into q (SDPA takes one float scale). Pass
    None when q is already scaled (Swin V1). ``chunk_windows`` is for ``chunked`` only (default: see
    :data:`CHUNK_SCORES`).
    """
    check_kernel(kernel, chunk_windows)
    if kernel == "triton":
        out = _triton(q, k, v, bias, mask, scale, dropout_p)
        if out is not None:
            return out
        kernel = "fused"
    if kernel == "plain":
        return _plain(q, k, v, bias, mask, scale, dropout_p)
    if kernel == "fused":
        return _fused(q, k, v, bias, mask, scale, dropout_p)
    heads, tokens = q.shape[1], q.shape[2]
    chunk_windows = chunk_windows or max(1, CHUNK_SCORES // (heads * tokens * tokens))
    return _chunked(q, k, v, bias, mask, scale, dropout_p, chunk_windows)


def attention_probabilities(q: torch.Tensor, k: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None = None,
                            scale: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(scale * q k^T + bias + mask): (B * nW, heads, N, N), in timm's order of operations (the ``plain``
    kernel's first half, and what pictures of attention show)."""
    attn = q @ k.transpose(-2, -1)
    if scale is not None:
        attn = attn * scale
    attn = attn + bias.unsqueeze(0)
    if mask is not None:
        heads, tokens = q.shape[1], q.shape[2]
        attn = attn.view(-1, mask.shape[0], heads, tokens, tokens) + mask.unsqueeze(1).unsqueeze(0).to(attn.dtype)
        attn = attn.view(-1, heads, tokens, tokens)
    return attn.softmax(dim=-1)


def window_bias_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, additive: torch.Tensor, windows: int,
                          scale: torch.Tensor | None = None, dropout_p: float = 0.0, kernel: str = "fused") -> torch.Tensor:
    """Attention whose additive bias differs per window and per image: ``additive`` (b * nW, heads, N, N) for nW =
    ``windows`` per image and b the batch, or 1 when every image shares it (broadcast, as :func:`window_attention`'s
    fused path does). Used where the position bias follows tokens that are not on a regular grid (packed masked
    pretraining). ``kernel``: ``plain`` is the explicit reference; the others run one SDPA call (``chunked`` and
    ``triton`` work on a bias shared by every image, which such tokens do not have: they run ``fused``)."""
    check_kernel(kernel)
    batch_windows, heads, tokens, dim = q.shape
    rows = additive.shape[0] // windows
    if kernel == "plain":
        attn = q @ k.transpose(-2, -1)
        if scale is not None:
            attn = attn * scale
        attn = attn.view(-1, windows, heads, tokens, tokens) + additive.view(rows, windows, heads, tokens, tokens)
        attn = attn.view(batch_windows, heads, tokens, tokens).softmax(dim=-1)
        return (F.dropout(attn, dropout_p) if dropout_p else attn) @ v
    if scale is not None:
        q = q * scale
    shape = (batch_windows // windows, windows * heads, tokens, dim)
    out = F.scaled_dot_product_attention(
        q.reshape(shape), k.reshape(shape), v.reshape(shape),
        attn_mask=additive.reshape(rows, windows * heads, tokens, tokens).to(q.dtype), dropout_p=dropout_p, scale=1.0)
    return out.reshape(batch_windows, heads, tokens, dim)


def _plain(q, k, v, bias, mask, scale, dropout_p):
    attn = attention_probabilities(q, k, bias, mask, scale)
    if dropout_p:
        attn = F.dropout(attn, dropout_p)
    return attn @ v


def _fused(q, k, v, bias, mask, scale, dropout_p):
    batch_windows, heads, tokens, dim = q.shape
    if scale is not None:
        q = q * scale
    windows = 1 if mask is None else mask.shape[0]
    additive = bias if mask is None else bias + mask.unsqueeze(1)  # (nW, heads, N, N): no batch axis
    # Windows join the head axis so that the mask broadcasts over the batch (see the module docstring).
    shape = (batch_windows // windows, windows * heads, tokens, dim)
    out = F.scaled_dot_product_attention(
        q.reshape(shape), k.reshape(shape), v.reshape(shape),
        attn_mask=additive.reshape(1, windows * heads, tokens, tokens).to(q.dtype),
        dropout_p=dropout_p, scale=1.0,
    )
    return out.reshape(batch_windows, heads, tokens, dim)


def _triton(q, k, v, bias, mask, scale, dropout_p):
    """The Triton kernel's output, or None where it cannot run (logged once per reason)."""
    try:
        from swinssl.models import triton_attention  # Triton is imported for this kernel only
    except ImportError as error:
        _fall_back(f"Triton is not importable ({error})")
        return None
    reason = triton_attention.supports(q, dropout_p)
    if reason is not None:
        _fall_back(reason)
        return None
    return triton_attention.triton_window_attention(q, k, v, bias, mask, scale)


@functools.cache
def _fall_back(reason: str) -> None:
    log.warning("attn_kernel=triton: %s; running the fused kernel instead (same function).", reason)


def _chunked(q, k, v, bias, mask, scale, dropout_p, chunk_windows):
    recording = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, bias, scale)
    )
    # window i uses mask row i mod nW; a chunk gathers its rows itself, so only indices are kept per chunk
    rows = torch.arange(q.shape[0], device=q.device) % (1 if mask is None else mask.shape[0])
    outputs = []
    # split (not indexing) so that backward concatenates the chunks' gradients once
    for q_chunk, k_chunk, v_chunk, rows_chunk in zip(
        q.split(chunk_windows), k.split(chunk_windows), v.split(chunk_windows), rows.split(chunk_windows)
    ):
        arguments = (q_chunk, k_chunk, v_chunk, bias, mask, rows_chunk, scale, dropout_p)
        if recording:
            outputs.append(checkpoint(_fused_rows, *arguments, use_reentrant=False))
        else:
            outputs.append(_fused_rows(*arguments))
    return torch.cat(outputs)


def _fused_rows(q, k, v, bias, mask, rows, scale, dropout_p):
    """:func:`_fused` on windows that use the given ``mask`` rows."""
    return _fused(q, k, v, bias, None if mask is None else mask[rows], scale, dropout_p)


class KernelAttention:
    """Mixin for window attention modules (image and video, V1 and V2): subclasses say how they make q, k, v,
    the position bias and the scale (:meth:`attention_inputs`); the kernel, the output projection and the
    attention pictures are shared here.

    Subclasses have ``proj``, ``proj_drop`` and ``attn_drop`` modules and ``kernel``/``chunk_windows`` attributes.
    """

    kernel: str = "fused"
    chunk_windows: int | None = None

    def attention_inputs(self, x: torch.Tensor, *args):
        """(B * nW, N, C) tokens -> q, k, v (B * nW, heads, N, d), bias (heads, N, N), scale or None."""
        raise NotImplementedError

    def attend(self, q, k, v, bias: torch.Tensor, mask: torch.Tensor | None, scale=None) -> torch.Tensor:
        """(B * nW, heads, N, d) q, k, v -> projected (B * nW, N, C) output."""
        out = window_attention(q, k, v, bias, mask, scale, self.kernel, self.chunk_windows,
                               self.attn_drop.p if self.training else 0.0)
        return self.project(out)

    def attend_per_window(self, q, k, v, additive: torch.Tensor, windows: int, scale=None) -> torch.Tensor:
        """As :meth:`attend`, with a per-window bias (:func:`window_bias_attention`)."""
        dropout = self.attn_drop.p if self.training else 0.0
        return self.project(window_bias_attention(q, k, v, additive, windows, scale, dropout, self.kernel))

    def project(self, out: torch.Tensor) -> torch.Tensor:
        """(B * nW, heads, N, d) attention output -> projected (B * nW, N, C)."""
        batch_windows, heads, tokens, dim = out.shape
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(batch_windows, tokens, heads * dim)))

    def probabilities(self, x: torch.Tensor, mask: torch.Tensor | None, *args) -> torch.Tensor:
        """The softmax attention (B * nW, heads, N, N) this module computes on ``x``, whatever its kernel."""
        q, k, _, bias, scale = self.attention_inputs(x, *args)
        return attention_probabilities(q, k, bias, mask, scale)
