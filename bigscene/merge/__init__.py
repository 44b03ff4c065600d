"""Merging trained blocks into one scene: the composite field, novel views, out-of-core meshing, evaluation.

Stages (bigscene merge | mesh | render | eval): `run_merge`, `run_mesh`, `run_render`, `run_eval`, each over a
trained workspace. Modules: blocks (the field protocol, trained and analytic blocks, lazy loading), weights
(partition of unity, inverse distance), composite (the blended field), render (volume rendering, Block-NeRF
image-space blending), views (test views, camera paths, orthophoto and DSM), grid / mesh / weld (chunked
marching cubes and welding), evaluate (images, geometry, seams), engine (Ray or inline tasks), report.
"""

from bigscene.merge.blocks import AnalyticBlock, BlockBox, BlockField, FieldSample, LazyBlock, ModuleBlock
from bigscene.merge.composite import CompositeField, CompositeSample
from bigscene.merge.evaluate import geometry_metrics, psnr, seam_disagreement, seam_jump, ssim
from bigscene.merge.grid import MeshGrid
from bigscene.merge.mesh import mesh_field
from bigscene.merge.render import RenderSettings, render_rays, render_view
from bigscene.merge.report import print_report, report_table
from bigscene.merge.stage import load_inputs, run_eval, run_merge, run_mesh, run_render
from bigscene.merge.weights import inverse_distance, partition_of_unity

__all__ = [
    "AnalyticBlock",
    "BlockBox",
    "BlockField",
    "CompositeField",
    "CompositeSample",
    "FieldSample",
    "LazyBlock",
    "MeshGrid",
    "ModuleBlock",
    "RenderSettings",
    "geometry_metrics",
    "inverse_distance",
    "load_inputs",
    "mesh_field",
    "partition_of_unity",
    "print_report",
    "psnr",
    "render_rays",
    "render_view",
    "report_table",
    "run_eval",
    "run_merge",
    "run_mesh",
    "run_render",
    "seam_disagreement",
    "seam_jump",
    "ssim",
]
