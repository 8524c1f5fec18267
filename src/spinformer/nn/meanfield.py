r"""Attention as the response of a vector-spin system: mean field and steepest-descent free energy.

The module's inputs are routed to the external fields of a vector-spin system, one system per
head, and the module returns its magnetizations (Bal, "Deep implicit attention", 2021;
"Transformers are secretly collectives of spin systems", 2021). With per-head fields
h_i = (x W_F)_i, couplings J and the large-D response φ (R² = d/2 − 1, d the head dimension;
:func:`spinformer.physics.vmf.phi`):

* :class:`MeanFieldAttention` solves the mean-field self-consistency as a deep implicit layer

  .. math:: m_i = \varphi\Big(h_i + \sum_j J_{ij} m_j - \Omega_i(m)\Big),

  with J the softmax couplings (queries·keys) or a learned N_max × N_max matrix, and the Onsager
  reaction Ω either absent, explicit (``"tap"``: the vector TAP reaction with isotropic
  covariance, Ω_i = β (d/2R²) m_i Σ_j J_ij² b_j, b_j = (R² − |m_j|²)/2R² the tangential variance
  of spin j under φ: :func:`spinformer.physics.onsager.large_d_reaction`), or learned
  (``"learned"``: Ω_i = (Σ_j J_ij²) W_Ω m_i, a channel-mixing map). ``steps=K`` unrolls K iterations from m = φ(h); ``steps=None`` solves the fixed point
  with :mod:`spinformer.solvers` and differentiates it implicitly (memory independent of the
  number of iterations).

* :class:`FreeEnergyAttention` returns m = −∂F/∂h = β⁻¹ ∂ln Z/∂h of the steepest-descent free
  energy of spherical spins (:mod:`spinformer.physics.saddle`), with symmetric couplings
  J = ½(A + Aᵀ) (A the softmax matrix, zero diagonal). By the envelope theorem m = βV⁻¹h at
  the saddle, read off the solver's last factorization (one Newton step past its t*); its
  backward is in closed form (:func:`spinformer.physics.saddle.saddle_response`: the implicit
  function theorem for t*). An equilibrium system has no
  arrow of time, so under a causal mask position t reports the magnetization of site t in the
  system of the prefix ≤ t (all prefixes solved as one batch: O(N) more work and memory; meant
  for short sequences).

The output is W_O applied to the concatenated magnetizations. The fields carry the residual
stream (m ≈ βh/2 at weak coupling), the couplings mix tokens, and the Onsager term mixes
channels -- the transformer module's parts, recovered from the spin system.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from spinformer.nn._spin import (
    BlockState,
    PositiveBeta,
    allowed_keys,
    check_heads,
    check_overflow,
    check_steps,
    check_tokens,
    field_scale,
    merge_heads,
    relax,
    softmax_couplings,
    split_heads,
)
from spinformer.physics import onsager, vmf
from spinformer.physics.saddle import saddle_response
from spinformer.physics.vmf import transformer_radius

__all__ = ["FreeEnergyAttention", "MeanFieldAttention"]


def _fields(
    module: MeanFieldAttention | FreeEnergyAttention, x: Tensor, padding_mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Validate the tokens; return the per-head β (H,) and fields h = x W_F (B, H, N, d)."""
    check_tokens(x, module.d_model, padding_mask, module.field.weight.dtype)
    return module.beta(), split_heads(module.field(x), module.n_heads)


def _check_ranges(x: Tensor, field: Tensor, beta: Tensor, radius: float, couplings: Tensor) -> None:
    """Name the input when the fields β|W_F x|/R or the couplings overflow the dtype."""
    check_overflow(
        x,
        {
            "the fields β|W_F x|/R": field_scale(field, beta, radius),
            "the couplings softmax(q·k)": couplings,
        },
    )


class MeanFieldAttention(nn.Module):
    """Vector-spin mean field as a deep implicit attention layer (see the module docstring).

    Args:
        d_model: width; ``n_heads`` spin systems of dimension d = d_model/n_heads > 2.
        n_heads: number of heads.
        couplings: ``"softmax"`` (queries·keys) or ``"learned"`` (a parameter, needs ``max_len``).
        onsager: ``"none"``, ``"tap"`` (explicit reaction term) or ``"learned"``.
        beta: initial inverse temperature (per head); ``learn_beta`` makes it trainable.
        causal: couple token i only to j ≤ i.
        steps: ``None`` for the fixed point (implicit layer) or a number K of iterations.
        solver, tol, max_iter, implicit: passed to :func:`spinformer.solvers.fixed_point`.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        couplings: Literal["softmax", "learned"] = "softmax",
        onsager: Literal["none", "tap", "learned"] = "tap",
        beta: float = 1.0,
        learn_beta: bool = False,
        causal: bool = False,
        steps: int | None = None,
        max_len: int | None = None,
        solver: str = "anderson",
        tol: float = 1e-4,
        max_iter: int = 50,
        implicit: bool = True,
    ) -> None:
        super().__init__()
        self.head_dim = check_heads(d_model, n_heads, min_head_dim=3)
        if couplings not in ("softmax", "learned"):
            raise ValueError(f"couplings must be 'softmax' or 'learned', got {couplings!r}")
        if onsager not in ("none", "tap", "learned"):
            raise ValueError(f"onsager must be 'none', 'tap' or 'learned', got {onsager!r}")
        check_steps(steps)
        self.d_model, self.n_heads = d_model, n_heads
        self.coupling_kind, self.onsager = couplings, onsager
        self.causal, self.steps = causal, steps
        self.solver, self.tol, self.max_iter, self.implicit = solver, tol, max_iter, implicit
        self.radius = transformer_radius(self.head_dim)
        self.beta = PositiveBeta(beta, n_heads, learn_beta)
        self.field = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        if couplings == "softmax":
            self.query = nn.Linear(d_model, d_model, bias=False)
            self.key = nn.Linear(d_model, d_model, bias=False)
        else:
            if (
                max_len is None
                or isinstance(max_len, bool)
                or not isinstance(max_len, int)
                or max_len < 1
            ):
                raise ValueError(
                    f"max_len must be a positive integer for learned couplings, got {max_len!r}"
                )
            self.max_len = max_len
            self.coupling_matrix = nn.Parameter(torch.randn(n_heads, max_len, max_len) / max_len)
        if onsager == "learned":
            self.reaction = nn.Parameter(torch.zeros(n_heads, self.head_dim, self.head_dim))

    def couplings(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Per-head couplings J (B, H, N, N) for tokens x (B, N, d_model), masked entries zero."""
        n = x.shape[1]
        allowed = allowed_keys(n, self.causal, padding_mask, x.device)
        if self.coupling_kind == "softmax":
            q = split_heads(self.query(x), self.n_heads)
            k = split_heads(self.key(x), self.n_heads)
            return softmax_couplings(q, k, allowed)
        if n > self.max_len:
            raise ValueError(f"sequence length must be <= max_len={self.max_len}, got {n}")
        matrix = self.coupling_matrix[:, :n, :n].expand(x.shape[0], -1, -1, -1)
        return matrix if allowed is None else matrix * allowed

    def _update(self, field: Tensor, couplings: Tensor, beta: Tensor):
        radius = self.radius
        site = onsager.SiteCouplings(couplings) if self.onsager != "none" else None
        b = beta[:, None, None]

        def update(m: Tensor) -> Tensor:
            theta = field + couplings @ m
            if self.onsager == "tap":
                theta = theta - onsager.large_d_reaction(m, b, radius, site)
            elif self.onsager == "learned":
                theta = theta - site.squared.sum(-1, keepdim=True) * (m @ self.reaction)
            return vmf.phi_fused(theta, b, radius)  # closed-form derivative for the adjoint

        return update

    def forward(
        self, x: Tensor, padding_mask: Tensor | None = None, return_state: bool = False
    ) -> Tensor | tuple[Tensor, BlockState]:
        """Magnetizations of the per-head spin systems probed by x, projected by W_O."""
        beta, field = _fields(self, x, padding_mask)
        couplings = self.couplings(x, padding_mask)
        _check_ranges(x, field, beta, self.radius, couplings)
        update = self._update(field, couplings, beta)
        m, converged, iterations, residual = relax(
            update,
            vmf.phi(field, beta[:, None, None], self.radius),
            self.steps,
            self.solver,
            self.tol,
            self.max_iter,
            self.implicit,
        )
        out = self.out(merge_heads(m))
        if not return_state:
            return out
        return out, BlockState(m, couplings, converged, iterations, residual, None, beta)


class FreeEnergyAttention(nn.Module):
    """m = −∂F/∂h of the steepest-descent free energy (see the module docstring).

    Args:
        d_model, n_heads: width and heads (head dimension d > 2).
        beta: initial inverse temperature per head; ``learn_beta`` makes it trainable.
        causal: position t sees the equilibrium of the prefix ≤ t.
        tol, max_iter: saddle-point solve (damped Newton, :func:`spinformer.physics.solve_saddle`).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        beta: float = 1.0,
        learn_beta: bool = False,
        causal: bool = False,
        tol: float = 1e-6,
        max_iter: int = 50,
    ) -> None:
        super().__init__()
        self.head_dim = check_heads(d_model, n_heads, min_head_dim=3)
        self.d_model, self.n_heads, self.causal = d_model, n_heads, causal
        self.tol, self.max_iter = tol, max_iter
        self.radius = transformer_radius(self.head_dim)
        self.beta = PositiveBeta(beta, n_heads, learn_beta)
        self.field = nn.Linear(d_model, d_model, bias=False)
        self.query = nn.Linear(d_model, d_model, bias=False)
        self.key = nn.Linear(d_model, d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def couplings(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Symmetric couplings ½(A + Aᵀ) with zero diagonal (B, H, N, N); padded sites decouple."""
        n = x.shape[1]
        allowed = allowed_keys(n, self.causal, padding_mask, x.device)
        q = split_heads(self.query(x), self.n_heads)
        k = split_heads(self.key(x), self.n_heads)
        attention = softmax_couplings(q, k, allowed)
        symmetric = 0.5 * (attention + attention.transpose(-1, -2))
        symmetric.diagonal(dim1=-2, dim2=-1).zero_()  # in place: the product saved nothing
        if padding_mask is not None:
            real = padding_mask[:, None, :, None] & padding_mask[:, None, None, :]
            symmetric = symmetric * real
        return symmetric

    def forward(
        self, x: Tensor, padding_mask: Tensor | None = None, return_state: bool = False
    ) -> Tensor | tuple[Tensor, BlockState]:
        """Magnetizations −∂F/∂h of the per-head saddle-point free energies, projected by W_O."""
        beta, field = _fields(self, x, padding_mask)
        if padding_mask is not None:
            field = field * padding_mask[:, None, :, None]
        couplings = self.couplings(x, padding_mask)
        _check_ranges(x, field, beta, self.radius, couplings)
        n = x.shape[1]
        if self.causal:  # one system per prefix: sites > t decouple and feel no field
            prefix = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()  # (t, site)
            field = field[:, :, None] * prefix[:, :, None]
            couplings = couplings[:, :, None] * (prefix[:, :, None] & prefix[:, None, :])
            beta_b = beta[:, None].expand(-1, n)
        else:
            beta_b = beta
        beta_b = beta_b.expand(*field.shape[:-2])
        m, log_z, multipliers_result = saddle_response(
            couplings, field, beta_b, self.radius, self.tol, self.max_iter
        )
        converged, iterations = multipliers_result.converged, multipliers_result.iterations
        residual = multipliers_result.residual
        free_energy = -log_z / beta_b
        if self.causal and n == 0:  # no prefixes: the empty system has ln Z = 0 and no solve
            m = m.sum(dim=2)  # (B, H, T = 0, N = 0, d) -> (B, H, 0, d)
            free_energy = free_energy.new_zeros(free_energy.shape[:-1])
            converged = converged.new_ones(converged.shape[:-1])
            iterations = iterations.new_zeros(iterations.shape[:-1])
            residual = residual.new_zeros(residual.shape[:-1])
        elif self.causal:
            index = torch.arange(n, device=x.device)
            m = m[:, :, index, index]  # site t of prefix system t: (B, H, N, d)
            free_energy = free_energy[..., -1]  # the full sequence's system
            converged = converged.all(-1)
            iterations = iterations.amax(-1)
            residual = residual.amax(-1)
        out = self.out(merge_heads(m))
        if not return_state:
            return out
        state = BlockState(m, couplings, converged, iterations, residual, free_energy.sum(1), beta)
        return out, state
