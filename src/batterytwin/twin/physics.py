"""Reduced ageing models of a cell and their least-squares fit to its early cycles.

Two models, both ``predict(params [..., P], cycles [M]) -> SOH percent [..., M]``:

- :class:`EmpiricalModel` (default): ``SOH(N) = 100 q0 (1 - a S (N / 1000)^z)``, parameters
  ``(q0, log10 a, z)``. The power law of cycle fade with a stress factor ``S`` is the form of the
  semi-empirical models the seed article (a Python hybrid twin on NASA cell data) builds on:
  Xu et al., "Modeling of lithium-ion battery degradation for cell life assessment", IEEE Trans.
  Smart Grid 9 (2018) 1131, with the temperature stress ``S_T = exp(k_T (T - T_ref) T_ref / T)``,
  ``k_T = 0.0693``, ``T_ref = 298.15 K`` (depth-of-discharge and C-rate stress are 1 for the full
  cycles of the data sets; a cell's own ``a`` absorbs the rest). ``z`` has a Gaussian prior
  (``z_prior``, ``z_prior_sd``): a MAP fit, because ten early points barely constrain it.
- :class:`PybammModel`: SPM with SEI growth (PyBaMM), parameters ``(q0, log10 k_SEI)``. The model
  is built once with the SEI kinetic rate constant and the EC diffusivity as input parameters;
  a surrogate of SOH vs cycle is computed from ``grid_points`` PyBaMM runs over ``log10 k``
  (cubic spline across ``log10 k``, linear in cycles) and the fit is on the surrogate. Each
  simulated cycle stands for ``m = cycles_per_simulated_cycle`` real cycles: the SEI constant and
  the EC diffusivity are both multiplied by ``m``, which maps the SEI growth of ``N`` real cycles
  onto ``N / m`` simulated ones (``dL/dt = k c / (1 + k L / D)`` is invariant under
  ``t -> t / m, k -> m k, D -> m D``).

:func:`fit_cell` fits with :func:`scipy.optimize.least_squares` (residuals divided by the cell's
noise level, plus prior rows) and returns the parameter covariance ``(J^T J)^-1`` (scaled by the
reduced chi-square when above 1). Failures are returned, not raised (:class:`FitResult`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

log = logging.getLogger(__name__)

K_T, T_REF = 0.0693, 298.15  # Xu et al. (2018) temperature stress


def temperature_stress(temperature_c: np.ndarray | float) -> np.ndarray:
    """Xu et al. temperature stress factor ``exp(k_T (T - T_ref) T_ref / T)`` (1 at 25 C)."""
    t = np.asarray(temperature_c, np.float64) + 273.15
    return np.exp(K_T * (t - T_REF) * T_REF / t)


@dataclass
class FitResult:
    """One cell's fit: ``ok`` with parameters and covariance, or the reason it failed."""

    ok: bool
    params: np.ndarray
    cov: np.ndarray
    reason: str = ""
    seconds: float = 0.0
    nfev: int = 0
    rmse: float = float("nan")
    noise: float = float("nan")


def check_series(cycles: np.ndarray, soh: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """``cycles``, ``soh`` as float arrays; one-line :class:`InputError` for bad input."""
    c, s = np.asarray(cycles, np.float64), np.asarray(soh, np.float64)
    if c.ndim != 1 or c.shape != s.shape:
        raise InputError(f"{where}: cycles and SOH must be 1-D of one length, got {c.shape} and {s.shape}")
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(s))):
        raise InputError(f"{where}: NaN/inf in the cycles or capacities of the fit window")
    if np.any(np.diff(c) <= 0):
        raise InputError(f"{where}: cycle numbers must increase (non-monotone time axis)")
    return c, s


def noise_level(soh: np.ndarray, floor: float = 0.02) -> float:
    """Noise SD (percent) of a curve from its second differences (MAD), at least ``floor``."""
    d2 = np.diff(np.asarray(soh, np.float64), 2)
    if len(d2) < 2:
        return max(floor, 0.1)
    return max(floor, 1.4826 * float(np.median(np.abs(d2 - np.median(d2)))) / np.sqrt(6.0))


class EmpiricalModel:
    """``SOH = 100 q0 (1 - a S (N/1000)^z)``; params ``(q0, log10 a, z)``; ``S`` per cell (stress)."""

    names = ("q0", "log10_a", "z")

    def __init__(self, z_prior: float = 1.0, z_prior_sd: float = 0.5, z_bounds=(0.3, 4.0)) -> None:
        self.z_prior, self.z_prior_sd = float(z_prior), float(z_prior_sd)
        self.lower = np.array([0.8, -6.0, float(z_bounds[0])])
        self.upper = np.array([1.2, 1.0, float(z_bounds[1])])

    def initial(self, cycles: np.ndarray, soh: np.ndarray) -> np.ndarray:
        loss = max(1e-5, (soh[0] - soh[-1]) / 100.0)
        a = loss / max(1e-9, (cycles[-1] / 1000.0) ** self.z_prior)
        return np.clip([soh[0] / 100.0, np.log10(a), self.z_prior], self.lower + 1e-6, self.upper - 1e-6)

    def predict(self, params: np.ndarray, cycles: np.ndarray, stress: float = 1.0) -> np.ndarray:
        p = np.asarray(params, np.float64)
        q0, la, z = p[..., 0:1], p[..., 1:2], p[..., 2:3]
        n = np.maximum(np.asarray(cycles, np.float64), 0.0) / 1000.0
        return 100.0 * q0 * np.maximum(1.0 - 10.0 ** la * stress * n ** z, 0.0)  # no capacity below zero

    def prior(self, params: np.ndarray) -> np.ndarray:
        return np.array([(params[2] - self.z_prior) / self.z_prior_sd])


class PybammModel:
    """SPM + SEI surrogate over ``log10 k_SEI``; params ``(q0, log10_k)`` (see the module docstring)."""

    names = ("q0", "log10_k_sei")

    def __init__(self, parameter_set: str = "OKane2022", sei: str = "ec reaction limited", c_rate: float = 1.0,
                 simulated_cycles: int = 40, cycles_per_simulated_cycle: float = 64.0,
                 log10_k_range=(-17.0, -13.0), grid_points: int = 9) -> None:
        self.parameter_set, self.sei, self.c_rate = parameter_set, sei, float(c_rate)
        self.n_sim, self.m = int(simulated_cycles), float(cycles_per_simulated_cycle)
        self.log_k = np.linspace(float(log10_k_range[0]), float(log10_k_range[1]), int(grid_points))
        self.lower = np.array([0.8, self.log_k[0]])
        self.upper = np.array([1.2, self.log_k[-1]])
        self._sim = None
        self.build_seconds = 0.0
        self.simulate_seconds: list[float] = []
        self._spline = None

    # -- PyBaMM -----------------------------------------------------------------------------
    def _simulation(self):
        import pybamm

        if self._sim is None:
            pv = pybamm.ParameterValues(self.parameter_set)
            self.d_ec = float(pv["EC diffusivity [m2.s-1]"])
            pv.update({"SEI kinetic rate constant [m.s-1]": "[input]", "EC diffusivity [m2.s-1]": "[input]"})
            v_lo, v_hi = float(pv["Lower voltage cut-off [V]"]), float(pv["Upper voltage cut-off [V]"])
            c = f"{self.c_rate:g}C"
            cycle = (f"Discharge at {c} until {v_lo} V", f"Charge at {c} until {v_hi} V")
            exp = pybamm.Experiment([cycle] * self.n_sim)
            model = pybamm.lithium_ion.SPM({"SEI": self.sei})
            self._sim = pybamm.Simulation(model, parameter_values=pv, experiment=exp, solver=pybamm.IDAKLUSolver())
        return self._sim

    def simulate(self, log10_k: float) -> tuple[np.ndarray, np.ndarray]:
        """One PyBaMM run at real-time rate constant ``10**log10_k``: (real cycles [n+1], SOH fraction [n+1]).

        Raises whatever PyBaMM raises (the caller records it).
        """
        sim = self._simulation()
        t0 = time.perf_counter()
        inputs = {"SEI kinetic rate constant [m.s-1]": 10.0 ** float(log10_k) * self.m,
                  "EC diffusivity [m2.s-1]": self.d_ec * self.m}
        sol = sim.solve(inputs=inputs, save_at_cycles=[1])
        sv = sol.summary_variables
        cap = np.asarray(sv["Capacity [A.h]"], np.float64)
        lost = np.asarray(sv["Total capacity lost to side reactions [A.h]"], np.float64)
        self.simulate_seconds.append(time.perf_counter() - t0)
        if len(cap) < self.n_sim:
            raise RuntimeError(f"PyBaMM stopped after {len(cap)} of {self.n_sim} cycles")
        c0 = cap[0] + lost[0]  # capacity before any side reaction
        cycles = np.arange(len(cap) + 1) * self.m
        return cycles, np.concatenate([[1.0], cap / c0])

    def build(self) -> "PybammModel":
        """The surrogate: one PyBaMM run per grid value of ``log10 k`` (the model is built once)."""
        from scipy.interpolate import CubicSpline

        if self._spline is not None:
            return self
        t0 = time.perf_counter()
        curves, kept = [], []
        self.failed_runs: dict[float, str] = {}
        for lk in self.log_k:
            try:
                self.cycles, soh = self.simulate(lk)
            except Exception as exc:  # a solver failure at one rate constant: drop that grid point
                self.failed_runs[float(lk)] = f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
                log.warning("PyBaMM run at log10 k = %.2f failed (%s): grid point dropped", lk,
                            self.failed_runs[float(lk)])
                continue
            curves.append(soh)
            kept.append(lk)
        if len(kept) < 3:
            raise RuntimeError(f"only {len(kept)} of {len(self.log_k)} PyBaMM surrogate runs succeeded "
                               f"({'; '.join(self.failed_runs.values())})")
        self.log_k = np.asarray(kept)
        self.lower[1], self.upper[1] = self.log_k[0], self.log_k[-1]
        self.table = np.stack(curves)  # [G, n+1]
        self._spline = CubicSpline(self.log_k, self.table, axis=0)
        self.build_seconds = time.perf_counter() - t0
        log.info("PyBaMM surrogate: %d runs of %d cycles in %.1f s", len(self.log_k), self.n_sim, self.build_seconds)
        return self

    # -- model interface -------------------------------------------------------------------
    def initial(self, cycles: np.ndarray, soh: np.ndarray) -> np.ndarray:
        self.build()
        grid = np.linspace(self.log_k[0], self.log_k[-1], 33)
        errs = [np.sum((self.predict(np.array([soh[0] / 100, g]), cycles) - soh) ** 2) for g in grid]
        return np.clip([soh[0] / 100.0, grid[int(np.argmin(errs))]], self.lower + 1e-6, self.upper - 1e-6)

    def predict(self, params: np.ndarray, cycles: np.ndarray, stress: float = 1.0) -> np.ndarray:
        self.build()
        p = np.asarray(params, np.float64)
        flat = p.reshape(-1, p.shape[-1])
        lk = np.clip(flat[:, 1], self.log_k[0], self.log_k[-1])
        table = self._spline(lk)  # [K, n+1]
        c = np.asarray(cycles, np.float64)
        out = np.empty((len(flat), len(c)))
        for i in range(len(flat)):
            out[i] = _interp_extrapolate(c, self.cycles, table[i])
        out = 100.0 * flat[:, :1] * out
        return out.reshape(*p.shape[:-1], len(c))

    def prior(self, params: np.ndarray) -> np.ndarray:
        return np.zeros(0)


def _interp_extrapolate(x: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """SOH fraction at real cycles ``x`` from the simulated points ``(xp, fp)``, ``fp[0] = 1``.

    Before the first simulated cycle the loss follows the local power law of the first two points
    (``1 - fp`` ~ ``x^beta``; SEI growth is ~linear when reaction-limited, ~sqrt when diffusion-limited),
    linear interpolation between simulated points, linear extrapolation after the last one.
    """
    y = np.interp(x, xp, fp)
    early = (x > 0) & (x < xp[1])
    if early.any():
        l1, l2 = max(1e-12, 1.0 - fp[1]), max(1e-12, 1.0 - fp[2])
        beta = float(np.clip(np.log(l2 / l1) / np.log(xp[2] / xp[1]), 0.3, 1.5))
        y[early] = 1.0 - l1 * (x[early] / xp[1]) ** beta
    beyond = x > xp[-1]
    if beyond.any():
        slope = (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
        y[beyond] = fp[-1] + slope * (x[beyond] - xp[-1])
    return y


def make_model(settings):
    """The physics model named by ``settings.physics`` (a :class:`~.config.TwinConfig`)."""
    if settings.physics == "pybamm":
        p = settings.pybamm
        return PybammModel(p.parameter_set, p.sei, p.c_rate, p.simulated_cycles, p.cycles_per_simulated_cycle,
                           p.log10_k_range, p.grid_points)
    e = settings.empirical
    return EmpiricalModel(e.z_prior, e.z_prior_sd, e.z_bounds)


def fit_cell(model, cycles: np.ndarray, soh: np.ndarray, stress: float = 1.0, x0: np.ndarray | None = None,
             where: str = "cell") -> FitResult:
    """Least-squares (MAP with the model's prior rows) fit of ``model`` to one cell's early curve.

    Args:
        cycles: [m] increasing cycle numbers; soh: [m] percent; x0: warm start (e.g. the previous fit).
    Raises:
        InputError: bad input (NaN, non-monotone cycles) -- see :func:`check_series`.
    Returns:
        FitResult (``ok=False`` with the reason when the optimiser or the solver fails).
    """
    from scipy.optimize import least_squares

    c, s = check_series(cycles, soh, where)
    n_par = len(model.names)
    nan = np.full(n_par, np.nan)
    t0 = time.perf_counter()
    sigma = noise_level(s)
    try:
        start = model.initial(c, s) if x0 is None else np.clip(np.asarray(x0, np.float64), model.lower + 1e-9,
                                                                model.upper - 1e-9)

        def residuals(p):
            return np.concatenate([(model.predict(p, c, stress) - s) / sigma, model.prior(p)])

        res = least_squares(residuals, start, bounds=(model.lower, model.upper), method="trf", x_scale="jac",
                            max_nfev=200 * n_par)
    except Exception as exc:  # solver errors of PyBaMM, numerical failures: recorded per cell
        return FitResult(False, nan, np.full((n_par, n_par), np.nan), f"{type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:200]}", time.perf_counter() - t0)
    seconds = time.perf_counter() - t0
    if res.status <= 0 or not np.all(np.isfinite(res.x)):
        return FitResult(False, nan, np.full((n_par, n_par), np.nan), f"no convergence ({res.message})", seconds,
                         int(res.nfev))
    data_r = res.fun[:len(c)]
    chi2 = float(np.sum(data_r ** 2)) / max(1, len(c) - n_par)
    jtj = res.jac.T @ res.jac
    cov = np.linalg.pinv(jtj, rcond=1e-10) * max(1.0, chi2)
    rmse = float(np.sqrt(np.mean((data_r * sigma) ** 2)))
    return FitResult(True, res.x.copy(), cov, "", seconds, int(res.nfev), rmse, sigma)


def draw_params(model, fit: FitResult, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` parameter draws [k, P] from N(fit.params, fit.cov), clipped to the bounds (first = the fit)."""
    cov = np.nan_to_num(fit.cov)
    cov = 0.5 * (cov + cov.T)
    w, v = np.linalg.eigh(cov)
    root = v * np.sqrt(np.clip(w, 0, None))
    z = rng.standard_normal((k, len(fit.params)))
    z[0] = 0.0
    draws = fit.params + z @ root.T
    return np.clip(draws, model.lower, model.upper)
