"""Offline sparse-coding data sets (SPEC section 2): `synthetic` and `patches`.

Each data set is a dictionary ``D`` (n, m), a weight ``alpha`` and three splits
(train / val / test) of signals ``x`` (N, n) with reference codes ``y`` (N, m),
the LASSO optima of the signals for ``Lasso(D, alpha)``. Everything is drawn from
seeded CPU generators, so a configuration gives the same tensors on every machine,
and generated sets are cached on disk keyed by a hash of their configuration.

synthetic
    The LISTA benchmark of the learning-to-optimise literature. ``D`` has entries
    N(0, 1/n) and then columns scaled to unit norm; codes are Bernoulli(density) x
    N(0, 1); ``x = D y_true`` plus, when ``snr_db`` is set, white Gaussian noise of
    standard deviation ``||D y_true|| / sqrt(n) * 10^(-snr_db / 20)`` per signal (so
    each signal's expected SNR is ``snr_db``). The generating codes are kept as
    ``y_true``. Draws: ``D`` from ``seed``; split k (train 1, val 2, test 3) from
    ``seed * 1_000_003 + k``, in the order support mask, values, noise, so a split
    does not change when another split's size does.

patches
    32 x 32 grayscale patches (n = 1024) of the PNG photographs bundled with
    scikit-image (``PATCH_IMAGES``, loaded without network; JPEG files are avoided
    because decoders may differ across machines). Extraction, in this order:
    images in ``images`` order; colour images (alpha channel dropped) converted
    with the BT.709 luma weights 0.2125 R + 0.7154 G + 0.0721 B on values / 255
    (grey images: values / 255), so pixels lie in [0, 1]; every top-left corner
    on the grid {0, stride, 2 stride, ...} that fits, row-major within an image;
    patches flattened row-major. ``torch.randperm`` of all candidates with a
    generator seeded by ``seed`` picks the signals: the first ``n_train`` go to
    train, the next ``n_val`` to val, the next ``n_test`` to test. With the default
    stride 4 there are 155,842 candidates; neighbouring patches overlap, and the
    splits draw from the same images (stride 32 gives disjoint patches, 2,690 of
    them). Dictionary: ``uniform`` (the research setting: entries U[0, 1] from a
    generator seeded by ``seed + 1``) or ``unit_norm`` (the same draw with columns
    scaled to unit norm); alpha 0.5 and m = int(1.2 n) = 1228 by default.

Reference codes: ``reference="solve_lasso"`` (default) solves every signal to a
certified relative duality gap ``tol`` (:func:`sdu_ext.solvers.solve_lasso`, in
float64 on the stored float32/float64 ``D`` and ``x``); ``reference="ista"`` runs
``ista_steps`` ISTA iterations with step 1/Lip from zero (the research code's 3000
steps; their gap is recorded but not bounded). Each split stores ``gap``, the
float64 relative duality gap of its reference codes.

Cache: ``$SDU_EXT_CACHE`` or ``~/.cache/sdu_ext``; one file per configuration,
``<name>-<hash>.pt``, written to a temporary file and moved into place with
``os.replace`` (a crash never leaves a partial file under the final name). The
file holds a header with the SHA-256 of its payload; a truncated or corrupted
file fails the check (or ``torch.load``), is reported with a warning, and is
regenerated — never used (:func:`write_blob` and :func:`read_blob`, which the
inpainting set shares).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from typing import Optional

import torch
from tqdm.auto import tqdm

from ..atomic import atomic_write_bytes
from ..checks import check_choice, check_directory, check_int, is_plain_real
from .lasso import Lasso

__all__ = [
    "DATASETS", "PATCH_IMAGES", "DatasetConfig", "Split", "SparseCodingData",
    "load", "synthetic", "patches", "cache_path", "default_cache_dir",
]

DATASETS = ("synthetic", "patches")
# PNG photographs shipped inside scikit-image (no download), with the SHA-256 (first
# 12 hex digits) of the uint8 arrays the extraction was written against.
PATCH_IMAGES = {
    "camera": "5cb24482a534",
    "astronaut": "a8c429c18afa",
    "coffee": "0ce2b51640b9",
    "chelsea": "416b729128bf",
    "coins": "e080cc03805f",
    "moon": "a20362266d5b",
    "clock": "ad313afa739e",
    "immunohistochemistry": "c5b3ef509a92",
    "cell": "dc464a59c683",
    "brick": "664a145c5253",
    "grass": "b18dae4c68bf",
    "gravel": "3d51ad45f789",
}
_DICTIONARIES = ("uniform", "unit_norm")
_REFERENCES = ("solve_lasso", "ista")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_SPLITS = ("train", "val", "test")
# Bumped whenever generation changes, so stale cache files are never reused.
FORMAT_VERSION = 1
_MAGIC = b"SDUEXT-DATASET\n"
_SOLVE_CHUNK = 2048
_DEFAULTS = {
    "synthetic": dict(n=250, m=500, alpha=0.1, n_train=10000, n_val=1000, n_test=1000),
    "patches": dict(n=1024, m=1228, alpha=0.5, n_train=2000, n_val=500, n_test=500),
}


@dataclass(frozen=True)
class DatasetConfig:
    """What to generate. ``None`` fields take the data set's default (``_DEFAULTS``).

    Attributes:
        name: "synthetic" or "patches".
        n, m: signal and code sizes (patches: n must be patch_size**2; m defaults
            to int(1.2 n)).
        alpha: LASSO weight (>= 0).
        n_train, n_val, n_test: split sizes (>= 0).
        seed: base seed of every draw.
        density: synthetic support probability, in (0, 1].
        snr_db: synthetic measurement SNR in dB (finite) or None for noise-free.
        dictionary: patches dictionary, "uniform" or "unit_norm".
        patch_size, stride: patches geometry (pixels).
        images: patches source images, names from ``PATCH_IMAGES``.
        reference: "solve_lasso" (certified to ``tol``) or "ista" (``ista_steps``).
        tol: relative duality-gap target of the reference codes (> 0).
        ista_steps: ISTA iterations of ``reference="ista"``.
        dtype: storage dtype of D, x, y: "float32" or "float64".
    """

    name: str = "synthetic"
    n: Optional[int] = None
    m: Optional[int] = None
    alpha: Optional[float] = None
    n_train: Optional[int] = None
    n_val: Optional[int] = None
    n_test: Optional[int] = None
    seed: int = 0
    density: float = 0.1
    snr_db: Optional[float] = None
    dictionary: str = "uniform"
    patch_size: int = 32
    stride: int = 4
    images: tuple = tuple(PATCH_IMAGES)
    reference: str = "solve_lasso"
    tol: float = 1e-6
    ista_steps: int = 3000
    dtype: str = "float32"

    def __post_init__(self):
        check_choice(self.name, "name", DATASETS)
        defaults = dict(_DEFAULTS[self.name])
        if self.name == "patches":
            check_int(self.patch_size, "patch_size", 1)
            defaults["n"] = self.patch_size ** 2
        n = self.n if self.n is not None else defaults["n"]
        check_int(n, "n", 1)
        defaults["m"] = defaults["m"] if self.name == "synthetic" else int(1.2 * n)
        for key, value in defaults.items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        check_int(self.m, "m", 1)
        if self.name == "patches" and self.n != self.patch_size ** 2:
            raise ValueError(f"n: expected patch_size**2 = {self.patch_size ** 2} for patches of "
                             f"{self.patch_size} x {self.patch_size} pixels, got {self.n}")
        if not is_plain_real(self.alpha) or not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"alpha: expected a finite value >= 0, got {self.alpha!r}")
        for key in ("n_train", "n_val", "n_test"):
            check_int(getattr(self, key), key, 0)
        check_int(self.seed, "seed", 0)
        if not is_plain_real(self.density) or not 0 < self.density <= 1:
            raise ValueError(f"density: expected a probability in (0, 1], got {self.density!r}")
        if self.snr_db is not None and (not is_plain_real(self.snr_db) or not math.isfinite(self.snr_db)):
            raise ValueError(f"snr_db: expected a finite number of dB or None, got {self.snr_db!r}")
        check_choice(self.dictionary, "dictionary", _DICTIONARIES)
        check_int(self.stride, "stride", 1)
        if not isinstance(self.images, (tuple, list)):
            raise ValueError(f"images: expected a non-empty tuple of names from PATCH_IMAGES "
                             f"({', '.join(PATCH_IMAGES)}), got {self.images!r}")
        object.__setattr__(self, "images", tuple(self.images))
        unknown = [i for i in self.images if i not in PATCH_IMAGES]
        if unknown or not self.images:
            raise ValueError(f"images: expected a non-empty tuple of names from PATCH_IMAGES "
                             f"({', '.join(PATCH_IMAGES)}), got {self.images!r}")
        check_choice(self.reference, "reference", _REFERENCES)
        if not is_plain_real(self.tol) or not (math.isfinite(self.tol) and self.tol > 0):
            raise ValueError(f"tol: expected a finite value > 0, got {self.tol!r}")
        check_int(self.ista_steps, "ista_steps", 0)
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype: expected 'float32' or 'float64', got {self.dtype!r}")

    @property
    def total(self):
        return self.n_train + self.n_val + self.n_test

    def key(self):
        """Hex SHA-256 of the canonical JSON of the (defaults-filled) configuration."""
        blob = json.dumps({"format": FORMAT_VERSION, **asdict(self)}, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Split:
    """One split: signals ``x`` (N, n), reference codes ``y`` (N, m) (the LASSO
    optima), generating codes ``y_true`` (N, m) for synthetic data (else None), and
    ``gap`` (N,) float64, the relative duality gap of ``y``."""

    x: torch.Tensor
    y: torch.Tensor
    gap: torch.Tensor
    y_true: Optional[torch.Tensor] = None

    def __len__(self):
        return self.x.shape[0]


@dataclass
class SparseCodingData:
    """A generated data set: dictionary ``D`` (n, m), the three splits and ``info``
    (how it was made: image digests, solver statistics, versions)."""

    config: DatasetConfig
    D: torch.Tensor
    train: Split
    val: Split
    test: Split
    info: dict = field(default_factory=dict)

    @cached_property
    def problem(self):
        """The :class:`Lasso` of this data set (on ``D`` as stored)."""
        return Lasso(self.D, self.config.alpha)

    def split(self, name):
        check_choice(name, "name", _SPLITS)
        return getattr(self, name)


# ----------------------------------------------------------------------- public API

def default_cache_dir():
    """``$SDU_EXT_CACHE`` if set, else ``~/.cache/sdu_ext``."""
    return os.environ.get("SDU_EXT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sdu_ext")


def cache_path(config, cache_dir=None):
    """Path of the cache file of ``config``."""
    return os.path.join(cache_dir or default_cache_dir(), f"{config.name}-{config.key()[:20]}.pt")


def load(config=None, *, cache_dir=None, cache=True, progress=None, **overrides):
    """The data set of ``config`` (a :class:`DatasetConfig`; keyword overrides
    replace its fields, e.g. ``load(name="patches", n_train=500)``).

    Loads the cached file when a valid one exists, else generates and caches it.
    ``cache=False`` neither reads nor writes the cache. ``progress``: tqdm bars
    (True / False / None = only for long generations).
    """
    if not isinstance(cache, bool):
        raise ValueError(f"cache: expected True or False, got {cache!r}")
    known = {f.name for f in fields(DatasetConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"{bad[0]}: not a DatasetConfig field (fields: {', '.join(sorted(known))})")
    if config is not None and not isinstance(config, DatasetConfig):
        raise ValueError(f"config: expected a DatasetConfig or None, got {type(config).__name__}")
    if config is None:
        config = DatasetConfig(**overrides)
    elif overrides:
        base = {f.name: getattr(config, f.name) for f in fields(DatasetConfig)}
        if "name" in overrides and overrides["name"] != config.name:
            # a different data set: its own defaults, not the other one's
            base = {k: v for k, v in base.items() if k not in _DEFAULTS[config.name]}
        config = DatasetConfig(**{**base, **overrides})
    if cache:
        # before any work: a cache folder that cannot be created fails now, not after generation
        check_directory(cache_dir or default_cache_dir(),
                        "cache_dir" if cache_dir else "cache_dir ($SDU_EXT_CACHE or ~/.cache/sdu_ext)")
    path = cache_path(config, cache_dir)
    if cache:
        data = read_blob(path, config.key(), lambda p: _from_payload(config, p))
        if data is not None:
            return data
    data = _generate(config, progress)
    if cache:
        write_blob(path, config.key(), _payload(data))
    return data


def synthetic(**kwargs):
    """``load(name="synthetic", **kwargs)``."""
    return load(name="synthetic", **kwargs)


def patches(**kwargs):
    """``load(name="patches", **kwargs)``."""
    return load(name="patches", **kwargs)


# ----------------------------------------------------------------------- generation

def _generate(config, progress):
    dtype = _DTYPES[config.dtype]
    info = {"format": FORMAT_VERSION, "torch": torch.__version__}
    if config.name == "synthetic":
        D, splits = _synthetic(config)
    else:
        D, splits, info["images"] = _patches(config)
    D = D.to(dtype)
    problem = Lasso(D, config.alpha)
    out = {}
    stats = {}
    for name, (x, y_true) in zip(_SPLITS, splits):
        x = x.to(dtype)
        y, gap, st = _reference(problem, x, config, progress, name)
        out[name] = Split(x=x, y=y.to(dtype), gap=gap,
                          y_true=None if y_true is None else y_true.to(dtype))
        stats[name] = st
    info["reference"] = stats
    return SparseCodingData(config=config, D=D, info=info, **out)


def _split_generator(seed, k):
    return torch.Generator().manual_seed(seed * 1_000_003 + k)


def _synthetic(config):
    n, m = config.n, config.m
    gen = torch.Generator().manual_seed(config.seed)
    D = torch.randn(n, m, generator=gen, dtype=torch.float64) / math.sqrt(n)
    D = D / torch.linalg.vector_norm(D, dim=0).clamp_min(1e-300)
    splits = []
    for k, size in enumerate((config.n_train, config.n_val, config.n_test), start=1):
        g = _split_generator(config.seed, k)
        mask = torch.rand(size, m, generator=g, dtype=torch.float64) < config.density
        y_true = torch.randn(size, m, generator=g, dtype=torch.float64) * mask
        x = y_true @ D.T
        if config.snr_db is not None:
            noise = torch.randn(size, n, generator=g, dtype=torch.float64)
            sigma = torch.linalg.vector_norm(x, dim=1, keepdim=True) / math.sqrt(n)
            x = x + noise * sigma * 10 ** (-config.snr_db / 20)
        splits.append((x, y_true))
    return D, splits


def _gray_image(name):
    import numpy as np

    try:
        import skimage.data
    except ImportError as e:
        raise ImportError("the `patches` data set reads scikit-image's bundled images: "
                          "pip install scikit-image") from e

    img = np.asarray(getattr(skimage.data, name)())
    digest = hashlib.sha256(img.tobytes()).hexdigest()
    if not digest.startswith(PATCH_IMAGES[name]):
        warnings.warn(f"scikit-image image {name!r} differs from the one the `patches` extraction "
                      f"was written against (sha256 {digest[:12]} != {PATCH_IMAGES[name]}): patches "
                      "will differ from other machines'", RuntimeWarning, stacklevel=3)
    img = torch.from_numpy(img.astype(np.float64)) / 255.0
    if img.dim() == 3:
        img = img[..., :3] @ torch.tensor([0.2125, 0.7154, 0.0721], dtype=torch.float64)
    return img, digest


def _patches(config):
    p, s = config.patch_size, config.stride
    images, corners, digests = [], [], {}
    for name in config.images:
        img, digests[name] = _gray_image(name)
        H, W = img.shape
        if H < p or W < p:
            raise ValueError(f"patch_size: expected at most {min(H, W)} (image {name!r} is "
                             f"{H} x {W}), got {p}")
        ii, jj = torch.meshgrid(torch.arange(0, H - p + 1, s), torch.arange(0, W - p + 1, s), indexing="ij")
        corners.append(torch.stack([torch.full_like(ii, len(images)), ii, jj], -1).reshape(-1, 3))
        images.append(img)
    corners = torch.cat(corners)
    if config.total > corners.shape[0]:
        raise ValueError(f"n_train: n_train + n_val + n_test = {config.total} exceeds the "
                         f"{corners.shape[0]} patches available at stride {s}; lower them or the stride")
    order = torch.randperm(corners.shape[0], generator=torch.Generator().manual_seed(config.seed))
    picked = corners[order[: config.total]]
    x = torch.stack([images[k][i:i + p, j:j + p].reshape(-1) for k, i, j in picked.tolist()]) \
        if config.total else torch.empty(0, p * p, dtype=torch.float64)
    gen = torch.Generator().manual_seed(config.seed + 1)
    D = torch.rand(config.n, config.m, generator=gen, dtype=torch.float64)
    if config.dictionary == "unit_norm":
        D = D / torch.linalg.vector_norm(D, dim=0).clamp_min(1e-300)
    bounds = torch.tensor([0, config.n_train, config.n_train + config.n_val, config.total]).tolist()
    splits = [(x[a:b], None) for a, b in zip(bounds[:-1], bounds[1:])]
    return D, splits, digests


def _reference(problem, x, config, progress, split):
    """Reference codes of ``x`` (float64), their relative gaps and solver statistics."""
    from .. import solvers

    N = x.shape[0]
    D64 = problem.D.to(torch.float64)
    prob64 = Lasso(D64, config.alpha)
    ys, gaps, iters, conv = [], [], [], []
    chunks = range(0, N, _SOLVE_CHUNK)
    bar = tqdm(chunks, desc=f"{config.name}/{split} y*", disable=progress is False or N == 0,
               delay=0.0 if progress else 5.0, leave=False, dynamic_ncols=True)
    for a in bar:
        xb = x[a:a + _SOLVE_CHUNK].to(torch.float64)
        if config.reference == "solve_lasso":
            r = solvers.solve_lasso(prob64, xb, tol=config.tol, progress=False)
        else:
            r = solvers.ista(prob64, xb, max_iter=config.ista_steps, tol=0.0, dtype=torch.float64,
                             progress=False)
        ys.append(r.codes)
        gaps.append(r.relative_gap)
        iters.append(r.iterations)
        conv.append(r.converged)
    bar.close()
    if not ys:
        m = problem.m
        return (torch.empty(0, m, dtype=torch.float64), torch.empty(0, dtype=torch.float64),
                {"iterations_max": 0, "iterations_mean": 0.0, "gap_max": 0.0, "all_converged": True})
    gap = torch.cat(gaps)
    it = torch.cat(iters)
    stats = {"iterations_max": int(it.max()), "iterations_mean": float(it.float().mean()),
             "gap_max": float(gap.max()), "all_converged": bool(torch.cat(conv).all())}
    if config.reference == "solve_lasso" and not stats["all_converged"]:
        warnings.warn(f"{config.name}/{split}: some reference codes missed the gap target "
                      f"{config.tol:g} (largest relative gap {stats['gap_max']:.3g})",
                      RuntimeWarning, stacklevel=3)
    return torch.cat(ys), gap, stats


# ---------------------------------------------------------------------------- cache
# One file layout for every cached data set: _MAGIC, the hex SHA-256 of the body, "\n", then
# the body, a torch.save'd dict holding the configuration key and the payload.

def write_blob(path, key, payload):
    """Write ``payload`` (a dict of tensors, strings and numbers) under the configuration
    ``key`` (a string) to ``path``: atomically, behind a header with the SHA-256 of the body."""
    buf = io.BytesIO()
    torch.save({"key": key, **payload}, buf)
    body = buf.getvalue()
    atomic_write_bytes(_MAGIC + hashlib.sha256(body).hexdigest().encode() + b"\n" + body, path)


def read_blob(path, key, decode):
    """``decode(payload)`` of the file :func:`write_blob` wrote to ``path`` under ``key``, or
    None when there is no file. A file that is unreadable, damaged (header, checksum), of
    another key or that ``decode`` rejects (raises) is reported with a RuntimeWarning and
    None is returned: the caller regenerates it, never uses it."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        warnings.warn(f"dataset cache {path} unreadable ({e}); regenerating", RuntimeWarning, stacklevel=3)
        return None
    try:
        if not raw.startswith(_MAGIC):
            raise ValueError("missing header")
        nl = raw.index(b"\n", len(_MAGIC))
        digest, body = raw[len(_MAGIC):nl].decode(), raw[nl + 1:]
        if hashlib.sha256(body).hexdigest() != digest:
            raise ValueError("checksum mismatch (truncated or corrupted)")
        p = torch.load(io.BytesIO(body), weights_only=True)
        if p["key"] != key:
            raise ValueError("configuration mismatch")
        return decode(p)
    except Exception as e:  # noqa: BLE001 - any damage means: regenerate
        warnings.warn(f"dataset cache {path} is invalid ({e}); regenerating", RuntimeWarning, stacklevel=3)
        return None


def _payload(data):
    splits = {name: {k: getattr(data.split(name), k) for k in ("x", "y", "gap", "y_true")}
              for name in _SPLITS}
    return {"config": json.dumps(asdict(data.config), sort_keys=True, default=list), "D": data.D,
            "splits": splits, "info": json.dumps(data.info, sort_keys=True)}


def _from_payload(config, p):
    splits = {name: Split(**p["splits"][name]) for name in _SPLITS}
    return SparseCodingData(config=config, D=p["D"], info=json.loads(p["info"]), **splits)
