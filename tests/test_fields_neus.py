"""NeuS and NeRF fields, appearance codes and background: geometric init, normals, precision, shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bigscene.config import ModelConfig
from bigscene.errors import ConfigError
from bigscene.fields import (
    AppearanceEmbedding,
    BackgroundField,
    NeRFField,
    NeuSField,
    contract,
    eikonal_loss,
    fit_appearance_code,
    half_image_mask,
    inverted_sphere,
    trunc_exp,
)

pytestmark = pytest.mark.usefixtures("one_thread")


#: a flat block, as city blocks are: the field's cube is 2 x 2 x 2 around its centre.
AABB = torch.tensor([[-1.0, -2.0, -0.5], [3.0, 2.0, 1.5]])
CENTRE = torch.tensor([1.0, 0.0, 0.5])


def small_config(**overrides: object) -> ModelConfig:
    base = dict(hash_levels=6, hash_table_log2=12, base_resolution=4, finest_resolution=64, hidden_dim=32)
    return ModelConfig(**{**base, **overrides})  # type: ignore[arg-type]


def points_in_box(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return AABB[0] + torch.rand(n, 3, generator=g) * (AABB[1] - AABB[0])


@pytest.mark.parametrize("kind", ["sphere", "inside_out", "plane"])
def test_geometric_init(kind: str) -> None:
    torch.manual_seed(0)
    field = NeuSField(small_config(geometric_init=kind, init_radius=0.5, init_ground_height=0.25), AABB)
    x = points_in_box(3000)
    r = (x - CENTRE).norm(dim=-1)
    expected = {"sphere": r - 1.0, "inside_out": 1.0 - r, "plane": x[:, 2] - 0.0}[kind]  # half-extent 2, z 0
    with torch.no_grad():
        error = (field.sdf(x) - expected).abs()
    assert error.mean() < 0.02 and error.max() < 0.1, (float(error.mean()), float(error.max()))


def test_normals_autograd_and_finite_differences_agree() -> None:
    torch.manual_seed(0)
    exact = NeuSField(small_config(), AABB)
    with torch.no_grad():
        exact.encoding.params.uniform_(-0.05, 0.05)  # make the encoding matter
    cheap = NeuSField(small_config(normals="finite_difference", fd_step=1e-4), AABB)
    cheap.load_state_dict(exact.state_dict())
    x = points_in_box(500)
    _, _, g_exact = exact.geometry(x)
    _, _, g_cheap = cheap.geometry(x)
    cos = F.cosine_similarity(g_exact, g_cheap, dim=-1)
    cos = cos.detach()
    assert float(cos.median()) > 0.9999 and float((cos > 0.99).float().mean()) > 0.97
    torch.testing.assert_close(g_exact.norm(dim=-1).median(), g_cheap.norm(dim=-1).median(), atol=1e-3, rtol=0)


@pytest.mark.parametrize("normals", ["autograd", "finite_difference"])
def test_eikonal_term_trains_the_geometry(normals: str) -> None:
    torch.manual_seed(0)
    field = NeuSField(small_config(normals=normals), AABB)
    x = points_in_box(256)
    out = field(x, F.normalize(torch.randn(256, 3), dim=-1))
    assert float(eikonal_loss(out.gradients.detach())) < 0.01  # the init is (nearly) a true SDF
    (eikonal_loss(out.gradients) + out.rgb.mean()).backward()
    first = field.sdf_net[0]
    # geometric init silences the encoding, so the first step trains the weights that read it
    assert float(first.weight.grad[:, 3:].abs().sum()) > 0
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in field.sdf_net.parameters())


def test_sdf_and_normals_stay_float32_under_autocast() -> None:
    torch.manual_seed(0)
    field = NeuSField(small_config(), AABB)
    x = points_in_box(64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = field(x, F.normalize(torch.randn(64, 3), dim=-1))
        loss = eikonal_loss(out.gradients)
    assert out.sdf.dtype == out.gradients.dtype == out.normals.dtype == loss.dtype == torch.float32
    loss.backward()


def test_evaluation_without_grad_still_gives_normals() -> None:
    field = NeuSField(small_config(), AABB)
    with torch.no_grad():
        out = field(points_in_box(32), F.normalize(torch.randn(32, 3), dim=-1))
    assert not out.gradients.requires_grad
    torch.testing.assert_close(out.normals.norm(dim=-1), torch.ones(32))


def test_appearance_codes_and_test_view_codes() -> None:
    torch.manual_seed(0)
    embedding = AppearanceEmbedding(num_images=10, dim=4)
    codes = embedding(torch.tensor([3, -1, 9]))
    torch.testing.assert_close(codes[0], embedding.codes[3])
    torch.testing.assert_close(codes[1], embedding.codes.mean(0))

    # NeRF-W evaluation: fit a test view's code on the left half of the image, judge it on the right half
    field = NeRFField(small_config(appearance_dim=4), AABB).requires_grad_(False)
    height, width = 6, 8
    mask = half_image_mask(height, width)
    assert int(mask.sum()) == height * width // 2 and bool(mask.view(height, width)[:, : width // 2].all())
    x, dirs = points_in_box(height * width, seed=1), F.normalize(torch.randn(height * width, 3), dim=-1)
    true_code = torch.tensor([2.0, -1.0, 0.5, 1.5])
    with torch.no_grad():
        target = field(x, dirs, true_code.expand(len(x), 4)).rgb

    def loss_on(pixels: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(field(x[pixels], dirs[pixels], code.expand(int(pixels.sum()), 4)).rgb, target[pixels])

    start = embedding.mean_code()
    fitted = fit_appearance_code(lambda code: loss_on(mask, code), start, steps=100, lr=5e-2)
    with torch.no_grad():
        assert loss_on(~mask, fitted) < 0.2 * loss_on(~mask, start)


def test_nerf_field() -> None:
    torch.manual_seed(0)
    field = NeRFField(small_config(kind="nerf", appearance_dim=3), AABB)
    x = torch.cat([points_in_box(10), torch.tensor([[10.0, 0.0, 0.0]])])
    with torch.no_grad():
        out = field(x, F.normalize(torch.randn(11, 3), dim=-1), torch.zeros(11, 3))
    assert out.density.shape == (11,) and out.rgb.shape == (11, 3)
    assert bool((out.density[:10] > 0).all()) and float(out.density[10]) == 0.0  # nothing outside the box
    y = torch.tensor([20.0], requires_grad=True)
    trunc_exp(y).backward()
    torch.testing.assert_close(y.grad, torch.exp(torch.tensor([15.0])))


def test_background_parametrisations() -> None:
    p = torch.tensor([[0.5, 0.0, 0.0], [3.0, 4.0, 0.0], [1e6, 0.0, 0.0]])
    inv = inverted_sphere(p)
    torch.testing.assert_close(inv[1], torch.tensor([0.6, 0.8, 0.0, 0.2]))
    assert float(inv[2, 3]) < 1e-5
    c = contract(p)
    torch.testing.assert_close(c[0], p[0])
    torch.testing.assert_close(c[1].norm(), torch.tensor(2.0 - 1.0 / 5.0))
    assert float(c[2].norm()) < 2.0
    for kind in ("inverted_sphere", "contraction"):
        background = BackgroundField(small_config(background=kind, appearance_dim=2), CENTRE, 3.0)
        out = background(points_in_box(5) * 10, F.normalize(torch.randn(5, 3), dim=-1), torch.zeros(5, 2))
        assert out.density.shape == (5,) and bool((out.rgb >= 0).all())
        assert background.sky(F.normalize(torch.randn(5, 3), dim=-1), torch.zeros(5, 2)).shape == (5, 3)
    with pytest.raises(ConfigError):
        BackgroundField(small_config(background="none"), CENTRE, 3.0)


def test_config_checks() -> None:
    with pytest.raises(ConfigError, match="normals"):
        ModelConfig(normals="analytic")
    with pytest.raises(ConfigError, match="finest_resolution"):
        ModelConfig(base_resolution=64, finest_resolution=32)
