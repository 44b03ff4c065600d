"""Similarity transforms (uniform scale, rotation, translation) as 4x4 matrices, and Umeyama alignment.

A similarity T maps a point p to ``s * R @ p + t``; as a matrix ``T[:3, :3] = s * R`` and ``T[:3, 3] = t``.
"""

from __future__ import annotations

import numpy as np

from bigscene.errors import InputError


def make_similarity(scale: float, rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """The (4, 4) float64 matrix of ``p -> scale * rotation @ p + translation``."""
    T = np.eye(4)
    T[:3, :3] = float(scale) * np.asarray(rotation, dtype=np.float64)
    T[:3, 3] = np.asarray(translation, dtype=np.float64)
    return T


def similarity_scale(T: np.ndarray) -> float:
    """The uniform scale s of a similarity (the cube root of det of its 3x3 block)."""
    return float(np.cbrt(np.linalg.det(np.asarray(T, dtype=np.float64)[:3, :3])))


def similarity_rotation(T: np.ndarray) -> np.ndarray:
    """The (3, 3) rotation R of a similarity."""
    T = np.asarray(T, dtype=np.float64)
    return T[:3, :3] / similarity_scale(T)


def invert_similarity(T: np.ndarray) -> np.ndarray:
    """The exact inverse ``p -> R^T (p - t) / s`` (better conditioned than a general matrix inverse)."""
    T = np.asarray(T, dtype=np.float64)
    s = similarity_scale(T)
    R = T[:3, :3] / s
    return make_similarity(1.0 / s, R.T, -(R.T @ T[:3, 3]) / s)


def apply_similarity(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map points (..., 3) through the similarity (or any affine 4x4) T. Returns float64 (..., 3)."""
    T = np.asarray(T, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64)
    return points @ T[:3, :3].T + T[:3, 3]


def transform_poses(T: np.ndarray, c2w: np.ndarray) -> np.ndarray:
    """Camera-to-world poses (..., 4, 4) expressed in the frame T maps to.

    Camera centres map through T; rotations are left-multiplied by T's rotation, so they stay orthonormal
    (the scale moves the cameras, it does not scale their axes).
    """
    T = np.asarray(T, dtype=np.float64)
    c2w = np.asarray(c2w, dtype=np.float64)
    R = similarity_rotation(T)
    out = np.array(c2w, dtype=np.float64, copy=True)
    out[..., :3, :3] = R @ c2w[..., :3, :3]
    out[..., :3, 3] = apply_similarity(T, c2w[..., :3, 3])
    return out


def align_similarity(src: np.ndarray, dst: np.ndarray, with_scale: bool = True) -> np.ndarray:
    """The least-squares similarity T with ``T(src) ~= dst`` (Umeyama 1991). src, dst: (N, 3), N >= 3.

    With ``with_scale=False`` the scale is fixed to 1 (a rigid alignment). Raises InputError when the
    points are too few, non-finite, or all coincide.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.ndim != 2 or src.shape[1] != 3 or src.shape != dst.shape:
        raise ValueError(f"align_similarity needs two (N, 3) arrays of the same shape, got {src.shape} and {dst.shape}")
    n = len(src)
    if n < 3:
        raise InputError("alignment", f"need at least 3 corresponding points, got {n}")
    if not (np.all(np.isfinite(src)) and np.all(np.isfinite(dst))):
        raise InputError("alignment", "non-finite point coordinates")
    mu_src, mu_dst = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - mu_src, dst - mu_dst
    var_src = (a * a).sum() / n
    if var_src <= 1e-300 or (b * b).sum() <= 1e-300:
        raise InputError("alignment", "the points all coincide; the alignment is undetermined")
    cov = b.T @ a / n
    U, sigma, Vt = np.linalg.svd(cov)
    S = np.ones(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        S[2] = -1.0
    R = U @ np.diag(S) @ Vt
    scale = float((sigma * S).sum() / var_src) if with_scale else 1.0
    t = mu_dst - scale * R @ mu_src
    return make_similarity(scale, R, t)


def rotation_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotation (3, 3) taking unit direction a onto unit direction b."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    v = np.cross(a, b)
    c = float(a @ b)
    if c < -1.0 + 1e-12:  # opposite: rotate by pi about any axis perpendicular to a
        axis = np.cross(a, [1.0, 0.0, 0.0])
        if np.linalg.norm(axis) < 1e-6:
            axis = np.cross(a, [0.0, 1.0, 0.0])
        axis /= np.linalg.norm(axis)
        return 2.0 * np.outer(axis, axis) - np.eye(3)
    K = np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])
    return np.eye(3) + K + K @ K / (1.0 + c)
