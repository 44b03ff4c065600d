"""Encodings: the hash grid against its definition, and the frequency and spherical-harmonics encodings."""

from __future__ import annotations

import pytest
import torch

from bigscene.errors import ConfigError
from bigscene.fields import (
    Encoding,
    FrequencyEncoding,
    HashGrid,
    SphericalHarmonics,
    encoding_names,
    make_encoding,
    register_encoding,
    spatial_hash,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def small_grid() -> HashGrid:
    """Coarse levels dense, fine levels hashed (table of 2**10 rows), float64 with an O(1) random table."""
    torch.manual_seed(0)
    grid = HashGrid(levels=5, features=3, table_log2=10, base_resolution=3, finest_resolution=40).double()
    with torch.no_grad():
        grid.params.uniform_(-1.0, 1.0)
    return grid


def test_levels_are_dense_then_hashed() -> None:
    grid = small_grid()
    assert grid.resolutions[0] == 3 and grid.resolutions[-1] == 40
    assert 0 < grid.num_dense < grid.levels
    for level, res in enumerate(grid.resolutions):
        rows = grid.level_slice(level)
        assert rows.stop - rows.start == min((res + 1) ** 3, 2**10)


def test_exact_at_grid_vertices() -> None:
    grid = small_grid()
    f = grid.features
    for level, res in enumerate(grid.resolutions):
        vertices = torch.randint(0, res + 1, (200, 3))
        out = grid(vertices.double() / res)  # (200, L * F)
        if level < grid.num_dense:
            s = res + 1
            rows = vertices[:, 0] + s * (vertices[:, 1] + s * vertices[:, 2])
        else:
            rows = spatial_hash(vertices, grid.table_size)
        expected = grid.params[grid.level_slice(level)][rows]
        torch.testing.assert_close(out[:, level * f : (level + 1) * f], expected, rtol=0.0, atol=1e-12)


def test_continuous_across_cells() -> None:
    grid = small_grid()
    eps = 1e-9
    for level, res in enumerate(grid.resolutions):
        for axis in range(3):
            x = torch.rand(100, 3, dtype=torch.float64)
            x[:, axis] = torch.randint(1, res, (100,)).double() / res  # on a cell boundary of this level
            below, above = x.clone(), x.clone()
            below[:, axis] -= eps
            above[:, axis] += eps
            jump = (grid(above) - grid(below)).abs().max()
            assert jump < 1e-6, (level, axis, float(jump))


def test_gradient_matches_finite_differences() -> None:
    grid = HashGrid(levels=3, features=2, table_log2=6, base_resolution=2, finest_resolution=9).double()
    with torch.no_grad():
        grid.params.uniform_(-1.0, 1.0)
    x = (0.05 + 0.9 * torch.rand(6, 3, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(grid, (x,), eps=1e-7, atol=1e-6)
    # second order (eikonal terms on autograd normals) and the table's gradient
    assert torch.autograd.gradgradcheck(grid, (x,), eps=1e-7, atol=1e-6)

    def of_table(table: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(grid, {"params": table}, (x.detach(),))

    table = grid.params.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(of_table, (table,), eps=1e-7, atol=1e-6)


def test_float32_matches_float64() -> None:
    grid = small_grid()
    x = torch.rand(500, 3, dtype=torch.float64)
    single = HashGrid(levels=5, features=3, table_log2=10, base_resolution=3, finest_resolution=40)
    with torch.no_grad():
        single.params.copy_(grid.params)
    torch.testing.assert_close(single(x.float()).double(), grid(x), atol=1e-5, rtol=1e-5)


def test_registry() -> None:
    assert {"hashgrid", "frequency", "sh"} <= set(encoding_names())
    assert isinstance(make_encoding("hashgrid", levels=2, table_log2=8, finest_resolution=32), HashGrid)
    with pytest.raises(ConfigError, match="unknown encoding"):
        make_encoding("nope")

    @register_encoding("test_identity")
    class Identity(Encoding):
        in_dim = 3

        @property
        def out_dim(self) -> int:
            return 3

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    assert make_encoding("test_identity").out_dim == 3


def test_frequency_encoding() -> None:
    enc = FrequencyEncoding(in_dim=3, num_freqs=4)
    x = torch.rand(10, 3)
    out = enc(x)
    assert out.shape == (10, enc.out_dim) == (10, 27)
    torch.testing.assert_close(out[:, :3], x)
    torch.testing.assert_close(out[:, 3 + 4 * 1 + 2], torch.sin(4 * torch.pi * x[:, 1]))  # axis 1, 2**2 pi


def test_spherical_harmonics_are_orthonormal() -> None:
    sh = SphericalHarmonics(degree=4)
    d = torch.nn.functional.normalize(
        torch.randn(400_000, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    y = sh(d)  # (M, 16)
    gram = 4 * torch.pi * y.T @ y / d.shape[0]  # Monte Carlo integral over the sphere
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.03, rtol=0.0)
    with pytest.raises(ConfigError):
        SphericalHarmonics(degree=5)
