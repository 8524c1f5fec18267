r"""Magnetizations with input-dependent couplings, and the transformer module inside them.

Bal, "Transformers are secretly collectives of spin systems" (2021), section 6 ("A slice of
statistical mechanics: magnetizations and free energies"):
when the couplings depend on the external field, J = J(h) (attention's softmax couplings do), the
magnetization m_i = −∂F/∂h_i picks up a correlation term,

.. math:: m_i = \langle\sigma_i\rangle + \tfrac12\sum_{mn}\langle\sigma_m\sigma_n\rangle
          \,\partial J_{mn}/\partial h_i ,

(the ½ because our energy is E = −½ σᵀJσ − h·σ; the paper writes it without the ½).
:func:`input_dependent_magnetization` checks it on an Ising system small enough to enumerate:
autodiff of the exact ln Z against the correlation formula. :func:`module_anatomy` takes the
steepest-descent free energy of :class:`spinformer.nn.FreeEnergyAttention` on the words of a real
English sentence and splits its magnetization into the four parts Bal (2021, section 8, "An
exercise in squinting: recognizing the transformer module") names: residual
(field), token mixing (couplings), normalisation and channel mixing (input-dependent couplings).
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from torch import Tensor

from spinformer.data import sentence_words, sinusoidal_positions
from spinformer.experiments._plot import new_figure
from spinformer.experiments._registry import POSITIVE, ExperimentResult, Limit, SectionExperiments
from spinformer.nn import FreeEnergyAttention
from spinformer.physics import IsingModel
from spinformer.physics.exact import all_states, enumeration_log_partition
from spinformer.physics.saddle import saddle_log_partition, saddle_magnetization, solve_saddle

__all__ = ["input_dependent_magnetization", "module_anatomy", "softmax_field_couplings"]

experiment = SectionExperiments(
    "Magnetizations with input-dependent couplings and the transformer module", first_order=60
)


def softmax_field_couplings(field: Tensor, scores: Tensor, gain: float) -> Tensor:
    """Symmetric, zero-diagonal couplings J(h) = ½(A + Aᵀ) with A = softmax_n(g h_m h_n + c_mn).

    The field-dependent attention couplings of Bal (2021), J = softmax(H W_Q W_Kᵀ Hᵀ/√d), for
    scalar (Ising) fields: ``scores`` is a fixed (N, N) offset c (a positional part), ``gain`` g couples
    the fields into the scores. The diagonal is masked before the softmax.
    """
    n = field.shape[-1]
    logits = gain * field[..., :, None] * field[..., None, :] + scores
    eye = torch.eye(n, dtype=torch.bool, device=field.device)
    attention = torch.softmax(logits.masked_fill(eye, -math.inf), dim=-1)
    return 0.5 * (attention + attention.transpose(-1, -2))


def _correlation_route(field: Tensor, scores: Tensor, gain: float, beta: float) -> Tensor:
    """⟨σ_i⟩ + ½ Σ_mn ⟨σ_m σ_n⟩ ∂J_mn/∂h_i from explicit Boltzmann weights over all states."""
    n = field.shape[-1]
    couplings = softmax_field_couplings(field, scores, gain)
    states = all_states(n, dtype=field.dtype)  # (2^N, N)
    energy = -0.5 * torch.einsum("sm,mn,sn->s", states, couplings, states) - states @ field
    weights = torch.softmax(-beta * energy, dim=0)
    mean = weights @ states
    correlation = torch.einsum("s,sm,sn->mn", weights, states, states)
    jacobian = torch.autograd.functional.jacobian(
        lambda h: softmax_field_couplings(h, scores, gain), field
    )  # (N, N, N): ∂J_mn/∂h_i
    return mean + 0.5 * torch.einsum("mn,mni->i", correlation, jacobian)


@experiment(
    title="Magnetization with field-dependent couplings: autodiff of ln Z against correlations"
)
def input_dependent_magnetization(
    num_spins: Annotated[int, Limit(2, 16)] = 8,
    beta: Annotated[float, POSITIVE] = 1.5,
    gain: Annotated[float, Limit(0)] = 1.0,
    seed: int = 0,
) -> ExperimentResult:
    """The magnetization m = −∂F/∂h when the couplings depend on the field (Bal 2021), two ways.

    An Ising system of num_spins spins with softmax couplings J(h) built from the fields (the
    attention matrix of Bal (2021), symmetrised, zero diagonal) is solved exactly by enumerating all
    2^N states in float64. Route 1 differentiates the exact ln Z (through J(h)) by autodiff:
    m = β⁻¹ ∂ln Z/∂h. Route 2 evaluates Bal's (2021) formula, ⟨σ_i⟩ plus the two-point
    correlations weighting ∂J/∂h. They agree to rounding; the table shows how much of m the
    coupling term carries, which a model with fixed couplings would miss.
    """
    generator = torch.Generator().manual_seed(seed)
    field = torch.randn(num_spins, generator=generator, dtype=torch.float64)
    scores = torch.randn(num_spins, num_spins, generator=generator, dtype=torch.float64)
    scores = 0.5 * (scores + scores.T)

    leaf = field.clone().requires_grad_(True)
    model = IsingModel(softmax_field_couplings(leaf, scores, gain), field=leaf, beta=beta)
    (grad,) = torch.autograd.grad(enumeration_log_partition(model), leaf)
    autodiff = grad / beta
    with torch.no_grad():
        fixed = IsingModel(softmax_field_couplings(field, scores, gain), field=field, beta=beta)
    fixed_leaf = field.clone().requires_grad_(True)
    fixed_model = IsingModel(fixed.couplings, field=fixed_leaf, beta=beta)
    (spin_mean,) = torch.autograd.grad(enumeration_log_partition(fixed_model), fixed_leaf)
    spin_mean = spin_mean / beta  # ⟨σ_i⟩ (couplings held fixed)
    formula = _correlation_route(field, scores, gain, beta)
    difference = float((autodiff - formula).abs().max())
    coupling_term = formula - spin_mean
    rows = [
        {
            "site": i,
            "h_i": float(field[i]),
            "⟨σ_i⟩": float(spin_mean[i]),
            "coupling term": float(coupling_term[i]),
            "m_i (autodiff)": float(autodiff[i]),
            "m_i (formula)": float(formula[i]),
        }
        for i in range(num_spins)
    ]
    fig, ax = new_figure(width=5.0, height=3.2)
    sites = torch.arange(num_spins).numpy()
    ax.bar(sites - 0.2, spin_mean.numpy(), width=0.4, label="⟨σ_i⟩ (fixed couplings)")
    ax.bar(sites + 0.2, coupling_term.detach().numpy(), width=0.4, label="coupling term")
    ax.plot(sites, autodiff.numpy(), "k_", markersize=14, mew=2, label="m_i = −∂F/∂h_i")
    ax.axhline(0, color="0.4", lw=0.6)
    ax.set_xlabel("site i")
    ax.set_ylabel("magnetization")
    ax.set_title(f"N={num_spins} Ising, softmax couplings J(h), β={beta}")
    ax.legend(fontsize=7)
    return ExperimentResult(
        metrics={
            "max_abs_difference": difference,
            "coupling_term_share": float(coupling_term.norm() / formula.norm()),
        },
        tables={"magnetization by site": rows},
        figures={"magnetization": fig},
        notes=[
            f"Autodiff of the exact ln Z and the correlation formula differ by at most "
            f"{difference:.1e} (float64, {2**num_spins} states enumerated).",
            f"The coupling term carries {float(coupling_term.norm() / formula.norm()):.0%} of |m|.",
        ],
    )


_SENTENCE_TOPIC = "assignment"


def _embed(tokens: list[str], dim: int, seed: int) -> Tensor:
    """Layer-normalised embeddings: a seeded random vector per word plus sinusoidal positions."""
    vocabulary = {w: i for i, w in enumerate(dict.fromkeys(tokens))}
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(len(vocabulary), dim, generator=generator, dtype=torch.float64)
    x = table[torch.tensor([vocabulary[w] for w in tokens])] + sinusoidal_positions(
        len(tokens), dim
    )
    return torch.nn.functional.layer_norm(x, (dim,))


@experiment(title="Recognising the transformer module in a free-energy block")
def module_anatomy(
    num_tokens: Annotated[int, Limit(2, 64)] = 12,
    dim: Annotated[int, Limit(3, 256)] = 16,
    beta: Annotated[float, POSITIVE] = 1.0,
    seed: int = 0,
) -> ExperimentResult:
    """Bal (2021), section 8: a free-energy block's magnetization as residual, token mixing, normalisation
    and channel mixing.

    The words of a sentence from Python's bundled documentation (real prose; embeddings are a
    seeded random vector per word plus sinusoidal positions, layer-normalised) are the fields h of
    one head of a FreeEnergyAttention block, whose softmax couplings J(h) are computed from the
    same tokens. At the steepest-descent saddle the magnetization obeys 2t_i m_i = β(h_i +
    Σ_j J_ij m_j) exactly. With c = β/(2 t̄) (t̄ the mean multiplier) it splits into the residual
    c·h_i, the token mixing c·Σ_j J_ij m_j, the normalisation (β/2t_i − c)(h_i + Σ_j J_ij m_j) that
    keeps each spin on its sphere, and, because J depends on h, the channel-mixing term −∂F/∂h − m
    (Bal's correlation term). The four parts add up to the full −∂F/∂h; the table lists
    their sizes per token.
    """
    tokens = sentence_words(_SENTENCE_TOPIC, num_tokens)
    if len(tokens) < num_tokens:
        raise ValueError(f"num_tokens must be at most {len(tokens)} (words in the sentence)")
    torch.manual_seed(seed)
    block = FreeEnergyAttention(dim, 1, beta=beta).double()
    with torch.no_grad():
        block.field.weight.copy_(torch.eye(dim, dtype=torch.float64))
    x = _embed(tokens, dim, seed)[None]  # (1, N, dim): one sequence
    beta_t = torch.tensor([beta], dtype=torch.float64)
    with torch.no_grad():
        couplings = block.couplings(x)  # (1, 1, N, N)
        field = x[:, None]  # (1, 1, N, dim): the field is the token itself (W_F = I)
    solved = solve_saddle(couplings, field, beta_t[None].expand(1, 1), block.radius)
    t = solved.solution  # (1, 1, N)
    m = saddle_magnetization(couplings, field, beta_t[None], block.radius, t)

    leaf = x.clone().requires_grad_(True)
    log_z = saddle_log_partition(
        block.couplings(leaf), leaf[:, None], beta_t[None], block.radius, t
    )
    (grad,) = torch.autograd.grad(log_z.sum(), leaf)
    full = (grad / beta)[:, None]  # −∂F/∂h with J = J(h)
    with torch.no_grad():
        scale = beta / (2 * t.mean())
        mixed = couplings @ m
        residual = scale * field
        token_mixing = scale * mixed
        normalisation = (beta / (2 * t[..., None]) - scale) * (field + mixed)
        channel_mixing = full - m
        parts = {
            "residual (field)": residual,
            "token mixing (couplings)": token_mixing,
            "normalisation": normalisation,
            "channel mixing (J(h))": channel_mixing,
        }
        closure = float((sum(parts.values()) - full).abs().max())
        sizes = {k: v[0, 0].norm(dim=-1) for k, v in parts.items()}
    rows = [
        {"token": word, **{k: float(v[i]) for k, v in sizes.items()}}
        for i, word in enumerate(tokens)
    ]
    share = {
        k: float(v.pow(2).sum() / sum(s.pow(2).sum() for s in sizes.values()))
        for k, v in sizes.items()
    }
    fig, ax = new_figure(width=6.0, height=3.4)
    positions = torch.arange(num_tokens).numpy()
    width = 0.2
    for index, (name, size) in enumerate(sizes.items()):
        ax.bar(positions + (index - 1.5) * width, size.numpy(), width=width, label=name)
    ax.set_xticks(positions, tokens, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("|part of m_i|")
    ax.set_title(f"FreeEnergyAttention, one head, d={dim}, β={beta}")
    ax.legend(fontsize=7)
    return ExperimentResult(
        metrics={
            "parts_sum_error": closure,
            "saddle_converged": bool(solved.converged.all()),
            **{f"share {k}": v for k, v in share.items()},
        },
        tables={"sizes of the parts of m_i, per token": rows},
        figures={"anatomy": fig},
        notes=[
            f"The four parts add up to −∂F/∂h to {closure:.1e}.",
            "Shares of Σ|part|² — " + ", ".join(f"{k}: {v:.0%}" for k, v in share.items()) + ".",
        ],
    )
