"""Fields each block trains: encodings, NeuS SDF and NeRF density fields, appearance codes, background.

Plain PyTorch; knows nothing of Lightning, Ray or Zarr.
"""

from bigscene.fields.appearance import AppearanceEmbedding, fit_appearance_code, half_image_mask
from bigscene.fields.background import BackgroundField, contract, inverted_sphere
from bigscene.fields.encodings import (
    Encoding,
    FrequencyEncoding,
    SphericalHarmonics,
    encoding_names,
    make_encoding,
    register_encoding,
)
from bigscene.fields.hashgrid import HashGrid, spatial_hash
from bigscene.fields.nerf import NeRFField, NeRFOutput, trunc_exp
from bigscene.fields.neus import NeuSField, NeuSOutput, eikonal_loss, geometric_init

__all__ = [
    "AppearanceEmbedding",
    "BackgroundField",
    "Encoding",
    "FrequencyEncoding",
    "HashGrid",
    "NeRFField",
    "NeRFOutput",
    "NeuSField",
    "NeuSOutput",
    "SphericalHarmonics",
    "contract",
    "eikonal_loss",
    "encoding_names",
    "fit_appearance_code",
    "geometric_init",
    "half_image_mask",
    "inverted_sphere",
    "make_encoding",
    "register_encoding",
    "spatial_hash",
    "trunc_exp",
]
