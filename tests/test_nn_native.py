"""The compiled row kernel of the one-step cosine spin block (``spinformer.nn._native``).

It must give the torch path's numbers up to float rounding (forward and every gradient, in
float32 and float64, with and without rotary phases, stream, padding or causal masks, at the
specialized head widths and others), pass a float64 gradient check of its closed-form
backward, and step aside (the torch path runs) with ``SPINFORMER_NATIVE=0`` or inputs it does
not take.
"""

from __future__ import annotations

import pytest
import torch

from spinformer.nn import SpinTransformerBlock, _native
from spinformer.nn._spin import HeadRMSNorm, cosine_scale, rotary_phases
from spinformer.nn.blocks import _CosineOneStep
from spinformer.physics import vmf

F64 = torch.float64

needs_kernel = pytest.mark.skipif(
    _native.library() is None, reason=f"no native kernel: {_native._load()[1]}"
)


class _Counter:
    """Count the calls of ``_native.cosine_step_forward`` (passing them through)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = _native.cosine_step_forward

        def wrapper(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(_native, "cosine_step_forward", wrapper)


def _run(block: SpinTransformerBlock, x: torch.Tensor, mask: torch.Tensor | None):
    block.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    y = block(x, padding_mask=mask) if mask is not None else block(x)
    (y * torch.linspace(-1.0, 1.0, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    grads = {name: p.grad for name, p in block.named_parameters() if p.grad is not None}
    return y.detach(), x.grad, grads


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize(
    "options",
    [
        {"rope": True, "causal": True},
        {"rope": False, "residual": "magnetization"},
        {"rope": True, "residual": "add", "ffn_field": False},
        {"rope": True, "padding": True},
    ],
    ids=["rope-causal", "stream", "add-no-ffn", "padding"],
)
@pytest.mark.parametrize("width,heads", [(64, 4), (24, 4), (64, 2)], ids=["d16", "d6", "d32"])
def test_native_and_torch_paths_agree(monkeypatch, dtype, options, width, heads):
    options = dict(options)
    padding = options.pop("padding", False)
    torch.manual_seed(0)
    block = SpinTransformerBlock(width, heads, steps=1, **options).to(dtype)
    x = torch.randn(3, 5, width, dtype=dtype)
    if options.get("residual") == "magnetization":  # magnetizations inside the sphere
        x = 0.2 * torch.tanh(x)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2, [True] * 4 + [False]])
    mask = mask if padding else None
    counter = _Counter(monkeypatch)
    native = _run(block, x, mask)
    assert counter.calls == 1
    monkeypatch.setenv("SPINFORMER_NATIVE", "0")
    plain = _run(block, x, mask)
    assert counter.calls == 1  # the torch path
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == F64 else {"rtol": 2e-5, "atol": 2e-6}
    torch.testing.assert_close(native[0], plain[0], **tol)
    torch.testing.assert_close(native[1], plain[1], **tol)
    assert native[2].keys() == plain[2].keys()
    for name in native[2]:
        torch.testing.assert_close(native[2][name], plain[2][name], **tol, msg=name)


def _node_inputs(g: torch.Generator, residual: str, norm_inside: bool, mlp: bool):
    """Float64 inputs of the one-step node (B, N, H, d) = (2, 3, 2, 4), all requiring grad."""
    batch, n, heads, d = 2, 3, 2, 4
    width = heads * d
    x = torch.randn(batch, n, width, generator=g, dtype=F64)
    if residual == "magnetization":  # magnetizations inside the sphere
        x = 0.3 * torch.tanh(x)
    x_norm = None if norm_inside else torch.randn(batch, n, width, generator=g, dtype=F64)
    gain = 0.5 + torch.rand(heads, d, generator=g, dtype=F64) if norm_inside else None
    weight = 0.5 * torch.randn(4 * width, width, generator=g, dtype=F64)
    layers = [None] * 4
    if mlp:
        layers = [
            0.4 * torch.randn(3 * width, width, generator=g, dtype=F64),
            0.1 * torch.randn(3 * width, generator=g, dtype=F64),
            0.4 * torch.randn(width, 3 * width, generator=g, dtype=F64),
            0.1 * torch.randn(width, generator=g, dtype=F64),
        ]
    beta = 0.5 + torch.rand(heads, generator=g, dtype=F64)
    temperature = 1.0 + torch.rand(heads, generator=g, dtype=F64)
    inputs = [x, x_norm, gain, weight, *layers, beta, temperature]
    return [None if t is None else t.requires_grad_() for t in inputs]


@needs_kernel
@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("residual", ["add", "field", "magnetization"])
@pytest.mark.parametrize("norm_inside", [True, False], ids=["rms-inside", "normed-outside"])
def test_native_one_step_passes_gradcheck(monkeypatch, rope, residual, norm_inside):
    # the whole block's node: x, its per-head RMS norm (or x̂ given), the four projections, the
    # MLP field, the carrier of the stream, β and τ against finite differences
    g = torch.Generator().manual_seed(3)
    inputs = _node_inputs(g, residual, norm_inside, mlp=True)
    n, heads, d = inputs[0].shape[1], 2, 4
    radius = vmf.transformer_radius(d)
    rotation = rotary_phases(n, heads, inputs[0].detach()[0, 0, :d]) if rope else None
    counter = _Counter(monkeypatch)

    def step(*values):
        return _CosineOneStep.apply(*values, radius, rotation, None, True, residual)

    torch.autograd.gradcheck(step, inputs)
    assert counter.calls > 0


@needs_kernel
def test_native_forward_is_the_torch_forward():
    # the kernel's rows against the torch functions they replace (one home each: vmf, _spin)
    g = torch.Generator().manual_seed(5)
    batch, n, heads, d = 2, 6, 3, 8
    parts = torch.randn(4, batch, n, heads, d, generator=g, dtype=F64)
    temperature = 1.0 + torch.rand(heads, generator=g, dtype=F64)
    beta = 0.5 + torch.rand(heads, generator=g, dtype=F64)
    radius = vmf.transformer_radius(d)
    rotation = rotary_phases(n, heads, parts[0, 0, 0, 0])
    scaled, cosine, start, u_start = _native.cosine_step_forward(
        parts, temperature, beta, radius, rotation
    )
    scale = torch.stack([temperature / d, torch.ones_like(temperature)])[:, None, None, :, None]
    expected, saved = cosine_scale(parts[1:3], rotation, scale)
    torch.testing.assert_close(scaled, expected)
    assert cosine[0] is scaled  # the backward divides by the coefficient
    for got, want in zip(cosine[1:], saved[1:], strict=True):
        torch.testing.assert_close(got, want)
    want_start, _, want_u = vmf.phi_terms(parts[3], beta[:, None], radius)
    torch.testing.assert_close(start, want_start)
    torch.testing.assert_close(u_start, want_u)
    mixed = torch.randn(batch, heads, n, d, generator=g, dtype=F64).transpose(1, 2)
    extra = torch.randn(batch, n, heads, d, generator=g, dtype=F64)
    stream = 0.4 * torch.tanh(torch.randn(batch, n, heads, d, generator=g, dtype=F64))
    out, saved = _native.phi_sum_forward(parts[0], mixed, [extra], stream, beta, radius)
    want, want_saved = vmf.phi_sum(beta[:, None], radius, stream, parts[0], extra, mixed)
    torch.testing.assert_close(out, want)
    assert saved[0] is out  # the response in θ's place: θ = φ(θ)(1 + u)/β
    torch.testing.assert_close(out * (1.0 + saved[1]) / beta[:, None], want_saved[0])
    for got, ref in zip(saved[1:], want_saved[1:], strict=True):
        torch.testing.assert_close(got, ref)
    other = torch.randn(batch, n, heads, d, generator=g, dtype=F64)  # two extra fields
    out, _ = _native.phi_sum_forward(parts[0], mixed, [extra, other], None, beta, radius)
    want, _ = vmf.phi_sum(beta[:, None], radius, None, parts[0], extra, other, mixed)
    torch.testing.assert_close(out, want)


def test_native_path_steps_aside(monkeypatch):
    x = torch.randn(2, 3, 4)
    monkeypatch.setenv("SPINFORMER_NATIVE", "0")
    assert _native.library() is None
    assert not _native.usable(x)
    monkeypatch.delenv("SPINFORMER_NATIVE")
    assert not _native.usable(x.transpose(0, 1))  # not contiguous
    assert not _native.usable(x.half())  # other dtypes
    assert not _native.usable(x, x.double())  # mixed dtypes
    assert _native.usable(x) == (_native.library() is not None)


def test_torch_path_runs_without_the_kernel(monkeypatch):
    # SPINFORMER_NATIVE=0 (as without a compiler): the block trains through the torch path
    monkeypatch.setenv("SPINFORMER_NATIVE", "0")
    counter = _Counter(monkeypatch)
    torch.manual_seed(0)
    block = SpinTransformerBlock(16, 2, steps=1, rope=True).double()
    x = torch.randn(2, 4, 16, dtype=F64, requires_grad=True)
    torch.autograd.gradcheck(block, (x,))
    assert counter.calls == 0


def test_without_a_compiler_the_block_keeps_the_torch_path(monkeypatch, tmp_path):
    monkeypatch.setenv("SPINFORMER_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.delenv("SPINFORMER_NATIVE", raising=False)
    _native._load.cache_clear()
    try:
        assert _native.library() is None
        assert "no C compiler" in _native._load()[1]
        torch.manual_seed(0)
        block = SpinTransformerBlock(16, 2, steps=1, rope=True)
        x = torch.randn(2, 4, 16, requires_grad=True)
        block(x).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        assert list(tmp_path.iterdir()) == []
    finally:
        _native._load.cache_clear()


def test_kernel_phases_are_built_once_per_table_and_rebuilt_after_a_write():
    rotation = rotary_phases(6, 2, torch.zeros(4, dtype=torch.float64))
    first = _native._phases(rotation)
    assert _native._phases(rotation) is first  # the cached tables: built once
    cos, sin = torch.view_as_real(rotation[0]).unbind(-1)  # (N, H, d/2)
    expected = torch.stack(
        [cos.repeat_interleave(2, -1), torch.stack([-sin, sin], -1).flatten(-2)], dim=2
    )
    assert torch.equal(first, expected)  # x ⊙ cos + swap(x) ⊙ sin per channel pair
    table = rotation[0].clone()
    own = (table, rotation[1])
    before = _native._phases(own)
    table.mul_(1j)  # a table written in place gets new phases
    after = _native._phases(own)
    assert after is not before
    assert torch.equal(after[:, :, 0], torch.view_as_real(table)[..., 0].repeat_interleave(2, -1))


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("rope", [False, True])
@pytest.mark.parametrize("d", [16, 6])
@pytest.mark.parametrize("flags", [_native._FLAGS, ()], ids=["openmp", "posix-threads"])
def test_kernels_split_over_threads_give_the_same_bits(monkeypatch, dtype, rope, d, flags):
    # rows split among threads: every row's arithmetic unchanged, so every output equal bit for
    # bit to one thread's (forward and backward of both sides, with a strided attention layout),
    # on the OpenMP runtime's threads and, built without OpenMP, on threads started per call
    built = _native._load(flags)[0]
    assert built is not None
    monkeypatch.setattr(_native, "library", lambda: built)
    g = torch.Generator().manual_seed(7)
    batch, n, heads = 3, 7, 2
    parts = torch.randn(4, batch, n, heads, d, generator=g, dtype=dtype)
    temperature = 1.0 + torch.rand(heads, generator=g, dtype=dtype)
    beta = 0.5 + torch.rand(heads, generator=g, dtype=dtype)
    radius = vmf.transformer_radius(d)
    rotation = rotary_phases(n, heads, parts[0, 0, 0, 0]) if rope else None
    mixed = torch.randn(batch, heads, n, d, generator=g, dtype=dtype).transpose(1, 2)
    extra = torch.randn(batch, n, heads, d, generator=g, dtype=dtype)
    stream = 0.4 * torch.tanh(torch.randn(batch, n, heads, d, generator=g, dtype=dtype))
    incoming = [torch.randn(batch, heads, n, d, generator=g, dtype=dtype).transpose(1, 2)]
    incoming += [torch.randn(batch, n, heads, d, generator=g, dtype=dtype) for _ in range(3)]

    def run(threads: int) -> list[torch.Tensor]:
        scaled, cosine, start, u_start = _native.cosine_step_forward(
            parts, temperature, beta, radius, rotation, threads=threads
        )
        out, saved = _native.phi_sum_forward(
            parts[0], mixed, [extra, incoming[3]], stream, beta, radius, threads=threads
        )
        grads = torch.empty_like(parts)
        _, grad_stream, grad_beta = _native.phi_sum_backward(
            incoming[1], beta, radius, stream, saved, True, grads[0], threads=threads
        )
        grad_beta_start, per_query = _native.cosine_step_backward(
            incoming[0], incoming[2], incoming[3], cosine, rotation, start, u_start, beta,
            radius, grads[1:], threads=threads,
        )  # fmt: skip
        return [scaled, *cosine, start, u_start, out, *saved, grads, grad_stream, grad_beta,
                grad_beta_start, per_query]  # fmt: skip

    one = run(1)
    for threads in (2, 3, batch * n + 5):  # more threads than tokens: one token each
        for got, want in zip(run(threads), one, strict=True):
            assert torch.equal(got, want)


def test_thread_count_follows_torch_and_the_size(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert _native.threads_for(10 * _native.GRAIN) == 4
    assert _native.threads_for(2 * _native.GRAIN) == 2
    assert _native.threads_for(_native.GRAIN // 2) == 1
    assert _native.threads_for(_native.GRAIN // 2, threads=3) == 3


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("heads,d", [(4, 16), (3, 5)])
def test_head_rms_norm_native_and_torch_paths_agree(monkeypatch, dtype, heads, d):
    g = torch.Generator().manual_seed(11)
    norm = HeadRMSNorm(heads, d, 1.5).to(dtype)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(heads * d, generator=g, dtype=dtype))
    x = torch.randn(3, 70, heads * d, generator=g, dtype=dtype)  # 70 tokens: a partial block
    gy = torch.randn(3, 70, heads * d, generator=g, dtype=dtype)

    def grads():
        leaf = x.clone().requires_grad_()
        y = norm(leaf)
        return (y, *torch.autograd.grad(y, (leaf, norm.weight), gy))

    native = grads()
    monkeypatch.setenv("SPINFORMER_NATIVE", "0")
    plain = grads()
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == F64 else {"rtol": 2e-5, "atol": 2e-5}
    for got, want in zip(native, plain, strict=True):
        torch.testing.assert_close(got, want, **tol)


@needs_kernel
def test_head_rms_kernel_gives_the_same_bits_on_every_thread_count():
    g = torch.Generator().manual_seed(12)
    x = torch.randn(5, 41, 4, 16, generator=g)
    weight = torch.randn(4, 16, generator=g)
    grad = torch.randn(5, 41, 4, 16, generator=g)

    def run(threads: int) -> list[torch.Tensor]:
        out, inverse = _native.head_rms_forward(x, weight, threads=threads)
        grad_x, grad_weight = _native.head_rms_backward(
            grad, x, inverse, weight, True, True, threads=threads
        )
        return [out, inverse, grad_x, grad_weight]

    one = run(1)
    for threads in (2, 3, 200):
        for got, want in zip(run(threads), one, strict=True):
            assert torch.equal(got, want)


@needs_kernel
@pytest.mark.parametrize("residual", ["add", "field", "magnetization"])
@pytest.mark.parametrize("norm_inside", [True, False], ids=["rms-inside", "normed-outside"])
@pytest.mark.parametrize("mlp", [True, False], ids=["mlp", "no-mlp"])
def test_one_step_node_native_and_torch_paths_agree(monkeypatch, residual, norm_inside, mlp):
    # the node's compiled rows (norm, projections' row math, field sum, φ) against its torch
    # operations, forward and every gradient
    g = torch.Generator().manual_seed(13)
    inputs = _node_inputs(g, residual, norm_inside, mlp)
    radius = vmf.transformer_radius(4)
    given = [t for t in inputs if t is not None]

    def run():
        out = _CosineOneStep.apply(*inputs, radius, None, None, True, residual)
        weights = torch.linspace(-1.0, 1.0, out.numel(), dtype=F64).view_as(out)
        # x normed outside feeds no carrier with residual "add": it gets no gradient
        return out, *torch.autograd.grad((out * weights).sum(), given, allow_unused=True)

    native = run()
    monkeypatch.setenv("SPINFORMER_NATIVE", "0")
    for got, want in zip(native, run(), strict=True):
        assert (got is None) == (want is None)
        if got is not None:
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
