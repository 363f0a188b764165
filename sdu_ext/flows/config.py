"""Glow configuration: one validated dataclass."""
from dataclasses import dataclass

from ..checks import check_int


@dataclass
class GlowConfig:
    """Sizes of a multi-scale Glow. Invalid values raise ValueError naming the field.

    Fields:
        in_channels: channels of the images (1 grayscale, 3 RGB; >= 1).
        image_size: height and width of the (square) images; divisible by ``2**levels``.
        levels: number of scales L (>= 1); each squeezes 2x2 and all but the last split
            half of the channels off as that level's latent.
        steps: flow steps K per level (>= 1): ActNorm, invertible 1x1 conv, affine coupling.
        hidden: channels of the coupling networks' hidden layers (>= 1).

    The default is a CPU-small flow; the research size (SPEC section 5) is
    ``GlowConfig(in_channels=3, image_size=64, levels=4, steps=18, hidden=512)``.
    """

    in_channels: int = 3
    image_size: int = 32
    levels: int = 2
    steps: int = 4
    hidden: int = 64

    def __post_init__(self):
        for name in ("in_channels", "image_size", "levels", "steps", "hidden"):
            check_int(getattr(self, name), name)
        if self.image_size % (2 ** self.levels):
            raise ValueError(
                f"image_size: expected a multiple of 2**levels = {2 ** self.levels} "
                f"(levels={self.levels}), got {self.image_size!r}")

    def latent_shapes(self):
        """Per-sample shapes ``(C, H, W)`` of the latents, one per level (the last is z_top)."""
        shapes = []
        c, s = self.in_channels, self.image_size
        for level in range(self.levels):
            c, s = 4 * c, s // 2
            if level < self.levels - 1:
                shapes.append((c - c // 2, s, s))
                c = c // 2
            else:
                shapes.append((c, s, s))
        return shapes
