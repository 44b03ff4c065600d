"""bigscene: city-scale 3D reconstruction from photographs."""

__version__ = "0.1.0"
