"""Fixed-point solvers with per-sample diagnostics and implicit differentiation.

The only place in spinformer that iterates to a fixed point. See
:func:`fixed_point`; solvers register by name (:func:`register_solver`).
"""

from spinformer.solvers import _methods as _methods
from spinformer.solvers import broyden as _broyden  # noqa: F401  (registers "broyden")
from spinformer.solvers._core import *  # noqa: F403  (the public API is _core's)
from spinformer.solvers._core import __all__ as __all__
