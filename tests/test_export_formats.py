"""Model files in and out: ONNX / torch.export parity, old pytorch/examples checkpoints, safe loading, hub."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import nn

import stylenet
from stylenet import StylenetError
from stylenet.cli.export import main as export_main
from stylenet.export import AnySizeNetwork, export_checkpoint
from stylenet.inference import InferenceModel
from stylenet.modelfile import ExamplesTransformerNet, checkpoint_metadata, read_header, read_model, save_model
from stylenet.nets import SuperResolutionNet, TransformerNet
from tests.conftest import make_photo
from tests.helpers import signal_self, stops_handled_by

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_model(tmp_path / "test.safetensors", TransformerNet(channels=8, residual_blocks=1),
                      {"task": "style", "style_name": "test"})


# ------------------------------------------------------------------------------------------ exports


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny model (8 channels, 1 residual block: exports are slow on 2 cores) and its ONNX and
    ``.pt2`` exports, written once by the export command for the tests of this section."""
    folder = tmp_path_factory.mktemp("exported")
    torch.manual_seed(0)
    model = save_model(folder / "test.safetensors", TransformerNet(channels=8, residual_blocks=1),
                       {"task": "style", "style_name": "test"})
    onnx_path, pt2_path = folder / "test.onnx", folder / "test.pt2"
    assert export_main([str(model), "-o", str(onnx_path), "-o", str(pt2_path)]) == 0
    return {"model": model, "onnx": onnx_path, "pt2": pt2_path}


def test_exports_carry_the_metadata(exported: dict[str, Path]) -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    metadata = json.loads(session.get_modelmeta().custom_metadata_map["stylenet"])
    assert metadata["style_name"] == "test" and metadata["network"]["class"] == "TransformerNet"
    extra = {"stylenet.json": ""}
    torch.export.load(str(exported["pt2"]), extra_files=extra)
    assert json.loads(extra["stylenet.json"])["task"] == "style"


# 32x48 and 64x20 are multiples of 4 (the exports used to pad them by 4 px anyway, which changed the
# InstanceNorm statistics); 30x45 and 9x13 are not; 8x8 is the smallest size the exports take.
PARITY_SHAPES = [(1, 3, 32, 48), (1, 3, 30, 45), (2, 3, 64, 20), (1, 3, 9, 13), (1, 3, 8, 8)]


def test_python_api_onnx_and_pt2_agree_on_every_size(exported: dict[str, Path]) -> None:
    import onnxruntime

    api = stylenet.load_model(exported["model"], device="cpu", precision="fp32")
    session = onnxruntime.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    program = torch.export.load(str(exported["pt2"])).module()
    for shape in PARITY_SHAPES:
        image = torch.rand(shape, generator=torch.Generator().manual_seed(shape[-1]))
        expected = api.stylize(image if shape[0] > 1 else image[0])
        expected = expected if shape[0] > 1 else expected[None]
        assert expected.shape == shape
        from_onnx = torch.from_numpy(session.run(None, {"image": image.numpy()})[0])
        with torch.inference_mode():
            from_pt2 = program(image)
        assert (from_onnx - expected).abs().max() <= 1e-4, shape
        assert (from_pt2 - expected).abs().max() <= 1e-4, shape


def test_the_pt2_program_checks_no_dtype_or_device(exported: dict[str, Path]) -> None:
    """The float32 cast of the output's tanh (ScaledTanh) is not traced into a float32 graph: a traced
    cast records an assertion of the exporting dtype and device, so the program would refuse to run
    under autocast or moved to a GPU."""
    graph = torch.export.load(str(exported["pt2"])).graph
    assert not [node for node in graph.nodes if "assert_tensor_metadata" in str(node.target)]
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode():
        assert torch.export.load(str(exported["pt2"])).module()(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)


def test_exports_refuse_sizes_below_the_networks_minimum(exported: dict[str, Path]) -> None:
    program = torch.export.load(str(exported["pt2"])).module()
    with pytest.raises(Exception, match=">= 8"):  # a runtime check recorded in the program
        program(torch.rand(1, 3, 7, 16))


def test_an_export_for_other_runtimes_given_as_a_model_says_what_it_is(exported: dict[str, Path]) -> None:
    for kind, what in (("onnx", "an ONNX export"), ("pt2", "a torch.export program")):
        with pytest.raises(StylenetError, match=f"{what} for other runtimes") as info:
            read_model(exported[kind])
        assert str(exported[kind]) in str(info.value)


def test_anysize_wrapper_pads_only_to_the_next_multiple() -> None:
    """The wrapper's geometry, seen from inside: the network gets (-side) % 4 extra rows/columns."""
    seen: list[tuple[int, int]] = []

    class Probe(nn.Module):
        size_multiple, min_size = 4, 8

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(x.shape[-2:]))
            return x

    image = torch.rand(1, 3, 30, 45)
    assert torch.equal(AnySizeNetwork(Probe())(image), image)
    AnySizeNetwork(Probe())(torch.rand(1, 3, 32, 48))
    assert seen == [(32, 48), (32, 48)]


@pytest.mark.parametrize("size", [(48, 32), (45, 30)])
def test_stylize_command_writes_the_api_output_within_one_level(exported: dict[str, Path], tmp_path: Path,
                                                                size: tuple[int, int]) -> None:
    import onnxruntime

    from stylenet.cli.stylize import main as stylize_main
    from stylenet.image import load_image

    pixels = np.random.default_rng(size[1]).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    source, output = tmp_path / "photo.png", tmp_path / "styled.png"
    Image.fromarray(pixels).save(source)
    assert stylize_main([str(source), "-m", str(exported["model"]), "-o", str(output),
                         "--device", "cpu", "--precision", "fp32"]) == 0
    with Image.open(output) as written:
        assert written.mode == "RGB"
        from_cli = np.asarray(written).astype(np.int16)
    rgb = load_image(source).rgb
    api = stylenet.load_model(exported["model"], device="cpu", precision="fp32").stylize(rgb)
    session = onnxruntime.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    from_onnx = torch.from_numpy(session.run(None, {"image": rgb[None].numpy()})[0][0])
    for reference in (api, from_onnx):
        levels = (reference * 255).round().to(torch.int16).permute(1, 2, 0).numpy()
        assert np.abs(from_cli - levels).max() <= 1


def test_unknown_export_extension_fails_before_any_work(model_file: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    outputs = ["-o", str(tmp_path / "a.safetensors"), "-o", str(tmp_path / "b.tflite")]
    assert export_main([str(model_file), *outputs]) == 2
    assert "b.tflite" in capsys.readouterr().err
    assert not (tmp_path / "a.safetensors").exists()


def test_export_never_writes_over_its_source_nor_one_output_twice(model_file: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "source.safetensors"
    source.write_bytes(model_file.read_bytes())
    for outputs in (["-o", str(source)], ["-o", str(tmp_path / "a.onnx"), "-o", str(tmp_path / "." / "a.onnx")]):
        assert export_main([str(source), *outputs, "--style-name", "renamed"]) == 2
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 1 and outputs[-1] in errors[0], errors
    assert source.read_bytes() == model_file.read_bytes() and not (tmp_path / "a.onnx").exists()


def test_export_refuses_a_style_name_that_is_not_a_file_name_part_and_a_file_in_the_path(
        model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("../up", ""):  # an empty name was once taken for no --style-name at all
        assert export_main([str(model_file), "-o", str(tmp_path / "a.safetensors"), "--style-name", name]) == 2
        assert "--style-name" in capsys.readouterr().err and not (tmp_path / "a.safetensors").exists()
    (tmp_path / "afile").write_text("a file, not a folder")
    assert export_main([str(model_file), "-o", str(tmp_path / "afile" / "b.safetensors")]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "'afile' is a file, not a folder" in errors[0].replace(str(tmp_path) + os.sep, "")


def test_a_failed_export_leaves_every_output_as_it_was(model_file: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX without the export extra is refused before anything is written; a write that fails late
    (here the .pt2, after the .safetensors was written) publishes none of them, and the error names
    the output, not its hidden temporary file."""
    import importlib.util

    from stylenet import export

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else
                        real_find_spec(name, *a))
    assert export_main([str(model_file), "-o", str(tmp_path / "a.safetensors"), "-o", str(tmp_path / "a.onnx")]) == 2
    assert capsys.readouterr().err.strip() == (f"stylenet-export: error: cannot write '{tmp_path / 'a.onnx'}': ONNX "
                                               "export needs onnxscript: pip install 'stylenet[export]'")
    monkeypatch.undo()
    (tmp_path / "b.safetensors").write_bytes(b"the previous export")

    def disk_full(program: object, path: Path, record: str) -> Path:
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(export, "save_pt2", disk_full)
    assert export_main([str(model_file), "-o", str(tmp_path / "b.safetensors"), "-o", str(tmp_path / "b.pt2")]) == 1
    assert capsys.readouterr().err.strip() == (f"stylenet-export: error: cannot write '{tmp_path / 'b.pt2'}': "
                                               "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.safetensors", "test.safetensors"]
    assert (tmp_path / "b.safetensors").read_bytes() == b"the previous export"


def test_a_full_disk_under_the_pt2_is_one_line(model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    """torch's own .pt2 writer, handed a file on a full disk, raises a RuntimeError and then aborts the
    process as it is destroyed: the program is serialised in memory and written by Python, whose full
    disk is an OSError, one line."""
    real_save = torch.export.save

    def save(program: object, f: object, **options: object) -> None:
        if isinstance(f, (str, os.PathLike)):  # what torch's writer does on a full disk
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")
        real_save(program, f, **options)

    def full(self: Path, data: bytes) -> int:
        raise OSError(28, "No space left on device", str(self))

    monkeypatch.setattr(torch.export, "save", save)
    monkeypatch.setattr(Path, "write_bytes", full)
    assert export_main([str(model_file), "-o", str(tmp_path / "m.pt2")]) == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line == f"stylenet-export: error: cannot write '{tmp_path / 'm.pt2'}': No space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == [model_file.name]


@pytest.mark.parametrize("signum,status,how", [(signal.SIGINT, 130, "interrupted"),
                                             (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_and_sigterm_are_one_line_and_leave_no_temporary_file(
        model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        signum: signal.Signals, status: int, how: str) -> None:
    """Stopped while the .pt2 is traced, after the .safetensors was written into its temporary file: one line
    and the shell's status for the signal, as stylenet-stylize and stylenet-prepare, and no output nor
    temporary file left (SIGTERM used to kill the process where it stood, leaving a full-size one)."""
    from stylenet import export

    out = tmp_path / "out"
    staged: list[str] = []

    def stopped(net: nn.Module) -> None:
        staged.extend(path.name for path in out.iterdir())
        signal_self(signum)

    monkeypatch.setattr(export, "export_program", stopped)
    with stops_handled_by("stylenet-export"):
        code = export_main([str(model_file), "-o", str(out / "m.safetensors"), "-o", str(out / "m.pt2")])
    assert code == status
    assert capsys.readouterr().err == f"stylenet-export: {how}; no output written\n"
    assert len(staged) == 1 and staged[0].startswith(".m.")  # the model file, written before the signal
    assert list(out.iterdir()) == []


def test_style_model_files_record_the_tasks_own_terms_of_the_objective() -> None:
    """The temporal term (experiment=video), the saturation term and the identity warm-up are part of
    what trained the network: a video-stable model file says so."""
    hparams = {"style": {"image": "demo:ihc"}, "style_sha256": "ab", "loss": {"style_weight": 100.0},
               "temporal_weight": 600.0, "saturation_weight": 0.03, "identity_steps": 40, "image_size": 128}
    metadata = checkpoint_metadata(hparams, 700)
    assert (metadata["temporal_weight"], metadata["saturation_weight"], metadata["identity_steps"]) == (600.0, 0.03, 40)
    assert metadata["style_image"] == "demo:ihc" and metadata["loss"] == {"style_weight": 100.0}
    assert checkpoint_metadata({"styles": [{"name": "a"}], "style": {"images": ["a.png"]}}, 1)["style_image"] is None
    # without a recorded name, the one the task gives the file's stem (stylenet.styles.style_name_of)
    assert checkpoint_metadata({"style": {"image": "art/My Painting.jpg"}}, 1)["style_name"] == "My_Painting"


def test_a_style_picture_typed_as_a_relative_path_is_recorded_by_its_absolute_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """style.image=art/p.png was recorded as typed: task=add_style, run from another folder, found no picture
    for that style's report (style.images were recorded absolute already)."""
    from stylenet.tasks import StyleTransferTask

    make_photo(tmp_path / "art" / "p.png", size=(40, 40))
    monkeypatch.chdir(tmp_path)
    task = StyleTransferTask(model={"channels": 8, "residual_blocks": 1}, loss={"weights": "random"},
                             style={"image": "art/p.png", "size": 32}, image_size=32)
    assert task.hparams["style"]["image"] == "art/p.png"  # as typed, for what a resume compares
    assert checkpoint_metadata(dict(task.hparams), 1)["style_image"] == str(tmp_path / "art" / "p.png")


def test_style_name_is_refused_for_a_super_resolution_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_metrics import sr_model_file

    sr = sr_model_file(tmp_path / "x4.safetensors")
    assert export_main([str(sr), "-o", str(tmp_path / "named.safetensors"), "--style-name", "candy"]) == 2
    assert f"--style-name names a style model; {str(sr)!r} is a 'sr' model" in capsys.readouterr().err
    assert not (tmp_path / "named.safetensors").exists()


def test_info_lists_the_styles_and_the_record_and_writes_nothing(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """--info: the style names stylenet-stylize --style takes and the parameter count on one line, then the
    file's record as JSON; alone it writes nothing, and with neither -o nor --info it is a usage error."""
    from tests.test_metrics import sr_model_file
    from tests.test_multistyle import NAMES, multi_file, multi_net

    net = multi_net(styles=len(NAMES))
    multi = multi_file(tmp_path / "multi.safetensors", net)
    assert export_main([str(multi), "--info"]) == 0
    first, record = capsys.readouterr().out.split("\n", 1)
    count = sum(parameter.numel() for parameter in net.parameters())
    assert first == f"{multi}: 3 styles (a, b, c), TransformerNet of {count / 1e6:.2f} M parameters"
    assert json.loads(record) == read_model(multi).metadata
    assert sorted(path.name for path in tmp_path.iterdir()) == ["multi.safetensors"]
    sr = sr_model_file(tmp_path / "x4.safetensors")
    assert export_main([str(sr), "--info"]) == 0
    assert capsys.readouterr().out.startswith(f"{sr}: x4 super-resolution, ")
    with pytest.raises(SystemExit) as usage:
        export_main([str(multi)])
    assert usage.value.code == 2 and "or --info to show what the source holds" in capsys.readouterr().err


def test_info_to_a_closed_pipe_ends_quietly_and_to_a_full_disk_in_one_line(tmp_path: Path) -> None:
    """``--info | head -1`` (a reader that stops early) and stdout on a full disk: the first
    quietly, the second one line, each exit 1 (both were a traceback ending in IndexError)."""
    import subprocess
    import sys

    from tests.helpers import console_script

    model = save_model(tmp_path / "m.safetensors", TransformerNet(channels=8, residual_blocks=1), {"task": "style"})
    export = " ".join([*console_script("stylenet-export"), str(model), "--info"])
    # `true` has closed the pipe long before the command, seconds into its start, prints
    piped = subprocess.run(["bash", "-c", f"set -o pipefail; {export} | true"],
                           capture_output=True, text=True, timeout=120)
    assert (piped.stderr, piped.returncode) == ("", 1)
    with open("/dev/full", "w") as full:
        filled = subprocess.run([*console_script("stylenet-export"), str(model), "--info"], stdout=full,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    assert filled.stderr == "stylenet-export: error: cannot write to stdout: No space left on device\n"
    assert filled.returncode == 1 and sys.platform == "linux"


def test_a_header_is_not_trusted_with_memory_and_its_layout_is_checked_unread(tmp_path: Path) -> None:
    """A header naming 20000 residual blocks or 10^5 channels over a small network's weights is refused
    without a network of that size being built (the listing of a folder read such headers); a layout
    safetensors refuses (bytes the tensors do not cover) is refused by the header alone too."""
    from stylenet.modelfile import read_header

    net = TransformerNet(channels=8, residual_blocks=1)
    blocks = save_model(tmp_path / "blocks.safetensors", net, {"task": "style", "network": {
        "class": "TransformerNet", "channels": 8, "residual_blocks": 20000}})
    channels = save_model(tmp_path / "channels.safetensors", net, {"task": "style", "network": {
        "class": "TransformerNet", "channels": 100000, "residual_blocks": 1}})
    for read in (read_header, read_model):
        with pytest.raises(StylenetError, match="names 20000 residual blocks and holds 30 tensors"):
            read(blocks)
        with pytest.raises(StylenetError, match=r"is \(8, 3, 9, 9\) in the file, the network needs \(100000, 3"):
            read(channels)
    (padded := tmp_path / "padded.safetensors").write_bytes(save_model(tmp_path / "ok.safetensors", net, {
        "task": "style"}).read_bytes() + bytes(64))
    with pytest.raises(StylenetError, match="padded.safetensors' is not a valid stylenet safetensors file"):
        read_header(padded)


def test_model_files_follow_the_umask_like_every_other_output(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        path = save_model(tmp_path / "m.safetensors", TransformerNet(channels=8, residual_blocks=1), {"task": "style"})
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644  # safetensors' own writer leaves 0600: unreadable to a server


def test_export_style_name_renames_each_style_of_a_model_of_several_styles(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One name per style, in the file's order: each record keeps its image and hash, and the network is
    unchanged; another count of names, or a name twice, is refused with nothing written."""
    from tests.test_multistyle import NAMES, multi_file, multi_net

    multi = multi_file(tmp_path / "multi.safetensors", multi_net(styles=len(NAMES)))
    out = tmp_path / "m.safetensors"
    for names, message in (("x", "holds 3 styles (a, b, c): give 3 names, comma-separated, in that order"),
                           ("x,y,x", "style names ['x', 'y', 'x'] are not distinct"),
                           ("Ink,ink,z", "style names ['Ink', 'ink', 'z'] are not distinct (ignoring case"),
                           ("x,../y,z", "style name '../y' must be letters")):
        assert export_main([str(multi), "-o", str(out), "--style-name", names]) == 2
        assert message in capsys.readouterr().err and not out.exists()
    assert export_main([str(multi), "-o", str(out), "--style-name", "ink, brick,sky"]) == 0, capsys.readouterr().err
    before, after = read_model(multi), read_model(out)
    assert after.styles == ["ink", "brick", "sky"]
    assert [{k: v for k, v in record.items() if k != "name"} for record in after.metadata["styles"]] == [
        {k: v for k, v in record.items() if k != "name"} for record in before.metadata["styles"]]
    photo = torch.rand(3, 24, 32)
    for old, new in zip(NAMES, after.styles, strict=True):
        torch.testing.assert_close(after.for_style(new)[1](photo[None]), before.for_style(old)[1](photo[None]))
    assert after.metadata["style_name"] == "multi"  # the run's name, no style's
    # a task=add_style file's top level names the style it added, which is renamed with its record
    added = read_model(multi)
    added.metadata["style_name"] = NAMES[-1]
    save_model(multi, added.net, added.metadata)
    assert export_main([str(multi), "-o", str(tmp_path / "a.safetensors"), "--style-name", "ink,brick,sky"]) == 0
    assert read_model(tmp_path / "a.safetensors").metadata["style_name"] == "sky"


def test_stylize_refuses_a_model_whose_style_name_would_leave_the_output_folder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from stylenet.cli.stylize import main as stylize_main

    torch.manual_seed(0)
    model = save_model(tmp_path / "evil.safetensors", TransformerNet(channels=8, residual_blocks=1),
                       {"task": "style", "style_name": "../../escaped"})  # written by something other than us
    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(photo)
    out = tmp_path / "deep" / "out"
    assert stylize_main([str(photo), "-m", str(model), "-o", str(out), "--device", "cpu"]) == 1
    assert "'../../escaped' cannot be part of a file name" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["evil.safetensors", "photo.png"]  # nothing written


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


@pytest.mark.parametrize("name,zip_format,style", [("mosaic.pth", True, "mosaic"), ("candy.model", False, "candy"),
                                                   ("my mosaic (v2).pth", True, "my_mosaic__v2_")])
def test_pytorch_examples_checkpoints_load(examples_net: ExamplesNet, tmp_path: Path, name: str,
                                           zip_format: bool, style: str) -> None:
    """Named after the file as a style picture names its style: a name output files can hold (spaces and
    brackets came into every stylized file's name, a name stylenet-export --style-name refuses)."""
    state = dict(examples_net.state_dict())
    state["in1.running_mean"] = torch.zeros(32)  # what PyTorch < 0.4 saved for InstanceNorm
    state["in1.running_var"] = torch.ones(32)
    torch.save(state, tmp_path / name, _use_new_zipfile_serialization=zip_format)
    model = read_model(tmp_path / name, task="style")
    assert isinstance(model.net, ExamplesTransformerNet)
    assert model.metadata["style_name"] == style
    image = torch.rand(1, 3, 32, 44)
    with torch.inference_mode():
        expected = (examples_net(image * 255) / 255).clamp(0, 1)
        assert torch.allclose(model.net(image), expected, atol=1e-5)
    # converted once to a stylenet model file, it behaves the same
    assert export_main([str(tmp_path / name), "-o", str(tmp_path / "converted.safetensors")]) == 0
    with torch.inference_mode():
        assert torch.allclose(read_model(tmp_path / "converted.safetensors").net(image), expected, atol=1e-5)


def test_a_pytorch_examples_model_over_the_memory_budget_still_gives_the_one_pass_result(
        examples_net: ExamplesNet, tmp_path: Path) -> None:
    """Such a network cannot run layer by layer, so its tiles get exact InstanceNorm statistics, not a
    thumbnail's (43 dB from one pass here; real photos went down to 20 dB)."""
    torch.save(dict(examples_net.state_dict()), tmp_path / "mosaic.pth")
    image = torch.rand(3, 96, 128)
    one_pass = InferenceModel.from_file(tmp_path / "mosaic.pth", device="cpu", precision="fp32").transform(image)
    bounded = InferenceModel.from_file(tmp_path / "mosaic.pth", device="cpu", precision="fp32", max_memory=10**6)
    assert bounded.max_pixels() < 96 * 128  # in tiles
    error = (bounded.transform(image) - one_pass).pow(2).mean().item()
    assert 10 * math.log10(1 / error) > 60


def test_stylenet_train_checkpoints_load(tmp_path: Path) -> None:
    net = TransformerNet(channels=8, residual_blocks=1)
    state = {f"net.{key}": value for key, value in net.state_dict().items()}
    checkpoint = {"state_dict": state | {"vgg.w": torch.zeros(1)},
                  "hyper_parameters": {"model": net.config, "style": {"name": "wave", "image": "w.jpg"}},
                  "global_step": 7}
    torch.save(checkpoint, tmp_path / "last.ckpt")
    model = read_model(tmp_path / "last.ckpt")
    assert model.metadata["style_name"] == "wave" and model.metadata["steps"] == 7
    export_checkpoint(tmp_path / "last.ckpt", tmp_path / "wave.safetensors")
    assert read_model(tmp_path / "wave.safetensors").metadata["style_name"] == "wave"


def test_a_checkpoint_named_safetensors_loads_as_the_checkpoint_it_is(tmp_path: Path, model_file: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """stylenet reads a file by its content: a stylenet-train checkpoint renamed *.safetensors loads as the
    .ckpt does (torch.load, given the path, once read it as safetensors and refused it: "header too large").
    A safetensors file cut inside its header is still reported by the safetensors reader."""
    net = TransformerNet(channels=8, residual_blocks=1)
    checkpoint = {"state_dict": {f"net.{key}": value for key, value in net.state_dict().items()},
                  "hyper_parameters": {"model": net.config, "style": {"name": "wave", "image": "w.jpg"}},
                  "global_step": 7}
    torch.save(checkpoint, tmp_path / "last.safetensors")
    model = read_model(tmp_path / "last.safetensors")
    assert model.metadata["style_name"] == "wave" and model.metadata["steps"] == 7
    assert all(torch.equal(model.net.state_dict()[key], value) for key, value in net.state_dict().items())
    assert export_main([str(tmp_path / "last.safetensors"), "-o", str(tmp_path / "wave.safetensors")]) == 0
    assert capsys.readouterr().err == "" and read_model(tmp_path / "wave.safetensors").styles == ["wave"]
    (tmp_path / "cut.safetensors").write_bytes(model_file.read_bytes()[:40])
    with pytest.raises(StylenetError, match="cut.safetensors' is not a valid stylenet safetensors file: .*header"):
        read_model(tmp_path / "cut.safetensors")


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
        read_model(path)
    assert not Exploit.marker.exists()
    if protocol != pickle.HIGHEST_PROTOCOL:  # torch's loader rejects newer protocols before reading them
        assert "refusing to load" in str(info.value) and "system" in str(info.value)


def test_a_whole_pickled_network_is_refused_naming_its_class(tmp_path: Path) -> None:
    """``torch.save(net, path)`` (the whole module, not its state_dict): the reason is the class torch would
    have to import, not torch's advice with its terminal bold codes."""
    torch.save(TransformerNet(channels=8, residual_blocks=1), tmp_path / "whole.pth")
    with pytest.raises(StylenetError) as refused:
        read_model(tmp_path / "whole.pth")
    message = str(refused.value)
    assert "refusing to load model file" in message and "\x1b" not in message
    assert "(Unsupported global: GLOBAL stylenet.nets.transformer.TransformerNet was not an allowed global" in message


def test_other_bad_model_files_are_clear_errors(tmp_path: Path, model_file: Path) -> None:
    (tmp_path / "random.pth").write_text("not a model at all\n" * 200)
    (tmp_path / "zero.safetensors").write_bytes(b"")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pth")
    (tmp_path / "models").mkdir()
    cases = {"random.pth": "not a model file: neither safetensors nor a PyTorch checkpoint",
             "zero.safetensors": "empty", "missing.pth": "does not exist", "models": "is a folder: name one model file",
             "foreign.safetensors": "no stylenet metadata", "other.pth": "neither a stylenet model"}
    for name, reason in cases.items():
        with pytest.raises(StylenetError, match=reason) as info:
            read_model(tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "hello.safetensors").write_text("hello world\n")  # torch.load's KeyError: a number, not a reason
    with pytest.raises(StylenetError, match=r"^model file '.*hello.safetensors' is not a model file: neither "
                                            r"safetensors nor a PyTorch checkpoint or state dict$"):
        read_model(tmp_path / "hello.safetensors")
    with pytest.raises(StylenetError, match="is a 'style' model, not a 'sr' model"):
        read_model(model_file, task="sr")


def test_a_model_file_that_cannot_be_read_whole_is_one_line_saying_why(
        tmp_path: Path, model_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Each said something else: another user's file was a PermissionError traceback (stylenet-export --info
    an IndexError after it), a checkpoint cut short "not a model file ... [Errno 22] Invalid argument", and
    a checkpoint of a task this stylenet does not know did not name the file."""
    net = TransformerNet(channels=8, residual_blocks=1)
    checkpoint = {"state_dict": {f"net.{key}": value for key, value in net.state_dict().items()},
                  "hyper_parameters": {"model": net.config, "style": {"name": "wave"}}, "global_step": 7}
    torch.save(checkpoint, whole := tmp_path / "last.ckpt")
    (cut := tmp_path / "cut.ckpt").write_bytes(whole.read_bytes()[:20000])
    with pytest.raises(StylenetError, match=rf"^model file {re.escape(repr(str(cut)))} is truncated or damaged: "
                                            r"torch.save's zip archive in it cannot be read$"):
        read_model(cut)
    torch.save({**checkpoint, "hyper_parameters": {**checkpoint["hyper_parameters"], "task": "colorize"}},
               future := tmp_path / "future.ckpt")
    with pytest.raises(StylenetError, match=rf"^checkpoint {re.escape(repr(str(future)))} is of an unknown task "
                                            r"'colorize' \(expected one of \['sr', 'style'\]\)$"):
        read_model(future)
    opened = Path.open

    def refused(self: Path, *args: object, **kwargs: object) -> object:  # another user's 0600 file (we are root)
        if self == model_file:
            raise PermissionError(13, "Permission denied", str(self))
        return opened(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refused)
    with pytest.raises(StylenetError, match=rf"^cannot read model file {re.escape(repr(str(model_file)))}: "
                                            "Permission denied$"):
        read_model(model_file)
    assert export_main([str(model_file), "--info"]) == 2
    assert capsys.readouterr().err == f"stylenet-export: error: cannot read model file {str(model_file)!r}: " \
                                      "Permission denied\n"


def with_header(model_file: Path, path: Path, **changes: object) -> Path:
    """A copy of ``model_file`` (same weights) whose stylenet header has ``changes``: what another stylenet
    (or another tool) may write."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(model_file), "pt") as handle:
        record = json.loads(handle.metadata()["stylenet"])
    save_file(load_file(str(model_file)), str(path), metadata={"stylenet": json.dumps({**record, **changes})})
    return path


def test_a_model_file_of_a_newer_format_is_refused_not_misread(tmp_path: Path, model_file: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """format_version 2 once loaded silently, and stylenet-export rewrote it as version 1: now one line names
    the file and says a newer stylenet made it (as a shard manifest of a newer version is refused)."""
    newer = with_header(model_file, tmp_path / "newer.safetensors", format_version=2, stylenet_version="2.0.0")
    with pytest.raises(StylenetError, match=r"^model file '.*newer\.safetensors' was made by a newer stylenet "
                                            r"\(stylenet 2\.0\.0, format version 2\); .* upgrade stylenet"):
        read_model(newer)
    assert export_main([str(newer), "-o", str(tmp_path / "again.safetensors")]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "newer.safetensors' was made by a newer stylenet" in line and not (tmp_path / "again.safetensors").exists()
    for version in (None, "1", 0):
        with pytest.raises(StylenetError, match=f"has no valid format version \\(got {version!r}\\)"):
            read_model(with_header(model_file, tmp_path / "odd.safetensors", format_version=version))
    assert read_model(with_header(model_file, tmp_path / "same.safetensors", format_version=1)).styles == ["test"]


def test_weights_that_do_not_fit_the_network_name_the_first_mismatch(tmp_path: Path, model_file: Path) -> None:
    """The line used to stop at torch's heading ("Error(s) in loading state_dict for TransformerNet:"), its
    reasons on the lines after it: now the first mismatching tensor, its shapes, and how many more."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(model_file))
    with safe_open(str(model_file), "pt") as handle:
        metadata = handle.metadata()
    first = next(iter(TransformerNet(channels=8, residual_blocks=1).state_dict()))
    save_file({key: value for key, value in tensors.items() if key != first}, str(tmp_path / "missing.safetensors"),
              metadata=metadata)
    save_file({**tensors, "extra.weight": torch.zeros(3)}, str(tmp_path / "extra.safetensors"), metadata=metadata)
    wide = with_header(model_file, tmp_path / "wide.safetensors",
                       network={"class": "TransformerNet", "channels": 16, "residual_blocks": 1, "norm": "instance"})
    for dtype in (torch.int32, torch.uint16, torch.complex64):  # cast to floats without a word: a grey picture
        save_file({key: value.to(dtype) for key, value in tensors.items()}, str(tmp_path / f"{dtype}.safetensors"),
                  metadata=metadata)
    reasons = {wide: rf"{first} is \(8, 3, 9, 9\) in the file, the network needs \(16, 3, 9, 9\) \(and \d+ more\)$",
               **{tmp_path / f"torch.{name}.safetensors": rf"{first} holds {name} values in the file, the network "
                                                          r"needs floating point \(and \d+ more\)$"
                  for name in ("int32", "uint16", "complex64")},
               tmp_path / "missing.safetensors": f"{first} is missing$",
               tmp_path / "extra.safetensors": "extra.weight is not part of the network$"}
    for path, reason in reasons.items():
        for read in (read_model, read_header):  # the web page's listing too
            with pytest.raises(StylenetError, match=f"^model file {re.escape(repr(str(path)))} does not match its "
                                                    f"network: {reason}"):
                read(path)


# ------------------------------------------------------------------------------------------ torch.hub


def test_torch_hub_loads_a_local_checkpoint(model_file: Path) -> None:
    model = torch.hub.load(str(ROOT), "style_model", path=str(model_file), device="cpu", source="local")
    image = torch.rand(3, 21, 34)
    assert model.name == "test"
    assert model.stylize(image, strength=0.5).shape == (3, 21, 34)
    # a super-resolution model: load_model's own arguments (its refusal says task='sr')
    torch.manual_seed(1)
    sr = save_model(model_file.with_name("sr.safetensors"), SuperResolutionNet(4, channels=8, residual_blocks=1),
                    {"task": "sr", "factor": 4})
    upscaler = torch.hub.load(str(ROOT), "style_model", path=str(sr), device="cpu", task="sr", max_memory=1 << 30,
                              source="local")
    assert upscaler.stylize(image).shape == (3, 84, 136) and upscaler.max_memory == 1 << 30
