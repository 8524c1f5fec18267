r"""Markov-chain Monte Carlo for Ising and vector-spin models, many chains as one tensor program.

Every sampler leaves the Boltzmann distribution :math:`p(\sigma) \propto e^{-\beta E(\sigma)}` of
:mod:`spinformer.physics.models` invariant (detailed balance), with
:math:`E = -\tfrac12\sum_{ij}J_{ij}\sigma_i\cdot\sigma_j - \sum_i h_i\cdot\sigma_i`. A single-site move
changes the energy by :math:`\Delta E = -(\sigma_i' - \sigma_i)\cdot h^\text{loc}_i` with the local
field :math:`h^\text{loc}_i = h_i + \sum_j J_{ij}\sigma_j`.

* **Metropolis** (Metropolis et al. 1953): propose :math:`\sigma_i'` (a flip for Ising; a uniform
  point of the sphere, or a Gaussian kick of size ``step_size`` renormalised to the sphere, for
  vector spins -- both symmetric proposals) and accept with :math:`\min(1, e^{-\beta\Delta E})`.
  Ising flips are accepted with :math:`(1 - \epsilon)\min(1, e^{-\beta\Delta E})`, "lazy"
  Metropolis (detailed balance holds for any :math:`\epsilon`), with
  :math:`\epsilon = 2^{-\lambda}`, :math:`\lambda = \min(8, \lfloor\log_2 N\rfloor)`
  (:func:`spinformer.physics.montecarlo.updates.lazy_digits`): about one move in a sweep is declined,
  and at most 0.4 % of them on lattices of 256 sites or more. With plain Metropolis every
  :math:`\Delta E \le 0` flip is forced, and the parallel (checkerboard) sweep is
  *reducible* on small tori: a state in which every site has :math:`\Delta E = 0` (on a
  torus e.g. the column Néel state) flips whole sublattices back and forth forever, at any
  temperature. By exact reachability, 4 of the 16 states of the 2×2 torus, 4 of 256 (4×2) and
  36 of 65536 (4×4) lie outside the class of the ground state, so hot starts were biased
  (2×2 at β = 0.3: ⟨E⟩ converges to −4.34 instead of the exact −5.11; 4×4 at β = 0.44: E
  off by 4 standard errors with 16384 chains). With every move optional, any single site can
  be flipped while all others decline, so the chain is irreducible, and aperiodic.
* **Heat bath** (Glauber): draw :math:`\sigma_i'` from its exact conditional distribution. Ising:
  :math:`P(\sigma_i' = +1) = 1/(1 + e^{-2\beta h^\text{loc}_i})`. Vector spins of radius
  :math:`R`: von Mises–Fisher with concentration :math:`\kappa = \beta R |h^\text{loc}_i|` about
  :math:`\hat h^\text{loc}_i`, sampled exactly by Wood's rejection algorithm (Commun. Stat.
  Simul. 23, 157, 1994); its mean cosine is the Bessel ratio :math:`A_D(\kappa)` of
  :mod:`spinformer.physics.special`, the test of the sampler.
* **Wolff** (Phys. Rev. Lett. 62, 361, 1989): for ferromagnetic couplings (:math:`J_{ij}\ge0`) at
  zero field, grow a cluster from a random seed through aligned neighbours, each bond tested once
  with :math:`p_{ij} = 1 - e^{-2\beta J_{ij}}`, and flip it. Rejection-free, and its
  autocorrelation time at :math:`\beta_c` grows far more slowly with :math:`L` than Metropolis's.

Sites that do not interact can be updated simultaneously without breaking detailed balance, so a
sweep is a loop over *colour classes*, each updated in one vectorised step for all chains and
batch entries: the two checkerboard sublattices of a bipartite lattice (three colours when a
periodic side is odd), or the classes of a greedy colouring of the coupling graph for dense
models (a fully coupled model has N classes of one site -- single-site dynamics cannot be
parallelised there). Even periodic lattices store the two sublattices compactly, half a lattice
each, so every site costs one random number per sweep.

All tensors stay on the model's device and dtype (a float32 model samples in float32): the same
code runs on a GPU. Chains come first: states are ``(chains, *batch_shape, N)`` for Ising and
``(chains, *batch_shape, N, D)`` for vector spins, and time series ``(T, chains, *batch_shape)``.

One Wolff "sweep" is one cluster flip per chain; :attr:`MonteCarloSamples.acceptance` then
holds the mean flipped fraction, which converts cluster counts into sweep equivalents.

The package, by concept: :mod:`.sampling` (the loop, :func:`sample`, and its record),
:mod:`.engines` (the engine registry; ``engine="auto"`` picks the cheapest that supports the
run), :mod:`.sweepers` (the :class:`Sweeper` protocol and the tensor engine), :mod:`.updates`
(single-site moves, the von Mises–Fisher sampler), :mod:`.colourings`, :mod:`.multispin` (the
multi-spin coded engine, native and torch backends), :mod:`.checkerboard` (the compiled
single-chain path), :mod:`.autocorrelation` and :mod:`.thermodynamics` (estimators).
"""

from spinformer.physics.montecarlo.autocorrelation import (
    SeriesEstimate,
    autocorrelation_function,
    blocking_standard_error,
    estimate_mean,
    integrated_autocorrelation_time,
)
from spinformer.physics.montecarlo.engines import (
    Engine,
    available_engines,
    get_engine,
    register_engine,
    select_engine,
)
from spinformer.physics.montecarlo.multispin.native import release_buffers
from spinformer.physics.montecarlo.sampling import ALGORITHMS, MonteCarloSamples, sample
from spinformer.physics.montecarlo.sweepers import Sweeper
from spinformer.physics.montecarlo.thermodynamics import (
    autocorrelation_times,
    monte_carlo_thermodynamics,
)
from spinformer.physics.montecarlo.updates import von_mises_fisher

__all__ = [
    "ALGORITHMS",
    "ENGINES",
    "Engine",
    "MonteCarloSamples",
    "SeriesEstimate",
    "Sweeper",
    "autocorrelation_function",
    "autocorrelation_times",
    "available_engines",
    "blocking_standard_error",
    "estimate_mean",
    "get_engine",
    "integrated_autocorrelation_time",
    "monte_carlo_thermodynamics",
    "register_engine",
    "release_buffers",
    "sample",
    "select_engine",
    "von_mises_fisher",
]

ENGINES = ("auto", *available_engines())  # the built-in engines
