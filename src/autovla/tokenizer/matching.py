"""Closed-loop greedy matching (encode) and rollout (decode) of action tokens
(docs/method.md section 3).

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
    ax: torch.Tensor, ay: torch.Tensor, bx: torch.Tensor, by: torch.Tensor, dim: int = -1
) -> torch.Tensor:
    """`corner_distance` on separate x and y planes whose corner axis (size 4) is `dim`.

    Written out corner by corner so every element is computed by the same sequence of
    elementwise operations whatever the batch shape or layout (bit-identical across paths).
    """
    dx = ax - bx
    dy = ay - by
    n = torch.sqrt(dx * dx + dy * dy)
    c = n.unbind(dim)
    return ((c[0] + c[1]) + c[2]) + c[3]


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
    """Token end contours (K, 4, 2) arranged for an exact nearest-token search.

    The sum of the 4 corner distances is at least 4x the distance between the contour
    centres (triangle inequality), so once some token is known to lie at distance `best`, only
    tokens whose centre lies within best/4 of the target's can tie or win.

    1. Upper bound: each target is compared with the `window` tokens nearest in centre x
       (tokens sorted by centre x; a window is one contiguous slice, gathered as a block).
    2. Certificate: if every token with |centre x - target x| <= best/4 lies in that window,
       the window's winner is the answer.
    3. Otherwise the exact search covers the square of half-side best/4 around the target's
       centre: tokens are cut into `bin_size` runs of consecutive centre x and sorted by
       centre y inside each run, so the square is one short y-slice per run it overlaps.
       Targets far from every token (a wide square over many runs) are instead filtered by
       centre distance in one pass over all K centres.
    """

    def __init__(self, token_end: torch.Tensor, window: int = 24, bin_size: int = 16) -> None:
        self.token_end = token_end
        self.K = K = token_end.shape[0]
        self.window = W = min(window, K)
        self.centres = centres = token_end.mean(-2)  # (K, 2)
        cx, cy = centres[:, 0], centres[:, 1]
        self.sorted_x, self.order = torch.sort(cx, stable=True)
        # (K, 8) corner x then corner y; windows[s] is the block of sorted tokens s..s+W-1
        xy = torch.cat([token_end[..., 0], token_end[..., 1]], -1)
        self.windows = xy[self.order].unfold(0, W, 1).contiguous()  # (K-W+1, 8, W)
        self.window_ids = self.order.unfold(0, W, 1).contiguous()  # (K-W+1, W)
        # runs of bin_size tokens in x order, each sorted by y; a composite key per token
        # (run index * span + y) is ascending, so one searchsorted finds any run's y-slice
        self.bin_size = m = max(1, min(bin_size, K))
        runs = torch.arange(K, device=token_end.device) // m
        y = cy[self.order].double()
        self.span = float(y.max() - y.min()) + 1.0
        self.y0 = float(y.min())
        key = runs * self.span + (y - self.y0)
        key, within = torch.sort(key, stable=True)  # runs stay apart: keys never overlap
        self.bin_key = key
        self.bin_ids = self.order[within]
        self.bin_xy = xy[self.bin_ids].contiguous()
        self.bin_edges = self.sorted_x[::m].contiguous()  # smallest x of each run

    def nearest(self, target: torch.Tensor) -> torch.Tensor:
        """Index (B,) of the nearest token end contour for each target contour (B, 4, 2)."""
        K, W = self.K, self.window
        target = target.to(self.token_end.dtype)
        if W == K:
            return _full_argmin(target, self.token_end)
        centre = target.mean(-2)
        tcx = centre[:, 0].contiguous()
        start = (torch.searchsorted(self.sorted_x, tcx) - W // 2).clamp(0, K - W)
        best, choice = self._window(target, start)
        # every token with |centre x - tcx| <= best / 4 may tie or win; widen by a margin
        reach = best / 4.0 + _slack(best, tcx)
        B = len(tcx)
        edge = torch.searchsorted(self.sorted_x, torch.cat([tcx - reach, tcx + reach]))
        unsure = (edge[:B] < start) | (edge[B:] > start + W)
        if not unsure.any():
            return choice
        rows = unsure.nonzero()[:, 0]
        c, r = centre[rows], reach[rows]
        first = torch.searchsorted(self.bin_edges, (c[:, 0] - r).contiguous(), right=True) - 1
        last = torch.searchsorted(self.bin_edges, (c[:, 0] + r).contiguous(), right=True) - 1
        first = first.clamp_min(0)
        runs = last - first + 1
        # tiers by the number of runs the square crosses, so that a few far-off targets do
        # not pad every row's search; past a quarter of the runs a full scan is cheaper
        lower = 0
        for upper in (4, 16, len(self.bin_edges) // 4):
            sel = ((runs > lower) & (runs <= upper)).nonzero()[:, 0]
            if len(sel):
                i = rows[sel]
                span = first[sel], last[sel]
                choice[i] = self._square(target[i], c[sel], r[sel], *span, choice[i])
            lower = upper
        sel = runs > lower
        if sel.any():
            i = rows[sel]
            choice[i] = self._disc(target[i], c[sel], r[sel])
        return choice

    def _window(self, target: torch.Tensor, start: torch.Tensor):
        """Best distance (B,) and choice over each row's window of sorted tokens."""
        block = self.windows.index_select(0, start)  # (B, 8, W)
        exact = corner_distance_xy(
            target[..., 0, None], target[..., 1, None], block[:, :4], block[:, 4:], dim=1
        )
        best = exact.min(-1, keepdim=True).values
        return best[:, 0], _first_argmin(exact, self.window_ids.index_select(0, start), best)

    def _disc(self, target: torch.Tensor, centre: torch.Tensor, reach: torch.Tensor):
        """Exact choice among the tokens whose centre lies within `reach` of the target's,
        found by one pass over all K centres (for targets far from every token)."""
        d = centre[:, None, :] - self.centres[None]  # (R, K, 2)
        ok = (d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1]) <= (reach * reach)[:, None]
        n = int(ok.sum(1).max())
        if n >= self.K // 4:
            return _full_argmin(target, self.token_end)
        _, cand = torch.topk(ok.to(torch.int8), n, dim=1)  # the allowed tokens (any order)
        exact = corner_distance(target[:, None], self.token_end[cand])
        exact = torch.where(torch.gather(ok, 1, cand), exact, torch.inf)
        return _first_argmin(exact, cand)

    def _square(self, target, centre, reach, first, last, fallback) -> torch.Tensor:
        """Exact choice among the tokens whose centre lies in the square centre +- reach,
        which spans the runs first..last."""
        span = self.span
        nb = int((last - first).max()) + 1
        run = first[:, None] + torch.arange(nb, device=target.device)  # (R, nb)
        # y-range relative to the smallest token y, kept inside one run's key range
        y = (centre[:, 1].double() - self.y0)[:, None]
        r = reach.double()[:, None]
        ylo, yhi = (y - r).clamp(-0.5, span - 0.5), (y + r).clamp(-0.5, span - 0.5)
        keys = torch.stack([run * span + ylo, run * span + yhi], -1)
        lo, hi = torch.searchsorted(self.bin_key, keys.reshape(-1, 2)).reshape(-1, nb, 2).unbind(-1)
        hi = torch.where(run <= last[:, None], hi, lo)  # runs past the square: empty
        w = int((hi - lo).max())
        if w == 0:
            return fallback
        slots = lo[..., None] + torch.arange(w, device=target.device)  # (R, nb, w)
        valid = (slots < hi[..., None]).reshape(len(lo), -1)
        slots = slots.reshape(len(lo), -1).clamp_max(self.K - 1)
        xy = self.bin_xy[slots]  # (R, nb * w, 8)
        exact = corner_distance_xy(
            target[:, None, :, 0], target[:, None, :, 1], xy[..., :4], xy[..., 4:]
        )
        exact = torch.where(valid, exact, torch.inf)
        best = exact.min(-1, keepdim=True).values
        choice = _first_argmin(exact, self.bin_ids[slots], best)
        return torch.where(torch.isfinite(best[:, 0]), choice, fallback)


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
