"""Multi-scale Glow: squeeze, K flow steps and a split with a learned prior per level."""
import torch
from torch import nn

from .config import GlowConfig
from .layers import ActNorm, FlowStep, ZeroConv2d, gaussian_log_prob, squeeze2x2, unsqueeze2x2


class _Level(nn.Module):
    """squeeze -> K steps -> split (or, on the top level, keep everything as z_top).

    ``channels`` is the channel count after the squeeze. A split level emits the last
    ``channels - channels // 2`` channels as its latent, with a Gaussian prior whose mean and
    log-std come from a zero-initialised convolution of the kept half; the top level has an
    unconditional learned per-channel prior. Both start as N(0, I).
    """

    def __init__(self, channels, steps, hidden, split):
        super().__init__()
        self.steps = nn.ModuleList(FlowStep(channels, hidden) for _ in range(steps))
        self.keep = channels // 2 if split else 0
        if split:
            self.prior = ZeroConv2d(self.keep, 2 * (channels - self.keep))
        else:
            self.top_mean = nn.Parameter(torch.zeros(1, channels, 1, 1))
            self.top_log_std = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, h, logdet):
        h = squeeze2x2(h)
        total = 0.0 if logdet else None
        for step in self.steps:
            h, ld = step(h, logdet)
            if logdet:
                total = total + ld
        if self.keep:
            return h[:, :self.keep], h[:, self.keep:], total
        return None, h, total

    def prior_params(self, kept, shape):
        """Mean and log-std of this level's latent, each of ``shape`` (B, C, H, W)."""
        if self.keep:
            return self.prior(kept).chunk(2, dim=1)
        return self.top_mean.expand(shape), self.top_log_std.expand(shape)

    def inverse(self, kept, z):
        h = torch.cat([kept, z], dim=1) if self.keep else z
        for step in reversed(self.steps):
            h = step.inverse(h)
        return unsqueeze2x2(h)


class Glow(nn.Module):
    """Multi-scale Glow on images in [0, 1].

    Build with ``Glow(GlowConfig(...))`` or ``Glow(in_channels=..., image_size=..., ...)``.
    The flow maps an image batch ``x`` (B, C, S, S) to ``levels`` latents: level ``i``
    squeezes 2x2, applies ``steps`` flow steps and (except the last level) splits half of the
    channels off as ``zs[i]``; ``zs[-1]`` is z_top. Shapes per sample are
    ``config.latent_shapes()`` (e.g. C=3, S=32, levels=2: (6, 16, 16) and (24, 8, 8)).
    Images are centred by the fixed map ``x - 0.5`` before the first level (logdet 0).
    The dtype and device are those of the parameters (``.double()``, ``.to("cuda")``);
    inputs must match them.

    ActNorm layers initialise from the first batch the flow sees (see :class:`ActNorm`);
    :meth:`mark_initialized` skips that, a loaded state_dict keeps its initialisation.
    """

    VERSION = 2  # of the parameterisation: bump when a change alters what saved weights mean

    def __init__(self, config=None, **kwargs):
        super().__init__()
        if config is None:
            config = GlowConfig(**kwargs)
        elif kwargs:
            raise TypeError(f"Glow: pass either a GlowConfig or keyword sizes, not both "
                            f"(got config and {sorted(kwargs)})")
        if not isinstance(config, GlowConfig):
            raise ValueError(f"config: expected a GlowConfig, got {type(config).__name__}")
        self.config = config
        self.latent_shapes = [tuple(s) for s in config.latent_shapes()]
        levels = []
        c = config.in_channels
        for i in range(config.levels):
            c = 4 * c
            split = i < config.levels - 1
            levels.append(_Level(c, config.steps, config.hidden, split))
            c = c // 2 if split else c
        self.levels = nn.ModuleList(levels)

    # --- bookkeeping -----------------------------------------------------------------
    @property
    def initialized(self):
        """True when every ActNorm layer is initialised (no data-dependent init pending)."""
        return all(bool(m.initialized) for m in self.modules() if isinstance(m, ActNorm))

    def mark_initialized(self):
        """Mark every ActNorm layer initialised with its current parameters; returns self."""
        for m in self.modules():
            if isinstance(m, ActNorm):
                m.mark_initialized()
        return self

    def _param(self):
        return self.levels[0].steps[0].actnorm.bias

    def _check_x(self, x, name="x"):
        p = self._param()
        c, s = self.config.in_channels, self.config.image_size
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name}: expected a tensor of shape (B, {c}, {s}, {s}), "
                             f"got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"{name}: expected shape (B, {c}, {s}, {s}), got {tuple(x.shape)}")
        if x.dtype != p.dtype or x.device != p.device:
            raise ValueError(f"{name}: expected dtype {p.dtype} on {p.device} (the flow's), "
                             f"got {x.dtype} on {x.device}")

    def _check_zs(self, zs):
        p = self._param()
        want = ", ".join(f"(B, {c}, {h}, {w})" for c, h, w in self.latent_shapes)
        if not isinstance(zs, (list, tuple)) or len(zs) != len(self.latent_shapes):
            got = (f"{len(zs)} entries" if isinstance(zs, (list, tuple)) else type(zs).__name__)
            raise ValueError(f"zs: expected a list of {len(self.latent_shapes)} tensors "
                             f"[{want}], got {got}")
        batch = None
        for i, (z, shape) in enumerate(zip(zs, self.latent_shapes)):
            if not isinstance(z, torch.Tensor) or z.dim() != 4 or tuple(z.shape[1:]) != shape:
                got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
                raise ValueError(f"zs[{i}]: expected shape (B, {', '.join(map(str, shape))}), "
                                 f"got {got}")
            if batch is None:
                batch = z.shape[0]
            elif z.shape[0] != batch:
                raise ValueError(f"zs[{i}]: expected batch size {batch} (that of zs[0]), "
                                 f"got {z.shape[0]}")
            if z.dtype != p.dtype or z.device != p.device:
                raise ValueError(f"zs[{i}]: expected dtype {p.dtype} on {p.device} (the flow's), "
                                 f"got {z.dtype} on {z.device}")

    # --- the two directions ----------------------------------------------------------
    def _encode(self, x, logdet, prior):
        self._check_x(x)
        h = x - 0.5
        zs = []
        total = x.new_zeros(x.shape[0]) if logdet else None
        log_p = x.new_zeros(x.shape[0]) if prior else None
        for level in self.levels:
            h, z, ld = level(h, logdet)
            if logdet:
                total = total + ld
            if prior:
                mean, log_std = level.prior_params(h, z.shape)
                log_p = log_p + gaussian_log_prob(z, mean, log_std)
            zs.append(z)
        return zs, total, log_p

    def _decode(self, zs, n, prior=False, temperature=1.0, generator=None):
        # Top-down; entries of zs that are None are drawn from the prior (std x temperature).
        p = self._param()
        h, log_p = None, None
        for level, z, shape in zip(reversed(self.levels), reversed(zs), reversed(self.latent_shapes)):
            if z is None or prior:
                mean, log_std = level.prior_params(h, (n,) + shape)
            if z is None:
                noise = torch.randn((n,) + shape, generator=generator, dtype=p.dtype, device=p.device)
                z = mean + temperature * torch.exp(log_std) * noise
            if prior:
                lp = gaussian_log_prob(z, mean, log_std)
                log_p = lp if log_p is None else log_p + lp
            h = level.inverse(h, z)
        return h + 0.5, log_p

    def forward(self, x):
        """Encode with the log-determinant.

        x: (B, C, S, S) images in [0, 1] of the flow's dtype/device.
        Returns ``(zs, logdet)``: ``zs`` a list of ``levels`` tensors of shapes
        ``(B, *latent_shapes[i])`` (``zs[-1]`` = z_top) and ``logdet`` (B,) the log |det| of
        the Jacobian of ``x -> zs`` (flattened and concatenated).
        """
        zs, logdet, _ = self._encode(x, logdet=True, prior=False)
        return zs, logdet

    def encode(self, x):
        """``x`` (B, C, S, S) -> ``zs`` like :meth:`forward` but without the log-determinant."""
        return self._encode(x, logdet=False, prior=False)[0]

    def inverse(self, zs):
        """Exact inverse of :meth:`forward`: ``zs`` (list of ``(B, *latent_shapes[i])``) ->
        images (B, C, S, S) in the space of ``x`` (not clamped to [0, 1])."""
        self._check_zs(zs)
        return self._decode(list(zs), zs[0].shape[0])[0]

    def decode(self, zs):
        """Alias of :meth:`inverse` (the generator G: latents -> images)."""
        return self.inverse(zs)

    def log_prob(self, x):
        """Exact log-density (nats) of continuous images ``x`` (B, C, S, S) -> (B,):
        sum over levels of the learned priors' log N(zs[i]) plus the log-determinant."""
        _, logdet, log_p = self._encode(x, logdet=True, prior=True)
        return log_p + logdet

    def prior_log_prob(self, zs):
        """Log-density (nats) of the latents under the learned priors -> (B,).

        Computed top-down through the inverse (the split priors condition on the kept halves,
        which are functions of the higher latents), so it is an independent check of
        :meth:`log_prob`: ``log_prob(x) == prior_log_prob(zs) + logdet`` for ``zs, logdet = self(x)``.
        """
        self._check_zs(zs)
        return self._decode(list(zs), zs[0].shape[0], prior=True)[1]

    @torch.no_grad()
    def sample(self, n, temperature=1.0, generator=None):
        """Draw ``n`` images (n, C, S, S) from the flow, latents at ``temperature`` x prior std.

        ``generator``: an optional ``torch.Generator`` on the flow's device."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n: expected an integer >= 1, got {n!r}")
        if not float(temperature) >= 0.0:
            raise ValueError(f"temperature: expected a number >= 0, got {temperature!r}")
        zs = [None] * len(self.levels)
        return self._decode(zs, n, temperature=float(temperature), generator=generator)[0]
