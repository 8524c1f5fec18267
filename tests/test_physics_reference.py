"""The exact reference values of :mod:`spinformer.physics.reference` against closed forms."""

from __future__ import annotations

import math

import pytest

import spinformer.experiments.montecarlo as montecarlo_experiments
import spinformer.experiments.thermo as thermo_experiments
from spinformer.physics import (
    ONSAGER_BETA_C,
    curie_weiss,
    curie_weiss_binomial,
    onsager_log_partition_per_spin,
    thermodynamics,
)

CATALAN = 0.915965594177219015054603514932384110774
"""Catalan's constant G = Σ_k (−1)^k/(2k + 1)²."""


def test_beta_c_is_the_kramers_wannier_self_dual_point():
    assert math.sinh(2 * ONSAGER_BETA_C) == pytest.approx(1.0, abs=1e-15)
    assert pytest.approx(0.4406867935097715, abs=1e-15) == ONSAGER_BETA_C


def test_onsager_at_beta_c_is_the_catalan_closed_form():
    # Onsager 1944: ln Z/N at K_c = ½ ln 2 + 2G/π; the log singularity costs digits on the mesh
    closed = 0.5 * math.log(2.0) + 2.0 * CATALAN / math.pi
    assert float(onsager_log_partition_per_spin(ONSAGER_BETA_C)[0]) == pytest.approx(
        closed, abs=1e-5
    )


def test_onsager_limits_high_and_low_temperature():
    assert float(onsager_log_partition_per_spin(1e-12)[0]) == pytest.approx(math.log(2.0))
    # K large: ln Z/N = 2K + O(e^{-8K}) (two ground states, four broken bonds per flipped spin)
    assert float(onsager_log_partition_per_spin(3.0)[0]) == pytest.approx(6.0, abs=1e-8)


def test_curie_weiss_binomial_matches_the_published_value_and_enumeration():
    log_z, m, energy = curie_weiss_binomial(10, 1.0)
    assert log_z == pytest.approx(7.3751436727, abs=1e-10)
    assert m == pytest.approx(0.0, abs=1e-15)  # zero field: ±M sectors cancel
    exact = thermodynamics(curie_weiss(10, beta=0.7, field=0.2))
    log_z, m, energy = curie_weiss_binomial(10, 0.7, 0.2)
    assert log_z == pytest.approx(float(exact.log_partition), rel=1e-12)
    assert m == pytest.approx(float(exact.magnetization.mean()), rel=1e-12)
    assert energy == pytest.approx(float(exact.energy) / 10, rel=1e-12)


def test_one_definition_used_by_the_experiments():
    assert thermo_experiments.BETA_CRITICAL is ONSAGER_BETA_C
    assert thermo_experiments.onsager_log_partition_per_spin is onsager_log_partition_per_spin
    assert thermo_experiments.curie_weiss_binomial is curie_weiss_binomial
    assert montecarlo_experiments.curie_weiss_binomial is curie_weiss_binomial
