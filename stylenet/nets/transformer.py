"""The image transformation network of Johnson et al. 2016 (supplementary material, Table 1).

Layout: c9s1-32, d64, d128, R128 x5, u64, u32, c9s1-3, with the two changes everyone adopted
after the paper: Instance Normalization (Ulyanov et al. 2016) instead of BatchNorm, and reflection
padding on every convolution instead of 40 px of input padding. Upsampling is nearest x2 followed
by a 3x3 convolution, never a transposed convolution, which avoids checkerboard artefacts
(Odena et al. 2016, "Deconvolution and Checkerboard Artifacts").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("instance", "batch", "none")
#: What selects the style of a network of several: an index, indices per image, or blend weights.
Style = int | Sequence[float] | torch.Tensor


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a 4-d tensor stored NHWC (``channels_last``) rather than NCHW; a map that is both
    (one channel, or one pixel) counts as NCHW."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


class ConditionalInstanceNorm2d(nn.Module):
    """Conditional instance normalisation (Dumoulin, Shlens & Kudlur, ICLR 2017, Sec. 2): instance
    normalisation whose scale and shift belong to the style, ``gamma_s`` and ``beta_s``, rows of the
    (N, C) tables ``weight`` and ``bias``; every convolution is shared by the N styles.

    The style arrives as blend weights: (N,) for the whole batch or (B, N) per image (one-hot for
    one style). The paper's blends mix the parameters, ``gamma = sum_s w_s gamma_s`` (likewise
    beta), so a one-hot row selects its style's parameters exactly. :class:`TransformerNet` sets
    ``selection`` for the length of its forward pass; ``forward(x, style)`` takes it directly.
    With (N,) weights it is one ``F.instance_norm`` call, as ``nn.InstanceNorm2d(affine=True)``."""

    def __init__(self, num_features: int, styles: int, eps: float = 1e-5) -> None:
        super().__init__()
        if styles < 1:
            raise ValueError(f"model.styles must be >= 1, got {styles}")
        self.num_features, self.styles, self.eps = num_features, styles, eps
        self.weight = nn.Parameter(torch.ones(styles, num_features))
        self.bias = nn.Parameter(torch.zeros(styles, num_features))
        self.selection: torch.Tensor | None = None

    def mixed(self, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma, beta) for blend weights (..., N) -> (..., C) each (see :func:`mix`)."""
        return mix(self.weight, weights), mix(self.bias, weights)

    def forward(self, x: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        weights = self.selection if style is None else style
        if weights is None:
            if self.styles != 1:
                raise ValueError(f"a conditional instance norm of {self.styles} styles needs style weights")
            weights = self.weight.new_ones(1)
        gamma, beta = self.mixed(weights)
        if x.shape[0] > 1 and is_channels_last(x):
            # image by image as batch norm, which reads NHWC maps in place where the reshapes below copy
            # them to NCHW and back (stylenet.fastpath.PerImageInstanceNorm, the single-style layer)
            gamma, beta = gamma.expand(x.shape[0], -1), beta.expand(x.shape[0], -1)  # (B, C) each
            return torch.cat([F.batch_norm(image, None, None, scale, shift, training=True, eps=self.eps)
                              for image, scale, shift in zip(x.split(1), gamma, beta, strict=True)])
        if gamma.dim() == 1:
            return F.instance_norm(x, weight=gamma, bias=beta, use_input_stats=True, eps=self.eps)
        # A style per image: instance norm is batch norm over (1, B*C, H, W), whose affine step then
        # takes the (B*C,) scales and shifts in the same pass (what F.instance_norm does inside).
        batch, channels = x.shape[:2]
        flat = x.reshape(1, batch * channels, *x.shape[2:])  # (1, B*C, H, W)
        out = F.batch_norm(flat, None, None, gamma.reshape(-1), beta.reshape(-1), training=True, eps=self.eps)
        return out.view_as(x)

    def extra_repr(self) -> str:
        return f"{self.num_features}, styles={self.styles}, eps={self.eps}"


def check_counts(minimum: dict[str, int], given: dict[str, object]) -> None:
    """A ValueError naming the first ``model.<setting>`` that is not a whole number >= its ``minimum``:
    ``model.channels=abc`` was Python's "'<' not supported between 'str' and 'int'", naming no setting."""
    for name, value in given.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum[name]:
            raise ValueError(f"model.{name} must be a whole number >= {minimum[name]}, got {value!r}")


def make_norm(kind: str, channels: int, styles: int = 1) -> nn.Module:
    """Instance norm (affine, no running statistics; conditional on the style when ``styles`` > 1),
    batch norm, or none (an identity: what super-resolution networks train best with, see
    :mod:`stylenet.nets.sr`), by name."""
    if styles != 1 and kind != "instance":
        raise ValueError(f"model.styles={styles} needs model.norm=instance, got {kind!r}")
    if kind == "instance" and styles != 1:
        return ConditionalInstanceNorm2d(channels, styles)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True, track_running_stats=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"model.norm must be one of {NORMS}, got {kind!r}")


class ReflectConv(nn.Sequential):
    """KxK convolution with reflection padding, so the output keeps size H/stride x W/stride
    without the dark borders that zero padding leaves in stylised images."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__(
            nn.ReflectionPad2d(kernel_size // 2),
            nn.Conv2d(in_channels, out_channels, kernel_size, stride),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Autocast runs reflection padding in fp32: a bf16 activation would be copied at twice the
        # width only for the convolution to cast it back. Padding is exact in any dtype, so it runs
        # in the input's (1.3x faster inference, and training, in bf16 on a CPU; stylenet-bench).
        with torch.autocast(x.device.type, enabled=False):
            x = self[0](x)
        return self[1](x)


class ConvNormReLU(nn.Sequential):
    """The paper's cKsS-N / dN block: convolution, normalisation, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, norm: str,
                 styles: int = 1) -> None:
        super().__init__(
            ReflectConv(in_channels, out_channels, kernel_size, stride),
            make_norm(norm, out_channels, styles),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """RN: two 3x3 conv+norm layers with an identity shortcut (He et al. 2016, as in the paper's
    supplementary Fig. 1, with padding so input and output sizes match)."""

    def __init__(self, channels: int, norm: str, styles: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            ConvNormReLU(channels, channels, 3, 1, norm, styles),
            ReflectConv(channels, channels, 3),
            make_norm(norm, channels, styles),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class UpsampleConvNormReLU(nn.Sequential):
    """uN: nearest-neighbour x2 upsampling then a 3x3 conv block (replaces the paper's
    fractionally-strided convolution; same output size, no checkerboard)."""

    def __init__(self, in_channels: int, out_channels: int, norm: str, styles: int = 1) -> None:
        super().__init__(
            nn.Upsample(scale_factor=2, mode="nearest"),
            ConvNormReLU(in_channels, out_channels, 3, 1, norm, styles),
        )


class ScaledTanh(nn.Module):
    """Maps the last conv to [0, 1] with 0.5 * (tanh(x) + 1): the paper's scaled tanh, rescaled
    from its [0, 255] to our [0, 1] image range, so every output is a valid image.

    Computed in float32 under autocast too: bf16 keeps 8 significant bits, so ``tanh(x) + 1`` in
    [1, 2) would be rounded to steps of 1/128, about a grey level of the image, before the image
    is written (and bf16's tanh is also the slower one on CPUs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:  # no cast in a float32 graph: an exported one would check the dtype
            x = x.float()
        return 0.5 * (torch.tanh(x) + 1.0)


class TransformerNet(nn.Module):
    """Feed-forward style network: (B, 3, H, W) in [0, 1] -> (B, 3, H, W) in [0, 1].

    H and W must be multiples of 4 (two stride-2 downsamplings, two x2 upsamplings); the
    inference code pads other sizes. ``channels`` is the width of the first layer (32 in the
    paper, 16 for the half-width variant of the released InstanceNorm models); the deeper layers
    use 2x and 4x that width. Constructor arguments are primitives so checkpoints can carry them.

    ``styles`` > 1 makes one network of several styles (Dumoulin et al. 2017, Sec. 2): every
    InstanceNorm becomes a :class:`ConditionalInstanceNorm2d` with one row of scale and shift per
    style, under the same state-dict names, and ``forward`` takes ``style`` (see
    :meth:`style_weights`). ``styles=1`` is exactly the single-style network of before: the same
    modules, keys and ``config``, so its files load unchanged.
    """

    size_multiple = 4

    def __init__(self, channels: int = 32, residual_blocks: int = 5, norm: str = "instance",
                 styles: int = 1) -> None:
        super().__init__()
        check_counts({"channels": 1, "residual_blocks": 0, "styles": 1},
                    {"channels": channels, "residual_blocks": residual_blocks, "styles": styles})
        c1, c2, c3 = channels, 2 * channels, 4 * channels
        self.styles = styles
        self.config = {"channels": channels, "residual_blocks": residual_blocks, "norm": norm}
        if styles != 1:
            self.config["styles"] = styles
        self.encoder = nn.Sequential(
            ConvNormReLU(3, c1, 9, 1, norm, styles),  # c9s1-32
            ConvNormReLU(c1, c2, 3, 2, norm, styles),  # d64
            ConvNormReLU(c2, c3, 3, 2, norm, styles),  # d128
        )
        self.residuals = nn.Sequential(*(ResidualBlock(c3, norm, styles) for _ in range(residual_blocks)))
        self.decoder = nn.Sequential(
            UpsampleConvNormReLU(c3, c2, norm, styles),  # u64
            UpsampleConvNormReLU(c2, c1, norm, styles),  # u32
            ReflectConv(c1, 3, 9),  # c9s1-3, no norm
            ScaledTanh(),
        )

    def style_weights(self, style: Style, batch: int | None = None) -> torch.Tensor:
        """Blend weights for ``style``: an index (one-hot (N,)), indices per image (a long tensor
        (B,) -> one-hot (B, N)), or weights, (N,) or (B, N), as given (a blend: Dumoulin et al.
        2017, Sec. 2 mix the styles' parameters with them)."""
        if isinstance(style, int) or (isinstance(style, torch.Tensor) and not style.is_floating_point()):
            index = torch.as_tensor(style)
            if ((index < 0) | (index >= self.styles)).any():
                raise ValueError(f"style index {index.tolist()} is out of range for {self.styles} styles")
            return F.one_hot(index, self.styles).float()
        weights = torch.as_tensor(style, dtype=torch.float32)
        if weights.dim() not in (1, 2) or weights.shape[-1] != self.styles or (
                weights.dim() == 2 and batch is not None and weights.shape[0] != batch):
            raise ValueError(f"style weights of shape {tuple(weights.shape)} do not fit {self.styles} styles "
                             f"(expected ({self.styles},) or (batch, {self.styles}))")
        return weights

    def conditional_norms(self) -> dict[str, ConditionalInstanceNorm2d]:
        """Every conditional norm layer, by module name (none when ``styles`` is 1)."""
        return {name: m for name, m in self.named_modules() if isinstance(m, ConditionalInstanceNorm2d)}

    def forward(self, x: torch.Tensor, style: Style | None = None) -> torch.Tensor:
        if style is None and self.styles != 1:
            raise ValueError(f"a network of {self.styles} styles needs style= (an index or {self.styles} weights)")
        if style is None or self.styles == 1:
            if style is not None:
                self.style_weights(style)  # refuses anything but style 0 of the one style
            return self.decoder(self.residuals(self.encoder(x)))
        norms = self.conditional_norms().values()
        weights = self.style_weights(style, x.shape[0]).to(x.device)
        for norm in norms:  # for this pass only: the Sequentials stay plain modules (and exportable)
            norm.selection = weights
        try:
            return self.decoder(self.residuals(self.encoder(x)))
        finally:
            for norm in norms:
                norm.selection = None

    def mixed_state(self, weights: torch.Tensor) -> dict[str, torch.Tensor]:
        """The state dict with every norm layer's scale and shift mixed by blend ``weights``: (N,)
        gives one style's (C,) rows, (K, N) gives K styles' (K, C) tables."""
        state = self.state_dict()
        for name, norm in self.named_modules():
            if isinstance(norm, (ConditionalInstanceNorm2d, nn.InstanceNorm2d)):
                for key in ("weight", "bias"):
                    table = getattr(norm, key).detach()
                    state[f"{name}.{key}"] = mix(table if table.dim() == 2 else table.unsqueeze(0), weights)
        return state

    def single_style(self, style: Style) -> TransformerNet:
        """A plain single-style network (``styles=1``, nn.InstanceNorm2d) computing what this one
        computes for ``style`` (an index or (N,) blend weights): the shared weights and the mixed
        norm parameters. Inference runs it: one style per image costs what a single-style network
        of the same width costs, and tiles, global statistics and the layer-by-layer path apply."""
        weights = self.style_weights(style)
        if weights.dim() != 1:
            raise ValueError("single_style takes one style: an index or (N,) weights, not per-image styles")
        return self._rebuilt(1, weights).train(self.training)

    def with_styles(self, rows: Sequence[Style]) -> TransformerNet:
        """A network of ``len(rows)`` styles with this one's shared weights, whose style k has the
        norm parameters of ``rows[k]`` (an index or blend weights of this network's styles): how a
        new style starts from the mean of the others before its own norm parameters are trained
        (Dumoulin et al. 2017, Sec. 2: a style is its scale and shift parameters)."""
        return self._rebuilt(len(rows), torch.stack([self.style_weights(row) for row in rows]))

    def _rebuilt(self, styles: int, weights: torch.Tensor) -> TransformerNet:
        device = next(self.parameters()).device
        net = TransformerNet(**{**self.config, "styles": styles})
        net.load_state_dict(self.mixed_state(weights.to(device)))
        return net.to(device)


def mix(table: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Rows of an (N, C) table blended by weights (..., N) -> (..., C), in the table's precision: a
    product and a sum (exact for one-hot weights), never autocast's low-precision matmul."""
    return (weights.to(table.dtype).unsqueeze(-1) * table).sum(-2)
