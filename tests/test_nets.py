import pytest
import torch
from torch import nn

from stylenet.nets import TransformerNet
from stylenet.nets.transformer import ScaledTanh


def conv_params(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + c_out


def expected_parameters(c: int = 32, blocks: int = 5) -> int:
    """Parameter count of c9s1-c, d2c, d4c, R4c x blocks, u2c, uc, c9s1-3 with affine norms."""
    convs = (conv_params(3, c, 9) + conv_params(c, 2 * c, 3) + conv_params(2 * c, 4 * c, 3)
             + blocks * 2 * conv_params(4 * c, 4 * c, 3)
             + conv_params(4 * c, 2 * c, 3) + conv_params(2 * c, c, 3) + conv_params(c, 3, 9))
    norms = 2 * (c + 2 * c + 4 * c + blocks * 2 * 4 * c + 2 * c + c)
    return convs + norms


def test_default_network_has_the_papers_size() -> None:
    net = TransformerNet()
    count = sum(p.numel() for p in net.parameters())
    assert count == expected_parameters()
    assert 1.67e6 < count < 1.69e6  # ~1.68 M (NOTES.md)


@pytest.mark.parametrize("height,width", [(8, 8), (32, 48), (64, 36), (100, 124)])
def test_output_size_equals_input_size_and_stays_in_range(height: int, width: int) -> None:
    net = TransformerNet(channels=8, residual_blocks=1)
    x = torch.rand(2, 3, height, width) * 4 - 2  # even out-of-range input gives a valid image
    y = net(x)
    assert y.shape == x.shape
    assert y.min() >= 0 and y.max() <= 1


def test_the_output_is_the_papers_scaled_tanh() -> None:
    """0.5 (tanh(x) + 1): the paper's 255/2 (tanh(x) + 1) in [0, 1] units (Sec. 3.1)."""
    values = ScaledTanh()(torch.tensor([0.0, 1.0, -2.5]))
    expected = torch.tensor([0.5, 0.5 * (0.7615941559557649 + 1), 0.5 * (-0.9866142981514303 + 1)])
    torch.testing.assert_close(values, expected)


def test_the_scaled_tanh_keeps_float32_under_autocast() -> None:
    """A bf16 pre-activation gives the float32 image of its exact value, where bf16's (tanh + 1) would
    round to steps of 1/128, about a grey level (here for tanh values from 0.9 to 0.99)."""
    x = torch.atanh(torch.linspace(0.9, 0.99, 9)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        values = ScaledTanh()(x)
    assert values.dtype == torch.float32
    torch.testing.assert_close(values, 0.5 * (torch.tanh(x.double()) + 1).float(), rtol=0, atol=1e-7)
    rounded = 0.5 * (torch.tanh(x) + 1)  # what bf16 arithmetic gives: a grey level apart, or the same
    assert (rounded.float() - values).abs().max() * 255 > 0.3


def test_architecture_uses_instance_norm_upsampling_and_no_transposed_conv() -> None:
    net = TransformerNet()
    modules = list(net.modules())
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in modules)
    norms = [m for m in modules if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == 3 + 2 * 5 + 2 and all(m.affine and not m.track_running_stats for m in norms)
    assert sum(isinstance(m, nn.Upsample) and m.mode == "nearest" for m in modules) == 2
    assert sum(isinstance(m, nn.ReflectionPad2d) for m in modules) == sum(isinstance(m, nn.Conv2d) for m in modules)


def test_batch_norm_and_widths_come_from_config() -> None:
    net = TransformerNet(channels=16, residual_blocks=3, norm="batch")
    assert any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    half = sum(p.numel() for p in TransformerNet(channels=16).parameters())
    assert half == expected_parameters(16)
    assert net.config == {"channels": 16, "residual_blocks": 3, "norm": "batch"}
    with pytest.raises(ValueError, match="model.norm"):
        TransformerNet(norm="group")


def test_residual_block_passes_its_input_through_when_its_body_is_silenced() -> None:
    """The identity shortcut (He et al. 2016): with the body's last norm scaled to zero the block is the
    identity; a block without the shortcut would output zeros."""
    block = TransformerNet(channels=4, residual_blocks=1).residuals[0]
    with torch.no_grad():
        block.body[-1].weight.zero_()
        block.body[-1].bias.zero_()
    x = torch.randn(1, 16, 8, 8)
    torch.testing.assert_close(block(x), x)
