"""NAVSIM's simulation of a reference: LQR tracker + kinematic bicycle, batched over plans.

Named steps (docs/scoring.md, step 2):

1. `fit_profiles`: velocity and curvature profiles of the reference poses by regularised
   least squares (jerk penalty 1e-4, curvature-rate penalty 1e-2, initial-curvature
   penalty 1e-10), once per reference.
2. `simulate`: for each 0.1 s step, the tracker's command from the current state
   (stopping P controller below 0.2 m/s, else the one-step longitudinal LQR toward the
   reference speed 10 steps ahead and the lateral LQR over a 10-step horizon against the
   reference pose of this step), then one forward-Euler step of the kinematic bicycle with
   first-order lags on acceleration (0.2 s) and steering angle (0.05 s).

The lateral LQR's 10-step system matrices are products of unit upper-triangular matrices;
with the velocity along the horizon linear in the step index they reduce to polynomials in
the current speed and command, computed here in closed form (the same numbers as the
matrix products, without a loop over the horizon).

State columns: x, y, heading, vx, vy, ax, ay, steering angle (rear axle, ego frame).
"""

from __future__ import annotations

import functools

import numpy as np

from autovla.scoring.interpolate import DT

X, Y, HEADING, VX, VY, AX, AY, STEER = range(8)
N_STATE = 8

# Chrysler Pacifica (nuPlan's ego vehicle)
WHEELBASE = 3.089
EGO_LENGTH = 5.176
EGO_WIDTH = 2.297
REAR_AXLE_TO_CENTER = 1.461
HALF_LENGTH = EGO_LENGTH / 2  # 2.588
HALF_WIDTH = EGO_WIDTH / 2  # 1.1485

# tracker and bicycle-model constants (NAVSIM v1.1)
Q_LONG, R_LONG = 10.0, 1.0
Q_LAT = (1.0, 10.0, 0.0)
R_LAT = 1.0
HORIZON = 10
JERK_PENALTY = 1e-4
CURVATURE_RATE_PENALTY = 1e-2
INITIAL_CURVATURE_PENALTY = 1e-10
STOPPING_GAIN = 0.5
STOPPING_VELOCITY = 0.2
MAX_STEER = np.pi / 3
ACCEL_TAU = 0.2
STEER_TAU = 0.05


def normalize_angle(a: np.ndarray) -> np.ndarray:
    """arctan2(sin, cos): NAVSIM's angle normalisation inside the tracker."""
    return np.arctan2(np.sin(a), np.cos(a))


@functools.lru_cache(maxsize=4)
def _velocity_operator(m: int, dt: float) -> np.ndarray:
    """(m, m) matrix from per-step along-heading displacements to the velocity profile.

    The least-squares system's rows for one displacement are (cos h, sin h) times the same
    coefficients, so its normal matrix does not depend on the headings: the fit is a fixed
    linear map of p_i = cos(h_i) dx_i + sin(h_i) dy_i.
    """
    c = np.zeros((m, m))
    c[:, 0] = dt
    low = np.tril(np.ones((m, m)), k=0)
    low[:, 0] = 0.0
    c += low * dt * dt  # displacement i = dt v0 + dt^2 sum_{j <= i} a_{j-1}
    band = np.zeros((m - 2, m))
    idx = np.arange(m - 2)
    band[idx, idx + 1] = -1.0
    band[idx, idx + 2] = 1.0
    k = np.linalg.pinv(c.T @ c + JERK_PENALTY * band.T @ band) @ c.T  # x = [v0, a_0..a_{m-2}]
    integrate = np.zeros((m, m))
    integrate[:, 0] = 1.0
    integrate[:, 1:] = np.tril(np.ones((m, m - 1)), k=-1) * dt  # v_i = v0 + dt sum_{j<i} a_j
    return integrate @ k


def fit_profiles(poses: np.ndarray, dt: float = DT) -> tuple[np.ndarray, np.ndarray]:
    """Velocity and curvature profiles (N, T) of reference poses (N, T + 1, 3)."""
    poses = np.asarray(poses, dtype=np.float64)
    d = np.diff(poses, axis=1)
    heading = poses[:, :-1, 2]
    dh = normalize_angle(d[..., 2])
    m = d.shape[1]
    along = np.cos(heading) * d[..., 0] + np.sin(heading) * d[..., 1]
    velocity = along @ _velocity_operator(m, dt).T
    # curvature: heading displacement i = v_i dt (k0 + dt sum_{j<i} kdot_j)
    a = np.tri(m)[None].repeat(len(poses), 0)
    a[:, :, 0] = velocity * dt
    a[:, 1:, 1:] *= (velocity[:, 1:] * dt * dt)[:, :, None]
    q = CURVATURE_RATE_PENALTY * np.eye(m)
    q[0, 0] = INITIAL_CURVATURE_PENALTY
    at = a.transpose(0, 2, 1)
    x = np.linalg.solve(at @ a + q, (at @ dh[..., None]))[..., 0]
    curvature = x[:, :1] + np.concatenate(
        [np.zeros((len(x), 1)), np.cumsum(x[:, 1:] * dt, axis=1)], 1
    )
    return velocity, curvature


@functools.lru_cache(maxsize=1)
def _horizon_constants() -> dict[str, float]:
    """Sums over the 10-step horizon of the polynomial coefficients in the step index j."""
    j = np.arange(HORIZON, dtype=np.float64)
    i_gt_j = np.triu(np.ones((HORIZON, HORIZON)), k=1)  # [j, i]: i > j
    jj, ii = np.meshgrid(j, j, indexing="ij")
    return {
        "s1": j.sum(),  # 45
        "s2": (j * j).sum(),  # 285
        # sum_{i > j} j v_i v_j with v = alpha + beta j: coefficients of a^2, a b, b^2
        "c_aa": (i_gt_j * jj).sum(),
        "c_ab": (i_gt_j * jj * (ii + jj)).sum(),
        "c_bb": (i_gt_j * ii * jj * jj).sum(),
    }


def _curvature_windows(curvature: np.ndarray) -> np.ndarray:
    """(N, T, HORIZON): the curvature profile from step k, padded with its last value."""
    t = curvature.shape[1]
    idx = np.minimum(np.arange(t)[:, None] + np.arange(HORIZON)[None], t - 1)
    # NAVSIM pads with the value at min(k + 10, T - 1); for k + 10 < T nothing is padded
    return curvature[:, idx]


def _curvature_terms(curvature: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per step (N, T): sums of the curvature window weighted by polynomials in j."""
    w = _curvature_windows(curvature)
    j = np.arange(HORIZON, dtype=np.float64)
    s0 = HORIZON - 1 - j  # number of i > j in the horizon
    s1 = j[::-1].cumsum()[::-1] - j  # sum of i > j
    k0 = w.sum(-1)
    k1 = w @ j
    g_aa = w @ s0
    g_ab = w @ (s1 + j * s0)
    g_bb = w @ (j * s1)
    return k0, k1, g_aa, g_ab, g_bb


def _lateral_quadratics(v_ref, k0, k1, g_aa, g_ab, g_bb, long_gain) -> np.ndarray:
    """Per step k and plan: coefficients (T, 3, 6, N) of Q = c0 + c1 v + c2 v^2 for the six
    quantities the lateral LQR needs, in terms of the current speed v (N, T arrays in).

    Over the horizon the speed is v_j = v + b j with b = cmd dt = -g dt (v - v_ref[k]) (the
    longitudinal LQR), so with the unit upper-triangular step matrices of the linearised
    lateral dynamics, S_j = [[1, v_j dt, 0], [0, 1, v_j dt / L], [0, 0, 1]]:
      sa  = sum_j v_j dt                       (A[0, 1]; A[1, 2] = sa / L)
      sab = dt^2 / L sum_{i > j} v_i v_j       (A[0, 2])
      b0  = dt^3 / L sum_{i > j} j v_i v_j     (B[0]),  b1 = dt^2 / L sum_j j v_j  (B[1])
      g0  = -dt^2 sum_m v_m k_m sum_{i > m} v_i, g1 = -dt sum_m v_m k_m           (g)
    (k the curvature along the horizon). Stopping steps override the command separately.
    """
    hc = _horizon_constants()
    s1, s2 = hc["s1"], hc["s2"]
    dt, L = DT, WHEELBASE
    n, t = v_ref.shape
    b1v = -long_gain * dt  # b = b1v v + b0v
    b0v = long_gain * dt * v_ref.T  # (T, N)
    # each quantity as cvv v^2 + cvb v b + cbb b^2 + cv v + cb b
    zero = np.zeros((t, n))
    sab = np.array([HORIZON * HORIZON - HORIZON, 2 * HORIZON * s1 - 2 * s1, s1 * s1 - s2])
    sab = sab * dt * dt / L * 0.5  # sum_{i > j} v_i v_j = ((sum v)^2 - sum v^2) / 2
    b0 = np.array([hc["c_aa"], hc["c_ab"], hc["c_bb"]]) * dt**3 / L
    terms = [  # (cvv, cvb, cbb, cv, cb)
        (0.0, 0.0, 0.0, dt * HORIZON, dt * s1),
        (*sab, 0.0, 0.0),
        (*b0, 0.0, 0.0),
        (0.0, 0.0, 0.0, s1 * dt * dt / L, s2 * dt * dt / L),
        (-dt * dt * g_aa.T, -dt * dt * g_ab.T, -dt * dt * g_bb.T, 0.0, 0.0),
        (0.0, 0.0, 0.0, -dt * k0.T, -dt * k1.T),
    ]
    out = np.empty((t, 3, 6, n))
    for q, (cvv, cvb, cbb, cv, cb) in enumerate(terms):
        out[:, 2, q] = zero + cvv + cvb * b1v + cbb * b1v * b1v
        out[:, 1, q] = zero + cvb * b0v + 2 * cbb * b1v * b0v + cv + cb * b1v
        out[:, 0, q] = zero + cbb * b0v * b0v + cb * b0v
    return out


def initial_state(ego: np.ndarray, n: int, steer: np.ndarray | float = 0.0) -> np.ndarray:
    """(n, 8) start states from the cache's ego (7,) = x, y, heading, vx, vy, ax, ay."""
    ego = np.asarray(ego, dtype=np.float64)
    out = np.zeros((n, N_STATE))
    out[:, :7] = ego[:7]
    out[:, STEER] = steer
    return out


def simulate(reference: np.ndarray, start: np.ndarray, steps: int | None = None) -> np.ndarray:
    """Track references (N, T + 1, 3) at 0.1 s from start states (N, 8): states (N, S + 1, 8).

    S = `steps` (default T). State 0 is the start state, as NAVSIM's simulator sets it.
    """
    ref = np.asarray(reference, dtype=np.float64)
    n, t1 = ref.shape[:2]
    steps = t1 - 1 if steps is None else steps
    if not 1 <= steps <= t1 - 1:
        raise ValueError(f"steps must be in 1..{t1 - 1}, got {steps}")
    start = np.broadcast_to(np.asarray(start, dtype=np.float64), (n, N_STATE))
    v_prof, curv = fit_profiles(ref)
    t = v_prof.shape[1]
    v_ref = v_prof[:, np.minimum(np.arange(t) + HORIZON, t - 1)]  # (N, T) per step
    k0, k1, g_aa, g_ab, g_bb = _curvature_terms(curv)
    dt = DT
    long_gain = Q_LONG * HORIZON * dt / (HORIZON * dt * Q_LONG * HORIZON * dt + R_LONG)
    # The lateral LQR needs six sums over the horizon (see `_lateral_quadratics`); with the
    # longitudinal command linear in the speed they are quadratics in the current speed v,
    # whose coefficients depend only on the reference: computed for all steps up front.
    coef = _lateral_quadratics(v_ref, k0, k1, g_aa, g_ab, g_bb, long_gain)  # (T, 3, 6, N)
    rh = ref[:, :, 2].T
    rot = np.exp(-1j * rh)  # multiplying a position by it turns it into the reference frame
    e0_off = -(ref[:, :, 0].T + 1j * ref[:, :, 1].T) * rot
    e0_off = e0_off.imag
    v_ref = v_ref.T.copy()
    may_stop = (v_ref <= STOPPING_VELOCITY).any(1)
    out = np.empty((steps + 1, N_STATE, n))
    out[0] = start.T
    out[1:, VY] = 0.0
    out[1:, AY] = 0.0
    pos = start[:, X] + 1j * start[:, Y]
    h, v = start[:, HEADING].copy(), start[:, VX].copy()
    acc, steer = start[:, AX].copy(), start[:, STEER].copy()
    acc_f = dt / (dt + ACCEL_TAU)
    steer_f = dt * dt / (dt + STEER_TAU)  # steering-rate command to steering change
    q1 = Q_LAT[1] / Q_LAT[0]  # Q_LAT[0] == 1 and R_LAT == 1 scale out below
    two_pi, pi = 2.0 * np.pi, np.pi
    for k in range(steps):
        cmd = -long_gain * (v - v_ref[k])
        stop = None
        if may_stop[k]:
            stop = (v_ref[k] <= STOPPING_VELOCITY) & (v <= STOPPING_VELOCITY)
            cmd[stop] = -STOPPING_GAIN * (v[stop] - v_ref[k][stop])
        # lateral error state against reference pose k (heading error wrapped to [-pi, pi))
        e0 = (pos * rot[k]).imag + e0_off[k]
        e1 = (h - rh[k] + pi) % two_pi - pi
        c0, c1, c2 = coef[k]
        sa, sab, b0, b1, g0, g1 = c0 + v * (c1 + v * c2)
        z0 = e0 + sa * e1 + sab * steer + g0
        z1 = (e1 + sa * (steer / WHEELBASE) + g1 + pi) % two_pi - pi
        u = (b0 * z0 + q1 * b1 * z1) / (b0 * b0 + q1 * b1 * b1 + R_LAT)
        if stop is not None:
            u[stop] = 0.0
        # kinematic bicycle: lags, then forward Euler with the previous speed and steering
        acc += acc_f * (cmd - acc)
        vdt = v * dt
        pos = pos + vdt * np.exp(1j * h)
        h = (h + vdt * np.tan(steer) / WHEELBASE + pi) % two_pi - pi
        v = v + acc * dt
        steer = np.minimum(np.maximum(steer - steer_f * u, -MAX_STEER), MAX_STEER)
        row = out[k + 1]
        row[X], row[Y], row[HEADING] = pos.real, pos.imag, h
        row[VX], row[AX], row[STEER] = v, acc, steer
    return out.transpose(2, 0, 1)
