"""End-to-end tests of ``stylenet-stylize``: batches, bad inputs, output paths, image modes."""

from __future__ import annotations

import io
import os
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stylenet.cli.stylize import main, parse_bytes
from stylenet.errors import StylenetError, describe
from stylenet.image import load_image
from stylenet.modelfile import save_model
from stylenet.nets import TransformerNet

ROOT = Path(__file__).resolve().parents[1]


def make_model(path: Path, style: str = "test", task: str = "style", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = TransformerNet(channels=8, residual_blocks=1)
    return save_model(path, net, {"task": task, "style_name": style})


def make_image(path: Path, size: tuple[int, int] = (40, 30), mode: str = "RGB", seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    bands = len(Image.new(mode, (1, 1)).getbands())
    array = rng.integers(0, 256, (size[1], size[0], bands), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[..., 0] if bands == 1 else array, mode).save(path)
    return path


def bomb_png(path: Path, width: int = 20000, height: int = 20000) -> Path:
    """A valid 1x1 PNG whose header (with a correct CRC) claims width x height pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_model(tmp_path / "models" / "test.safetensors")


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_stylizes_a_file_to_a_file(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_image(tmp_path / "in.png", size=(37, 23))
    code, out, err = run(capsys, source, "--model", model, "-o", tmp_path / "out.jpg", "--quality", 80)
    assert code == 0, err
    assert out.strip().startswith("1 done, 0 failed, ") and out.strip().endswith("s/megapixel")
    assert err == ""  # no progress output when stderr is not a terminal
    with Image.open(tmp_path / "out.jpg") as image:
        assert image.format == "JPEG" and image.size == (37, 23)
        written = image.quantization
    Image.new("RGB", (8, 8)).save(tmp_path / "q80.jpg", quality=80)  # a JPEG's tables follow its quality alone
    with Image.open(tmp_path / "q80.jpg") as reference:
        assert written == reference.quantization  # --quality reached the writer


def test_folders_globs_and_several_models(tmp_path: Path, model: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    second = make_model(tmp_path / "models" / "other.safetensors", style="other", seed=1)
    make_image(tmp_path / "photos" / "a.png")
    make_image(tmp_path / "photos" / "sub" / "a.png", seed=1)  # same stem, other folder
    make_image(tmp_path / "loose" / "b.jpg", seed=2)
    code, out, err = run(capsys, tmp_path / "photos", str(tmp_path / "loose" / "*.jpg"),
                         "--model", model, "-m", second, "-o", tmp_path / "out", "--name",
                         "{stem}_{style}.webp")
    assert code == 0, err
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.*"))
    assert written == ["a_other.webp", "a_test.webp", "b_other.webp", "b_test.webp",
                       "sub/a_other.webp", "sub/a_test.webp"]
    assert out.startswith("6 done, 0 failed")


def test_two_model_files_of_one_style_name_are_told_apart_by_model(tmp_path: Path, model: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A sweep's model files share their style's name: by default their outputs would collide, which
    is refused naming both files; ``{model}`` in --name tells them apart."""
    twin = make_model(tmp_path / "run2" / "weight5.safetensors", seed=1)  # style "test", as `model`'s
    photo = make_image(tmp_path / "a.png")
    code, out, err = run(capsys, photo, "-m", model, "-m", twin, "-o", tmp_path / "out")
    assert code == 1 and out.startswith("1 done, 1 failed")
    assert f"(by {str(model)!r} style 'test' and {str(twin)!r} style 'test'); add {{model}} to --name" in err
    code, out, err = run(capsys, photo, "-m", model, "-m", twin, "-o", tmp_path / "both",
                         "--name", "{stem}_{style}_{model}.png")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "both").iterdir()) == ["a_test_test.png", "a_test_weight5.png"]
    same_stem = make_model(tmp_path / "run3" / "test.safetensors", seed=2)
    code, _, err = run(capsys, photo, "-m", model, "-m", same_stem, "-o", tmp_path / "three",
                       "--name", "{stem}_{model}.png")
    assert code == 1 and err.strip().endswith("style 'test'); give each model its own -o folder")
    dots = make_model(tmp_path / "..safetensors", style="dots")  # a name {model} cannot use, and need not
    code, _, err = run(capsys, photo, "-m", dots, "-o", tmp_path / "dots")
    assert code == 0 and [p.name for p in (tmp_path / "dots").iterdir()] == ["a_dots.png"], err
    code, _, err = run(capsys, photo, "-m", dots, "-o", tmp_path / "dots", "--name", "{stem}_{model}.png")
    assert code == 1 and "model file name '.' cannot be part of a file name ({model} in --name)" in err


def test_photos_of_one_name_and_two_formats_are_told_apart_by_ext(tmp_path: Path, model: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """a.png and a.jpg in one folder would both become a_test.png: refused, the line pointing at {ext},
    which keeps both."""
    photos = tmp_path / "photos"
    make_image(photos / "a.png")
    make_image(photos / "a.jpg")
    code, out, err = run(capsys, photos, "-m", model, "-o", tmp_path / "out")
    assert code == 1 and out.startswith("1 done, 1 failed") and err.strip().endswith("); add {ext} to --name")
    code, _, err = run(capsys, photos, "-m", model, "-o", tmp_path / "both", "--name", "{stem}.{ext}_{style}.png")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "both").iterdir()) == ["a.jpg_test.png", "a.png_test.png"]


def test_quality_out_of_range_is_one_short_line(tmp_path: Path, model: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    photo = make_image(tmp_path / "a.png")
    with pytest.raises(SystemExit) as stop:
        run(capsys, photo, "-m", model, "-o", tmp_path / "a.jpg", "--quality", "0")
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        "argument --quality: must be between 1 and 100, got 0")


def test_an_output_ending_in_a_slash_is_a_folder_even_with_a_dot_in_its_name(
        tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_image(tmp_path / "a.png")
    code, _, err = run(capsys, source, "--model", model, "-o", f"{tmp_path / 'res.v2'}/")
    assert code == 0, err
    assert [p.name for p in (tmp_path / "res.v2").iterdir()] == ["a_test.png"]


def test_an_animation_is_said_to_give_its_first_frame(tmp_path: Path, model: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """An animated GIF became one still without a word: a note says the first of its frames was stylized;
    that frame is what was read, and a one-frame GIF gets no note."""
    frames = [Image.fromarray(np.full((24, 32, 3), 40 * index, np.uint8)) for index in range(4)]
    frames[0].save(anim := tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    frames[2].save(still := tmp_path / "still.gif")
    loaded = load_image(anim)
    assert loaded.frames == 4 and int(loaded.rgb.max() * 255) == 0 and load_image(still).frames == 1
    code, _, err = run(capsys, anim, "--model", model, "-o", tmp_path / "anim.png")
    assert code == 0 and err == ("stylenet-stylize: note: anim.gif holds 4 frames: only the first is stylized (a "
                                 "video file, .mp4 or .mkv, has each of its frames stylized)\n"), err
    code, _, err = run(capsys, still, "--model", model, "-o", tmp_path / "still.png")
    assert code == 0 and "note" not in err, err
    # a camera's MPO JPEG holds a preview (or a depth map) as a second picture: a photo, no animation
    frames[1].save(camera := tmp_path / "camera.jpg", format="MPO", save_all=True, append_images=[frames[2]])
    code, _, err = run(capsys, camera, "--model", model, "-o", tmp_path / "camera.png")
    assert code == 0 and "note" not in err, err


def test_alpha_is_kept_bit_exactly(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_image(tmp_path / "cutout.png", size=(50, 41), mode="RGBA")
    code, _, err = run(capsys, source, "--model", model, "-o", tmp_path / "out.png", "--strength", "0.5")
    assert code == 0, err
    with Image.open(source) as before, Image.open(tmp_path / "out.png") as after:
        assert after.mode == "RGBA" and after.size == before.size
        assert np.array_equal(np.asarray(after)[..., 3], np.asarray(before)[..., 3])
    # JPEG holds no alpha: the output is written, and the run says what it lost, only where something was
    code, _, err = run(capsys, source, "--model", model, "-o", tmp_path / "out.jpg")
    assert code == 0 and err == ("stylenet-stylize: note: cutout.png: its transparency is not in out.jpg (JPEG "
                                 "holds none: write .png or .webp to keep it)\n"), err
    # nor does BMP: Pillow would write the alpha as the 32-bit layout's reserved byte, which readers ignore
    code, _, err = run(capsys, source, "--model", model, "-o", tmp_path / "out.bmp")
    assert code == 0 and err == ("stylenet-stylize: note: cutout.png: its transparency is not in out.bmp (BMP "
                                 "holds none: write .png or .webp to keep it)\n"), err
    with Image.open(tmp_path / "out.bmp") as written:
        assert written.mode == "RGB" and written.size == (50, 41)
    opaque = tmp_path / "opaque.png"
    with Image.open(source) as image:
        image.putalpha(255)
        image.save(opaque)
    code, _, err = run(capsys, opaque, "--model", model, "-o", tmp_path / "opaque.jpg")
    assert code == 0 and err == "", err


def test_inputs_after_a_double_dash_may_look_like_options(
        tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`--` ends the options, as in every Unix tool: `-- -p.png` alone was 'the following arguments are
    required: inputs' (Python's intermixed parsing loses what follows it), and images still mix with options."""
    dashed, plain = make_image(tmp_path / "-p.png"), make_image(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "-m", model, "-o", "one/", "--", "-p.png")
    assert code == 0 and err == "", err
    code, _, err = run(capsys, plain, "-m", model, "-o", "two/", "--", "-p.png", "--scale")
    assert code == 1 and err == "stylenet-stylize: error: no such file or folder '--scale'\n", err
    assert sorted(path.name for path in (tmp_path / "one").iterdir()) == ["-p_test.png"]
    assert sorted(path.name for path in (tmp_path / "two").iterdir()) == ["-p_test.png", "a_test.png"]
    assert dashed.is_file()


def test_a_scale_beyond_the_free_memory_is_refused_before_it_is_made(
        tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """--scale 1000 on a 64x48 photo asked for 74 GB and came back as the allocator's error (or the OOM
    killer): the image and output's float32 bytes, 3 x 4 x (1 + 1) per pixel, are held against the free memory
    first, and the next input goes on."""
    monkeypatch.setattr("stylenet.inference.memory.available_memory", lambda device: 5_000_000)
    big, small = make_image(tmp_path / "big.png", size=(64, 48)), make_image(tmp_path / "small.png", size=(32, 24))
    code, _, err = run(capsys, big, small, "--model", model, "-o", f"{tmp_path / 'out'}/", "--scale", 10)
    assert code == 1 and err == (f"stylenet-stylize: error: {big}: resized to 640x480 px, the image and its output "
                                 "alone need 7.37 MB of memory, but 5 MB is free: ask for a smaller size "
                                 "(on the command line: --scale, --max-size)\n"), err
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["small_test.png"]  # 320x240: 1.8 MB


def test_resizing_and_tiling_options(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_image(tmp_path / "big.png", size=(160, 120))
    code, _, err = run(capsys, source, "--model", model, "-o", tmp_path / "small.png", "--max-size", 100,
                       "--tile", 64, "--tile-overlap", 16, "--precision", "bf16", "--device", "cpu")
    assert code == 0, err
    with Image.open(tmp_path / "small.png") as image:
        assert image.size == (100, 75)
    code, _, err = run(capsys, source, "--model", model, "-o", tmp_path / "wide.png", "--tile", 64,
                       "--tile-overlap", 48)
    assert code == 0 and err == ("stylenet-stylize: note: --tile-overlap 48 is more than half of --tile 64: tiles "
                                 "overlap by 32 px at most\n"), err
    code, _, err = run(capsys, source, "--model", model, "-o", tmp_path / "half.png", "--scale", 0.5)
    assert code == 0, err
    with Image.open(tmp_path / "half.png") as image:
        assert image.size == (80, 60)


def test_every_bad_input_is_reported_and_the_batch_goes_on(tmp_path: Path, model: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    photos = tmp_path / "photos"
    make_image(photos / "good1.png")
    make_image(photos / "good2.jpg", seed=1)
    (photos / "notes.png").write_text("this is not an image")
    (photos / "zero.png").write_bytes(b"")
    full = make_image(tmp_path / "full.png", size=(64, 64)).read_bytes()
    (photos / "truncated.png").write_bytes(full[: len(full) // 2])
    bomb_png(photos / "bomb.png")
    (tmp_path / "empty").mkdir()
    sr_model = make_model(tmp_path / "sr.safetensors", task="sr")
    random_model = tmp_path / "random.safetensors"
    random_model.write_bytes(bytes(range(256)) * 8)
    code, out, err = run(capsys, photos, tmp_path / "empty", tmp_path / "missing.png",
                         "--model", model, "-m", sr_model, "-m", random_model, "-o", tmp_path / "out")
    assert code == 1
    lines = err.strip().splitlines()
    expected = {"notes.png": "not a recognised image", "zero.png": "empty file", "truncated.png": "truncated",
                "bomb.png": "decompression bomb", "empty": "no images found", "missing.png": "no such file",
                "sr.safetensors": "'sr' model, not a 'style' model", "random.safetensors": "not a model file"}
    assert len(lines) == len(expected)
    for name, reason in expected.items():
        assert [line for line in lines if name in line and reason in line], (name, err)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good1_test.png", "good2_test.png"]
    assert out.startswith(f"2 done, {len(expected)} failed")


def test_output_paths_are_validated_before_any_work(tmp_path: Path, model: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    source = make_image(tmp_path / "in.png")
    code, _, err = run(capsys, source, "--model", model, "-o", tmp_path / "out.xyz")
    assert code == 1 and "out.xyz" in err and "not a writable format" in err
    assert not (tmp_path / "out.xyz").exists()
    code, _, err = run(capsys, source, "--model", model, "-o", tmp_path / "out", "--name", "{stem}.png")
    assert code == 0
    second = make_image(tmp_path / "in2.png")
    code, _, err = run(capsys, source, second, "--model", model, "-o", tmp_path / "x.png")
    assert code == 2 and "names one file" in err
    for bad in ("{nope}.png", "{stem.upper}.png", "{style[0]}.png", "{}.png"):  # only the plain names
        with pytest.raises(SystemExit):
            main([str(source), "--model", str(model), "-o", str(tmp_path), "--name", bad])
        assert "only {stem}, {ext}, {style} and {model} can be used" in capsys.readouterr().err
    for dressed in ("{stem!r}.png", "x_{style:>300}.png"):  # a quoted name, a name padded with spaces
        with pytest.raises(SystemExit):
            main([str(source), "--model", str(model), "-o", str(tmp_path), "--name", dressed])
        field = dressed.partition("{")[2].partition("!")[0].partition(":")[0]
        assert f"({{{field}}} takes no conversion or format)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(source), "--model", str(model), "-o", str(tmp_path / "s.png"), "--strength", "abc"])
    assert "argument --strength: invalid float value: 'abc'" in capsys.readouterr().err
    for escape in (str(tmp_path / "abs_{stem}.png"), "../up_{stem}.png", "sub/../../up_{stem}.png"):
        with pytest.raises(SystemExit):  # written inside -o, never beside or above it
            main([str(source), "--model", str(model), "-o", str(tmp_path / "o"), "--name", escape])
        assert "a name inside the output folder, not a path out of it" in capsys.readouterr().err
    assert not list(tmp_path.glob("*_in.png")) and not (tmp_path / "o").exists()
    assert main([str(source), "--model", str(model), "-o", str(tmp_path / "o"), "--name", "sub/{stem}.png"]) == 0
    assert (tmp_path / "o" / "sub" / "in.png").is_file()
    capsys.readouterr()
    dots = make_image(tmp_path / "dots" / "d.png").rename(tmp_path / "dots" / "...png")  # its stem is ".."
    code, _, err = run(capsys, dots, "--model", model, "-o", tmp_path / "d" / "deep", "--name", "{stem}/{style}.png")
    assert code == 1 and "gives '...png' an output outside -o" in err
    assert not (tmp_path / "d").exists()
    assert main([str(source), "--model", str(model), "-o", str(tmp_path / "big"), "--max-size", "1" + "0" * 400]) == 0
    capsys.readouterr()
    for bad in ("nan", "inf", "0"):
        with pytest.raises(SystemExit):
            main([str(source), "--model", str(model), "-o", str(tmp_path), "--scale", bad])
        assert "--scale: must be a finite number > 0" in capsys.readouterr().err
    for huge in ("1e5", "1e300"):  # refused by the size it makes, before any allocation
        code, _, err = run(capsys, source, "--model", model, "-o", tmp_path / "huge.png", "--scale", huge)
        assert code == 1 and f"--scale {float(huge):g} makes this" in err and "px, beyond 4294967296 pixels" in err
    code, _, err = run(capsys, source, "--model", model, "-o", tmp_path / ("n" * 300 + ".png"))
    assert code == 2 and "File name too long" in err
    (tmp_path / "afile").write_text("a file without an extension, not a folder")
    code, _, err = run(capsys, source, second, "--model", model, "-o", tmp_path / "afile")
    assert code == 2 and err.strip().endswith(f"-o {str(tmp_path / 'afile')!r} is a file, not a folder")
    code, _, err = run(capsys, source, "--model", model, "-o", tmp_path / "afile" / "x.png")
    assert code == 1 and "'afile' is a file, not a folder" in err.replace(str(tmp_path) + os.sep, "")


def test_an_input_is_never_overwritten(tmp_path: Path, model: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    source = make_image(tmp_path / "photo_test.png")
    before = source.read_bytes()
    code, _, err = run(capsys, source, "--model", model, "-o", source)
    assert code == 1 and "refusing to overwrite input" in err
    code, _, err = run(capsys, source, "--model", model, "-o", tmp_path,
                       "--name", "{stem}.png")
    assert code == 1 and "refusing to overwrite input" in err
    assert source.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no half-written files


def test_a_second_run_into_an_output_folder_inside_the_photos_takes_no_output_for_a_photo(
        tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Run twice, -o inside the folder made out/out/photo_test_test.png; -o the folder itself made
    photo_test_test.png and refusals, one more file each run."""
    photos = tmp_path / "photos"
    make_image(photos / "photo.png")
    make_image(photos / "sub" / "other.png", seed=1)
    for attempt in range(2):
        code, out, err = run(capsys, photos, "-m", model, "-o", photos / "out")
        assert code == 0 and out.startswith("2 done, 0 failed"), err
        assert ("left out 2 file(s)" in err) is (attempt == 1)
    assert sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*.png")) == [
        "out/photo_test.png", "out/sub/other_test.png", "photo.png", "sub/other.png"]
    loose = make_image(tmp_path / "loose.png", seed=2)
    code, out, err = run(capsys, photos / "sub", loose, "-m", model, "-o", photos / "sub")
    assert code == 1 and out.startswith("1 done, 1 failed"), err
    assert (f"error: folder {str(photos / 'sub')!r} is also -o: a second run would take this run's outputs for "
            f"inputs; give -o a folder of its own, such as {str(photos / 'sub' / 'out') + os.sep!r}") in err
    assert sorted(p.name for p in (photos / "sub").iterdir()) == ["loose_test.png", "other.png"]
    # a recursive glob run twice took out/photo_test.png for a photo (out/photo_test_test.png, then a refusal)
    shots = tmp_path / "shots"
    make_image(shots / "a.png")
    for attempt in range(2):
        code, out, err = run(capsys, str(shots / "**" / "*.png"), "-m", model, "-o", shots / "out")
        assert code == 0 and out.startswith("1 done, 0 failed"), err
        assert ("left out 1 file(s) matching" in err) is (attempt == 1)
    assert sorted(p.relative_to(shots).as_posix() for p in shots.rglob("*.png")) == ["a.png", "out/a_test.png"]
    # -o the folder above ('*.png' -o .): no output of its own among the matches, none left out
    code, out, err = run(capsys, str(shots / "*.png"), "-m", model, "-o", tmp_path)
    assert code == 0 and out.startswith("1 done, 0 failed") and (tmp_path / "a_test.png").is_file(), err
    # a glob of folders: "no files match" said nothing of what it matched
    code, _, err = run(capsys, str(tmp_path / "sho*"), "-m", model, "-o", tmp_path / "elsewhere")
    assert code == 1 and f"matches folders only (1, such as {str(shots)!r}): name them as inputs" in err


def test_a_malicious_model_is_refused_and_never_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as handle:
        pickle.dump({"conv1.conv2d.weight": Exploit()}, handle, protocol=2)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    code, _, err = run(capsys, make_image(tmp_path / "in.png"), "--model", evil, "-o", tmp_path / "out.png")
    assert code == 1 and "refusing to load model file" in err and "evil.pth" in err
    assert not marker.exists()


def test_keep_gray_writes_grey_files(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--keep-gray: a greyscale input comes back as a greyscale file (L, LA, 16-bit grey), with the
    values the Python API gives (to a level)."""
    from stylenet import load_model

    grey = make_image(tmp_path / "in" / "grey.png", mode="L")
    make_image(tmp_path / "in" / "grey_alpha.png", mode="LA", seed=1)
    levels = np.random.default_rng(2).integers(0, 65536, (30, 40), dtype=np.uint16)
    Image.fromarray(levels).save(tmp_path / "in" / "grey16.png")  # Pillow's I;16
    code, _, err = run(capsys, tmp_path / "in", "-m", model, "-o", tmp_path / "out", "--keep-gray",
                       "--precision", "fp32", "--device", "cpu")
    assert code == 0, err
    outputs = {path.name.split("_test")[0]: Image.open(path) for path in (tmp_path / "out").iterdir()}
    assert {name: image.mode for name, image in outputs.items()} == {
        "grey": "L", "grey_alpha": "LA", "grey16": "I;16"}, outputs
    expected = load_model(model, device="cpu", precision="fp32").stylize(Image.open(grey), keep_gray=True)
    difference = np.abs(np.asarray(outputs["grey"], dtype=int) - np.asarray(expected, dtype=int))
    assert difference.max() == 0  # the CLI's file is the API's image
    for suffix, mode in ((".jpg", "L"), (".bmp", "L"), (".webp", "RGBA")):  # formats without grey + alpha
        target = tmp_path / f"grey_alpha{suffix}"
        code, _, err = run(capsys, tmp_path / "in" / "grey_alpha.png", "-m", model, "-o", target, "--keep-gray")
        assert code == 0 and Image.open(target).mode == mode, (suffix, err)


def test_a_grey_photos_own_icc_profile_is_kept_on_its_grey_output(tmp_path: Path, model: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """--keep-gray writes a grey file: the photo's grey profile describes it, and is kept (it was dropped, as
    a profile of another space than RGB); a colour output leaves it out."""
    from tests.test_image import _srgb_icc

    profile = bytearray(_srgb_icc())
    profile[16:20] = b"GRAY"
    photo = tmp_path / "grey.jpg"
    Image.open(make_image(tmp_path / "grey.png", mode="L")).save(photo, icc_profile=bytes(profile))
    for keep_gray, name, expected in ((["--keep-gray"], "kept", bytes(profile)), ([], "colour", None)):
        for suffix in (".png", ".jpg", ".tif", ".webp"):  # WebP writes colour: no grey profile there
            target = tmp_path / f"{name}{suffix}"
            code, _, err = run(capsys, photo, "-m", model, "-o", target, *keep_gray)
            assert code == 0, err
            assert Image.open(target).info.get("icc_profile") == (None if suffix == ".webp" else expected), target


def test_an_output_beyond_its_formats_largest_side_is_refused_before_the_network_runs(
        tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A panorama's WebP failed after the whole network pass, as the encoder's "error 5"; a JPEG beyond
    65500 px as "broken data stream". Refused first; the other outputs are written."""
    from stylenet.inference import InferenceModel

    wide = tmp_path / "wide.png"
    Image.fromarray(np.zeros((8, 16400, 3), np.uint8)).save(wide)
    ran: list[int] = []
    process = InferenceModel.process
    monkeypatch.setattr(InferenceModel, "process", lambda self, *a, **k: ran.append(1) or process(self, *a, **k))
    code, _, err = run(capsys, wide, "-m", model, "-o", tmp_path / "wide.webp")
    assert code == 1 and not ran and not (tmp_path / "wide.webp").exists()
    assert "cannot write image '" in err and "wide.webp': 16400x8 px is beyond WEBP's largest side, 16383 px" in err
    code, _, err = run(capsys, wide, "-m", model, "-o", tmp_path / "wide.jpg", "--scale", "4")
    assert code == 1 and not ran and "65600x32 px is beyond JPEG's largest side, 65500 px" in err
    code, _, err = run(capsys, wide, "-m", model, "-o", tmp_path / "out", "--name", "{stem}.webp", "--max-size",
                       "16383")
    assert code == 0 and ran and Image.open(tmp_path / "out" / "wide.webp").size == (16383, 8), err


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_command_writes_what_the_python_api_gives(tmp_path: Path, model: Path, precision: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The command holds an 8-bit photo as its levels while the network runs and hands the network
    ``k / 255`` as the API does, so its file is the API's image bit for bit, even for a photo of low
    contrast, whose InstanceNorm amplifies any error of the input (held as float16, it was up to
    8 levels off)."""
    from stylenet import load_model

    rng = np.random.default_rng(3)
    dim = (rng.integers(0, 40, (48, 64, 3)) + 100).astype(np.uint8)  # 100-139: a 15% contrast
    Image.fromarray(dim).save(tmp_path / "dim.png")
    code, _, err = run(capsys, tmp_path / "dim.png", "-m", model, "-o", tmp_path / "out.png",
                       "--precision", precision, "--device", "cpu")
    assert code == 0, err
    expected = load_model(model, device="cpu", precision=precision).stylize(Image.open(tmp_path / "dim.png"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.asarray(expected))


def test_max_pixels_guards_against_bombs_and_can_be_raised(tmp_path: Path, model: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """An image over --max-pixels is refused before it is decoded, and the line says which setting lets
    a genuinely large photo through (the default is the library's limit)."""
    from stylenet.cli.stylize import build_parser
    from stylenet.image import DEFAULT_MAX_PIXELS

    photo = make_image(tmp_path / "in.png")  # 40 x 30 = 1200 pixels
    code, _, err = run(capsys, photo, "-m", model, "-o", tmp_path / "small.png", "--max-pixels", "1000")
    assert code == 1 and "40x30 = 1200 pixels exceeds the limit of 1000" in err and "--max-pixels" in err
    assert not (tmp_path / "small.png").exists()
    assert run(capsys, photo, "-m", model, "-o", tmp_path / "ok.png", "--max-pixels", "1200")[0] == 0
    assert f"(default: {DEFAULT_MAX_PIXELS})" in " ".join(build_parser().format_help().split())


def test_max_pixels_beyond_pillow_s_own_limit_is_ours_to_enforce(tmp_path: Path, model: Path,
                                                                 capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow refuses more than twice its ``MAX_IMAGE_PIXELS`` (179 MP) as it opens a file: a panorama of
    200 MP with ``--max-pixels 250000000`` gets past it to its decoding (here: a header with no pixels
    behind it), while ``--max-pixels`` itself still refuses a larger one before any decoding."""
    from tests.helpers import png_with_header_size

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # the command raises it: put back after
    panorama = tmp_path / "panorama.png"
    panorama.write_bytes(png_with_header_size(20_000, 10_000))
    code, _, err = run(capsys, panorama, "-m", model, "-o", tmp_path / "out.png", "--max-pixels", "250000000")
    assert code == 1 and "panorama.png" in err and "bomb" not in err and "exceeds" not in err, err
    code, _, err = run(capsys, panorama, "-m", model, "-o", tmp_path / "out.png", "--max-pixels", "190000000")
    assert code == 1 and "20000x10000 = 200000000 pixels exceeds the limit of 190000000" in err, err


def test_parse_bytes() -> None:
    assert parse_bytes("2GB") == 2 * 10**9
    assert parse_bytes("512MiB") == 512 * 2**20
    assert parse_bytes("1e6") == 10**6
    for bad in ("", "lots", "-1GB", "3 parsecs", "0.5", "1e400"):
        with pytest.raises(Exception, match="invalid size"):
            parse_bytes(bad)


def test_runs_without_hydra_or_lightning(tmp_path: Path, model: Path) -> None:
    """The CLI (here through scripts/stylize.py's entry point) must start without Hydra or Lightning."""
    source = make_image(tmp_path / "in.png")
    argv = ["stylize", str(source), "--model", str(model), "-o", str(tmp_path / "o.png")]
    code = (
        "import sys, runpy\n"
        f"sys.argv = {argv!r}\n"
        "try:\n"
        f"    runpy.run_path({str(ROOT / 'scripts' / 'stylize.py')!r}, run_name='__main__')\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "heavy = {'hydra', 'omegaconf', 'pytorch_lightning', 'lightning', 'lightning_fabric'}\n"
        "assert not heavy & {m.split('.')[0] for m in sys.modules}, sorted(sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "o.png").is_file()


# ------------------------------------------------------------------ -m as the README writes it (issue 13.1)


def test_the_model_option_before_the_photo_works_as_the_readme_writes_it(
        tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_image(tmp_path / "photo.jpg")
    code, _, err = run(capsys, "-m", model, source, "-o", tmp_path / "photo_my_style.png")
    assert code == 0, err
    assert (tmp_path / "photo_my_style.png").is_file()
    # several models: -m repeated; images may stand before, between and after the options
    second = make_model(tmp_path / "models" / "other.safetensors", style="other", seed=1)
    late = make_image(tmp_path / "late.png", seed=1)
    code, out, err = run(capsys, source, "-m", model, "--model", second, late, "-o", tmp_path / "out")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "late_other.png", "late_test.png", "photo_other.png", "photo_test.png"]
    assert out.startswith("4 done, 0 failed")


def test_a_second_model_after_one_m_is_a_usage_error_that_says_what_to_write(
        tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    second = make_model(tmp_path / "models" / "other.safetensors", style="other", seed=1)
    source = make_image(tmp_path / "photo.jpg")
    with pytest.raises(SystemExit) as exit_info:
        main(["-m", str(model), str(second), str(source), "-o", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"{str(second)!r} is a model file, not an image" in err
    assert f"-m {model} -m {second}" in err
    assert not (tmp_path / "out").exists()
    for argv, said in ([str(model), "-m", str(model)], "is given with -m already"), (
            ["-m", str(model), "-m", str(tmp_path / "models" / ".." / "models" / "test.safetensors")],
            "is given twice with -m"):  # the same file: no hint to repeat it, no outputs written twice
        with pytest.raises(SystemExit):
            main([*argv, str(source), "-o", str(tmp_path / "out")])
        assert said in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------- every input isolated (issue 13.4)


def three_photos(folder: Path) -> list[Path]:
    """Three inputs of distinct sizes, so that a fault can pick one out by its shape too."""
    return [make_image(folder / f"{name}.png", size=size, seed=i)
            for i, (name, size) in enumerate((("first", (40, 30)), ("odd", (33, 21)), ("last", (36, 28))))]


def inject(monkeypatch: pytest.MonkeyPatch, where: str, error: BaseException, bad: Path) -> None:
    """Make one step raise ``error`` for the input ``bad`` only: decoding it ("load"), running the
    network on it ("process", picked by its size) or writing its output ("save")."""
    import stylenet.image as image_module
    from stylenet.cli import stylize as stylize_module

    if where == "load":
        real_load = image_module.load_image

        def load_image(path: Path, *args: object, **kwargs: object) -> object:
            if Path(path).name == bad.name:
                raise error
            return real_load(path, *args, **kwargs)

        monkeypatch.setattr(image_module, "load_image", load_image)
    elif where == "process":
        real_process = stylize_module.Pipeline.process
        with Image.open(bad) as opened:
            bad_shape = (opened.height, opened.width)

        def process(self: object, image: object, *args: object, **kwargs: object) -> object:
            if tuple(image.rgb.shape[-2:]) == bad_shape:
                raise error
            return real_process(self, image, *args, **kwargs)

        monkeypatch.setattr(stylize_module.Pipeline, "process", process)
    else:
        real_save = image_module.save_image

        def save_image(path: Path, *args: object, **kwargs: object) -> Path:
            if Path(path).name.startswith(bad.stem):
                raise error
            return real_save(path, *args, **kwargs)

        monkeypatch.setattr(image_module, "save_image", save_image)


@pytest.mark.parametrize("where,error,message", [
    ("load", RuntimeError("decoder bug\n  (a second line of detail)"), "RuntimeError: decoder bug"),
    ("process", RuntimeError("Sizes of tensors must match except in dimension 1.\nExpected 9 but got 8"),
     "RuntimeError: Sizes of tensors must match except in dimension 1."),
    ("save", OSError(28, "No space left on device"), "OSError: [Errno 28] No space left on device"),
    ("process", ValueError(""), "ValueError"),
])
def test_any_exception_on_one_input_fails_that_input_alone(
        tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        where: str, error: Exception, message: str) -> None:
    first, odd, last = three_photos(tmp_path / "in")
    inject(monkeypatch, where, error, odd)
    code, out, err = run(capsys, first, odd, last, "-m", model, "-o", tmp_path / "out")
    assert code == 1
    assert err.splitlines() == [f"stylenet-stylize: error: {odd}: {message}"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["first_test.png", "last_test.png"]
    assert out.startswith("2 done, 1 failed")


def test_a_model_of_nan_weights_is_refused_and_the_other_models_still_run(
        tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A diverged model's outputs are NaN, which 8-bit files store as black: refused at loading."""
    torch.manual_seed(0)
    net = TransformerNet(channels=8, residual_blocks=1)
    name, weight = next(iter(net.named_parameters()))
    with torch.no_grad():
        weight.view(-1)[0] = float("nan")
    diverged = save_model(tmp_path / "models" / "diverged.safetensors", net, {"task": "style", "style_name": "d"})
    source = make_image(tmp_path / "photo.png")
    code, out, err = run(capsys, "-m", diverged, "-m", model, source, "-o", tmp_path / "out")
    assert code == 1 and out.startswith("1 done, 1 failed")
    assert f"model file {str(diverged)!r} holds NaN or infinite weights ({name})" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["photo_test.png"]


def test_a_style_name_that_is_no_file_name_names_its_model_file_once(
        tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The user renames the model file's style, so the line names the model file (once, not once per photo
    under the output folder's name), and the other model still runs."""
    bad = make_model(tmp_path / "models" / "bad.safetensors", style="../x", seed=1)
    first, second = make_image(tmp_path / "a.png"), make_image(tmp_path / "b.png", seed=1)
    code, out, err = run(capsys, "-m", model, "-m", bad, first, second, "-o", tmp_path / "out")
    assert err.splitlines() == [f"stylenet-stylize: error: model file {str(bad)!r}: style name '../x' cannot be part "
                                "of a file name (rename the style: stylenet-export MODEL -o NEW.safetensors "
                                "--style-name NAME; for a model of several styles NAME,NAME,... in its order)"]
    assert code == 1 and out.startswith("2 done, 1 failed")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_test.png", "b_test.png"]


def test_an_exception_on_one_model_spares_the_other_models(
        tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from stylenet.inference import InferenceModel

    broken = make_model(tmp_path / "models" / "broken.safetensors", style="broken", seed=1)
    real_from_file = InferenceModel.from_file.__func__

    def from_file(cls: type, path: str, **kwargs: object) -> InferenceModel:
        if Path(path) == broken:
            raise KeyError("network")
        return real_from_file(cls, path, **kwargs)

    monkeypatch.setattr(InferenceModel, "from_file", classmethod(from_file))
    source = make_image(tmp_path / "photo.png")
    code, out, err = run(capsys, "-m", broken, "-m", model, source, "-o", tmp_path / "out")
    assert code == 1
    assert err.splitlines() == [f"stylenet-stylize: error: model file {str(broken)!r}: KeyError: 'network'"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["photo_test.png"]
    assert out.startswith("1 done, 1 failed")


def test_ctrl_c_stops_at_once_with_exit_130(tmp_path: Path, model: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    first, odd, last = three_photos(tmp_path / "in")
    inject(monkeypatch, "process", KeyboardInterrupt(), odd)
    code, _, err = run(capsys, first, odd, last, "-m", model, "-o", tmp_path / "out")
    assert code == 130
    assert "interrupted; 1 done, 0 failed" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["first_test.png"]  # `last` never started


def test_out_of_memory_still_retries_with_smaller_tiles(tmp_path: Path, model: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-input isolation must not catch out-of-memory before the tiling retry does: the big
    input runs out of memory in one piece, is retried in 64 px tiles, and succeeds."""
    from stylenet.inference import MIN_TILE, InferenceModel

    small = make_image(tmp_path / "in" / "small.png", size=(40, 30))
    big = make_image(tmp_path / "in" / "big.png", size=(100, 90), seed=1)
    real_run_tiles = InferenceModel._run_tiles
    sides: list[tuple[int, int]] = []

    def run_tiles(self: InferenceModel, rgb: torch.Tensor, offset: object, controls: object, side: int,
                  *args: object) -> object:
        sides.append((rgb.shape[-1], side))
        if side > MIN_TILE:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_run_tiles(self, rgb, offset, controls, side, *args)

    monkeypatch.setattr(InferenceModel, "_run_tiles", run_tiles)
    code, out, err = run(capsys, small, big, "-m", model, "-o", tmp_path / "out")
    assert code == 0, err
    assert sides == [(40, 40), (100, 100), (100, MIN_TILE)]  # small fits in one pass; big is retried
    with Image.open(tmp_path / "out" / "big_test.png") as image:
        assert image.size == (100, 90)
    assert out.startswith("2 done, 0 failed")


def test_every_reported_error_is_one_line_naming_its_subject() -> None:
    """stylenet-stylize, stylenet-stability and the web page report failures through one describe()."""
    assert describe(StylenetError("cannot read 'a.png': truncated"), "a.png") == "cannot read 'a.png': truncated"
    assert describe(StylenetError("truncated"), "a.png") == "a.png: truncated"
    assert describe(StylenetError("bad size\nadvice"), "a.png") == "a.png: bad size"
    assert describe(RuntimeError("no memory\n  try a smaller tile"), "b.jpg") == "b.jpg: RuntimeError: no memory"
    assert describe(ValueError(), "c.jpg") == "c.jpg: ValueError"
