"""Partitioning: spatial blocks over the ROI, per-block ray stores and surface voxels, driven by Ray."""

from partitioning.stage import run_partition

__all__ = ["run_partition"]
