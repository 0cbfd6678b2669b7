"""Exact strict-interior point-in-polygon queries on a fixed set of polygons, fast.

NAVSIM tests ego corners against every drivable-map polygon with shapely's vectorised
`contains` (strict interior: a point on a boundary is outside). Doing that for every plan
state is the scorer's most expensive step, so each metric cache gets this index once:

* a square grid (cell `CELL` m) over the map; for every polygon, the cells its boundary
  touches are found conservatively (points along each edge, each marking every cell that
  a square around it overlaps), and every other cell of its bounding box lies wholly
  inside or wholly outside it (a connected set not meeting the boundary), decided by one
  `shapely.contains_xy` test per run of such cells along a grid row;
* a query point in a cell wholly inside a polygon is inside it; in a cell its boundary
  touches, the point is tested exactly with `shapely.contains_xy`; points off the grid are
  tested exactly against the polygons whose bounding boxes hold them.

So answers equal `shapely.contains_xy` on every polygon, point by point; only the work
differs. The grid costs tens of milliseconds to build, so the first `DIRECT_QUERIES` queries
(all a cache sees while it is being built) go straight to shapely through an STRtree, and
the grid is built on the next one.
"""

from __future__ import annotations

import numpy as np
import shapely

CELL = 0.25  # m
WINDOW = (-40.0, -60.0, 140.0, 60.0)  # m, ego frame: the grid covers at most this box
INSIDE, BOUNDARY = 1, 2
DIRECT_QUERIES = 2


class PolygonIndex:
    """Which polygons strictly contain each query point (see the module docstring)."""

    def __init__(
        self,
        polygons: np.ndarray,
        cell: float = CELL,
        window: tuple[float, float, float, float] = WINDOW,
    ):
        self.polygons = np.asarray(polygons, dtype=object)
        self.cell = float(cell)
        m = len(self.polygons)
        if m:
            shapely.prepare(self.polygons)
            bounds = shapely.bounds(self.polygons)
        else:
            bounds = np.zeros((0, 4))
        self.bounds = bounds
        self.window = window
        self.queries = 0
        self.grid_built = False
        self.tree = shapely.STRtree(self.polygons) if m else None

    def build(self) -> PolygonIndex:
        """Build the grid now (otherwise on the first query after DIRECT_QUERIES)."""
        if not self.grid_built:
            self._build_grid()
        return self

    def _build_grid(self) -> None:
        m = len(self.polygons)
        bounds, window = self.bounds, self.window
        if m:
            lo = np.maximum(bounds[:, :2].min(0), window[:2])
            hi = np.minimum(bounds[:, 2:].max(0), window[2:])
        else:
            lo = hi = np.zeros(2)
        self.origin = np.floor(lo / self.cell) * self.cell
        self.shape = tuple(np.maximum(np.ceil((hi - self.origin) / self.cell), 1).astype(int))
        cells, polys, status = [], [], []
        for p in range(m):
            c, s = self._rasterise(p)
            cells.append(c)
            polys.append(np.full(len(c), p, dtype=np.int32))
            status.append(s)
        cells = np.concatenate(cells) if cells else np.zeros(0, dtype=np.int64)
        order = np.argsort(cells, kind="stable")
        self.entry_poly = (np.concatenate(polys) if polys else np.zeros(0, np.int32))[order]
        self.entry_status = (np.concatenate(status) if status else np.zeros(0, np.int8))[order]
        n_cells = self.shape[0] * self.shape[1]
        counts = np.bincount(cells, minlength=n_cells)
        self.cell_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.grid_built = True

    # --- build -------------------------------------------------------------------------
    def _cell_range(self, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cell index ranges (clipped to the grid) overlapping boxes [lo, hi]."""
        a = np.floor((lo - self.origin) / self.cell).astype(np.int64)
        b = np.floor((hi - self.origin) / self.cell).astype(np.int64)
        top = np.array(self.shape) - 1
        return np.clip(a, 0, top), np.clip(b, 0, top)

    def _rasterise(self, p: int) -> tuple[np.ndarray, np.ndarray]:
        """Grid cells (flat indices) touched by polygon p and their status."""
        poly = self.polygons[p]
        b = self.bounds[p]
        top = np.array(self.shape) - 1
        i0 = np.floor((b[:2] - self.origin) / self.cell).astype(np.int64) - 1
        i1 = np.floor((b[2:] - self.origin) / self.cell).astype(np.int64) + 1
        if (i1 < 0).any() or (i0 > top).any():  # wholly off the grid
            return np.zeros(0, np.int64), np.zeros(0, np.int8)
        i0, i1 = np.clip(i0, 0, top), np.clip(i1, 0, top)
        nx, ny = i1 - i0 + 1
        border = np.zeros((nx, ny), dtype=bool)
        # every boundary point lies within step / 2 of a sample along its edge; a square of
        # half-size `r` > step / 2 around each sample covers the cells that point touches
        step = self.cell / 4
        r = step / 2 + 1e-6 * self.cell
        for ring in shapely.get_parts(shapely.boundary(poly)):
            xy = shapely.get_coordinates(ring)
            seg = np.diff(xy, axis=0)
            n = np.maximum(np.ceil(np.hypot(seg[:, 0], seg[:, 1]) / step).astype(int), 1)
            total = int(n.sum())
            f = (np.arange(total) - np.repeat(np.cumsum(n) - n, n)) / np.repeat(n, n)
            start = np.repeat(xy[:-1], n, axis=0)
            pts = np.concatenate([start + np.repeat(seg, n, axis=0) * f[:, None], xy[-1:]])
            a, c = self._cell_range(pts - r, pts + r)
            for dx in (0, 1):
                for dy in (0, 1):
                    ix = np.minimum(a[:, 0] + dx, c[:, 0]) - i0[0]
                    iy = np.minimum(a[:, 1] + dy, c[:, 1]) - i0[1]
                    ok = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
                    border[ix[ok], iy[ok]] = True
        # runs of non-border cells along each row (fixed x index) are wholly in or out
        free = ~border
        starts = free.copy()
        starts[:, 1:] &= border[:, :-1]
        run_id = np.cumsum(starts.ravel()).reshape(nx, ny) - 1
        sx, sy = np.nonzero(starts)
        cx = self.origin[0] + (i0[0] + sx + 0.5) * self.cell
        cy = self.origin[1] + (i0[1] + sy + 0.5) * self.cell
        run_inside = shapely.contains_xy(poly, cx, cy)
        inside = free & run_inside[np.maximum(run_id, 0)]
        status = np.where(border, BOUNDARY, np.where(inside, INSIDE, 0)).astype(np.int8)
        gx, gy = np.nonzero(status)
        flat = (i0[0] + gx) * self.shape[1] + (i0[1] + gy)
        return flat.astype(np.int64), status[gx, gy]

    # --- query -------------------------------------------------------------------------
    def _direct(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact answers through the STRtree (bounding boxes) and `contains_xy`."""
        pt, poly = self.tree.query(shapely.points(x, y))
        hit = shapely.contains_xy(self.polygons[poly], x[pt], y[pt])
        order = np.lexsort((poly[hit], pt[hit]))
        return pt[hit][order].astype(np.int64), poly[hit][order].astype(np.int64)

    def query(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(point index, polygon index) of every polygon strictly containing a point."""
        x = np.asarray(x, dtype=np.float64).ravel()
        y = np.asarray(y, dtype=np.float64).ravel()
        if not len(self.polygons) or not len(x):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        self.queries += 1
        if not self.grid_built:
            if self.queries <= DIRECT_QUERIES:
                return self._direct(x, y)
            self._build_grid()
        fx = (x - self.origin[0]) / self.cell
        fy = (y - self.origin[1]) / self.cell
        on = (fx >= 0) & (fx < self.shape[0]) & (fy >= 0) & (fy < self.shape[1])
        pts = np.nonzero(on)[0]
        cell = fx[pts].astype(np.int64) * self.shape[1] + fy[pts].astype(np.int64)
        first, last = self.cell_start[cell], self.cell_start[cell + 1]
        count = last - first
        pt = np.repeat(pts, count)
        offs = np.arange(len(pt)) - np.repeat(np.cumsum(count) - count, count)
        entry = np.repeat(first, count) + offs
        poly = self.entry_poly[entry].astype(np.int64)
        keep = self.entry_status[entry] == INSIDE
        check = ~keep
        if check.any():
            keep[check] = shapely.contains_xy(
                self.polygons[poly[check]], x[pt[check]], y[pt[check]]
            )
        pt, poly = pt[keep], poly[keep]
        off = np.nonzero(~on)[0]
        if len(off):  # beyond the grid: exact tests against bounding-box candidates
            b = self.bounds
            cand = (
                (x[off, None] >= b[None, :, 0])
                & (x[off, None] <= b[None, :, 2])
                & (y[off, None] >= b[None, :, 1])
                & (y[off, None] <= b[None, :, 3])
            )
            oi, pj = np.nonzero(cand)
            hit = shapely.contains_xy(self.polygons[pj], x[off[oi]], y[off[oi]])
            pt = np.concatenate([pt, off[oi[hit]]])
            poly = np.concatenate([poly, pj[hit]])
        return pt, poly
