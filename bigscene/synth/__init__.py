"""The synthetic city: a procedural, seeded benchmark with exact ground-truth geometry.

`generate(make_config("tiny"), WS)` writes images, the scene store, test depth/normal maps, sparse points,
COLMAP and transforms.json exports and a watertight ground-truth mesh; `load_ground_truth(WS)` gives back
the exact SDF. Modules: presets (config), layout (the city), sdf (its distance field), texture
(materials), render (sphere tracer), capture (camera paths), points (sparse points), groundtruth (mesh),
generate (the stage).
"""

from bigscene.synth.generate import generate
from bigscene.synth.groundtruth import extract_mesh, load_ground_truth
from bigscene.synth.layout import Layout, generate_layout
from bigscene.synth.presets import PRESETS, SynthConfig, make_config
from bigscene.synth.render import Appearance, RenderOutput, RenderSettings, render_view
from bigscene.synth.sdf import CitySDF

__all__ = [
    "PRESETS",
    "Appearance",
    "CitySDF",
    "Layout",
    "RenderOutput",
    "RenderSettings",
    "SynthConfig",
    "extract_mesh",
    "generate",
    "generate_layout",
    "load_ground_truth",
    "make_config",
    "render_view",
]
