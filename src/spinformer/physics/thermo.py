r"""Thermodynamics of a spin model, and the registry of methods that compute it.

Definitions (the standard ones of statistical mechanics, e.g. Bal 2021, "Transformers are
secretly collectives of spin systems"), all per batch entry and extensive (totals, not per spin):

.. math::

    F = -\beta^{-1}\ln Z,\quad U = -\partial_\beta \ln Z,\quad S = \beta(U - F),\quad
    C = \beta^2 \operatorname{Var}(E) = -\beta^2 \partial_\beta U,\quad
    m_i = -\partial F/\partial h_i = \langle\sigma_i\rangle,\quad
    \chi_{ij} = \partial m_i/\partial h_j = \beta\,\operatorname{Cov}(\sigma_i, \sigma_j).

A *method* maps a model to a :class:`Thermodynamics`; methods register by name
(:func:`register_method`) so that callers select them with a string and later methods
(Monte Carlo, mean field, TAP, saddle point) plug in without touching callers.

:func:`thermodynamics_from_log_partition` is the autodiff route: given any differentiable
:math:`\ln Z(h, \beta)` it returns every observable above as a derivative. It is how methods that
only know :math:`\ln Z` (transfer matrices, saddle points) produce magnetizations, and the
independent check on methods that compute expectation values directly (enumeration).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import torch
from torch import Tensor

from spinformer.physics.models import IsingModel, VectorSpinModel, _SpinModel

__all__ = [
    "Thermodynamics",
    "ThermodynamicsMethod",
    "available_methods",
    "register_method",
    "thermodynamics",
    "thermodynamics_from_log_partition",
]


@dataclass(frozen=True)
class Thermodynamics:
    """Thermodynamic state of a (batched) spin model.

    Scalars have shape ``batch_shape``; ``magnetization`` is (..., N) for Ising and (..., N, D)
    for vector spins; ``susceptibility`` is (..., N, N) for Ising and (..., N, D, N, D) for vector
    spins (``None`` when not computed). Iterative methods fill ``converged`` and ``iterations``;
    sampling methods fill ``stderr`` (standard errors keyed by field name) and ``extras``.
    """

    log_partition: Tensor
    free_energy: Tensor
    energy: Tensor
    entropy: Tensor
    heat_capacity: Tensor
    magnetization: Tensor
    susceptibility: Tensor | None
    beta: Tensor
    method: str
    converged: Tensor | None = None
    iterations: Tensor | None = None
    stderr: dict[str, Tensor] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_log_partition(
        cls,
        log_partition: Tensor,
        energy: Tensor,
        heat_capacity: Tensor,
        magnetization: Tensor,
        susceptibility: Tensor | None,
        beta: Tensor,
        method: str,
        entropy: Tensor | None = None,
        **extra: Any,
    ) -> Thermodynamics:
        """Fill F = −ln Z/β and S = β U + ln Z from ln Z and U.

        ``entropy``, when given, is used instead of β U + ln Z: at large β both terms are
        ~β|E₀| and cancel, so exact methods pass S = β⟨E − E_ref⟩ + ln Σ e^{−β(E − E_ref)}
        computed from energies measured from a reference E_ref near the ground state.
        """
        return cls(
            log_partition=log_partition,
            free_energy=-log_partition / beta,
            energy=energy,
            entropy=beta * energy + log_partition if entropy is None else entropy,
            heat_capacity=heat_capacity,
            magnetization=magnetization,
            susceptibility=susceptibility,
            beta=beta,
            method=method,
            **extra,
        )

    def detach(self) -> Thermodynamics:
        """A copy with every tensor detached from the autograd graph."""
        values = {}
        for f in fields(self):
            v = getattr(self, f.name)
            values[f.name] = v.detach() if isinstance(v, Tensor) else v
        return Thermodynamics(**values)

    def summary(self, num_spins: int | None = None) -> dict[str, float]:
        """Scalar observables of an unbatched result as floats (per spin if ``num_spins``)."""
        if self.log_partition.ndim != 0:
            raise ValueError(
                f"summary needs an unbatched result, got batch shape {tuple(self.log_partition.shape)}"
            )
        scale = 1.0 / num_spins if num_spins else 1.0
        m = self.magnetization
        mean_m = m.mean(dim=-2) if m.ndim >= 2 else m.mean(dim=-1)
        return {
            "beta": float(self.beta),
            "log_partition": float(self.log_partition) * scale,
            "free_energy": float(self.free_energy) * scale,
            "energy": float(self.energy) * scale,
            "entropy": float(self.entropy) * scale,
            "heat_capacity": float(self.heat_capacity) * scale,
            "magnetization": float(mean_m.norm()) if m.ndim >= 2 else float(mean_m),
        }


class ThermodynamicsMethod(Protocol):
    def __call__(self, model: Any, /, **options: Any) -> Thermodynamics: ...


_REGISTRY: dict[str, list[tuple[type, ThermodynamicsMethod]]] = {}


def register_method(
    name: str, *model_types: type
) -> Callable[[ThermodynamicsMethod], ThermodynamicsMethod]:
    """Decorator registering ``fn(model, **options) -> Thermodynamics`` as method ``name``.

    ``model_types`` restrict the method to those model classes (default: every spin model); the
    same name may be registered once per model type.
    """
    types = model_types or (_SpinModel,)

    def decorate(fn: ThermodynamicsMethod) -> ThermodynamicsMethod:
        entries = _REGISTRY.setdefault(name, [])
        for model_type in types:
            entries[:] = [(t, f) for t, f in entries if t is not model_type]
            entries.append((model_type, fn))
        return fn

    return decorate


def available_methods(model: Any | None = None) -> tuple[str, ...]:
    """Names of the registered methods (those that accept ``model``'s type, if given)."""
    if model is None:
        return tuple(sorted(_REGISTRY))
    return tuple(sorted(n for n, e in _REGISTRY.items() if any(isinstance(model, t) for t, _ in e)))


def thermodynamics(
    model: IsingModel | VectorSpinModel, method: str = "exact", **options: Any
) -> Thermodynamics:
    """Compute the thermodynamics of ``model`` with the method registered as ``method``.

    >>> from spinformer.physics import curie_weiss
    >>> round(float(thermodynamics(curie_weiss(10, beta=1.0)).log_partition), 10)
    7.3751436727
    """
    if not isinstance(model, _SpinModel):
        raise ValueError(
            f"model must be an IsingModel or VectorSpinModel, got {type(model).__name__}"
        )
    entries = _REGISTRY.get(method)
    if not entries:
        raise ValueError(f"method must be one of {available_methods()}, got {method!r}")
    for model_type in type(model).__mro__:
        for t, fn in entries:
            if t is model_type:
                return fn(model, **options)
    raise ValueError(
        f"method {method!r} does not apply to {type(model).__name__}; "
        f"methods for it: {available_methods(model)}"
    )


def thermodynamics_from_log_partition(
    log_partition: Callable[[Tensor, Tensor], Tensor],
    model: IsingModel | VectorSpinModel,
    method: str,
    susceptibility: bool = True,
    **extra: Any,
) -> Thermodynamics:
    """Every observable as a derivative of a differentiable ``log_partition(field, beta)``.

    ``field`` and ``beta`` are passed broadcast to the model's full batch shape; the function
    must return ln Z with shape ``batch_shape`` and treat batch entries independently. Uses
    m = β⁻¹ ∂ln Z/∂h, U = −∂ln Z/∂β, C = −β² ∂U/∂β and χ = ∂m/∂h (one backward pass per
    component of h).
    """
    field_leaf = model.expanded_field().detach().clone().requires_grad_(True)
    beta_leaf = model.expanded_beta().detach().clone().requires_grad_(True)
    with torch.enable_grad():
        log_z = log_partition(field_leaf, beta_leaf)
        grad_field, grad_beta = torch.autograd.grad(
            log_z.sum(), (field_leaf, beta_leaf), create_graph=True
        )
        site_ndim = field_leaf.ndim - beta_leaf.ndim
        beta_b = beta_leaf.reshape(*beta_leaf.shape, *([1] * site_ndim))
        magnetization = grad_field / beta_b
        energy = -grad_beta
        (d_energy,) = torch.autograd.grad(energy.sum(), beta_leaf, retain_graph=True)
        heat_capacity = -(beta_leaf**2) * d_energy
        chi = None
        if susceptibility:
            flat_m = magnetization.reshape(*beta_leaf.shape, -1)
            rows = []
            for k in range(flat_m.shape[-1]):
                (row,) = torch.autograd.grad(flat_m[..., k].sum(), field_leaf, retain_graph=True)
                rows.append(row)
            site_shape = field_leaf.shape[beta_leaf.ndim :]
            chi = torch.stack(rows, dim=beta_leaf.ndim).reshape(
                *beta_leaf.shape, *site_shape, *site_shape
            )
    return Thermodynamics.from_log_partition(
        log_partition=log_z.detach(),
        energy=energy.detach(),
        heat_capacity=heat_capacity.detach(),
        magnetization=magnetization.detach(),
        susceptibility=None if chi is None else chi.detach(),
        beta=beta_leaf.detach(),
        method=method,
        **extra,
    )
