"""A visual tokenizer that is fitted on CPU in minutes: seeded k-means over fixed patch features.

It stands in for BEiT-v2's VQ-KD tokenizer in the small profiles (see the package docstring). A patch's
feature is its pixels mapped to ``[-1, 1]`` (optionally average-pooled to ``pool x pool`` cells per
channel, optionally multiplied by a fixed seeded Gaussian projection); codes are the k-means centroids of
those features, and a patch's token is its nearest centroid (squared Euclidean distance). Colour is kept
on purpose (no per-patch normalisation), so flat patches of different colours get different codes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PatchCodebookTokenizer"]

_FORMAT = "patch_codebook_v1"


def _patch_features(images: torch.Tensor, patch_size: int, pool: int | None) -> torch.Tensor:
    """``[B, 3, H, W]`` images in [0, 1] -> ``[B, N, F]`` raw patch features (row-major patch order)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"expected float images in [0, 1] (ToTensor()), got dtype {images.dtype}")
    height, width = images.shape[-2:]
    if height % patch_size or width % patch_size:
        raise ValueError(f"image size {height}x{width} is not a multiple of patch_size {patch_size}")
    x = images.float() * 2.0 - 1.0
    if pool is not None and pool < patch_size:
        if patch_size % pool:
            raise ValueError(f"pool {pool} must divide patch_size {patch_size}")
        # avg-pool every patch to pool x pool cells: same grid of patches, fewer numbers per patch
        x = F.avg_pool2d(x, kernel_size=patch_size // pool)
        patch_size = pool
    patches = F.unfold(x, kernel_size=patch_size, stride=patch_size)  # [B, 3*p*p, N]
    return patches.transpose(1, 2)


def _nearest(features: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Index of the nearest centroid for every row of ``features`` ``[N, F]`` (ties -> lowest index)."""
    c_sq = centroids.pow(2).sum(1)
    out = []
    for start in range(0, features.shape[0], chunk):
        rows = features[start : start + chunk]
        dist = rows.pow(2).sum(1, keepdim=True) + c_sq - 2 * rows @ centroids.t()
        out.append(dist.argmin(dim=1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def _kmeans_pp_init(samples: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding; when every remaining point coincides with a centroid, picks uniformly."""
    n = samples.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centroids = [samples[first]]
    closest = (samples - samples[first]).pow(2).sum(1)
    for _ in range(1, k):
        total = float(closest.sum())
        if total > 0:
            idx = int(torch.multinomial(closest / total, 1, generator=generator))
        else:
            idx = int(torch.randint(n, (1,), generator=generator))
        centroids.append(samples[idx])
        closest = torch.minimum(closest, (samples - samples[idx]).pow(2).sum(1))
    return torch.stack(centroids)


class PatchCodebookTokenizer(nn.Module):
    """Nearest-centroid patch tokenizer; build it with :meth:`fit` or :meth:`load`.

    Args:
        codebook: ``[num_codes, feature_dim]`` centroids.
        patch_size: patch side in pixels.
        pool: cells per patch side after average pooling (``None`` keeps every pixel).
        projection: optional fixed ``[raw_dim, feature_dim]`` matrix applied to the raw patch features.
    """

    def __init__(self, codebook: torch.Tensor, patch_size: int, pool: int | None = None,
                 projection: torch.Tensor | None = None):
        super().__init__()
        if codebook.ndim != 2:
            raise ValueError(f"codebook must be [num_codes, dim], got shape {tuple(codebook.shape)}")
        self.patch_size = int(patch_size)
        self.pool = None if pool is None else int(pool)
        self.num_codes = codebook.shape[0]
        self.register_buffer("codebook", codebook.float().clone())
        self.register_buffer("projection", None if projection is None else projection.float().clone())

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Patch features ``[B, num_patches, feature_dim]`` of ``[0, 1]`` images."""
        feats = _patch_features(images.to(self.codebook.device), self.patch_size, self.pool)
        if self.projection is not None:
            feats = feats @ self.projection
        return feats

    @torch.no_grad()
    def get_codebook_indices(self, images: torch.Tensor) -> torch.Tensor:
        """Visual-token ids ``LongTensor[B, num_patches]`` (row-major patch order) of ``[0, 1]`` images."""
        feats = self.features(images)
        batch, num_patches, dim = feats.shape
        if dim != self.codebook.shape[1]:
            raise ValueError(f"patch features have {dim} dims but the codebook has {self.codebook.shape[1]}")
        return _nearest(feats.reshape(-1, dim), self.codebook).view(batch, num_patches)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.get_codebook_indices(images)

    @classmethod
    @torch.no_grad()
    def fit(cls, images: Iterable[torch.Tensor], num_codes: int, patch_size: int, seed: int = 0, *,
            pool: int | None = 4, projection_dim: int | None = None, num_iters: int = 25,
            max_samples: int = 100_000) -> PatchCodebookTokenizer:
        """Fit the codebook by seeded k-means (k-means++ seeding, Lloyd iterations) on patch features.

        Every batch is turned into patch features; if there are more than ``max_samples`` patches in
        total, a seeded uniform subset of that size is clustered (all features are held in memory first:
        ``num_patches x feature_dim`` floats). Empty clusters are re-seeded with the patch that is
        farthest from its centroid. The result depends only on the images, their order and the arguments.

        Args:
            images: iterable of ``[B, 3, H, W]`` float tensors in ``[0, 1]``.
            num_codes: codebook size (k).
            patch_size: patch side in pixels (must divide H and W).
            seed: seed of the projection, the subsampling and the k-means seeding.
            pool: average-pool each patch to ``pool x pool`` cells first (fewer dims, less noise;
                ``None`` keeps every pixel, i.e. ``3 * patch_size**2`` dims).
            projection_dim: if set, features are projected by a fixed Gaussian matrix to this size.
            num_iters: maximum Lloyd iterations (stops early when assignments no longer change).
            max_samples: cap on the number of patches clustered.
        """
        if num_codes < 1:
            raise ValueError(f"num_codes must be >= 1, got {num_codes}")
        generator = torch.Generator().manual_seed(seed)
        chunks = []
        for batch in images:
            feats = _patch_features(batch, patch_size, pool)
            chunks.append(feats.reshape(-1, feats.shape[-1]))
        if not chunks:
            raise ValueError("no images given to PatchCodebookTokenizer.fit")
        samples = torch.cat(chunks)
        projection = None
        if projection_dim is not None:
            projection = torch.randn(samples.shape[1], projection_dim, generator=generator)
            projection /= projection_dim**0.5
            samples = samples @ projection
        if samples.shape[0] > max_samples:
            samples = samples[torch.randperm(samples.shape[0], generator=generator)[:max_samples]]
        if samples.shape[0] < num_codes:
            raise ValueError(
                f"only {samples.shape[0]} patches to fit {num_codes} codes; give more images or fewer codes"
            )

        centroids = _kmeans_pp_init(samples, num_codes, generator)
        assign = _nearest(samples, centroids)
        for _ in range(num_iters):
            counts = torch.bincount(assign, minlength=num_codes)
            sums = torch.zeros_like(centroids).index_add_(0, assign, samples)
            centroids = sums / counts.clamp(min=1).unsqueeze(1).to(sums.dtype)
            empty = (counts == 0).nonzero().flatten()
            if len(empty):
                err = (samples - centroids[assign]).pow(2).sum(1)
                centroids[empty] = samples[err.argsort(descending=True, stable=True)[: len(empty)]]
            new_assign = _nearest(samples, centroids)
            if torch.equal(new_assign, assign):
                break
            assign = new_assign
        return cls(centroids, patch_size, pool=pool, projection=projection)

    def save(self, path: str | Path) -> Path:
        """Write a plain dict (tensors and ints) readable with ``torch.load(weights_only=True)``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "format": _FORMAT,
                "codebook": self.codebook.cpu(),
                "patch_size": self.patch_size,
                "pool": self.pool,
                "projection": None if self.projection is None else self.projection.cpu(),
            },
            path,
        )
        return path

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> PatchCodebookTokenizer:
        """Read a file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"patch codebook file not found: {path}")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:  # unpickling errors have no common base class
            raise ValueError(f"cannot read patch codebook {path}: {err}") from err
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a PatchCodebookTokenizer file (expected format '{_FORMAT}')")
        missing = [k for k in ("codebook", "patch_size", "pool", "projection") if k not in state]
        if missing:
            raise KeyError(f"{path} lacks {missing}; re-create it with PatchCodebookTokenizer.save")
        return cls(state["codebook"], state["patch_size"], pool=state["pool"], projection=state["projection"])
