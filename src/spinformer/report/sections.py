"""The report's sections: a registry (name, title, claim, availability), in page order.

An experiment joins a section by registering with ``section=<the section's title>``
(:func:`spinformer.experiments.register_experiment`); a section here says which published claim its
experiments make executable and whether it can be built on this machine. Adding a section (a
pretrained-model lens, a training comparison, sweeps) is one :func:`register_section` call next to
its experiments; ``available`` returns ``None`` when it can run, else a sentence saying what to
install, which the page shows in place of the section's results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from spinformer._validation import lookup

__all__ = ["ReportSection", "get_section", "list_sections", "register_section"]


def _always() -> str | None:
    return None


@dataclass(frozen=True)
class ReportSection:
    """One section of the report.

    Attributes:
        name: short identifier (the page anchor and the value ``--sections`` takes).
        title: heading; experiments registered with ``section=title`` appear under it.
        claim: one short paragraph: which published claim the section makes executable (cited).
        order: position in the page (ascending).
        available: ``None`` when the section can be built here, else why not (what to install).
        cached: long runs (training, sweeps): reuse a result stamped with the same code and
            config (:mod:`spinformer.report.cache`) instead of running again.
    """

    name: str
    title: str
    claim: str
    order: int
    available: Callable[[], str | None] = _always
    cached: bool = False


_SECTIONS: dict[str, ReportSection] = {}


def _lens_available() -> str | None:
    """``None`` when MiniLM and the lens extra are installed, else what to install."""
    from spinformer.experiments.lens import LENS_INSTALL, missing_lens_packages

    missing = missing_lens_packages("minilm")
    return f"needs {', '.join(missing)}: {LENS_INSTALL['minilm']}" if missing else None


def register_section(section: ReportSection) -> ReportSection:
    """Add ``section`` to the report (its name and title must be new)."""
    for other in _SECTIONS.values():
        if other.name != section.name and other.title == section.title:
            raise ValueError(f"section title {section.title!r} is already used by {other.name!r}")
    if section.name in _SECTIONS and _SECTIONS[section.name] != section:
        raise ValueError(f"section {section.name!r} is already registered")
    if not section.name.isidentifier():
        raise ValueError(f"section name must be an identifier, got {section.name!r}")
    _SECTIONS[section.name] = section
    return section


def list_sections() -> list[ReportSection]:
    """The registered sections in page order."""
    return sorted(_SECTIONS.values(), key=lambda s: (s.order, s.name))


def get_section(name: str) -> ReportSection:
    return lookup(_SECTIONS, name, "section")


for _section in (
    ReportSection(
        "exact",
        "Exact spin-model physics",
        "The dictionary rests on statistical mechanics done right: partition functions, free "
        "energies and their derivatives (F = −β⁻¹ ln Z, m = −∂F/∂h; Bal, “Transformers are "
        "secretly collectives of spin systems”, 2021). Here they are computed exactly, by "
        "enumeration and transfer matrices, and matched to Onsager's solution and other published "
        "values.",
        10,
    ),
    ReportSection(
        "attention",
        "Attention as a spin system",
        "Bal (2021): an attention row is the Boltzmann distribution of a spin system with "
        "couplings W_Kᵀ W_Q at inverse temperature 1/√d, its output a magnetization. The "
        "transformer's equations (Vaswani et al. 2017) are reproduced three ways, and the layer's "
        "entropy, heat capacity and self-consistent fixed points are followed as β changes.",
        20,
    ),
    ReportSection(
        "hopfield",
        "Hopfield memories",
        "Ramsauer et al. (2020): iterating attention is retrieval in a modern Hopfield network, "
        "whose capacity grows exponentially with dimension, while the classical network breaks "
        "down near the load α_c ≈ 0.138 of Amit, Gutfreund and Sompolinsky (1985).",
        30,
    ),
    ReportSection(
        "montecarlo",
        "Monte Carlo and ergodicity",
        "A time average along one Markov chain equals the ensemble average only while the system "
        "is ergodic; below T_c a chain sticks in one basin. Sampling is checked against published "
        "lattice values, and the breaking of ergodicity (Palmer 1982) is shown directly.",
        40,
    ),
    ReportSection(
        "modules",
        "Spin-model transformer modules",
        "Bal (2021, 2023): a transformer module is an approximation to the magnetization of a "
        "vector-spin system probed by data. Mean-field, TAP and steepest-descent responses are "
        "compared with exact ones, and spin-model blocks are trained against a vanilla "
        "transformer.",
        50,
    ),
    ReportSection(
        "seedclaims",
        "Magnetizations with input-dependent couplings and the transformer module",
        "Bal (2021), sections 6 and 8: with input-dependent (softmax) couplings the magnetization "
        "gains a correlation term, checked here against autodiff of an exact ln Z; and the "
        "magnetization of a free-energy block splits into residual, token-mixing, normalisation "
        "and channel-mixing parts — the transformer module, recognised in a spin system.",
        60,
    ),
    ReportSection(
        "lens",
        "The lens on real transformers",
        "The dictionary of Bal (2021) applied to pretrained models: every head of a real "
        "transformer read as couplings W_Kᵀ W_Q at its own β on real English text, with the "
        "Boltzmann ensemble of every token, the self-consistent states of its mean-field map, its "
        "β_c and a phase, and Ramsauer et al.'s (2020) classes of heads by how many tokens they "
        "average.",
        70,
        available=_lens_available,
    ),
    ReportSection(
        "benchmarks",
        "Benchmarks",
        "The dictionary costs little: spinformer's attention against torch's, and spin-model "
        "blocks against a vanilla block, timed in the same run on the machine that built this "
        "report (the ratios of the scripts in benchmarks/, at small sizes).",
        90,
    ),
):
    register_section(_section)

register_section(
    ReportSection(
        "sweeps",
        "Sweeps and phase diagrams",
        "These questions are maps, not points: how many stable states attention's self-consistency "
        "equation has across temperature and coupling (Ramsauer et al. 2020), how fast mean field "
        "becomes exact as the spin dimension grows (Stanley 1968), and where Hopfield retrieval "
        "collapses as the network grows (Amit, Gutfreund and Sompolinsky 1985). Each map is a "
        "sweep of one experiment over a grid and seeds, run by the same engine that runs them on "
        "Ray or Dask.",
        75,
        cached=True,
    )
)

register_section(
    ReportSection(
        "training",
        "Training spin-model transformers",
        'Bal (2021, "Transformers are secretly collectives of spin systems"): training shapes the collective behaviour of a differentiable spin '
        "system, and a deep transformer is a stack of spin systems whose magnetizations drive the "
        "next. Does a block that is honestly a spin system's mean-field response train as well as "
        "a vanilla block? Every model trains on the same data with the same optimiser, steps and "
        "(within 5 %) parameters, over seeds; and the post's footnote 9 asks whether the feed-forward network "
        "learns the Onsager correction.",
        72,
        cached=True,
    )
)
