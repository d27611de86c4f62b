"""Mamba-2's chunked scan (`ssd_chunk_scan`) against a step-by-step recurrence and against the installed
transformers' own scan, alone and inside `Mamba2ForCausalLM`."""

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F
from transformers.models.mamba2 import modeling_mamba2

from newllm.models.mamba2 import LIBRARY_CHUNK_SCAN, build_mamba2, mamba2_config, ssd_chunk_scan


def scan_inputs(batch=2, length=37, heads=4, head_dim=3, groups=2, state=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, length, heads, head_dim, generator=g),
        dt=torch.randn(batch, length, heads, generator=g),
        A=-3 * torch.rand(heads, generator=g),
        B=torch.randn(batch, length, groups, state, generator=g),
        C=torch.randn(batch, length, groups, state, generator=g),
        D=torch.randn(heads, generator=g),
        dt_bias=torch.randn(heads, generator=g),
        initial_states=torch.randn(batch, heads, head_dim, state, generator=g),
    )


def recurrence(hidden_states, dt, A, B, C, D, dt_bias, initial_states):
    """The scan one position at a time: state_t = exp(A dt_t) state_{t-1} + dt_t x_t ⊗ B_t, y_t = state_t · C_t + D x_t."""
    heads = hidden_states.shape[2]
    dt = F.softplus(dt + dt_bias)
    B, C = (t.repeat_interleave(heads // t.shape[2], dim=2) for t in (B, C))
    state, ys = initial_states, []
    for t in range(hidden_states.shape[1]):
        x = hidden_states[:, t]
        state = state * torch.exp(A * dt[:, t])[..., None, None] + (dt[:, t, :, None] * x)[..., None] * B[:, t, :, None]
        ys.append((state * C[:, t, :, None]).sum(-1) + D[:, None] * x)
    return torch.stack(ys, dim=1), state


@pytest.mark.parametrize("length, chunk_size", [(37, 8), (32, 8), (5, 16), (64, 64)])
def test_scan_equals_the_recurrence(length, chunk_size):
    inputs = scan_inputs(length=length)
    y, final = ssd_chunk_scan(**inputs, chunk_size=chunk_size, dt_softplus=True, return_final_states=True)
    y_ref, final_ref = recurrence(**inputs)
    assert y.dtype == torch.float32 and y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final, final_ref, rtol=1e-5, atol=1e-5)


def test_scan_without_initial_state_or_skip_starts_from_zero():
    inputs = scan_inputs(length=20)
    inputs["initial_states"] = torch.zeros_like(inputs["initial_states"])
    y_ref, _ = recurrence(**(inputs | dict(D=torch.zeros_like(inputs["D"]))))
    y = ssd_chunk_scan(**(inputs | dict(initial_states=None, D=None)), chunk_size=8, dt_softplus=True)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)


def test_scan_equals_the_installed_transformers_scan_values_and_gradients():
    inputs = scan_inputs(length=45)
    grads = []
    for scan in (ssd_chunk_scan, LIBRARY_CHUNK_SCAN):
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        y, final = scan(**leaves, chunk_size=16, dt_softplus=True, dt_limit=(0.0, float("inf")), return_final_states=True)
        (y.square().mean() + final.sin().sum()).backward()
        grads.append((y.detach(), final.detach(), {k: v.grad for k, v in leaves.items()}))
    (y, final, g), (y_lib, final_lib, g_lib) = grads
    torch.testing.assert_close(y, y_lib, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final, final_lib, rtol=1e-5, atol=1e-5)
    for name in inputs:
        torch.testing.assert_close(g[name], g_lib[name], rtol=1e-4, atol=1e-5, msg=name)


def test_scan_runs_in_fp32_under_autocast():
    inputs = scan_inputs(length=24)
    plain = ssd_chunk_scan(**inputs, chunk_size=8, dt_softplus=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = ssd_chunk_scan(**inputs, chunk_size=8, dt_softplus=True)
    assert cast.dtype == torch.float32
    torch.testing.assert_close(cast, plain)


@pytest.mark.skipif(importlib.util.find_spec("mamba_ssm") is not None, reason="mamba_ssm's kernel is used instead")
def test_every_mamba2_model_runs_this_scan_and_matches_the_library(monkeypatch):
    assert modeling_mamba2.mamba2_chunk_scan is ssd_chunk_scan
    torch.manual_seed(0)
    model = build_mamba2(mamba2_config(97, 32, 2, head_dim=16, chunk_size=8)).eval()
    ids = torch.randint(0, 97, (2, 21))
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return ssd_chunk_scan(*args, **kwargs)

    monkeypatch.setattr(modeling_mamba2, "mamba2_chunk_scan", counted)
    with torch.no_grad():
        logits = model(ids).logits
    assert len(calls) == 2  # one per layer
    monkeypatch.setattr(modeling_mamba2, "mamba2_chunk_scan", LIBRARY_CHUNK_SCAN)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, logits, rtol=1e-5, atol=1e-5)


def test_scan_refuses_what_it_does_not_compute():
    inputs = scan_inputs(length=8)
    with pytest.raises(NotImplementedError, match="gate z"):
        ssd_chunk_scan(**inputs, chunk_size=8, z=torch.ones(1))


def _saved_and_grads(inputs, chunk_size):
    """The shapes of what backward keeps of one scan, and the gradients of its inputs."""
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items() if k in ("hidden_states", "B", "C", "dt")}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t, lambda t: t):
        y = ssd_chunk_scan(**(inputs | leaves), chunk_size=chunk_size, dt_softplus=True)
    y.square().sum().backward()
    return saved, {k: v.grad for k, v in leaves.items()}


def test_eager_backward_recomputes_the_chunk_matrices_instead_of_keeping_them(monkeypatch):
    # 8 heads in one group, as the study's 43 in one: every head's (chunk x chunk) matrices are recomputed in backward
    # (at the study's sizes they were most of what it kept), with the same gradients
    import newllm.models.mamba2 as mamba2

    inputs = scan_inputs(batch=2, length=64, heads=8, head_dim=4, groups=1, state=5)
    chunk = 16

    def per_head_chunk_matrices(shapes):
        return [s for s in shapes if s[-2:] == (chunk, chunk) and math.prod(s) >= 2 * 8 * 4 * chunk * chunk]

    kept, grads = _saved_and_grads(inputs, chunk)
    monkeypatch.setattr(mamba2, "checkpoint", lambda fn, *args, **kwargs: fn(*args))  # keep everything
    kept_all, grads_all = _saved_and_grads(inputs, chunk)
    assert per_head_chunk_matrices(kept_all) and not per_head_chunk_matrices(kept), kept
    for name in grads:
        torch.testing.assert_close(grads[name], grads_all[name], rtol=1e-5, atol=1e-6)
