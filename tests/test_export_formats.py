"""Model files in and out: ONNX / torch.export parity, old pytorch/examples checkpoints, safe loading, hub."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from stylenet import StylenetError
from stylenet.cli.export import main as export_main
from stylenet.export import AnySizeNetwork, ExamplesTransformerNet, export_checkpoint, load_model, save_model
from stylenet.nets import TransformerNet

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_model(tmp_path / "test.safetensors", TransformerNet(channels=8, residual_blocks=1),
                      {"task": "style", "style_name": "test"})


# ------------------------------------------------------------------------------------------ exports


def test_onnx_and_pt2_match_eager_at_two_sizes(model_file: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import onnxruntime

    onnx_path, pt2_path = tmp_path / "test.onnx", tmp_path / "test.pt2"
    assert export_main([str(model_file), "-o", str(onnx_path), "-o", str(pt2_path)]) == 0
    assert capsys.readouterr().out.split() == [str(onnx_path), str(pt2_path)]
    eager = AnySizeNetwork(load_model(model_file).net).eval()
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    metadata = json.loads(session.get_modelmeta().custom_metadata_map["stylenet"])
    assert metadata["style_name"] == "test" and metadata["network"]["class"] == "TransformerNet"
    extra = {"stylenet.json": ""}
    program = torch.export.load(str(pt2_path), extra_files=extra).module()
    assert json.loads(extra["stylenet.json"])["task"] == "style"
    for shape in [(1, 3, 30, 45), (2, 3, 64, 20)]:  # neither needs to be a multiple of 4
        image = torch.rand(shape)
        with torch.inference_mode():
            expected = eager(image)
        assert expected.shape == shape
        from_onnx = session.run(None, {"image": image.numpy()})[0]
        assert np.abs(from_onnx - expected.numpy()).max() <= 1e-4
        assert (program(image) - expected).abs().max() <= 1e-4


def test_unknown_export_extension_fails_before_any_work(model_file: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    outputs = ["-o", str(tmp_path / "a.safetensors"), "-o", str(tmp_path / "b.tflite")]
    assert export_main([str(model_file), *outputs]) == 2
    assert "b.tflite" in capsys.readouterr().err
    assert not (tmp_path / "a.safetensors").exists()


# ------------------------------------------------------------------------------------------ old checkpoints


class ConvLayer(nn.Module):
    """pytorch/examples fast_neural_style/transformer_net.py, rebuilt from its published structure."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.reflection_pad = nn.ReflectionPad2d(kernel_size // 2)
        self.conv2d = nn.Conv2d(in_channels, out_channels, kernel_size, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2d(self.reflection_pad(x))


class UpsampleConvLayer(ConvLayer):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.interpolate(x, mode="nearest", scale_factor=2))


class ExamplesResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3, 1)
        self.in1 = nn.InstanceNorm2d(channels, affine=True)
        self.conv2 = ConvLayer(channels, channels, 3, 1)
        self.in2 = nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.in2(self.conv2(torch.relu(self.in1(self.conv1(x)))))


class ExamplesNet(nn.Module):
    """Their TransformerNet: 0-255 in, 0-255 out (unbounded, no final activation)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.in1 = ConvLayer(3, 32, 9, 1), nn.InstanceNorm2d(32, affine=True)
        self.conv2, self.in2 = ConvLayer(32, 64, 3, 2), nn.InstanceNorm2d(64, affine=True)
        self.conv3, self.in3 = ConvLayer(64, 128, 3, 2), nn.InstanceNorm2d(128, affine=True)
        for i in range(1, 6):
            setattr(self, f"res{i}", ExamplesResidualBlock(128))
        self.deconv1, self.in4 = UpsampleConvLayer(128, 64, 3, 1), nn.InstanceNorm2d(64, affine=True)
        self.deconv2, self.in5 = UpsampleConvLayer(64, 32, 3, 1), nn.InstanceNorm2d(32, affine=True)
        self.deconv3 = ConvLayer(32, 3, 9, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.in1(self.conv1(x)))
        y = torch.relu(self.in2(self.conv2(y)))
        y = torch.relu(self.in3(self.conv3(y)))
        for i in range(1, 6):
            y = getattr(self, f"res{i}")(y)
        y = torch.relu(self.in4(self.deconv1(y)))
        y = torch.relu(self.in5(self.deconv2(y)))
        return self.deconv3(y)


@pytest.fixture(scope="module")
def examples_net() -> ExamplesNet:
    torch.manual_seed(0)
    net = ExamplesNet().eval()
    with torch.no_grad():
        for name, param in net.named_parameters():
            if name.split(".")[-2].startswith("in"):  # non-trivial affine norms, so a mix-up would show
                param.uniform_(0.5, 1.5) if name.endswith("weight") else param.uniform_(-0.5, 0.5)
            elif name.endswith("bias") and name.startswith("deconv3"):
                param.fill_(127.5)  # outputs around mid-grey, as a trained model gives
    return net


@pytest.mark.parametrize("name,zip_format", [("mosaic.pth", True), ("candy.model", False)])
def test_pytorch_examples_checkpoints_load(examples_net: ExamplesNet, tmp_path: Path, name: str,
                                           zip_format: bool) -> None:
    state = dict(examples_net.state_dict())
    state["in1.running_mean"] = torch.zeros(32)  # what PyTorch < 0.4 saved for InstanceNorm
    state["in1.running_var"] = torch.ones(32)
    torch.save(state, tmp_path / name, _use_new_zipfile_serialization=zip_format)
    model = load_model(tmp_path / name, task="style")
    assert isinstance(model.net, ExamplesTransformerNet)
    assert model.metadata["style_name"] == Path(name).stem
    image = torch.rand(1, 3, 32, 44)
    with torch.inference_mode():
        expected = (examples_net(image * 255) / 255).clamp(0, 1)
        assert torch.allclose(model.net(image), expected, atol=1e-5)
    # converted once to a stylenet model file, it behaves the same
    assert export_main([str(tmp_path / name), "-o", str(tmp_path / "converted.safetensors")]) == 0
    with torch.inference_mode():
        assert torch.allclose(load_model(tmp_path / "converted.safetensors").net(image), expected, atol=1e-5)


def test_stylenet_train_checkpoints_load(tmp_path: Path) -> None:
    net = TransformerNet(channels=8, residual_blocks=1)
    state = {f"net.{key}": value for key, value in net.state_dict().items()}
    checkpoint = {"state_dict": state | {"vgg.w": torch.zeros(1)},
                  "hyper_parameters": {"model": net.config, "style": {"name": "wave", "image": "w.jpg"}},
                  "global_step": 7}
    torch.save(checkpoint, tmp_path / "last.ckpt")
    model = load_model(tmp_path / "last.ckpt")
    assert model.metadata["style_name"] == "wave" and model.metadata["steps"] == 7
    export_checkpoint(tmp_path / "last.ckpt", tmp_path / "wave.safetensors")
    assert load_model(tmp_path / "wave.safetensors").metadata["style_name"] == "wave"


# ------------------------------------------------------------------------------------------ safety


class Exploit:
    marker: Path

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [None, 2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickles_are_refused_without_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       protocol: int | None) -> None:
    Exploit.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"conv1.conv2d.weight": Exploit()}
    if protocol is None:
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=protocol))
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # must not re-enable unsafe loading
    with pytest.raises(StylenetError, match=r"model file '.*evil\.pth'") as info:
        load_model(path)
    assert not Exploit.marker.exists()
    if protocol != pickle.HIGHEST_PROTOCOL:  # torch's loader rejects newer protocols before reading them
        assert "refusing to load" in str(info.value) and "system" in str(info.value)


def test_other_bad_model_files_are_clear_errors(tmp_path: Path, model_file: Path) -> None:
    (tmp_path / "random.pth").write_text("not a model at all\n" * 200)
    (tmp_path / "zero.safetensors").write_bytes(b"")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pth")
    cases = {"random.pth": "not a model file", "zero.safetensors": "empty", "missing.pth": "does not exist",
             "foreign.safetensors": "no stylenet metadata", "other.pth": "neither a stylenet model"}
    for name, reason in cases.items():
        with pytest.raises(StylenetError, match=reason) as info:
            load_model(tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(StylenetError, match="is a 'style' model, not a 'sr' model"):
        load_model(model_file, task="sr")


# ------------------------------------------------------------------------------------------ torch.hub


def test_torch_hub_loads_a_local_checkpoint(model_file: Path) -> None:
    model = torch.hub.load(str(ROOT), "style_model", path=str(model_file), device="cpu", source="local")
    image = torch.rand(3, 21, 34)
    assert model.name == "test"
    assert model.stylize(image, strength=0.5).shape == (3, 21, 34)
