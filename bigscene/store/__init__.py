"""The one place that knows the workspace's Zarr layout."""

from bigscene.store.scene_store import SCHEMA_VERSION, has_scene, read_scene, scene_path, write_scene

__all__ = ["SCHEMA_VERSION", "has_scene", "read_scene", "scene_path", "write_scene"]
