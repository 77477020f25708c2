"""Several styles in one network (issue 16; Dumoulin, Shlens & Kudlur, ICLR 2017): conditional instance
normalisation, blends, per-style gradients, model files, inference paths, exports, the CLI, training."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from PIL import Image
from torch import nn

import stylenet
from stylenet import StylenetError
from stylenet.checkpoints import checkpoint_problem
from stylenet.cli.stylize import main as stylize_main
from stylenet.data import collate_skipping_bad
from stylenet.inference import InferenceModel
from stylenet.losses import PerceptualLoss
from stylenet.modelfile import read_model, save_model
from stylenet.nets import TransformerNet
from stylenet.nets.transformer import ConditionalInstanceNorm2d
from stylenet.styles import choice_weights, parse_blend
from stylenet.tasks import AddStyleTask, StyleTransferTask
from tests.conftest import make_photo
from tests.helpers import assert_precision_applies_to_the_next_frame, output_and_gradients

NAMES = ["a", "b", "c"]
TINY = {"channels": 8, "residual_blocks": 1}
RANDOM_LOSS = {"weights": "random", "style_weight": 1000.0, "tv_weight": 1.0}

pytestmark = pytest.mark.usefixtures("one_thread")


def multi_net(styles: int = 3, seed: int = 0) -> TransformerNet:
    """A tiny network whose styles differ: random scale and shift rows."""
    torch.manual_seed(seed)
    net = TransformerNet(**TINY, styles=styles)
    for norm in net.conditional_norms().values():
        nn.init.normal_(norm.weight, 1.0, 0.5)
        nn.init.normal_(norm.bias, 0.0, 0.5)
    return net.eval()


def multi_file(path: Path, net: TransformerNet | None = None) -> Path:
    net = net or multi_net()
    styles = [{"name": name, "sha256": f"{k:064d}", "image": f"{name}.jpg"} for k, name in enumerate(NAMES)]
    return save_model(path, net, {"task": "style", "style_name": "multi", "styles": styles})


# ------------------------------------------------------------------------------------ the network


def test_conditional_norm_of_a_channels_last_batch_trains_like_the_nchw_one() -> None:
    """Image by image on NHWC maps (no copy to NCHW): for a blend shared by the batch and for a style
    per image, the output and every gradient equal the NCHW path's, and the layout is kept."""
    torch.manual_seed(0)
    norm = ConditionalInstanceNorm2d(6, styles=3)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(4, 6, 9, 7) * torch.linspace(0.5, 3.0, 4).view(4, 1, 1, 1) + 1
    upstream = torch.randn(4, 6, 9, 7)
    for weights in (torch.tensor([0.2, 0.5, 0.3]), torch.eye(3)[[0, 2, 1, 2]]):
        nchw, nhwc = (output_and_gradients(lambda image, w=weights: norm(image, w), x, upstream, layout,
                                           [norm.weight, norm.bias])
                      for layout in (torch.contiguous_format, torch.channels_last))
        for mine, reference in zip(nhwc, nchw, strict=True):
            torch.testing.assert_close(mine, reference, atol=1e-5, rtol=1e-5)


def test_conditional_norm_with_one_style_is_instance_norm_exactly() -> None:
    x = torch.randn(2, 8, 12, 10)
    plain = nn.InstanceNorm2d(8, affine=True)
    nn.init.normal_(plain.weight)
    nn.init.normal_(plain.bias)
    conditional = ConditionalInstanceNorm2d(8, styles=1)
    conditional.load_state_dict({"weight": plain.weight[None].detach(), "bias": plain.bias[None].detach()})
    assert torch.equal(conditional(x), plain(x))
    # styles=1 networks keep plain InstanceNorm modules, keys and config: old files load unchanged
    single = TransformerNet(**TINY)
    assert not single.conditional_norms() and "styles" not in single.config
    multi = multi_net().state_dict()
    assert list(single.state_dict()) == list(multi)  # the same names; norm tensors gain a style axis
    norms = [k for k, v in multi.items() if v.dim() == 2]
    assert len(norms) == 2 * 7 and all(multi[k].shape == (3, *single.state_dict()[k].shape) for k in norms)


def test_a_blend_with_weight_one_on_a_style_is_that_style() -> None:
    net, x = multi_net(), torch.rand(2, 3, 32, 28)
    with torch.no_grad():
        by_index = net(x, 1)
        assert torch.equal(net(x, torch.tensor([0.0, 1.0, 0.0])), by_index)
        assert torch.equal(net.single_style([0.0, 1.0, 0.0])(x), by_index)
        per_image = net(x, torch.tensor([1, 2]))  # per-sample styles: each image as if alone
        torch.testing.assert_close(per_image[1:], net(x[1:], 2), atol=1e-5, rtol=0)
        assert (by_index - net(x, 0)).abs().max() > 1e-2  # the styles do differ
        half = net(x, torch.tensor([0.5, 0.5, 0.0]))
        torch.testing.assert_close(half, net.single_style([0.5, 0.5, 0.0])(x))
    assert choice_weights(NAMES, {"b": 1.0}, "m") == ("b", [0.0, 1.0, 0.0])
    assert choice_weights(NAMES, {"a": 3.0, "c": 1.0}, "m")[1] == [0.75, 0.0, 0.25]
    assert parse_blend("a=0.7, b=0.3") == {"a": 0.7, "b": 0.3}
    with pytest.raises(StylenetError, match=r"has no style 'zz' \(available: a, b, c\)"):
        choice_weights(NAMES, "zz", "model file 'm'")
    assert choice_weights(NAMES, np.int64(1), "m") == ("b", [0.0, 1.0, 0.0])  # a numpy index is an index
    for weight in ("nan", "inf", "1e309"):  # NaN passed every comparison and painted the image black
        with pytest.raises(StylenetError, match="finite weights"):
            parse_blend(f"a={weight},b=1")
        with pytest.raises(StylenetError, match="weights must be finite"):
            choice_weights(NAMES, {"a": float(weight), "b": 1.0}, "m")
    with pytest.raises(StylenetError, match="sum to a finite number"):  # the sum overflowed: every share 0
        choice_weights(NAMES, {"a": 1e308, "b": 1e308}, "m")
    with pytest.raises(StylenetError, match="sum is beyond a float's range"):  # --blend: a usage error (exit 2)
        parse_blend("a=1e308,b=1e308")
    for weight in ("x", None, "0.5", True):  # "0.5" as strength="0.5" is: a number is asked for
        with pytest.raises(StylenetError, match=r"^blend .* for m: weights must be numbers$"):
            choice_weights(NAMES, {"a": weight}, "m")
    with pytest.raises(ValueError, match="needs style="):
        net(x)


def test_a_blend_mixes_every_norm_layers_scale_and_shift_linearly() -> None:
    """Blend weights w give gamma = sum_k w_k gamma_k (and beta alike), Dumoulin et al. 2017's
    interpolation, checked row by row against the tables."""
    net = multi_net()
    weights = torch.tensor([0.2, 0.5, 0.3])
    state = net.mixed_state(weights)
    for name, norm in net.conditional_norms().items():
        for key, table in (("weight", norm.weight), ("bias", norm.bias)):
            by_hand = 0.2 * table[0] + 0.5 * table[1] + 0.3 * table[2]
            torch.testing.assert_close(state[f"{name}.{key}"], by_hand.detach(), atol=1e-6, rtol=0)


def test_each_sample_is_scored_against_its_own_style_target() -> None:
    """A batch of two with styles [1, 0]: each style layer's term is the mean over samples of
    mean((G(output_i) - G(style_{k_i}))^2), Grams by hand (eq. 3), and with ``normalize`` each
    over its own target's mean square."""
    torch.manual_seed(0)
    styles, output = [torch.rand(3, 40, 36), torch.rand(3, 32, 44)], torch.rand(2, 3, 32, 32)

    def gram(features: torch.Tensor) -> torch.Tensor:
        channels = features.shape[1]
        flat = features.reshape(features.shape[0], channels, -1).double()  # (B, C, H*W)
        return torch.einsum("bcn,bdn->bcd", flat, flat) / flat[0].numel()

    for normalize in (False, True):
        loss = PerceptualLoss(weights="random", style_layers=["relu1_2"], content_weight=0.0, tv_weight=0.0,
                              normalize=normalize)
        loss.set_style(styles, separate=True)
        targets = [gram(loss.vgg(s[None], ["relu1_2"])["relu1_2"])[0] for s in styles]
        grams = gram(loss.vgg(output, ["relu1_2"])["relu1_2"])
        picked = [targets[1], targets[0]]
        by_hand = sum(((grams[i] - t).square().mean() / (t.square().mean() if normalize else 1.0))
                      for i, t in enumerate(picked)) / 2
        terms = loss(output, output, style=torch.tensor([1, 0]))
        assert float(terms["style/relu1_2"]) == pytest.approx(float(by_hand), rel=1e-4)


def test_gradients_reach_only_the_sampled_style_and_the_shared_weights() -> None:
    net = multi_net().train()
    net(torch.rand(2, 3, 32, 32), torch.tensor([2, 2])).square().mean().backward()
    for name, param in net.named_parameters():
        if param.dim() == 2 and param.shape[0] == 3:  # a norm table: only row 2 has a gradient
            assert param.grad[:2].abs().max() == 0 and param.grad[2].abs().max() > 0, name
        else:
            assert param.grad.abs().max() > 0, name


def test_add_style_trains_only_the_new_styles_norm_parameters(tmp_path: Path, style_image: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    base = multi_file(tmp_path / "base.safetensors")
    task = AddStyleTask(base=str(base), loss=RANDOM_LOSS, style={"image": str(style_image), "size": 32},
                        image_size=32)
    assert task.net.styles == 4 and task.trained_styles == [3] and task.hparams["model"]["styles"] == 4
    assert [s["name"] for s in task.hparams["styles"]] == [*NAMES, "style"]
    task.step_terms({"images": torch.rand(2, 3, 32, 32), "batch_number": 0})["total"].backward()
    for name, param in task.net.named_parameters():
        if param.dim() == 2:
            assert param.grad[:3].abs().max() == 0 and param.grad[3].abs().max() > 0, name
        else:
            assert param.grad is None and not param.requires_grad, name
    for taken in ("b", "B"):  # photo_b.png and photo_B.png: one file on macOS and Windows
        with pytest.raises(StylenetError, match=r"^task.style_name \(a new name\): .* not distinct"):
            AddStyleTask(base=str(base), loss=RANDOM_LOSS, style={"image": str(style_image)}, style_name=taken)
    stored = read_model(base)  # a file written before names equal but for case were refused still grows
    older = [{**record, "name": name} for record, name in zip(stored.metadata["styles"], ["Ink", "ink", "c"],
                                                              strict=True)]
    save_model(tmp_path / "older.safetensors", stored.net, {**stored.metadata, "styles": older})
    grown_older = AddStyleTask(base=str(tmp_path / "older.safetensors"), loss=RANDOM_LOSS,
                               style={"image": str(style_image), "size": 32}, style_name="z")
    assert [record["name"] for record in grown_older.hparams["styles"]] == ["Ink", "ink", "c", "z"]
    with pytest.raises(StylenetError, match=r"^task.style_name: style name 'a/b' must be letters"):
        AddStyleTask(base=str(base), loss=RANDOM_LOSS, style={"image": str(style_image)}, style_name="a/b")
    monkeypatch.setenv("HOME", str(tmp_path))  # ~ in task.base is the home folder, as in style.image
    home = AddStyleTask(base="~/base.safetensors", loss=RANDOM_LOSS, style={"image": str(style_image)})
    assert home.hparams["base"] == str(base)
    monkeypatch.chdir(tmp_path)  # relative paths recorded absolute, as a style's picture is (its file is read
    relative = AddStyleTask(base="base.safetensors", loss=RANDOM_LOSS, style={"image": style_image.name})
    assert (relative.hparams["base"], relative.hparams["style_image"]) == (str(base), str(style_image))  # elsewhere)
    named = AddStyleTask(base=str(base), loss=RANDOM_LOSS, style={"image": str(style_image), "name": "wave"})
    assert named.hparams["styles"][-1]["name"] == "wave"  # style.name, as for any style run
    for setting, given in (("style_name", ""), ("style", {"image": str(style_image), "name": ""})):
        with pytest.raises(StylenetError, match=r"^(task\.)?style.name: style name '' must be"):  # not the stem
            AddStyleTask(base=str(base), loss=RANDOM_LOSS, **{"style": {"image": str(style_image)}, setting: given})
    zero = AddStyleTask(base=str(base), loss=RANDOM_LOSS, style={"image": str(style_image)}, style_name=0)
    assert zero.hparams["styles"][-1]["name"] == "0"  # Hydra's task.style_name=0, as style.name=0 for one style
    # the temporal term is the task's, not the loss network's: model files (the new style's record and the
    # file's own loss) keep PerceptualLoss's settings, as one style's run does (it was a TypeError to rebuild)
    steady = AddStyleTask(base=str(base), loss={**RANDOM_LOSS, "temporal_weight": 5.0},
                          style={"image": str(style_image)})
    assert steady.hparams["loss"] == steady.hparams["styles"][-1]["loss"] == RANDOM_LOSS
    assert steady.hparams["temporal_weight"] == 5.0
    # a name from the picture's file name is blamed on style.image (it named task.style_name, never set)
    (stem_b := tmp_path / "b.png").write_bytes(style_image.read_bytes())
    with pytest.raises(StylenetError, match=r"^style.image \(.*b.png; its name\) \(a new name\): .* not distinct"):
        AddStyleTask(base=str(base), loss=RANDOM_LOSS, style={"image": str(stem_b)})
    # each style keeps the size and objective it was trained with: the base's, and this run's for the new one
    trained = save_model(tmp_path / "trained.safetensors", stored.net,
                         {**stored.metadata, "style_size": 64, "loss": {"style_weight": 7.0}})
    grown_trained = AddStyleTask(base=str(trained), loss=RANDOM_LOSS, style={"image": str(style_image), "size": 32})
    assert [(r["style_size"], r["loss"]) for r in grown_trained.hparams["styles"]] == [
        *[(64, {"style_weight": 7.0})] * 3, (32, RANDOM_LOSS)]
    # a base grown before records held them: its top level is its last run's, no record of the others'
    grown_before = save_model(tmp_path / "grown_before.safetensors", stored.net,
                              {**stored.metadata, "style_size": 64, "loss": {"style_weight": 7.0}, "base": "x"})
    regrown = AddStyleTask(base=str(grown_before), loss=RANDOM_LOSS, style={"image": str(style_image), "size": 32})
    assert ["style_size" in record for record in regrown.hparams["styles"]] == [False, False, False, True]
    grown = save_model(tmp_path / "grown.safetensors", named.net, {"task": "style", "styles": named.hparams["styles"]})
    copy = tmp_path / "copy.png"  # the picture the file already holds, under another name
    copy.write_bytes(style_image.read_bytes())
    with pytest.raises(StylenetError, match=r"^style.image \(a new picture\): style 'copy' .* is the same picture as "
                                            r"style 'wave'"):
        AddStyleTask(base=str(grown), loss=RANDOM_LOSS, style={"image": str(copy)})
    batch_norm = save_model(tmp_path / "bn.safetensors", TransformerNet(channels=8, residual_blocks=1, norm="batch"),
                            {"task": "style", "style_name": "bn"})
    with pytest.raises(StylenetError, match=r"bn.safetensors': only stylenet TransformerNet files with InstanceNorm"):
        AddStyleTask(base=str(batch_norm), loss=RANDOM_LOSS, style={"image": str(style_image)})
    # a checkpoint of this run cannot be resumed onto another base file of the same shape
    other = AddStyleTask(base=str(multi_file(tmp_path / "other.safetensors", multi_net(seed=1))), loss=RANDOM_LOSS,
                         style={"image": str(style_image), "size": 32}, image_size=32)
    checkpoint = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "optimizer_states": [], "global_step": 2, "loops": {},
                "hyper_parameters": dict(task.hparams)}, checkpoint)
    assert checkpoint_problem(checkpoint, None, dict(task.hparams), 10) is None
    assert checkpoint_problem(checkpoint, None, dict(other.hparams), 10).startswith("trained with another base_sha256")


def test_each_style_takes_an_equal_share_of_the_stream(style_image: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    other = make_photo(tmp_path / "other.png", seed=3)
    task = StyleTransferTask(model=TINY, loss=RANDOM_LOSS, image_size=32,
                             style={"images": [str(style_image), str(other)], "names": ["x", "y"], "size": 32})
    draws = torch.cat([task.batch_styles({"batch_number": n, "position": 3 * n}, 3) for n in range(4)])
    assert draws.tolist() == [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
    # an unreadable photo at position 1 leaves positions 0, 2 and 3 their own styles (not 0, 1, 0)
    samples = [{"image": None if p == 1 else torch.zeros(3, 4, 4), "path": f"p{p}", "error": "bad" if p == 1 else None,
                "batch_number": 0, "position": p} for p in range(4)]
    assert task.batch_styles(collate_skipping_bad(samples), 3).tolist() == [0, 0, 1]
    assert task.hparams["model"]["styles"] == 2 and task.loss.target_gram("relu1_2").shape[0] == 2
    with pytest.raises(StylenetError, match="style.names has 1 names for 2"):
        StyleTransferTask(model=TINY, loss=RANDOM_LOSS, style={"images": [str(style_image), str(other)],
                                                                "names": ["x"]})
    with pytest.raises(StylenetError, match="style.names has 0 names for 2"):  # not the files' stems
        StyleTransferTask(model=TINY, loss=RANDOM_LOSS, style={"images": [str(style_image), str(other)], "names": []})
    with pytest.raises(StylenetError, match=r"^style.names \(\['foo'\]\) names the styles of style.images"):
        StyleTransferTask(model=TINY, loss=RANDOM_LOSS, style={"image": str(style_image), "names": ["foo"]})
    for names in ("xy", ["a", None], ["a", True], {"a": "b"}):  # "xy" was styles x and y, null a style "None"
        with pytest.raises(StylenetError, match=r"^style.names must be a list of names, one per style image"):
            StyleTransferTask(model=TINY, loss=RANDOM_LOSS, style={"images": [str(style_image), str(other)],
                                                                    "names": names})
    with pytest.raises(StylenetError, match=r"^style.names: style name '..' must be letters.*\(not '.' or '..'\)"):
        StyleTransferTask(model=TINY, loss=RANDOM_LOSS, style={"images": [str(style_image), str(other)],
                                                                "names": ["..", "y"]})  # styles/../: the run folder
    with pytest.raises(StylenetError, match=r"^style.images holds one image .*: a network of several styles needs"):
        StyleTransferTask(model=TINY, loss=RANDOM_LOSS, style={"images": [str(style_image)]})
    with pytest.raises(StylenetError, match=r"^style.image \(.*\) and style.images are both set"):  # +style.image
        StyleTransferTask(model=TINY, loss=RANDOM_LOSS, style={"images": [str(style_image), str(other)],
                                                                "image": str(other)})
    copy = tmp_path / "copy.png"
    copy.write_bytes(style_image.read_bytes())
    with pytest.raises(StylenetError, match=r"^style.images: style 'copy' \(.*copy.png'\) is the same picture as "
                                            r"style 'style'"):
        StyleTransferTask(model=TINY, loss=RANDOM_LOSS, style={"images": [str(style_image), str(copy)]})
    # one picture twice, or two names alike once cleaned: style.images is said, not style.names (never set)
    with pytest.raises(StylenetError, match=r"^style.images: style 'style' \(.*\) is the same picture as style "
                                            r"'style'"):
        StyleTransferTask(model=TINY, loss=RANDOM_LOSS,
                          style={"images": [str(style_image), str(other), str(style_image)]})
    spaced, underscored = make_photo(tmp_path / "My Art.png", seed=5), make_photo(tmp_path / "My_Art.png", seed=6)
    with pytest.raises(StylenetError, match=r"^style.images \(named after their files: set style.names=\[...\]\): "
                                            r"style names \['My_Art', 'My_Art'\] are not distinct"):
        StyleTransferTask(model=TINY, loss=RANDOM_LOSS, style={"images": [str(spaced), str(underscored)]})
    # a picture is recorded by its absolute path: task=add_style, run from another folder, finds it for its reports
    monkeypatch.chdir(tmp_path)
    task = StyleTransferTask(model=TINY, loss=RANDOM_LOSS, style={"images": ["other.png", "demo:ihc"], "size": 32})
    assert [record["image"] for record in task.hparams["styles"]] == [str(tmp_path / "other.png"), "demo:ihc"]


# ------------------------------------------------------------------------------------ files and inference


def test_files_round_trip_and_single_style_files_load_unchanged(tmp_path: Path) -> None:
    net, x = multi_net(), torch.rand(1, 3, 36, 44)
    stored = read_model(multi_file(tmp_path / "m.safetensors", net))
    assert stored.styles == NAMES and stored.metadata["network"]["styles"] == 3
    assert stored.metadata["styles"][1]["sha256"] == f"{1:064d}"
    with torch.no_grad():
        for k in range(3):
            assert torch.equal(stored.net(x, k), net(x, k))
    torch.manual_seed(0)
    single = TransformerNet(**TINY)
    loaded = read_model(save_model(tmp_path / "s.safetensors", single, {"task": "style", "style_name": "s"}))
    assert loaded.metadata["network"] == {"class": "TransformerNet", **TINY, "norm": "instance"}
    assert loaded.styles == ["s"] and stylenet.load_model(tmp_path / "s.safetensors").for_style("s").multi is False
    with torch.no_grad():
        assert torch.equal(loaded.net(x), single(x))


def test_inference_paths_run_the_chosen_style_or_blend(tmp_path: Path) -> None:
    net, image = multi_net(), torch.rand(3, 70, 90)
    model = InferenceModel(net, read_model(multi_file(tmp_path / "m.safetensors", net)).metadata,
                           device="cpu", precision="fp32", source="m.safetensors")
    with torch.no_grad():
        expected = net(torch.nn.functional.pad(image[None], (0, 2, 0, 2), mode="reflect"), 2)[0, :, :70, :90]
    torch.testing.assert_close(model.stylize(image, style="c"), expected, atol=1e-4, rtol=0)
    layerwise = InferenceModel(net, model.metadata, device="cpu", precision="fp32", max_memory=1 << 16)
    torch.testing.assert_close(layerwise.stylize(image, style=2), expected, atol=1e-4, rtol=0)
    tiled = model.stylize(image, style={"a": 0.5, "b": 0.5}, tile=64, tile_overlap=16)
    whole = model.stylize(image, style={"a": 0.5, "b": 0.5})
    assert (tiled - whole).abs().mean() < 0.02 and (whole - expected).abs().max() > 1e-2
    frames = [np.asarray(Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)))] * 2
    streamed = list(model.stylize_frames(frames, style="c"))
    assert np.array_equal(streamed[0], np.asarray(model.stylize(Image.fromarray(frames[0]), style="c")))
    assert model.for_style("c") is model.for_style(2)  # one network per style, kept
    model.precision = "bf16"  # a later setting applies, as it does to a single-style model
    assert model.for_style("c").precision == "bf16" and model.for_style(2) is model.for_style("c")
    model.precision = "fp32"
    assert model.for_style("c").precision == "fp32"
    # the same mix under two labels: each keeps its own (they name output files)
    assert (model.for_style({"a": 0.7, "b": 0.3}).name, model.for_style({"a": 7, "b": 3}).name) == (
        "a0.7+b0.3", "a7+b3")
    # two blends, two names: six digits gave these one name, and the second output was refused as a repeat
    assert (model.for_style({"a": 0.1234567, "b": 1}).name, model.for_style({"a": 0.1234568, "b": 1}).name) == (
        "a0.1234567+b1", "a0.1234568+b1")
    assert model.for_style({"a": 1e20, "b": 1}).name == "a1e20+b1"  # not a1e+20+b1: '+' parts the styles
    with pytest.raises(StylenetError, match=r"holds 3 styles: pass style= one of a, b, c"):
        model.stylize(image)
    with pytest.raises(StylenetError, match=r"'m.safetensors' has no style 'd' \(available: a, b, c\)"):
        model.stylize(image, style="d")


def test_the_styles_kept_are_the_most_recently_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page's slider makes a blend per position: the plain styles in use stay kept, the oldest unused goes."""
    net = multi_net()
    model = InferenceModel(net, read_model(multi_file(tmp_path / "m.safetensors", net)).metadata, device="cpu",
                           precision="fp32")
    monkeypatch.setattr(InferenceModel, "CACHED_STYLES", 2)
    a, b = model.for_style("a"), model.for_style("b")
    assert model.for_style("a") is a  # used again: now the most recent
    model.for_style("c")  # one too many: b, the least recently used, goes
    assert model.for_style("a") is a and model.for_style("b") is not b


def test_a_precision_set_between_frames_applies_to_the_styles_next_frame(tmp_path: Path) -> None:
    net = multi_net()
    model = InferenceModel(net, read_model(multi_file(tmp_path / "m.safetensors", net)).metadata, device="cpu",
                           precision="bf16")
    assert_precision_applies_to_the_next_frame(model, make_photo(tmp_path / "p.png", (128, 96)), style="a")


def test_styles_kept_are_made_one_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads of a web server choosing blends at once: each model is made and kept under a lock (the cache
    went past its cap when two threads evicted and inserted at once)."""
    net = multi_net()
    model = InferenceModel(net, read_model(multi_file(tmp_path / "m.safetensors", net)).metadata, device="cpu",
                           precision="fp32")
    monkeypatch.setattr(InferenceModel, "CACHED_STYLES", 2)
    making, most = [0], [0]
    single_style = type(net).single_style

    def slow_single_style(self: TransformerNet, weights: list[float]) -> TransformerNet:
        making[0] += 1
        most[0] = max(most[0], making[0])
        time.sleep(0.05)  # a thread switch here let another thread in
        making[0] -= 1
        return single_style(self, weights)

    monkeypatch.setattr(type(net), "single_style", slow_single_style)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda k: model.for_style({"a": 1.0, "b": k + 1.0}), range(8)))
    assert most[0] == 1 and len(model._by_style) == 2


def test_exports_take_the_style_and_agree_with_eager(tmp_path: Path) -> None:
    import onnxruntime

    from stylenet.cli.export import main as export_main

    net = multi_net()
    model = multi_file(tmp_path / "m.safetensors", net)
    assert export_main([str(model), "-o", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.pt2")]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image", "style"]
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    api = stylenet.load_model(model, device="cpu", precision="fp32")
    image = torch.rand(2, 3, 30, 45, generator=torch.Generator().manual_seed(0))
    for weights, choice in (([0.0, 0.0, 1.0], "c"), ([0.7, 0.3, 0.0], {"a": 0.7, "b": 0.3}),
                            ([7.0, 3.0, 0.0], {"a": 7, "b": 3})):  # normalised, as the API's blends
        style = torch.tensor(weights)
        expected = api.stylize(image, style=choice)
        from_onnx = torch.from_numpy(session.run(None, {"image": image.numpy(), "style": style.numpy()})[0])
        with torch.inference_mode():
            from_pt2 = program(image, style)
        assert (from_onnx - expected).abs().max() <= 1e-4 and (from_pt2 - expected).abs().max() <= 1e-4


def test_cli_writes_one_output_per_style_or_the_chosen_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    model, photo = multi_file(tmp_path / "m.safetensors"), make_photo(tmp_path / "photo.png", size=(40, 32))
    assert stylize_main([str(photo), "-m", str(model), "-o", str(tmp_path / "all"), "--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "all").iterdir()) == ["photo_a.png", "photo_b.png", "photo_c.png"]
    assert stylize_main([str(photo), "-m", str(model), "-o", str(tmp_path / "some"), "--style", "c", "--blend",
                         "a=0.7,b=0.3", "--strength", "0", "--device", "cpu"]) == 0
    outputs = sorted((tmp_path / "some").iterdir())
    assert [p.name for p in outputs] == ["photo_a0.7+b0.3.png", "photo_c.png"]
    original = np.asarray(Image.open(photo), dtype=int)
    assert all(np.abs(np.asarray(Image.open(p), dtype=int) - original).max() <= 1 for p in outputs)  # strength 0
    capsys.readouterr()
    assert stylize_main([str(photo), "-m", str(model), "-o", str(tmp_path / "x"), "--style", "nope"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "has no style 'nope' (available: a, b, c)" in error


def test_cli_outputs_of_one_file_named_alike_say_what_tells_them_apart(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Without {style} in --name the styles of one file collide: the line names both styles and the
    field that fixes it. A style named twice runs once. One output file for three styles asks for a
    folder or one --style."""
    model, photo = multi_file(tmp_path / "m.safetensors"), make_photo(tmp_path / "photo.png", size=(24, 20))
    capsys.readouterr()
    assert stylize_main([str(photo), "-m", str(model), "-o", str(tmp_path / "one"), "--name", "{stem}.png",
                         "--style", "a", "--style", "b", "--device", "cpu"]) == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and error.endswith(f"(by {str(model)!r} style 'a' and {str(model)!r} style 'b'); "
                                                      "add {style} to --name")
    assert stylize_main([str(photo), "-m", str(model), "-o", str(tmp_path / "twice"), "--style", "b", "--style", "b",
                         "--blend", "a=1,c=1", "--blend", "a=1,c=1", "--device", "cpu"]) == 0
    assert sorted(p.name for p in (tmp_path / "twice").iterdir()) == ["photo_a1+c1.png", "photo_b.png"]
    capsys.readouterr()
    assert stylize_main([str(photo), "-m", str(model), "-o", str(tmp_path / "out.png")]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "names one file but there are 1 image(s) and 1 model file(s), 3 styles to run; give a folder, or pick one "
        "style with --style")
    second = make_photo(tmp_path / "second.png", size=(24, 20))
    assert stylize_main([str(photo), str(second), "-m", str(model), "-o", str(tmp_path / "out.png")]) == 2
    assert capsys.readouterr().err.strip().endswith("2 image(s) and 1 model file(s), 3 styles to run; give a folder")
    assert stylize_main([str(photo), "-m", str(model), "-o", str(tmp_path / "out.png"), "--style", "c"]) == 0
    assert (tmp_path / "out.png").is_file()
    # a trained style whose name is a blend's label is another choice: refused, not dropped
    styles = [{"name": name, "sha256": f"{k:064d}", "image": f"{k}.jpg"} for k, name in enumerate(["a", "c", "a1+c1"])]
    odd = save_model(tmp_path / "odd.safetensors", multi_net(), {"task": "style", "styles": styles})
    capsys.readouterr()
    assert stylize_main([str(photo), "-m", str(odd), "-o", str(tmp_path / "odd"), "--style", "a1+c1", "--blend",
                         "a=1,c=1", "--device", "cpu"]) == 1
    assert capsys.readouterr().err.strip().endswith("style 'a1+c1'); two choices of one model share this name (a "
                                                    "style and a blend?): run one with its own -o folder")

# ------------------------------------------------------------------------------------ training


def test_a_short_two_style_run_lowers_each_styles_loss(tmp_path: Path) -> None:
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from stylenet.callbacks import ExportStyleModel
    from stylenet.data import ImageFolderDataModule

    for i in range(4):
        make_photo(tmp_path / "photos" / f"img{i}.png", size=(40, 36), seed=i)
    styles = [make_photo(tmp_path / f"{name}.png", size=(40, 40), seed=50 + k) for k, name in enumerate("xy")]
    pl.seed_everything(0)
    task = StyleTransferTask(model=TINY, loss=RANDOM_LOSS, image_size=32, lr=1e-2,
                             style={"images": [str(s) for s in styles], "size": 32})
    trainer = pl.Trainer(accelerator="cpu", max_steps=16, val_check_interval=8, check_val_every_n_epoch=None,
                         limit_val_batches=1, num_sanity_val_steps=1, log_every_n_steps=4,
                         use_distributed_sampler=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, default_root_dir=tmp_path,
                         callbacks=[ExportStyleModel(str(tmp_path / "multi.safetensors"))],
                         logger=TensorBoardLogger(tmp_path, name="tb", version="", default_hp_metric=False))
    data = ImageFolderDataModule(source="folder", root=str(tmp_path / "photos"), image_size=32, batch_size=2,
                                 val_images=1)
    data.setup("fit")
    held_out = torch.stack([data.make_dataset(data.val_files)[0]["image"]])

    @torch.no_grad()
    def losses() -> list[float]:  # each style's objective on the held-out photo
        return [float(task.loss(task.net.eval()(held_out, k), held_out, style=torch.tensor([k]))["total"])
                for k in range(2)]

    before = losses()
    trainer.fit(task, datamodule=data, weights_only=True)
    after = losses()
    assert all(a < 0.7 * b for a, b in zip(after, before, strict=True)), (before, after)
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "images": 0}).Reload()
    for name in "xy":
        assert len(events.Scalars(f"val/{name}/total")) == 2
        assert {f"val/{name}/quality/structure", f"val/{name}/temporal/e_warp", f"val/{name}/temporal/flicker"} \
            <= set(events.Tags()["scalars"])
    hparams = (tmp_path / "tb" / "hparams.yaml").read_text()  # what TensorBoard shows of the run
    assert "temporal_weight: 0.0" in hparams and "stylenet_version:" in hparams
    grid = events.Images("val/styles")[-1]
    assert grid.height == 3 * 32 + 4 * 2  # photos, then one row per style
    assert read_model(tmp_path / "multi.safetensors").styles == ["x", "y"]


def test_a_file_whose_style_names_do_not_fit_its_network_is_refused_and_the_other_models_still_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    records = [{"name": name, "sha256": None, "image": None} for name in NAMES]
    bad = {"two_names": (records[:2], "' does not match its network: it holds 3"),  # an edited file, each
           "duplicates": ([records[0], records[0], records[2]], f"' names two styles {NAMES[0]!r} (its metadata "
                          f"names {[NAMES[0], NAMES[0], NAMES[2]]}): each style needs a name of its own")}
    for label, (styles, said) in bad.items():
        save_model(tmp_path / f"{label}.safetensors", multi_net(), {"task": "style", "styles": styles})
        with pytest.raises(StylenetError) as refused:
            read_model(tmp_path / f"{label}.safetensors")
        assert str(refused.value).startswith(f"model file '{tmp_path / label}.safetensors{said}"), refused.value
    good = save_model(tmp_path / "good.safetensors", TransformerNet(channels=8, residual_blocks=1),
                      {"task": "style", "style_name": "good"})
    photo = make_photo(tmp_path / "photo.png", size=(24, 20))
    code = stylize_main([str(photo), "-m", str(tmp_path / "two_names.safetensors"), "-m", str(good),
                         "-o", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 1 and "two_names.safetensors" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["photo_good.png"]
