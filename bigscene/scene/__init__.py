"""Cameras, posed images, sparse points: the scene model and its readers and writers."""

from bigscene.scene.cameras import CAMERA_MODELS, Camera, generate_rays, rays_through
from bigscene.scene.model import ImageRecord, Scene, SparsePoints

__all__ = ["CAMERA_MODELS", "Camera", "ImageRecord", "Scene", "SparsePoints", "generate_rays", "rays_through"]
