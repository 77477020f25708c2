import pytest
import torch

from stylenet import StylenetError
from stylenet.losses import (
    CAFFE_FEATURE_SCALE,
    SATURATION_BOUND,
    PerceptualLoss,
    feature_reconstruction_loss,
    gram_matrix,
    lua_to_ours,
    pixel_loss,
    saturation_loss,
    style_reconstruction_loss,
    total_variation_loss,
)


def test_gram_matrix_hand_computed() -> None:
    # channel 0 = [1, 2], channel 1 = [3, 4] on a 1x2 map: psi psi^T = [[5, 11], [11, 25]], C*H*W = 4
    features = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # (1, 2, 1, 2)
    expected = torch.tensor([[[5.0, 11.0], [11.0, 25.0]]]) / 4
    torch.testing.assert_close(gram_matrix(features), expected)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_gram_matrix_value_and_gradient_match_einsum(memory_format: torch.memory_format) -> None:
    """The hand-written backward, (dG + dG^T) psi / n, against autograd through an einsum."""
    base = torch.randn(2, 5, 3, 4)
    weights = torch.randn(2, 5, 5)  # a non-symmetric upstream gradient
    features = base.clone().to(memory_format=memory_format).requires_grad_()
    (gram_matrix(features) * weights).sum().backward()
    independent = base.clone().requires_grad_()
    expected = torch.einsum("bchw,bdhw->bcd", independent, independent) / (5 * 3 * 4)
    (expected * weights).sum().backward()
    torch.testing.assert_close(gram_matrix(base.to(memory_format=memory_format)), expected.detach())
    torch.testing.assert_close(features.grad, independent.grad)


def test_gram_matrix_is_fp32_under_bf16_autocast() -> None:
    features = torch.randn(2, 8, 16, 16) * 100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        gram = gram_matrix(features.bfloat16())
    assert gram.dtype == torch.float32
    reference = torch.einsum("bchw,bdhw->bcd", features.bfloat16().float(), features.bfloat16().float()) / (8 * 256)
    torch.testing.assert_close(gram, reference, rtol=1e-5, atol=1e-3)


def test_feature_reconstruction_loss_is_squared_distance_over_chw() -> None:
    a, b = torch.randn(3, 4, 5, 6), torch.randn(3, 4, 5, 6)
    per_image = [((a[i] - b[i]) ** 2).sum() / (4 * 5 * 6) for i in range(3)]
    torch.testing.assert_close(feature_reconstruction_loss(a, b), torch.stack(per_image).mean())


def test_style_loss_is_mean_squared_gram_difference_averaged_over_batch() -> None:
    gram = torch.tensor([[[1.0, 2.0], [2.0, 3.0]], [[0.0, 0.0], [0.0, 0.0]]])
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    # image 0: (0 + 4 + 4 + 4) / 4 entries = 3; image 1: (1 + 0 + 0 + 1) / 4 = 0.5
    torch.testing.assert_close(style_reconstruction_loss(gram, target), torch.tensor(1.75))


def test_total_variation_hand_computed() -> None:
    image = torch.tensor([[[[0.0, 1.0], [2.0, 4.0]]]])
    # vertical (2-0)^2 + (4-1)^2 = 13, horizontal (1-0)^2 + (4-2)^2 = 5, over 4 values
    torch.testing.assert_close(total_variation_loss(image), torch.tensor(18.0 / 4))
    assert total_variation_loss(torch.full((1, 3, 8, 8), 0.3)) == 0


def test_pixel_loss() -> None:
    torch.testing.assert_close(pixel_loss(torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)), torch.tensor(1.0))


def test_saturation_loss_is_the_squared_excess_over_the_bound() -> None:
    logits = torch.tensor([0.0, -2.5, 2.5, 3.5, -4.5, 1.0])
    # excess over 2.5: 0, 0, 0, 1, 2, 0 -> squares 0, 0, 0, 1, 4, 0 over 6 values
    torch.testing.assert_close(saturation_loss(logits), torch.tensor(5.0 / 6))
    torch.testing.assert_close(saturation_loss(logits, bound=4.0), torch.tensor(0.25 / 6))
    # the bound keeps outputs off the 8-bit extremes: 0.5 * (tanh(2.5) + 1) is more than a grey level from 0
    assert 0.5 * (torch.tanh(torch.tensor(-SATURATION_BOUND)) + 1) * 255 > 1


def test_perceptual_loss_total_is_the_weighted_sum_of_independent_terms() -> None:
    loss = PerceptualLoss(weights="random", content_weight=2.0, style_weight=30.0, tv_weight=5.0,
                          style_layers=["relu1_2", "relu2_2"], style_layer_weights=[1.0, 0.5])
    style = torch.rand(3, 40, 56)  # a different size than the output: Grams are C x C
    loss.set_style([style])
    output, content = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    terms = loss(output, content)
    vgg = loss.vgg
    out_f, con_f = vgg(output, ["relu1_2", "relu2_2"]), vgg(content, ["relu2_2"])
    sty_f = vgg(style.unsqueeze(0), ["relu1_2", "relu2_2"])
    content_term = ((out_f["relu2_2"] - con_f["relu2_2"]) ** 2).mean()
    style_terms = {name: ((gram_matrix(out_f[name]) - gram_matrix(sty_f[name])) ** 2).mean()
                   for name in ("relu1_2", "relu2_2")}
    tv = total_variation_loss(output)
    torch.testing.assert_close(terms["content"], content_term)
    torch.testing.assert_close(terms["style/relu1_2"], style_terms["relu1_2"])
    torch.testing.assert_close(terms["style"], style_terms["relu1_2"] + 0.5 * style_terms["relu2_2"])
    torch.testing.assert_close(terms["total"], 2 * content_term + 30 * terms["style"] + 5 * tv)
    assert "pixel" not in terms


def test_style_blend_mixes_grams_by_weight() -> None:
    loss = PerceptualLoss(weights="random", style_layers=["relu1_2"], content_weight=0, tv_weight=0)
    a, b = torch.rand(3, 16, 16), torch.rand(3, 24, 24)
    loss.set_style([a, b], blend=[3.0, 1.0])
    grams = [gram_matrix(loss.vgg(x.unsqueeze(0), ["relu1_2"])["relu1_2"]) for x in (a, b)]
    torch.testing.assert_close(loss.target_gram("relu1_2"), 0.75 * grams[0] + 0.25 * grams[1])
    loss.set_style([a, b], blend=[1.5e308, 0.5e308])  # their sum overflows: the targets were zeros
    torch.testing.assert_close(loss.target_gram("relu1_2"), 0.75 * grams[0] + 0.25 * grams[1])


def test_settings_are_validated() -> None:
    with pytest.raises(StylenetError, match="loss.style_weight must be a number >= 0"):
        PerceptualLoss(weights="random", style_weight=-1)
    with pytest.raises(StylenetError, match="loss.style_layers.relu1_2 must be a number >= 0"):
        PerceptualLoss(weights="random", style_layers={"relu1_2": -0.1})
    with pytest.raises(StylenetError, match="loss.style_layer_weights has 1 values for 2 layers"):
        PerceptualLoss(weights="random", style_layers=["relu1_2", "relu2_2"], style_layer_weights=[1.0])
    with pytest.raises(StylenetError, match="unknown VGG layer"):
        PerceptualLoss(weights="random", content_layers=["relu2_9"])
    for given in ("abc", 3):  # the letters of a string were three weights; a number, "'int' is not iterable"
        with pytest.raises(StylenetError, match=f"^loss.style_layer_weights must be a list of numbers, one per layer, "
                                                f"or gatys, got {given!r}$"):
            PerceptualLoss(weights="random", style_layers=["relu1_2", "relu2_2", "relu3_3"], style_layer_weights=given)
    with pytest.raises(StylenetError, match="^loss.style_layers names relu2_2 more than once: give each layer once$"):
        PerceptualLoss(weights="random", style_layers=["relu1_2", "relu2_2", "relu2_2"], style_layer_weights=[1, 2, 3])
    with pytest.raises(StylenetError, match="loss.style_layers is empty but loss.style_weight is 100"):
        PerceptualLoss(weights="random", style_layers=[], style_weight=100)
    assert PerceptualLoss(weights="random", style_layers="relu1_2").style_layers == {"relu1_2": 1.0}  # not 7 letters
    # a {layer: weight} mapping kept its own weights and dropped these without a word
    for given in ([5, 7], "gatys"):
        with pytest.raises(StylenetError, match=r"^loss.style_layers gives each layer its weight \({layer: "
                                                r"weight}\): set loss.style_layer_weights to null, .*got "):
            PerceptualLoss(weights="random", style_layers={"relu1_2": 1.0, "relu4_3": 1.0}, style_layer_weights=given)
    with pytest.raises(StylenetError, match=r"^every term's weight is 0 \(loss.content_weight, .*nothing to optimise$"):
        PerceptualLoss(weights="random", content_weight=0, style_weight=0, tv_weight=0)  # training's traceback
    # gatys' (N_l / 64)^2 on normalised terms weighed relu5_1 64 times relu1_1, Gatys' equal weights intended
    with pytest.raises(StylenetError, match=r"^loss.style_layer_weights=gatys weighs raw layer terms .* "
                                            r"loss.normalize=true each term is a relative error already"):
        PerceptualLoss(weights="random", style_layers=["relu1_1", "relu2_1"], style_layer_weights="gatys",
                       normalize=True)
    loss = PerceptualLoss(weights="random")
    with pytest.raises(StylenetError, match="set_style"):
        loss(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8))


def test_normalised_terms_with_real_weights_are_said(caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """experiment=demo loss.weights=imagenet trained the offline network's relative errors on real features,
    without a word (configs/loss/perceptual.yaml: normalize is the calibrated network's only)."""
    monkeypatch.setattr("stylenet.losses.VGGFeatures", lambda *args, **kwargs: None)  # no download here
    with caplog.at_level("WARNING", logger="stylenet.losses"):
        PerceptualLoss(weights="random", normalize=True)
        assert not caplog.records
        PerceptualLoss(weights="imagenet", normalize=True)
    assert "loss.normalize=true is the offline network's (loss=offline): with loss.weights=imagenet" in caplog.text


def test_pixel_only_objective_needs_no_vgg() -> None:
    loss = PerceptualLoss(weights="random", content_weight=0, style_weight=0, tv_weight=0, pixel_weight=1)
    assert loss.vgg is None
    terms = loss(torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.5))
    torch.testing.assert_close(terms["total"], torch.tensor(0.25))


def pytorch_examples_terms(state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                           style: torch.Tensor) -> dict[str, torch.Tensor]:
    """pytorch/examples fast_neural_style's objective, written out independently: torchvision's VGG-16
    sliced at relu1_2 / relu2_2 / relu3_3 / relu4_3, 0-255 images / 255 then ImageNet-normalised,
    content 1e5 * MSE(relu2_2), style 1e10 * MSE of Grams / (C H W) per layer."""
    from torchvision.models import vgg16

    features = vgg16(weights=None).features[:23]
    features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()
                              if int(k.split(".")[1]) < 23})
    cuts = {"relu1_2": 4, "relu2_2": 9, "relu3_3": 16, "relu4_3": 23}

    def forward(images_255: torch.Tensor) -> dict[str, torch.Tensor]:
        mean = torch.tensor([0.485, 0.456, 0.406]).view(-1, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(-1, 1, 1)
        h, out, start = (images_255 / 255.0 - mean) / std, {}, 0
        for name, end in cuts.items():
            h = features[start:end](h)
            out[name], start = h, end
        return out

    def gram(f: torch.Tensor) -> torch.Tensor:
        b, ch, height, width = f.size()
        f = f.view(b, ch, width * height)
        return f.bmm(f.transpose(1, 2)) / (ch * height * width)

    with torch.no_grad():
        fy, fx, fs = forward(y * 255), forward(x * 255), forward(style * 255)
        terms = {"content": 1e5 * torch.nn.functional.mse_loss(fy["relu2_2"], fx["relu2_2"])}
        for name in cuts:
            target = gram(fs[name]).expand(len(y), -1, -1)
            terms[f"style/{name}"] = 1e10 * torch.nn.functional.mse_loss(gram(fy[name]), target)
    return terms


def test_default_objective_is_pytorch_examples_up_to_one_constant(tmp_path) -> None:
    """With real VGG weights (a .pth state dict here), every default term and style layer equals
    pytorch/examples' term divided by the same constant (1e5)."""
    from torchvision.models import vgg16

    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in vgg16(weights=None).features.state_dict().items()}
    torch.save(state, tmp_path / "vgg16.pth")
    loss = PerceptualLoss(weights=str(tmp_path / "vgg16.pth"), tv_weight=0)  # the defaults otherwise
    for _ in range(2):  # random images, twice
        style, x, y = torch.rand(1, 3, 40, 48), torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
        loss.set_style([style[0]])
        ours = loss(y, x)
        theirs = pytorch_examples_terms(state, x, y, style)
        weights = {"content": loss.term_weights["content"]}
        weights |= {f"style/{n}": loss.term_weights["style"] * w for n, w in loss.style_layers.items()}
        ratios = [float(theirs[term] / (weights[term] * ours[term])) for term in theirs]
        assert ratios == pytest.approx([1e5] * 5, rel=1e-4), ratios


def test_gatys_vgg19_weighs_its_layers_as_gatys_eq_4() -> None:
    """Gatys et al. 2016, eq. 4-5: equal weights of E_l = sum((G - A)^2) / (4 N_l^2 M_l^2), G and A the raw
    Grams. With our layer terms (4 / N_l^2 of E_l) and the config's layer weights, each weighted layer is one
    constant times E_l (they weighed relu5_1 64 times too little against relu1_1)."""
    from stylenet.cli.train import config_dir
    from stylenet.report import load_loss_config

    loss = PerceptualLoss(**{**load_loss_config("gatys_vgg19", config_dir()), "weights": "random"})
    generator = torch.Generator().manual_seed(0)
    style, image = torch.rand(3, 48, 48, generator=generator), torch.rand(1, 3, 48, 48, generator=generator)
    loss.set_style([style])
    terms = loss(image, image)
    ratios = []
    for layer, weight in loss.style_layers.items():
        ours = loss.vgg(image, [layer])[layer][0].flatten(1).double()  # (N, M)
        target = loss.vgg(style[None], [layer])[layer][0].flatten(1).double()
        channels, positions = ours.shape
        gatys = ((ours @ ours.T - target @ target.T) ** 2).sum() / (4 * channels**2 * positions**2)
        ratios.append(weight * float(terms[f"style/{layer}"]) / float(gatys))
    assert len(ratios) == 5 and max(ratios) / min(ratios) == pytest.approx(1.0, rel=1e-3), ratios
    # the weights follow whichever layers are chosen (a list of five refused any other choice)
    chosen = PerceptualLoss(weights="random", arch="vgg19", style_layers=["relu2_1", "conv4_1", "relu5_1"],
                            style_layer_weights="gatys")
    assert chosen.style_layers == {"relu2_1": 4.0, "conv4_1": 64.0, "relu5_1": 64.0}
    with pytest.raises(StylenetError, match=r"^loss.style_layer_weights=gatys weighs VGG conv/relu layers by their "
                                            r"channels, got layer 'pool2'$"):
        PerceptualLoss(weights="random", style_layers=["relu1_2", "pool2"], style_layer_weights="gatys")


def test_lua_conversion_factors() -> None:
    """Lua -> ours: content unchanged, style x (255 * mean std)^2 (the TV weight: the next test)."""
    scale = 255 * (0.229 + 0.224 + 0.225) / 3
    converted = lua_to_ours(1.0, 5.0, 1e-6)
    assert converted["content_weight"] == 1.0
    assert converted["style_weight"] == pytest.approx(5 * scale**2)


@pytest.mark.parametrize("batch,size", [(1, 12), (2, 16)])
def test_lua_tv_weight_gives_the_gradient_of_johnsons_tv_module(batch: int, size: int) -> None:
    """fast-neural-style's TotalVariation.lua has no loss, only a backward: ported as written on 0-255
    pixels (the mean subtraction leaves differences alone), times -tv_strength, then put in our units
    (the Lua objective / CAFFE_FEATURE_SCALE^2, per [0, 1] pixel: x 255), it equals autograd of our
    tv_weight * total_variation_loss wherever both see the same differences (the Lua module leaves out
    the last row and column)."""
    strength = 1e-5
    x = torch.rand(batch, 3, size, size, dtype=torch.float64)
    z = 255 * x
    grad = torch.zeros_like(z)
    x_diff = z[..., :-1, :-1] - z[..., :-1, 1:]
    y_diff = z[..., :-1, :-1] - z[..., 1:, :-1]
    grad[..., :-1, :-1] += x_diff + y_diff
    grad[..., :-1, 1:] -= x_diff
    grad[..., 1:, :-1] -= y_diff
    expected = strength * grad * 255 / CAFFE_FEATURE_SCALE**2
    weight = lua_to_ours(1, 0, strength, batch_size=batch, image_size=size)["tv_weight"]
    x.requires_grad_(True)
    (weight * total_variation_loss(x)).backward()
    tolerance = 1e-5 * float(expected.abs().max())  # our loss sums in float32
    torch.testing.assert_close(x.grad[..., :-1, :-1], expected[..., :-1, :-1], rtol=0, atol=tolerance)


def test_normalized_terms_are_relative_errors() -> None:
    """normalize=True: each style layer over the mean square of its target Gram, content over the mean
    square of the content features; the unnormalised loss is unchanged by it otherwise."""
    kwargs = {"weights": "random", "style_layers": ["relu1_2", "relu2_2"], "tv_weight": 0}
    plain, relative = PerceptualLoss(**kwargs), PerceptualLoss(**kwargs, normalize=True)
    style, output, content = torch.rand(3, 24, 24), torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    plain.set_style([style])
    relative.set_style([style])
    a, b = plain(output, content), relative(output, content)
    for name in ("relu1_2", "relu2_2"):
        torch.testing.assert_close(b[f"style/{name}"], a[f"style/{name}"] / plain.target_gram(name).pow(2).mean())
    scale = plain.vgg(content, ["relu2_2"])["relu2_2"].pow(2).mean()
    torch.testing.assert_close(b["content"], a["content"] / scale)
