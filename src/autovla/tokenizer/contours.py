"""Vehicle box contours in the reference codebook's layout, and poses read back from them.

The reference codebook stores each token as the 4 corners of a 4.8 m x 2.0 m box centred on
the pose, ordered front-left, front-right, rear-right, rear-left (clockwise), at 6 sub-steps
0.1 s apart (the first is the start pose). `autovla.geometry.box_corners` orders corners
FL, RL, RR, FR, so this module reorders them; everything in the tokenizer uses this layout.
"""

from __future__ import annotations

import math

import torch

# Corner indices in the codebook layout (clockwise from front-left).
FL, FR, RR, RL = 0, 1, 2, 3
DEFAULT_LENGTH = 4.8
DEFAULT_WIDTH = 2.0
SUB_STEPS = 6  # contours per token: start pose + 5 more, 0.1 s apart


def wrap(angle: torch.Tensor) -> torch.Tensor:
    """Wrap angles to (-pi, pi] (same convention as autovla.geometry.wrap_angle)."""
    w = torch.remainder(angle + math.pi, 2.0 * math.pi) - math.pi
    return torch.where(w <= -math.pi, w + 2.0 * math.pi, w)


def box_contour(poses: torch.Tensor, length: float, width: float) -> torch.Tensor:
    """Corners (..., 4, 2) of centred boxes at poses (..., 3), codebook order FL, FR, RR, RL."""
    hl, hw = length / 2.0, width / 2.0
    local_x = poses.new_tensor([hl, hl, -hl, -hl])
    local_y = poses.new_tensor([hw, -hw, -hw, hw])
    c = torch.cos(poses[..., 2:3])
    s = torch.sin(poses[..., 2:3])
    x = poses[..., 0:1] + c * local_x - s * local_y
    y = poses[..., 1:2] + s * local_x + c * local_y
    return torch.stack([x, y], -1)


def contour_pose(contour: torch.Tensor) -> torch.Tensor:
    """Pose (..., 3) of contours (..., 4, 2): the corner mean, heading from rear-left to
    front-left (the reference's definition of where a token ends)."""
    centre = contour.mean(-2)
    d = contour[..., FL, :] - contour[..., RL, :]
    return torch.cat([centre, torch.atan2(d[..., 1], d[..., 0])[..., None]], -1)


def token_contours(end_poses: torch.Tensor, length: float, width: float) -> torch.Tensor:
    """Full token contours (K, 6, 4, 2) for segment end poses (K, 3) in the start frame.

    Our data come at 2 Hz, so the 0.1 s sub-steps are interpolated linearly in (x, y, heading)
    from the start pose; only the last contour is used for matching and rollout.
    """
    frac = torch.linspace(0.0, 1.0, SUB_STEPS, dtype=end_poses.dtype, device=end_poses.device)
    poses = end_poses[:, None, :] * frac[None, :, None]  # (K, 6, 3)
    return box_contour(poses, length, width)
