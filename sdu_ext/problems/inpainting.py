"""Offline image-inpainting data set (SPEC section 5): small crops of the colour photographs
shipped inside scikit-image, and the central-hole mask.

The research setting (64 x 64 RGB CelebA-HQ, 5-bit, a 24 x 24 central hole) cannot be
downloaded here. This set keeps its shape at a CPU-friendly size: ``image_size`` x
``image_size`` crops (32 by default), RGB (or grayscale), optionally quantised to
``bits`` bits like the research (5 by default), and a central square hole covering
24/64 of the side (12 x 12 for 32 x 32, 6 x 6 for 16 x 16).

Images (``RGB_IMAGES``, PNG files bundled with scikit-image, loaded without network;
JPEG files are avoided because decoders may differ across machines): astronaut
(512 x 512), coffee (400 x 600), chelsea (300 x 451), immunohistochemistry (512 x 512)
and the left view of stereo_motorcycle (500 x 741); alpha channels dropped.

Extraction, in this order (everything from CPU generators seeded by ``seed``):

1. Each image (in ``images`` order) is cut into non-overlapping ``block`` x ``block``
   blocks (default ``2 * image_size``) on the grid starting at its top-left pixel;
   partial blocks at the right/bottom edges are dropped. Blocks are listed image by
   image, row-major.
2. ``torch.randperm`` of the blocks (generator seeded by ``seed``) assigns them to the
   splits in proportion to the requested sizes: the first
   ``max(1, round(n_blocks * n_val / total))`` blocks go to val, the next
   ``max(1, round(n_blocks * n_test / total))`` to test (none for an empty split),
   the rest to train. Crops of different splits never overlap.
3. Inside a block every crop whose top-left corner lies on the grid
   {0, stride, 2 stride, ...} and that fits in the block is a candidate (default
   stride ``image_size // 4``: 25 crops per 64 x 64 block).
4. For each split (train, val, test), ``torch.randperm`` of its candidates (generator
   seeded by ``seed * 1_000_003 + k``, k = 1, 2, 3) picks the first ``n_<split>`` crops,
   in that order.
5. Pixel values: 8-bit intensities v (RGB; grayscale = round(0.2125 R + 0.7154 G +
   0.0721 B), the BT.709 luma of the sparse-coding ``patches`` set). With ``bits=None``
   x = v / 255 (values in [0, 1]); with ``bits=b`` the research quantisation
   x = floor(v / 2^(8-b)) / 2^b (values k / 2^b, k = 0 .. 2^b - 1, in [0, 1)).
   Stored as float32 (N, C, H, W), channels first.

With the defaults there are 287 blocks (7,175 candidate crops).

Mask and measurement: ``mask`` (1, H, W) float32 is 1 on observed pixels and 0 on the
central ``hole`` x ``hole`` square (top-left corner ``((H - hole) // 2, (W - hole) // 2)``),
shared by the channels. The measurement operator A keeps the observed pixels:
``A x = mask * x`` as an image (a diagonal projection, so A^T = A and A^T A = A), and
``y = A x`` is the masked image with zeros in the hole.

Cache: the same directory (``$SDU_EXT_CACHE`` or ``~/.cache/sdu_ext``), file layout
(header with the SHA-256 of the payload), atomic writes and regeneration of damaged
files as the sparse-coding sets (:func:`sdu_ext.problems.datasets.write_blob` and
:func:`~sdu_ext.problems.datasets.read_blob`); one file ``inpainting-<hash>.pt`` per
configuration.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

import torch

from ..checks import check_choice, check_int
from .datasets import PATCH_IMAGES, default_cache_dir, read_blob, write_blob

__all__ = ["RGB_IMAGES", "HOLE_FRACTION", "InpaintingConfig", "InpaintingData", "load", "central_mask",
           "cache_path"]

# Colour PNGs bundled with scikit-image and the SHA-256 (first 12 hex digits) of the
# uint8 arrays the extraction was written against.
RGB_IMAGES = {
    "astronaut": PATCH_IMAGES["astronaut"],
    "coffee": PATCH_IMAGES["coffee"],
    "chelsea": PATCH_IMAGES["chelsea"],
    "immunohistochemistry": PATCH_IMAGES["immunohistochemistry"],
    "motorcycle": "ca829467c1d4",
}
HOLE_FRACTION = 24 / 64  # the research hole: 24 x 24 in 64 x 64 images
_SPLITS = ("train", "val", "test")
_LUMA = (0.2125, 0.7154, 0.0721)
# Bumped whenever generation changes, so stale cache files are never reused.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class InpaintingConfig:
    """What to generate. ``None`` fields take defaults derived from ``image_size``.

    Attributes:
        image_size: side of the square crops (pixels, >= 4).
        channels: 3 (RGB) or 1 (grayscale).
        bits: None (x = v / 255) or the quantisation depth in 1..8 (research: 5).
        n_train, n_val, n_test: split sizes (>= 0).
        seed: base seed of the block assignment and crop picks.
        hole: side of the central hole (default ``round(image_size * 24 / 64)``).
        block: side of the split blocks (default ``2 * image_size``; >= image_size).
        stride: crop grid inside a block (default ``max(1, image_size // 4)``).
        images: names from ``RGB_IMAGES``.
    """

    image_size: int = 32
    channels: int = 3
    bits: Optional[int] = 5
    n_train: int = 2000
    n_val: int = 128
    n_test: int = 256
    seed: int = 0
    hole: Optional[int] = None
    block: Optional[int] = None
    stride: Optional[int] = None
    images: tuple = tuple(RGB_IMAGES)

    def __post_init__(self):
        check_int(self.image_size, "image_size", 4)
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise ValueError(f"channels: expected 1 (grayscale) or 3 (RGB), got {self.channels!r}")
        if self.bits is not None and (not isinstance(self.bits, int) or isinstance(self.bits, bool)
                                      or not 1 <= self.bits <= 8):
            raise ValueError(f"bits: expected None or an integer in 1..8, got {self.bits!r}")
        for key in ("n_train", "n_val", "n_test", "seed"):
            check_int(getattr(self, key), key, 0)
        s = self.image_size
        defaults = {"hole": round(s * HOLE_FRACTION), "block": 2 * s, "stride": max(1, s // 4)}
        for key, value in defaults.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        check_int(self.hole, "hole", 1)
        if self.hole >= s:
            raise ValueError(f"hole: expected a side smaller than image_size = {s}, got {self.hole}")
        check_int(self.block, "block", s)
        check_int(self.stride, "stride", 1)
        object.__setattr__(self, "images", tuple(self.images))
        unknown = [i for i in self.images if i not in RGB_IMAGES]
        if unknown or not self.images or len(set(self.images)) != len(self.images):
            raise ValueError(f"images: expected distinct names from RGB_IMAGES ({', '.join(RGB_IMAGES)}), "
                             f"got {self.images!r}")

    @property
    def total(self):
        return self.n_train + self.n_val + self.n_test

    @property
    def n_bins(self):
        """Number of intensity levels (2^bits, or 256 without quantisation)."""
        return 256 if self.bits is None else 2 ** self.bits

    def key(self):
        """Hex SHA-256 of the canonical JSON of the (defaults-filled) configuration."""
        blob = json.dumps({"format": FORMAT_VERSION, "kind": "inpainting", **asdict(self)}, sort_keys=True,
                          default=list)
        return hashlib.sha256(blob.encode()).hexdigest()


def central_mask(image_size, hole, dtype=torch.float32, device=None):
    """Mask (1, image_size, image_size): 1 on observed pixels, 0 on the central
    ``hole`` x ``hole`` square starting at ``(image_size - hole) // 2`` in both axes."""
    check_int(image_size, "image_size", 1)
    check_int(hole, "hole", 0)
    if hole > image_size:
        raise ValueError(f"hole: expected at most image_size = {image_size}, got {hole}")
    m = torch.ones(1, image_size, image_size, dtype=dtype, device=device)
    a = (image_size - hole) // 2
    m[:, a:a + hole, a:a + hole] = 0
    return m


@dataclass
class InpaintingData:
    """A generated data set.

    ``train``, ``val``, ``test``: clean images (N, C, H, W) float32 in [0, 1];
    ``mask`` (1, H, W) float32 (1 = observed); ``info``: how it was made (image
    digests, block counts)."""

    config: InpaintingConfig
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    mask: torch.Tensor
    info: dict = field(default_factory=dict)

    def split(self, name):
        check_choice(name, "name", _SPLITS)
        return getattr(self, name)

    def measure(self, x):
        """``y = A x = mask * x`` for images x (N, C, H, W); same shape and dtype."""
        return x * self.mask.to(x.device, x.dtype)

    def pairs(self, name):
        """``(y, x)`` of a split: masked images and clean images, both (N, C, H, W) float32 —
        the (input, target) tuple the trainer consumes."""
        x = self.split(name)
        return self.measure(x), x


# ----------------------------------------------------------------------- public API

def cache_path(config, cache_dir=None):
    """Path of the cache file of ``config``."""
    return os.path.join(cache_dir or default_cache_dir(), f"inpainting-{config.key()[:20]}.pt")


def load(config=None, *, cache_dir=None, cache=True, **overrides):
    """The data set of ``config`` (an :class:`InpaintingConfig`; keyword overrides replace
    its fields, e.g. ``load(n_train=500, channels=1)``).

    Loads the cached file when a valid one exists, else generates and caches it (a
    truncated or corrupted file is reported with a warning and regenerated).
    ``cache=False`` neither reads nor writes the cache.
    """
    known = {f.name for f in fields(InpaintingConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"{bad[0]}: not an InpaintingConfig field (fields: {', '.join(sorted(known))})")
    if config is None:
        config = InpaintingConfig(**overrides)
    elif not isinstance(config, InpaintingConfig):
        raise ValueError(f"config: expected an InpaintingConfig, got {type(config).__name__}")
    elif overrides:
        config = InpaintingConfig(**{**asdict(config), **overrides})
    path = cache_path(config, cache_dir)
    if cache:
        data = read_blob(path, config.key(), lambda p: _from_payload(config, p))
        if data is not None:
            return data
    data = _generate(config)
    if cache:
        write_blob(path, config.key(), _payload(data))
    return data


# ----------------------------------------------------------------------- generation

def _load_image(name):
    """uint8 array (H, W, 3) of a bundled colour image, checked against its digest."""
    import numpy as np

    try:
        import skimage.data
    except ImportError as e:
        raise ImportError("the inpainting data set reads scikit-image's bundled images: "
                          "pip install scikit-image") from e
    img = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    img = np.ascontiguousarray(np.asarray(img)[..., :3])
    digest = hashlib.sha256(img.tobytes()).hexdigest()
    if not digest.startswith(RGB_IMAGES[name]):
        warnings.warn(f"scikit-image image {name!r} differs from the one the inpainting extraction was "
                      f"written against (sha256 {digest[:12]} != {RGB_IMAGES[name]}): images will differ "
                      "from other machines'", RuntimeWarning, stacklevel=3)
    return img, digest


def _intensities(img, channels):
    """8-bit intensities (C, H, W) as float64 integers."""
    v = torch.from_numpy(img).to(torch.float64).permute(2, 0, 1)
    if channels == 1:
        v = torch.round((v * torch.tensor(_LUMA, dtype=torch.float64).view(3, 1, 1)).sum(0, keepdim=True))
    return v


def _generate(config):
    s, b, st = config.image_size, config.block, config.stride
    images, blocks, digests = [], [], {}
    for name in config.images:
        img, digests[name] = _load_image(name)
        v = _intensities(img, config.channels)
        if config.bits is None:
            x = v / 255.0
        else:
            x = torch.floor(v / 2 ** (8 - config.bits)) / 2 ** config.bits
        H, W = x.shape[1:]
        for i in range(0, H - b + 1, b):
            for j in range(0, W - b + 1, b):
                blocks.append((len(images), i, j))
        images.append(x.to(torch.float32))
    n_blocks = len(blocks)
    order = torch.randperm(n_blocks, generator=torch.Generator().manual_seed(config.seed)).tolist()
    total = max(config.total, 1)
    counts = {}
    for name in ("val", "test"):
        size = getattr(config, f"n_{name}")
        counts[name] = 0 if size == 0 else max(1, round(n_blocks * size / total))
    counts["train"] = n_blocks - counts["val"] - counts["test"]
    if counts["train"] < (1 if config.n_train else 0):
        raise ValueError(f"n_train: no image block left for the training split ({n_blocks} blocks of "
                         f"{b} x {b} pixels); lower n_val / n_test or the block size")
    assigned = {"val": order[:counts["val"]], "test": order[counts["val"]:counts["val"] + counts["test"]],
                "train": order[counts["val"] + counts["test"]:]}
    offsets = [(di, dj) for di in range(0, b - s + 1, st) for dj in range(0, b - s + 1, st)]
    out = {}
    for k, name in enumerate(_SPLITS, start=1):
        cands = [(blocks[q][0], blocks[q][1] + di, blocks[q][2] + dj)
                 for q in sorted(assigned[name]) for di, dj in offsets]
        size = getattr(config, f"n_{name}")
        if size > len(cands):
            raise ValueError(f"n_{name}: expected at most {len(cands)} crops ({len(assigned[name])} blocks of "
                             f"{len(offsets)} crops at stride {st}), got {size}; lower it or the stride")
        g = torch.Generator().manual_seed(config.seed * 1_000_003 + k)
        pick = torch.randperm(len(cands), generator=g)[:size].tolist()
        C = config.channels
        out[name] = torch.stack([images[m][:, i:i + s, j:j + s] for m, i, j in (cands[p] for p in pick)]) \
            if size else torch.empty(0, C, s, s)
    info = {"format": FORMAT_VERSION, "images": digests, "blocks": n_blocks,
            "blocks_per_split": {k: len(v) for k, v in assigned.items()}, "crops_per_block": len(offsets)}
    return InpaintingData(config=config, mask=central_mask(s, config.hole), info=info, **out)


# ---------------------------------------------------------------------------- cache

def _payload(data):
    return {"config": json.dumps(asdict(data.config), sort_keys=True, default=list),
            **{name: data.split(name) for name in _SPLITS}, "mask": data.mask,
            "info": json.dumps(data.info, sort_keys=True)}


def _from_payload(config, p):
    return InpaintingData(config=config, mask=p["mask"], info=json.loads(p["info"]),
                          **{name: p[name] for name in _SPLITS})
