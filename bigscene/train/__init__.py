"""Training: one Lightning run per block on its streamed rays, scheduled over GPUs and nodes with Ray.

`run_train(WS, config)` trains every block of a partitioned workspace (`bigscene train`); `fit_block` trains
one in this process; `load_block(WS/blocks/<id>/model.pt)` gives back a trained block without Lightning.
"""

from bigscene.train.data import RayDataModule, RayStream
from bigscene.train.export import ExportedBlock, export_block, load_block, model_from_checkpoint, read_checkpoint
from bigscene.train.fit import BlockResult, fit_block
from bigscene.train.model import BlockModel
from bigscene.train.module import BlockModule, TrainingDiverged
from bigscene.train.stage import run_train

__all__ = [
    "BlockModel",
    "BlockModule",
    "BlockResult",
    "ExportedBlock",
    "RayDataModule",
    "RayStream",
    "TrainingDiverged",
    "export_block",
    "fit_block",
    "load_block",
    "model_from_checkpoint",
    "read_checkpoint",
    "run_train",
]
