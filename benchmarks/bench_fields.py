"""NeuS training-step throughput against a straightforward PyTorch hash grid + MLP, and the samples per ray
that surface-guided sampling needs against uniform + importance sampling for the same colour error.

On CPU the step runs at 512 rays x 64 samples (the issue's 8192 x 64 on CUDA, when available); both sides
evaluate the field once per sample (NeuS mid-point sections) with autograd normals unless the row says
otherwise. The samples-per-ray rows render an exact analytic NeuS field, so they measure the samplers alone.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.table import BenchRow, print_table
from bigscene.config import ModelConfig
from bigscene.fields import NeuSField, NeuSOutput, eikonal_loss
from bigscene.render import (
    NeuSImportanceSampler,
    Rays,
    Sampler,
    SparseVoxels,
    SurfaceGuidedSampler,
    render_neus,
    uniform_samples,
    update_voxels,
)

log = logging.getLogger(__name__)

SAMPLES_PER_RAY = 64
AABB = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


class BaselineNeuS(nn.Module):
    """The straightforward way: every level hashed, a Python loop over levels and corners, a gather per corner,
    autograd normals and fixed-count cumprod rendering. Same sizes as the default ModelConfig."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        growth = math.exp(math.log(config.finest_resolution / config.base_resolution) / (config.hash_levels - 1))
        self.resolutions = [math.floor(config.base_resolution * growth**level) for level in range(config.hash_levels)]
        self.table_size = 2**config.hash_table_log2
        self.tables = nn.Parameter(
            torch.empty(config.hash_levels, self.table_size, config.hash_features).uniform_(-1e-4, 1e-4)
        )
        width = config.hidden_dim
        enc_dim = config.hash_levels * config.hash_features
        self.sdf_net = nn.Sequential(
            nn.Linear(3 + enc_dim, width),
            nn.Softplus(beta=100),
            nn.Linear(width, width),
            nn.Softplus(beta=100),
            nn.Linear(width, 1 + config.feature_dim),
        )
        color_in = 9 + config.feature_dim + config.appearance_dim
        self.color_net = nn.Sequential(
            nn.Linear(color_in, config.color_hidden_dim),
            nn.ReLU(),
            nn.Linear(config.color_hidden_dim, config.color_hidden_dim),
            nn.ReLU(),
            nn.Linear(config.color_hidden_dim, 3),
        )
        self.appearance_dim = config.appearance_dim
        self.variance = nn.Parameter(torch.tensor(0.3))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        feats = []
        for level, res in enumerate(self.resolutions):
            pos = x * res
            cell = torch.floor(pos).long()
            frac = pos - cell
            level_feat = 0.0
            for corner in range(8):
                offset = torch.tensor([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1], device=x.device)
                c = cell + offset
                index = (c[:, 0] * 1) ^ (c[:, 1] * 2654435761) ^ (c[:, 2] * 805459861)
                index = index % self.table_size
                w = torch.prod(torch.where(offset.bool(), frac, 1.0 - frac), dim=-1)
                level_feat = level_feat + w[:, None] * self.tables[level][index]
            feats.append(level_feat)
        return torch.cat(feats, dim=-1)

    def forward(self, x: torch.Tensor, dirs: torch.Tensor) -> NeuSOutput:
        x = x.detach().requires_grad_(True)
        out = self.sdf_net(torch.cat([x, self.encode((x + 1.0) / 2.0)], dim=-1))
        sdf, feature = out[:, 0], out[:, 1:]
        (grad,) = torch.autograd.grad(sdf, x, torch.ones_like(sdf), create_graph=True)
        normals = F.normalize(grad, dim=-1)
        appearance = x.new_zeros(x.shape[0], self.appearance_dim)
        rgb = torch.sigmoid(self.color_net(torch.cat([x, normals, dirs, feature, appearance], dim=-1)))
        return NeuSOutput(sdf, grad, normals, rgb, torch.exp(self.variance * 10.0))


def baseline_render(model: BaselineNeuS, rays: Rays, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed-count NeuS rendering with cumprod: colour (N, 3) and gradients (N K, 3)."""
    n = len(rays)
    t = torch.linspace(0.0, 1.0, k + 1, device=rays.origins.device)
    edges = rays.near[:, None] + (rays.far - rays.near)[:, None] * t  # (N, K + 1)
    mids, deltas = (edges[:, 1:] + edges[:, :-1]) / 2, edges[:, 1:] - edges[:, :-1]
    x = (rays.origins[:, None] + rays.dirs[:, None] * mids[..., None]).reshape(-1, 3)
    dirs = rays.dirs[:, None].expand(n, k, 3).reshape(-1, 3)
    out = model(x, dirs)
    cos = (dirs * out.gradients).sum(-1)
    half = -torch.relu(-cos) * deltas.reshape(-1) * 0.5
    prev_cdf = torch.sigmoid((out.sdf - half) * out.inv_s)
    next_cdf = torch.sigmoid((out.sdf + half) * out.inv_s)
    alpha = ((prev_cdf - next_cdf + 1e-5) / (prev_cdf + 1e-5)).clamp(0.0, 1.0).view(n, k)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha + 1e-7], dim=1), dim=1)[:, :-1]
    weights = alpha * trans
    return (weights[..., None] * out.rgb.view(n, k, 3)).sum(1), out.gradients


def random_rays(n: int, device: torch.device) -> tuple[Rays, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    origins = 2.5 * F.normalize(torch.randn(n, 3, generator=g), dim=-1)
    dirs = F.normalize(0.3 * torch.randn(n, 3, generator=g) - origins, dim=-1)
    bo = (origins * dirs).sum(-1)
    half = torch.sqrt((bo * bo - (origins * origins).sum(-1) + 0.9).clamp(min=1e-4))
    rays = Rays(origins, dirs, -bo - half, -bo + half)
    rays = Rays(*(getattr(rays, f).to(device) for f in ("origins", "dirs", "near", "far")))
    return rays, torch.rand(n, 3, generator=g).to(device)


def best_times(steps: dict[str, Callable[[], None]], device: torch.device, repeats: int) -> dict[str, float]:
    """Best wall time of each step over `repeats` rounds, the steps interleaved within a round so that a
    machine shared with other work slows them alike; CUDA gets a warm-up round first."""
    if device.type == "cuda":
        for step in steps.values():
            step()
    best = dict.fromkeys(steps, math.inf)
    for _ in range(repeats):
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = min(best[name], time.perf_counter() - started)
    return best


def training_step_rows(device: torch.device) -> list[BenchRow]:
    """Samples/s of one NeuS training step (forward, normals, backward, Adam): ours and the baseline."""
    num_rays = 8192 if device.type == "cuda" else 512
    rays, target = random_rays(num_rays, device)
    samples = uniform_samples(rays, SAMPLES_PER_RAY)

    def ours(normals: str) -> Callable[[], None]:
        field = NeuSField(ModelConfig(normals=normals), AABB).to(device)
        optimiser = torch.optim.Adam(field.parameters(), lr=1e-3)

        def step() -> None:
            result = render_neus(field, rays, samples, section="mid")
            loss = F.mse_loss(result.rgb, target) + 0.1 * eikonal_loss(result.gradients)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()

        return step

    baseline = BaselineNeuS(ModelConfig()).to(device)
    baseline_optimiser = torch.optim.Adam(baseline.parameters(), lr=1e-3)

    def baseline_step() -> None:
        rgb, gradients = baseline_render(baseline, rays, SAMPLES_PER_RAY)
        loss = F.mse_loss(rgb, target) + 0.1 * eikonal_loss(gradients)
        baseline_optimiser.zero_grad(set_to_none=True)
        loss.backward()
        baseline_optimiser.step()

    steps = {"baseline": baseline_step, "autograd": ours("autograd"), "finite_difference": ours("finite_difference")}
    times = best_times(steps, device, repeats=5 if device.type == "cuda" else 2)
    per_step = num_rays * SAMPLES_PER_RAY
    base = per_step / times["baseline"]
    name = f"NeuS train step samples/s, {device.type}, {num_rays}x{SAMPLES_PER_RAY}"
    rows = []
    for normals in ("autograd", "finite_difference"):
        figure = per_step / times[normals]
        rows.append(BenchRow(f"{name}, {normals} normals", figure, "plain hash grid + MLP", base, "samples/s"))
        log.info("%s: %.0f samples/s (baseline %.0f)", rows[-1].name, figure, base)
    return rows


class AnalyticScene(nn.Module):
    """A textured sphere on a ground plane as an exact NeuS field with a sharp s (late in training)."""

    centre = torch.tensor([0.1, 0.0, -0.1])

    def __init__(self, inv_s: float = 1000.0) -> None:
        super().__init__()
        self.s = torch.tensor(inv_s)

    def sdf(self, x: torch.Tensor) -> torch.Tensor:
        return torch.minimum((x - self.centre).norm(dim=-1) - 0.35, x[:, 2] + 0.4)

    def colour(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 + 0.45 * torch.sin(12.0 * x + torch.tensor([0.0, 2.0, 4.0]))

    def forward(self, x: torch.Tensor, dirs: torch.Tensor, appearance: torch.Tensor | None = None) -> NeuSOutput:
        sphere = (x - self.centre).norm(dim=-1) - 0.35
        on_sphere = sphere < x[:, 2] + 0.4
        normals = torch.where(on_sphere[:, None], F.normalize(x - self.centre, dim=-1), torch.tensor([0.0, 0.0, 1.0]))
        return NeuSOutput(self.sdf(x), normals, normals, self.colour(x), self.s)

    def true_colour(self, rays: Rays) -> torch.Tensor:
        """Colour (N, 3) at each ray's first hit, by sphere tracing."""
        t = rays.near.clone()
        for _ in range(200):
            t = t + self.sdf(rays.origins + t[:, None] * rays.dirs)
        return self.colour(rays.origins + t[:, None] * rays.dirs)


def scene_rays(n: int) -> Rays:
    g = torch.Generator().manual_seed(1)
    up = F.normalize(torch.randn(n, 3, generator=g), dim=-1)
    up[:, 2] = up[:, 2].abs() + 0.3
    origins = 2.2 * F.normalize(up, dim=-1)
    targets = torch.cat([torch.rand(n, 2, generator=g) * 1.2 - 0.6, torch.full((n, 1), -0.4)], dim=1)
    return Rays(origins, F.normalize(targets - origins, dim=-1), torch.full((n,), 0.3), torch.full((n,), 4.0))


def samples_per_ray_rows() -> list[BenchRow]:
    """Samples per ray each sampler needs to come within 10% of the colour error of NeuS's 64 + 64 samples, and
    the colour error of each at 16 samples per ray, on an analytic scene with voxels updated four times."""
    scene = AnalyticScene()
    rays = scene_rays(2000)
    truth = scene.true_colour(rays)
    seed = torch.stack(torch.meshgrid(*[torch.arange(8)] * 3, indexing="ij"), -1).reshape(-1, 3)
    voxels = SparseVoxels(AABB[0], 0.25, seed)
    for _ in range(4):
        voxels = update_voxels(voxels, scene.sdf, threshold=1.0, subdivide=2, dilate=1)

    def error(sampler: Sampler) -> tuple[float, float]:
        """Colour MSE and the samples per ray actually used."""
        with torch.no_grad():
            samples = sampler(rays, scene.sdf)
            rgb = render_neus(scene, rays, samples).rgb
        return float(F.mse_loss(rgb, truth)), len(samples) / len(rays)

    def importance(budget: int) -> Sampler:
        return NeuSImportanceSampler(budget // 2, budget // 2, steps=4)

    def guided(budget: int) -> Sampler:
        return SurfaceGuidedSampler(voxels, budget // 2, budget // 4, max(budget // 8, 1), surface_band=0.02)

    target = 1.1 * error(importance(128))[0]
    budgets = (8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 64, 96, 128)
    needed = {}
    for name, make in (("importance", importance), ("guided", guided)):
        needed[name] = next((spr for mse, spr in map(error, map(make, budgets)) if mse <= target), math.nan)
        log.info("%s: colour MSE %.2e at %.1f samples/ray", name, target, needed[name])
    return [
        BenchRow(
            f"samples/ray to colour MSE {target:.1e} (NeuS 64+64 +10%), surface-guided",
            needed["guided"],
            "uniform + importance",
            needed["importance"],
            "samples/ray",
            higher_is_better=False,
        ),
        BenchRow(
            "colour MSE x 1e4 at a 16-sample budget, surface-guided",
            1e4 * error(guided(16))[0],
            "uniform + importance",
            1e4 * error(importance(16))[0],
            "MSE x 1e4",
            higher_is_better=False,
        ),
    ]


def run() -> list[BenchRow]:
    rows = training_step_rows(torch.device("cpu"))
    if torch.cuda.is_available():
        rows += training_step_rows(torch.device("cuda"))
    return rows + samples_per_ray_rows()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print_table("fields and samplers", run())
