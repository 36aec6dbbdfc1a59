"""Swin window attention in Triton: one forward and two backward kernels, for CUDA or Triton's interpreter.

Each computes, per window and head, softmax(scale_h * q k^T + bias_h + mask_w) v the way FlashAttention
does: keys are visited in blocks with an online softmax, so no (N, N) score matrix is ever stored, and
backward recomputes the scores from the saved log-sum-exp. What makes it a Swin kernel:

- the learned position bias gets its gradient at (heads, N, N), summed over all windows by atomic adds in
  the key-block pass, never at the (windows, heads, N, N) size that SDPA's efficient-attention backward
  allocates (see :mod:`swinssl.models.attention`);
- the per-head scale (Swin V2's clamped logit scale, applied after the cosine normalization) is applied
  inside the kernel and gets its gradient there too; Swin V1 passes no scale (q arrives scaled);
- the shift mask row of a window is read by index (window i uses row i mod nW), never copied per image;
- any window size (2D 12x12 = 144 tokens, 3D 8x7x7 = 392, clipped windows) and head dim: blocks are padded
  and masked.

The cosine normalization itself stays an eager PyTorch op before the kernel (two ``F.normalize`` calls,
memory-bound and cheap next to attention). Summation order of the bias and scale gradients depends on the
atomic adds' order, so these two gradients are not bitwise deterministic on CUDA.

The ops are registered with ``torch.library`` so that ``torch.compile`` keeps them as single nodes instead
of breaking the graph. Without a GPU, set ``TRITON_INTERPRET=1`` before Python starts (the tests do) to run
the same kernels on CPU tensors; that is for correctness only, far slower than any other kernel.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Smallest tile tl.dot accepts on GPUs; larger tiles pay off once windows have more tokens.
MIN_BLOCK = 16


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def input_dtype(q: torch.Tensor) -> torch.dtype:
    """The dtype the kernel multiplies in: autocast's where it is on (custom ops are not autocast by torch;
    SDPA would run in it), else the inputs' own."""
    device = q.device.type
    if device in ("cuda", "cpu") and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return q.dtype


def supports(q: torch.Tensor, dropout_p: float) -> str | None:
    """None when these inputs can run here, else why not (the caller falls back to ``fused``)."""
    if dropout_p:
        return "attention dropout is not implemented in the Triton kernel"
    if q.device.type not in ("cuda", "meta") and not interpreting():  # meta: shapes only (memory estimates)
        return f"Triton kernels run on CUDA (or on the CPU with TRITON_INTERPRET=1), not on {q.device.type}"
    dtype = input_dtype(q)
    if q.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        return f"Triton's interpreter cannot multiply {dtype} matrices"
    if q.shape[-1] > 256:
        return f"head dim {q.shape[-1]} is above the kernel's 256"
    return None


def _blocks(tokens: int, head_dim: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D): 64-token tiles for large windows, 16 for small ones and the interpreter."""
    block = MIN_BLOCK if interpreting() or tokens <= 32 else (32 if tokens <= 64 else 64)
    return block, block, max(MIN_BLOCK, triton.next_power_of_2(head_dim))


@triton.jit
def _tile(ptr, base, offs, offs_d, tokens, head_dim):
    """(len(offs), BLOCK_D) rows of a (tokens, head_dim) matrix, zeros outside it."""
    inside = (offs[:, None] < tokens) & (offs_d[None, :] < head_dim)
    return tl.load(ptr + base + offs[:, None] * head_dim + offs_d[None, :], mask=inside, other=0.0)


@triton.jit
def _store_tile(ptr, base, offs, offs_d, tokens, head_dim, value):
    inside = (offs[:, None] < tokens) & (offs_d[None, :] < head_dim)
    tl.store(ptr + base + offs[:, None] * head_dim + offs_d[None, :], value.to(ptr.dtype.element_ty), mask=inside)


@triton.jit
def _dot(a, b, PRECISION: tl.constexpr, ACC: tl.constexpr):
    return tl.dot(a, b, input_precision=PRECISION, out_dtype=ACC)


@triton.jit
def _scores(q, k, Bias, Mask, scale, offs_m, offs_n, tokens, head, window,
            HAS_MASK: tl.constexpr, HAS_SCALE: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr):
    """(BLOCK_M, BLOCK_N) scale * q k^T + bias + mask (-inf past the last key), q k^T (the scale's gradient
    needs it) and which (query, key) pairs exist."""
    qk = _dot(q, tl.trans(k), PRECISION, ACC)
    pair = (offs_m[:, None] < tokens) & (offs_n[None, :] < tokens)
    index = offs_m[:, None] * tokens + offs_n[None, :]
    scores = qk
    if HAS_SCALE:
        scores = qk * scale
    scores += tl.load(Bias + head * tokens * tokens + index, mask=pair, other=0.0)
    if HAS_MASK:
        scores += tl.load(Mask + window * tokens * tokens + index, mask=pair, other=0.0)
    return tl.where(offs_n[None, :] < tokens, scores, float("-inf")), qk, pair


@triton.jit
def _program(heads, windows, tokens, head_dim, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr):
    """This program's token offsets, head-dim offsets, head, mask row, (window, head) row and its memory offset.
    Programs are laid out (window-in-batch * heads + head, token block): rows on the grid's first axis, which
    CUDA allows 2^31 - 1 long (the second stops at 65535, fewer than the windows of a large batch)."""
    row, block = tl.program_id(0), tl.program_id(1)
    offs = block * BLOCK + tl.arange(0, BLOCK)
    return offs, tl.arange(0, BLOCK_D), row % heads, (row // heads) % windows, row, row.to(tl.int64) * tokens * head_dim


@triton.jit
def _head_scale(Scale, head, HAS_SCALE: tl.constexpr):
    scale = 1.0
    if HAS_SCALE:
        scale = tl.load(Scale + head)
    return scale


@triton.jit
def _query_rows(Q, DOut, LSE, Delta, row, base, offs_m, offs_d, tokens, head_dim):
    """What backward reads per query row: q, the output's gradient, the log-sum-exp and rowsum(dO * O)."""
    q = _tile(Q, base, offs_m, offs_d, tokens, head_dim)
    dout = _tile(DOut, base, offs_m, offs_d, tokens, head_dim)
    lse = tl.load(LSE + row.to(tl.int64) * tokens + offs_m, mask=offs_m < tokens, other=0.0)
    delta = tl.load(Delta + row.to(tl.int64) * tokens + offs_m, mask=offs_m < tokens, other=0.0)
    return q, dout, lse, delta


@triton.jit
def _score_gradients(q, k, v, dout, lse, delta, Bias, Mask, scale, offs_m, offs_n, tokens, head, window,
                     HAS_MASK: tl.constexpr, HAS_SCALE: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr):
    """Recomputed probabilities p, d loss / d scores, q k^T and the existing pairs of one (query, key) tile."""
    scores, qk, pair = _scores(q, k, Bias, Mask, scale, offs_m, offs_n, tokens, head, window,
                               HAS_MASK, HAS_SCALE, PRECISION, ACC)
    p = tl.where(pair, tl.exp(scores - lse[:, None]), 0.0)
    dscores = p * (_dot(dout, tl.trans(v), PRECISION, ACC) - delta[:, None])
    return p, dscores, qk, pair


@triton.jit
def _forward_kernel(Q, K, V, Bias, Mask, Scale, Out, LSE, heads, windows, tokens, head_dim,
                    HAS_MASK: tl.constexpr, HAS_SCALE: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Output and log-sum-exp of one query block; program (query block, window-in-batch * heads + head)."""
    offs_m, offs_d, head, window, row, base = _program(heads, windows, tokens, head_dim, BLOCK_M, BLOCK_D)
    q = _tile(Q, base, offs_m, offs_d, tokens, head_dim)
    scale = _head_scale(Scale, head, HAS_SCALE)
    running_max = tl.full((BLOCK_M,), float("-inf"), ACC)
    running_sum = tl.zeros((BLOCK_M,), ACC)
    acc = tl.zeros((BLOCK_M, BLOCK_D), ACC)
    for start in range(0, tokens, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        k = _tile(K, base, offs_n, offs_d, tokens, head_dim)
        v = _tile(V, base, offs_n, offs_d, tokens, head_dim)
        scores, _, _ = _scores(q, k, Bias, Mask, scale, offs_m, offs_n, tokens, head, window,
                               HAS_MASK, HAS_SCALE, PRECISION, ACC)
        new_max = tl.maximum(running_max, tl.max(scores, 1))
        p = tl.exp(scores - new_max[:, None])
        rescale = tl.exp(running_max - new_max)
        running_sum = running_sum * rescale + tl.sum(p, 1)
        acc = acc * rescale[:, None] + _dot(p.to(v.dtype), v, PRECISION, ACC)
        running_max = new_max
    _store_tile(Out, base, offs_m, offs_d, tokens, head_dim, acc / running_sum[:, None])
    tl.store(LSE + row.to(tl.int64) * tokens + offs_m, running_max + tl.log(running_sum), mask=offs_m < tokens)


@triton.jit
def _key_block_backward_kernel(Q, K, V, Bias, Mask, Scale, DOut, LSE, Delta, DK, DV, DBias, DScale,
                               heads, windows, tokens, head_dim,
                               HAS_MASK: tl.constexpr, HAS_SCALE: tl.constexpr, PRECISION: tl.constexpr,
                               ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                               BLOCK_D: tl.constexpr):
    """dk, dv of one key block; adds its share of d bias (heads, N, N) and d scale (heads,)."""
    offs_n, offs_d, head, window, row, base = _program(heads, windows, tokens, head_dim, BLOCK_N, BLOCK_D)
    k = _tile(K, base, offs_n, offs_d, tokens, head_dim)
    v = _tile(V, base, offs_n, offs_d, tokens, head_dim)
    scale = _head_scale(Scale, head, HAS_SCALE)
    dk = tl.zeros((BLOCK_N, BLOCK_D), ACC)
    dv = tl.zeros((BLOCK_N, BLOCK_D), ACC)
    dscale = tl.zeros((BLOCK_N,), ACC)
    for start in range(0, tokens, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        q, dout, lse, delta = _query_rows(Q, DOut, LSE, Delta, row, base, offs_m, offs_d, tokens, head_dim)
        p, dscores, qk, pair = _score_gradients(q, k, v, dout, lse, delta, Bias, Mask, scale, offs_m, offs_n, tokens,
                                                head, window, HAS_MASK, HAS_SCALE, PRECISION, ACC)
        dv += _dot(tl.trans(p.to(dout.dtype)), dout, PRECISION, ACC)
        index = offs_m[:, None] * tokens + offs_n[None, :]
        tl.atomic_add(DBias + head * tokens * tokens + index, dscores, mask=pair)
        if HAS_SCALE:
            dscale += tl.sum(dscores * qk, 0)
            dscores = dscores * scale
        dk += _dot(tl.trans(dscores.to(q.dtype)), q, PRECISION, ACC)
    _store_tile(DK, base, offs_n, offs_d, tokens, head_dim, dk)
    _store_tile(DV, base, offs_n, offs_d, tokens, head_dim, dv)
    if HAS_SCALE:
        tl.atomic_add(DScale + head, tl.sum(dscale, 0))


@triton.jit
def _query_block_backward_kernel(Q, K, V, Bias, Mask, Scale, DOut, LSE, Delta, DQ, heads, windows, tokens, head_dim,
                                 HAS_MASK: tl.constexpr, HAS_SCALE: tl.constexpr, PRECISION: tl.constexpr,
                                 ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                                 BLOCK_D: tl.constexpr):
    """dq of one query block."""
    offs_m, offs_d, head, window, row, base = _program(heads, windows, tokens, head_dim, BLOCK_M, BLOCK_D)
    q, dout, lse, delta = _query_rows(Q, DOut, LSE, Delta, row, base, offs_m, offs_d, tokens, head_dim)
    scale = _head_scale(Scale, head, HAS_SCALE)
    dq = tl.zeros((BLOCK_M, BLOCK_D), ACC)
    for start in range(0, tokens, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        k = _tile(K, base, offs_n, offs_d, tokens, head_dim)
        v = _tile(V, base, offs_n, offs_d, tokens, head_dim)
        _, dscores, _, _ = _score_gradients(q, k, v, dout, lse, delta, Bias, Mask, scale, offs_m, offs_n, tokens,
                                            head, window, HAS_MASK, HAS_SCALE, PRECISION, ACC)
        dq += _dot(dscores.to(k.dtype), k, PRECISION, ACC)
    if HAS_SCALE:
        dq = dq * scale
    _store_tile(DQ, base, offs_m, offs_d, tokens, head_dim, dq)


def _accumulator(q: torch.Tensor) -> torch.dtype:
    """Softmax statistics, bias, mask and scale: float64 for float64 inputs, else float32."""
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _launch_arguments(q: torch.Tensor, mask: torch.Tensor | None, scale: torch.Tensor | None):
    batch_windows, heads, tokens, head_dim = q.shape
    windows = 1 if mask is None else mask.shape[0]
    placeholder = q.new_empty(1, dtype=_accumulator(q))
    block_m, block_n, block_d = _blocks(tokens, head_dim)
    # fp32 inputs get fp32 products (as the other kernels); TF32 would round q k^T to 10 mantissa bits
    precision = "tf32" if q.dtype in (torch.float16, torch.bfloat16) else "ieee"
    flags = dict(HAS_MASK=mask is not None, HAS_SCALE=scale is not None, PRECISION=precision,
                 ACC=tl.float64 if q.dtype == torch.float64 else tl.float32,
                 BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d)
    return (batch_windows * heads, heads, windows, tokens, head_dim, block_m, block_n,
            placeholder if mask is None else mask, placeholder if scale is None else scale, flags)


@torch.library.custom_op("swinssl::window_attention_forward", mutates_args=())
def _forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None,
             scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    rows, heads, windows, tokens, head_dim, block_m, _, mask_arg, scale_arg, flags = _launch_arguments(q, mask, scale)
    out = torch.empty_like(q)
    lse = torch.empty(q.shape[:3], device=q.device, dtype=_accumulator(q))
    _forward_kernel[(rows, triton.cdiv(tokens, block_m))](
        q, k, v, bias, mask_arg, scale_arg, out, lse, heads, windows, tokens, head_dim, **flags)
    return out, lse


@_forward.register_fake
def _(q, k, v, bias, mask, scale):
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=_accumulator(q))


@torch.library.custom_op("swinssl::window_attention_backward", mutates_args=())
def _backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
              mask: torch.Tensor | None, scale: torch.Tensor | None, out: torch.Tensor, lse: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    rows, heads, windows, tokens, head_dim, block_m, block_n, mask_arg, scale_arg, flags = (
        _launch_arguments(q, mask, scale))
    dout = dout.contiguous()
    delta = (dout.to(lse.dtype) * out.to(lse.dtype)).sum(-1)  # rowsum(dO * O), the softmax backward's correction
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dbias = torch.zeros(heads, tokens, tokens, device=q.device, dtype=lse.dtype)
    dscale = torch.zeros(heads, device=q.device, dtype=lse.dtype)
    _key_block_backward_kernel[(rows, triton.cdiv(tokens, block_n))](
        q, k, v, bias, mask_arg, scale_arg, dout, lse, delta, dk, dv, dbias, dscale,
        heads, windows, tokens, head_dim, **flags)
    _query_block_backward_kernel[(rows, triton.cdiv(tokens, block_m))](
        q, k, v, bias, mask_arg, scale_arg, dout, lse, delta, dq, heads, windows, tokens, head_dim, **flags)
    return dq, dk, dv, dbias, dscale


@_backward.register_fake
def _(dout, q, k, v, bias, mask, scale, out, lse):
    heads, tokens = q.shape[1], q.shape[2]
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v),
            q.new_empty(heads, tokens, tokens, dtype=_accumulator(q)), q.new_empty(heads, dtype=_accumulator(q)))


def _setup_context(ctx, inputs, output):
    q, k, v, bias, mask, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, bias, mask, scale, out, lse)


def _autograd_backward(ctx, dout, _dlse):
    q, k, v, bias, mask, scale, out, lse = ctx.saved_tensors
    dq, dk, dv, dbias, dscale = _backward(dout, q, k, v, bias, mask, scale, out, lse)
    return dq, dk, dv, dbias, None, None if scale is None else dscale


_forward.register_autograd(_autograd_backward, setup_context=_setup_context)


def triton_window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                            mask: torch.Tensor | None = None, scale: torch.Tensor | None = None) -> torch.Tensor:
    """(B * nW, heads, N, d) q, k, v -> output, as :func:`swinssl.models.attention.window_attention` takes them:
    ``bias`` (heads, N, N), ``mask`` (nW, N, N) or None, ``scale`` (heads, 1, 1) or None."""
    heads, dtype = q.shape[1], input_dtype(q)
    q, k, v = (t.to(dtype).contiguous() for t in (q, k, v))
    # The kernels read bias, mask and scale in fp32 (fp64 for fp64 inputs) whatever the activations' dtype;
    # gradients flow back through these casts and reshapes to the model's own tensors.
    accumulator = _accumulator(q)
    bias = bias.to(accumulator).contiguous()
    mask = None if mask is None else mask.to(accumulator).contiguous()
    scale = None if scale is None else scale.to(accumulator).reshape(heads).contiguous()
    out, _ = _forward(q, k, v, bias, mask, scale)
    return out
