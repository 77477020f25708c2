import math
import re
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision

from stylenet import StylenetError
from stylenet.nets.vgg import VGGFeatures, layer_names, random_state


def test_layer_names_follow_torchvision_order() -> None:
    names = layer_names("vgg16")
    config = torchvision.models.vgg.cfgs["D"]  # torchvision's VGG-16 layout: widths and "M" pools
    assert len(names) == len(config) + sum(c != "M" for c in config) == 31
    assert names[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert names.index("relu2_2") == 8 and names.index("relu3_3") == 15 and names.index("relu4_3") == 22
    vgg19 = layer_names("vgg19")
    assert len(vgg19) == 37 and vgg19.index("relu4_2") == 22 and vgg19.index("relu5_1") == 29


def test_truncated_after_deepest_layer_and_frozen() -> None:
    vgg = VGGFeatures(["relu1_2", "relu2_2"], weights="random")
    assert vgg.names[-1] == "relu2_2"
    assert list(vgg.parameters()) == []
    assert len([n for n, _ in vgg.named_buffers() if n.startswith("weight")]) == 4
    assert vgg.state_dict() == {}  # never saved into checkpoints
    vgg.train()
    assert not vgg.training
    features = vgg(torch.rand(2, 3, 32, 32), ["relu1_2", "relu2_2"])
    assert features["relu1_2"].shape == (2, 64, 32, 32) and features["relu2_2"].shape == (2, 128, 16, 16)
    with pytest.raises(StylenetError, match="relu3_3"):
        vgg(torch.rand(1, 3, 8, 8), ["relu3_3"])


def test_features_match_torchvision_vgg16_with_the_same_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"]).eval()  # vgg16().features
    path = tmp_path / "vgg16.pth"
    torch.save({f"features.{k}": v for k, v in reference.state_dict().items()}, path)
    ours = VGGFeatures(["relu2_2", "relu4_3"], weights=str(path))
    image = torch.rand(1, 3, 48, 40)
    normalised = (image - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected_relu2_2 = reference[:9](normalised)
        expected_relu4_3 = reference[:23](normalised)
    features = ours(image, ["relu2_2", "relu4_3"])
    torch.testing.assert_close(features["relu2_2"], expected_relu2_2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(features["relu4_3"], expected_relu4_3, rtol=1e-4, atol=1e-5)


def test_content_pass_truncated_at_content_layer_equals_full_pass() -> None:
    vgg = VGGFeatures(["relu2_2", "relu4_3"], weights="random")
    image = torch.rand(1, 3, 32, 32)
    shallow = vgg(image, ["relu2_2"])
    full = vgg(image, ["relu2_2", "relu4_3"])
    assert list(shallow) == ["relu2_2"]
    assert torch.equal(shallow["relu2_2"], full["relu2_2"])


def test_random_weights_are_seeded() -> None:
    image = torch.rand(1, 3, 16, 16)
    a = VGGFeatures(["relu1_2"], weights="random", seed=1)(image, ["relu1_2"])["relu1_2"]
    b = VGGFeatures(["relu1_2"], weights="random", seed=1)(image, ["relu1_2"])["relu1_2"]
    c = VGGFeatures(["relu1_2"], weights="random", seed=2)(image, ["relu1_2"])["relu1_2"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_weight_files_and_names_give_one_line_errors(tmp_path: Path) -> None:
    bad_shape = tmp_path / "bad_shape.pth"
    torch.save({"features.0.weight": torch.zeros(64, 1, 3, 3), "features.0.bias": torch.zeros(64)}, bad_shape)
    with pytest.raises(StylenetError, match=r"features\.0\.weight has shape") as err:
        VGGFeatures(["relu1_1"], weights=str(bad_shape))
    assert "\n" not in str(err.value)
    missing = tmp_path / "missing_keys.pth"
    torch.save({"something": torch.zeros(1)}, missing)
    with pytest.raises(StylenetError, match="lacks features.0.weight"):
        VGGFeatures(["relu1_1"], weights=str(missing))
    with pytest.raises(StylenetError, match="does not exist"):
        VGGFeatures(["relu1_1"], weights=str(tmp_path / "nope.pth"))
    with pytest.raises(StylenetError, match=f"^VGG weights file {re.escape(repr(str(tmp_path)))} is a folder; "):
        VGGFeatures(["relu1_1"], weights=str(tmp_path))
    with pytest.raises(StylenetError, match="unknown VGG weight source"):
        VGGFeatures(["relu1_1"], weights="imagenet21k")
    with pytest.raises(StylenetError, match="unknown VGG layer"):
        VGGFeatures(["relu9_9"], weights="random")


def test_offline_imagenet_request_fails_fast_with_instructions(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))  # an empty cache
    with pytest.raises(StylenetError, match=r"loss\.weights=/path/to/vgg16-397923af\.pth") as err:
        VGGFeatures(["relu2_2"], weights="imagenet")
    assert "\n" not in str(err.value)
    assert "weights: in stylenet-report's --loss-config file" in str(err.value)  # it has no loss.weights=


def test_a_weights_file_that_is_no_pytorch_file_says_so(tmp_path: Path) -> None:
    path = tmp_path / "vgg16.pth"
    path.write_text("exported from somewhere else")
    with pytest.raises(StylenetError, match=r"^cannot load VGG weights file .*vgg16.pth': not a PyTorch file$"):
        VGGFeatures(["relu1_2"], weights=str(path))


def test_a_weights_file_of_non_finite_weights_or_a_pickled_network_is_one_line_naming_it(tmp_path: Path) -> None:
    """Non-finite weights made every loss NaN, an error that blamed the photos; a whole pickled network
    (``torch.save(model)``) gave torch's paragraphs of advice, cut at their first line and bold codes."""
    state = {f"features.{key}": value for key, value in random_state("vgg16", num_layers=4, seed=0).items()}
    for key, value in (("features.2.bias", math.nan), ("features.0.weight", math.inf)):
        path = tmp_path / f"{key}.pth"
        torch.save({**state, key: state[key].clone().fill_(value)}, path)
        with pytest.raises(StylenetError) as err:
            VGGFeatures(["relu1_2"], weights=str(path))
        assert str(err.value) == f"VGG weights file {str(path)!r}: {key} holds NaN or infinite values"
    pickled = tmp_path / "vgg16_full.pth"
    torch.save(torchvision.models.vgg16(), pickled)
    with pytest.raises(StylenetError) as err:
        VGGFeatures(["relu1_2"], weights=str(pickled))
    assert str(err.value) == (f"cannot load VGG weights file {str(pickled)!r}: it is a pickle of more than tensors "
                              "(Unsupported global: GLOBAL torchvision.models.vgg.VGG was not an allowed global by "
                              "default), and unpickling it could run code: save the network's state_dict() instead")


def test_another_networks_weights_are_refused_though_the_first_layers_fit(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """VGG-19's and vgg16_bn's first convolutions have VGG-16's shapes: their files loaded quietly as VGG-16 (and
    were recorded as such) when the layers used stop early. Their other layers give them away, in a local file
    and in the hub cache alike (torch.hub checks a hash only as it downloads); integer weights are refused."""
    first = {f"features.{key}": value for key, value in random_state("vgg16", num_layers=4, seed=0).items()}
    cases = {"vgg19": {"features.16.weight": torch.zeros(256, 256, 3, 3)},  # VGG-19's conv3_4 (VGG-16: pool3)
             "vgg16_bn": {"features.1.running_mean": torch.zeros(64)}}
    for name, extra in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save({**first, **extra}, path)
        key = next(iter(extra))
        with pytest.raises(StylenetError) as err:
            VGGFeatures(["relu1_2"], weights=str(path))
        assert str(err.value) == (f"VGG weights file {str(path)!r} holds {key}, which vgg16 has not "
                                  "(another VGG, or one with batch norm?)")
    cache = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    cache.parent.mkdir(parents=True)
    cache.write_bytes((tmp_path / "vgg19.pth").read_bytes())
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    with pytest.raises(StylenetError, match=f"^VGG weights file {str(cache)!r} holds features.16.weight"):
        VGGFeatures(["relu1_2"], weights="imagenet")
    integers = tmp_path / "int.pth"
    torch.save({**first, "features.0.weight": first["features.0.weight"].to(torch.int32)}, integers)
    with pytest.raises(StylenetError, match=r"features\.0\.weight holds torch\.int32 values, not floating point$"):
        VGGFeatures(["relu1_2"], weights=str(integers))


def test_a_weights_path_may_start_with_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``loss.weights=~/vgg16.pth``: the shell leaves a ``~`` after ``=`` alone, as data.root's is."""
    torch.save({f"features.{k}": v for k, v in random_state("vgg16", num_layers=4, seed=3).items()},
               tmp_path / "vgg16.pth")
    monkeypatch.setenv("HOME", str(tmp_path))
    vgg = VGGFeatures(["relu1_2"], weights="~/vgg16.pth")
    assert vgg.weights_file == tmp_path / "vgg16.pth"
    torch.testing.assert_close(vgg.weight2, random_state("vgg16", num_layers=4, seed=3)["2.weight"])
