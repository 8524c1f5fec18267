"""Spin models: energies by two routes, batching, and every bad input named."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from spinformer.physics import (
    MAX_ENUMERATION_SPINS,
    IsingModel,
    SquareLattice,
    VectorSpinModel,
    chain,
    curie_weiss,
    hopfield_couplings,
    sherrington_kirkpatrick,
    square_lattice,
    thermodynamics,
)


def _random_spins(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator).double() * 2 - 1


@pytest.mark.parametrize("shape", [(4, 4), (3, 5), (2, 2), (6, 1), (1, 1)])
@pytest.mark.parametrize("periodic", [True, False])
def test_lattice_energy_equals_dense_energy(shape, periodic, generator):
    model = square_lattice(shape, coupling=0.7, field=0.2, periodic=periodic)
    dense = IsingModel(model.coupling_matrix, model.field, model.beta)
    spins = _random_spins((5, model.num_spins), generator)
    torch.testing.assert_close(model.energy(spins), dense.energy(spins))


def test_lattice_bond_count_matches_geometry():
    # An L x L torus has 2 L^2 bonds; an open L x W lattice has L(W-1) + W(L-1).
    assert float(SquareLattice((5, 5), True).adjacency().sum()) / 2 == 50
    assert float(SquareLattice((3, 4), False).adjacency().sum()) / 2 == 3 * 3 + 4 * 2
    up = torch.ones(25, dtype=torch.float64)
    assert float(square_lattice(5).energy(up)) == -50.0


def test_neighbour_sum_equals_adjacency_product(generator):
    for lattice in (
        SquareLattice((4, 3), True),
        SquareLattice((4, 3), False),
        SquareLattice((2, 5), True),
    ):
        spins = _random_spins((3, lattice.num_sites), generator)
        expected = spins @ lattice.adjacency()
        torch.testing.assert_close(lattice.neighbour_sum(spins), expected)


def test_vector_energy_on_lattice_equals_dense(generator):
    lattice = SquareLattice((3, 3), True)
    spins = torch.randn(4, 9, 3, generator=generator, dtype=torch.float64)
    field = torch.randn(9, 3, generator=generator, dtype=torch.float64)
    lat = VectorSpinModel(torch.tensor(0.8, dtype=torch.float64), field, lattice=lattice)
    dense = VectorSpinModel(lat.coupling_matrix, field)
    torch.testing.assert_close(lat.energy(spins), dense.energy(spins))
    torch.testing.assert_close(lat.local_field(spins), dense.local_field(spins))


def test_energy_closed_form_curie_weiss(generator):
    n = 9
    model = curie_weiss(n, coupling=1.3, field=0.4)
    spins = _random_spins((7, n), generator)
    total = spins.sum(-1)
    expected = -(1.3 / (2 * n)) * (total**2 - n) - 0.4 * total
    torch.testing.assert_close(model.energy(spins), expected)


def test_batch_shapes_broadcast():
    couplings = sherrington_kirkpatrick(
        5, num_samples=3, generator=torch.Generator().manual_seed(0)
    ).couplings
    model = IsingModel(couplings, torch.zeros(5, dtype=torch.float64), torch.tensor([[0.5], [1.0]]))
    assert model.batch_shape == (2, 3)
    assert thermodynamics(model).log_partition.shape == (2, 3)


def test_sk_statistics():
    model = sherrington_kirkpatrick(200, generator=torch.Generator().manual_seed(0))
    upper = model.couplings[torch.triu_indices(200, 200, 1).unbind()]
    assert abs(float(upper.var()) * 200 - 1.0) < 0.05  # J_ij ~ N(0, 1/n)
    torch.testing.assert_close(model.couplings, model.couplings.T)


def test_hopfield_couplings_hebb_rule():
    patterns = torch.tensor([[1.0, -1.0, 1.0], [1.0, 1.0, -1.0]], dtype=torch.float64)
    j = hopfield_couplings(patterns)
    expected = torch.tensor([[0, 0, 0], [0, 0, -2], [0, -2, 0]], dtype=torch.float64) / 3
    torch.testing.assert_close(j, expected)


def test_with_beta_revalidates():
    model = curie_weiss(4)
    assert float(model.with_beta(2.0).beta) == 2.0
    with pytest.raises(ValueError, match="beta must be positive"):
        model.with_beta(-1.0)


# --- bad input ------------------------------------------------------------------------------

J2 = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"couplings": J2, "beta": 0.0}, "beta must be positive"),
        ({"couplings": J2, "beta": -1.0}, "beta must be positive"),
        ({"couplings": J2, "beta": float("nan")}, "beta must be finite"),
        ({"couplings": J2, "beta": float("inf")}, "beta must be finite"),
        (
            {"couplings": torch.tensor([[0.0, float("nan")], [float("nan"), 0.0]])},
            "couplings must be finite",
        ),
        (
            {"couplings": torch.tensor([[0.0, float("inf")], [float("inf"), 0.0]])},
            "couplings must be finite",
        ),
        ({"couplings": J2, "field": torch.tensor([0.0, float("nan")])}, "field must be finite"),
        ({"couplings": J2, "field": torch.tensor([float("inf"), 0.0])}, "field must be finite"),
        ({"couplings": torch.zeros(2, 3)}, r"couplings must have shape \(\.\.\., N, N\)"),
        ({"couplings": torch.zeros(3)}, r"couplings must have shape \(\.\.\., N, N\)"),
        ({"couplings": torch.tensor([[0.0, 1.0], [0.5, 0.0]])}, "couplings must be symmetric"),
        (
            {"couplings": torch.tensor([[1.0, 1.0], [1.0, 0.0]])},
            "couplings must have a zero diagonal",
        ),
        ({"couplings": J2, "field": torch.zeros(3)}, r"field must have shape \(\.\.\., 2\)"),
        (
            {"couplings": torch.zeros(3, 2, 2), "field": torch.zeros(4, 2)},
            "batch dimensions do not broadcast",
        ),
        (
            {"couplings": J2, "beta": torch.ones(5), "field": torch.zeros(3, 2)},
            "batch dimensions do not broadcast",
        ),
        ({"couplings": "abc"}, "couplings must be a number or an array"),
    ],
)
def test_ising_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        IsingModel(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"couplings": J2}, "dim must be given when field is None"),
        ({"couplings": J2, "field": torch.zeros(3, 2)}, r"field must have shape \(\.\.\., 2, D\)"),
        (
            {"couplings": J2, "field": torch.zeros(2, 3), "dim": 4},
            "field's last dimension must equal dim=4",
        ),
        ({"couplings": J2, "dim": 3, "radius": 0.0}, "radius must be a positive finite number"),
        ({"couplings": J2, "dim": 3, "beta": -2.0}, "beta must be positive"),
        (
            {"couplings": torch.tensor([[0.0, 1.0], [2.0, 0.0]]), "dim": 3},
            "couplings must be symmetric",
        ),
    ],
)
def test_vector_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VectorSpinModel(**kwargs)


def test_energy_rejects_wrong_spin_shape():
    with pytest.raises(ValueError, match=r"spins must have site shape \(2,\)"):
        IsingModel(J2).energy(torch.ones(3))


def test_too_many_spins_for_enumeration():
    n = MAX_ENUMERATION_SPINS + 1
    with pytest.raises(ValueError, match=f"exact enumeration needs N <= {MAX_ENUMERATION_SPINS}"):
        thermodynamics(curie_weiss(n))


def test_constructor_bad_input():
    with pytest.raises(ValueError, match="n must be a positive integer"):
        curie_weiss(0)
    with pytest.raises(ValueError, match="size must be a positive integer"):
        square_lattice(0)
    for size in (2.5, True, "4", None):
        with pytest.raises(ValueError, match="size must be an int L or a pair"):
            square_lattice(size)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be a positive integer"):
        chain(-3)
    with pytest.raises(ValueError, match=r"patterns must have shape \(\.\.\., P, N\)"):
        hopfield_couplings(torch.zeros(0, 5))
    with pytest.raises(ValueError, match="lattice must be a SquareLattice"):
        IsingModel(1.0, lattice=(3, 3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape must be two positive integers"):
        SquareLattice((3, 0))


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="method must be one of"):
        thermodynamics(curie_weiss(3), method="no-such-method")
    with pytest.raises(ValueError, match="model must be an IsingModel or VectorSpinModel"):
        thermodynamics("not a model")  # type: ignore[arg-type]


def test_models_are_frozen():
    model = curie_weiss(3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.beta = 2.0  # type: ignore[misc]
