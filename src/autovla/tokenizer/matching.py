"""Closed-loop greedy matching (encode) and rollout (decode) of action tokens (METHOD sec. 3).

Encoding starts at the origin; at each 0.5 s step every token is placed at the current
*token-decoded* pose, the one whose end contour is nearest to the ground-truth box (sum of
the 4 corner distances) is chosen, and the rollout continues from that token's end pose.
We express the ground-truth box in the current pose's frame instead of moving all K tokens
into the world frame: the same distances, K times less work.

Poses and the rollout are float64; corner distances are float32 (the stored contours' own
precision) in both the batched and the loop path. `encode_batched` adds an exact pruning
step (see `TokenIndex`): only tokens whose end lies near the target in x can win, so each
target is compared with a window of tokens sorted by x; rows where a bound cannot certify
the winner get a wider exact search. Both paths use one elementwise distance formula, so
they pick the same tokens, ties included (lowest index wins).
"""

from __future__ import annotations

import numpy as np
import torch

from autovla.tokenizer.contours import box_contour, wrap

DTYPE = torch.float64  # poses and rollout in double: no drift over long plans
MATCH_DTYPE = torch.float32  # corner distances: the contours are float32, half the traffic


def as_trajectories(trajectories, device: torch.device | str | None = None) -> torch.Tensor:
    """Validate poses (T, 3) or (B, T, 3) and return a (B, T, 3) float64 tensor."""
    if isinstance(trajectories, torch.Tensor):
        t = trajectories.detach().to(device=device, dtype=DTYPE)
    else:
        try:
            arr = np.asarray(trajectories, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"trajectories must be numeric poses (x, y, heading): {e}") from e
        t = torch.from_numpy(arr).to(device=device)
    if t.ndim == 2:
        t = t[None]
    if t.ndim != 3 or t.shape[-1] != 3:
        raise ValueError(
            f"trajectories must have shape (T, 3) or (B, T, 3) = (x, y, heading), "
            f"got {tuple(t.shape)}"
        )
    if t.shape[1] == 0:
        raise ValueError("trajectories have no steps (T = 0)")
    bad = ~torch.isfinite(t)
    if bad.any():
        b, s, c = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"trajectory {b}, step {s}, field {'xyh'[c]} is not finite ({t[b, s, c].item()})"
        )
    return t


def as_ids(ids, num_tokens: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Validate token ids (T,) or (B, T) and return a (B, T) int64 tensor."""
    t = torch.as_tensor(np.asarray(ids) if not isinstance(ids, torch.Tensor) else ids)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"token ids must be integers, got dtype {t.dtype}")
    t = t.to(device=device, dtype=torch.int64)
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2:
        raise ValueError(f"token ids must have shape (T,) or (B, T), got {tuple(t.shape)}")
    if t.numel() and (t.min() < 0 or t.max() >= num_tokens):
        raise ValueError(
            f"token ids must lie in [0, {num_tokens}), got min {int(t.min())} max {int(t.max())}"
        )
    return t


def compose(pose: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Pose `delta` (..., 3) given in the frame of `pose` (..., 3), in pose's parent frame."""
    c, s = torch.cos(pose[..., 2]), torch.sin(pose[..., 2])
    x = pose[..., 0] + c * delta[..., 0] - s * delta[..., 1]
    y = pose[..., 1] + s * delta[..., 0] + c * delta[..., 1]
    return torch.stack([x, y, wrap(pose[..., 2] + delta[..., 2])], -1)


def _to_local(points: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """Points (B, N, 2) in the frame of poses (B, 3)."""
    c, s = torch.cos(pose[:, 2:3]), torch.sin(pose[:, 2:3])
    dx = points[..., 0] - pose[:, 0:1]
    dy = points[..., 1] - pose[:, 1:2]
    return torch.stack([c * dx + s * dy, -s * dx + c * dy], -1)


def corner_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum of the 4 corner distances between broadcast contours (..., 4, 2)."""
    return corner_distance_xy(a[..., 0], a[..., 1], b[..., 0], b[..., 1])


def corner_distance_xy(
    ax: torch.Tensor, ay: torch.Tensor, bx: torch.Tensor, by: torch.Tensor
) -> torch.Tensor:
    """`corner_distance` on separate x and y planes (..., 4).

    Written out corner by corner so every element is computed by the same sequence of
    elementwise operations whatever the batch shape or layout (bit-identical across paths).
    """
    dx = ax - bx
    dy = ay - by
    n = torch.sqrt(dx * dx + dy * dy)
    return ((n[..., 0] + n[..., 1]) + n[..., 2]) + n[..., 3]


def _first_argmin(
    dist: torch.Tensor, index: torch.Tensor, best: torch.Tensor | None = None
) -> torch.Tensor:
    """Per row, the smallest `index` among the entries equal to the row minimum (`best`,
    (..., 1), when the caller already has it)."""
    if best is None:
        best = dist.min(-1, keepdim=True).values
    big = torch.iinfo(torch.int64).max
    return torch.where(dist == best, index, torch.full_like(index, big)).min(-1).values


class TokenIndex:
    """Token end contours (K, 4, 2) sorted by centre x, for an exact nearest-token search.

    The sum of corner distances is at least 4x the distance between contour centres (triangle
    inequality), so a token whose centre x differs from the target's by more than best/4
    cannot win. Each target is first compared with the `window` tokens nearest in centre x,
    which gives an upper bound on its best distance; rows whose window edges are not provably
    far enough are then compared with every token inside the x-range that bound allows (a
    contiguous slice of the sorted tokens), padded to the widest such slice.
    """

    def __init__(self, token_end: torch.Tensor, window: int = 24) -> None:
        self.token_end = token_end
        self.K = token_end.shape[0]
        self.window = min(window, self.K)
        cx = token_end[..., 0].mean(-1)
        self.sorted_x, self.order = torch.sort(cx, stable=True)
        self.sorted_end = token_end[self.order].contiguous()
        # (K, 8): the 4 corner x then the 4 corner y, sorted; one gather serves both planes
        self.sorted_xy = torch.cat([self.sorted_end[..., 0], self.sorted_end[..., 1]], -1)
        self.centres = token_end.mean(-2)  # (K, 2)

    def _slots(self, target, start, width, valid=None):
        """Exact best (rows,) and choice over sorted slots start..start+width-1."""
        slots = start[:, None] + torch.arange(width, device=target.device)
        if valid is not None:
            slots = torch.where(slots < valid[:, None], slots, start[:, None])  # pad: repeat
        tx = target[:, None, :, 0].contiguous()
        ty = target[:, None, :, 1].contiguous()
        xy = self.sorted_xy[slots]
        exact = corner_distance_xy(tx, ty, xy[..., :4], xy[..., 4:])
        best = exact.min(-1, keepdim=True).values
        return best[:, 0], _first_argmin(exact, self.order[slots], best)

    def nearest(self, target: torch.Tensor) -> torch.Tensor:
        """Index (B,) of the nearest token end contour for each target contour (B, 4, 2)."""
        K, W = self.K, self.window
        target = target.to(self.token_end.dtype)
        if W == K:
            return _full_argmin(target, self.token_end)
        tcx = target[..., 0].mean(-1)
        pos = torch.searchsorted(self.sorted_x, tcx)
        start = (pos - W // 2).clamp(0, K - W)
        best, choice = self._slots(target, start, W)
        # every token with |centre x - tcx| <= best / 4 may tie or win; widen by a margin
        reach = best / 4.0 + _slack(best, tcx)
        lo = torch.searchsorted(self.sorted_x, tcx - reach, side="left")
        hi = torch.searchsorted(self.sorted_x, tcx + reach, side="right")
        unsure = (lo < start) | (hi > start + W)
        if not unsure.any():
            return choice
        # group rows by slice width so one far-off target does not widen every row's slice
        width = hi - lo
        done = ~unsure
        rows = (~done & (width <= 4 * W)).nonzero()[:, 0]
        if len(rows):
            w = int(width[rows].max())
            _, choice[rows] = self._slots(target[rows], lo[rows], w, hi[rows])
            done[rows] = True
        rows = (~done).nonzero()[:, 0]
        if len(rows):  # far from every token: filter by centre distance in 2-D instead
            choice[rows] = self._disc(target[rows], best[rows])
        return choice

    def _disc(self, target: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
        """Exact choice among tokens whose centre lies within best/4 of the target's."""
        d = target.mean(-2)[:, None, :] - self.centres[None]  # (R, K, 2)
        reach = best / 4.0 + _slack(best, target[..., 0].mean(-1))
        ok = (d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1]) <= (reach * reach)[:, None]
        n = int(ok.sum(1).max())
        if n >= self.K // 2:
            return _full_argmin(target, self.token_end)
        _, cand = torch.topk(ok.to(torch.int8), n, dim=1)  # the allowed tokens (any order)
        exact = corner_distance(target[:, None], self.token_end[cand])
        exact = torch.where(torch.gather(ok, 1, cand), exact, torch.inf)
        return _first_argmin(exact, cand)


def _slack(best: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Generous bound on float32 rounding in distances and centres (metres)."""
    return 1e-4 + 1e-6 * (best + x.abs())


def _full_argmin(target: torch.Tensor, token_end: torch.Tensor) -> torch.Tensor:
    K = token_end.shape[0]
    index = torch.arange(K, device=target.device).expand(target.shape[0], K)
    return _first_argmin(corner_distance(target[:, None], token_end[None]), index)


def nearest_tokens(target: torch.Tensor, token_end: torch.Tensor) -> torch.Tensor:
    """Index (B,) of the token end contour (K, 4, 2) nearest to each target contour (B, 4, 2)
    (computed in token_end's dtype)."""
    return TokenIndex(token_end).nearest(target)


def encode_batched(
    trajectories: torch.Tensor,
    token_end: torch.Tensor,
    end_poses: torch.Tensor,
    length: float,
    width: float,
    index: TokenIndex | None = None,
) -> torch.Tensor:
    """Token ids (B, T) for trajectories (B, T, 3) (float64, validated)."""
    B, T, _ = trajectories.shape
    targets = box_contour(trajectories, length, width)  # (B, T, 4, 2)
    index = index or TokenIndex(token_end)
    pose = trajectories.new_zeros(B, 3)
    ids = torch.empty(B, T, dtype=torch.int64, device=trajectories.device)
    for t in range(T):
        ids[:, t] = index.nearest(_to_local(targets[:, t], pose).to(MATCH_DTYPE))
        pose = compose(pose, end_poses[ids[:, t]])
    return ids


def encode_loop(
    trajectories: torch.Tensor,
    token_end: torch.Tensor,
    end_poses: torch.Tensor,
    length: float,
    width: float,
) -> torch.Tensor:
    """The plain per-trajectory, per-step algorithm (all K tokens each step); the reference
    the batched encoder is tested and benchmarked against."""
    B, T, _ = trajectories.shape
    K = token_end.shape[0]
    index = torch.arange(K, device=trajectories.device)[None]
    ids = torch.empty(B, T, dtype=torch.int64, device=trajectories.device)
    for b in range(B):
        pose = trajectories.new_zeros(1, 3)
        for t in range(T):
            target = _to_local(box_contour(trajectories[b, t], length, width)[None], pose)
            target = target.to(MATCH_DTYPE)
            k = _first_argmin(corner_distance(target[:, None], token_end[None]), index)
            ids[b, t] = k[0]
            pose = compose(pose, end_poses[k])
    return ids


def decode_loop(ids: torch.Tensor, end_poses: torch.Tensor) -> torch.Tensor:
    """Per-trajectory, per-step rollout (the plain algorithm `decode_batched` must match)."""
    B, T = ids.shape
    out = end_poses.new_empty(B, T, 3)
    for b in range(B):
        pose = end_poses.new_zeros(3)
        for t in range(T):
            pose = compose(pose, end_poses[ids[b, t]])
            out[b, t] = pose
    return out


def decode_batched(ids: torch.Tensor, end_poses: torch.Tensor) -> torch.Tensor:
    """Roll tokens (B, T) out from the origin: poses (B, T, 3)."""
    B, T = ids.shape
    out = end_poses.new_empty(B, T, 3)
    pose = end_poses.new_zeros(B, 3)
    for t in range(T):
        pose = compose(pose, end_poses[ids[:, t]])
        out[:, t] = pose
    return out
