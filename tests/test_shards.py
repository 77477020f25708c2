"""Prepared datasets: stylenet-prepare's shards round-trip pixel-exact, resume after an interruption,
list what they skipped, and feed ImageFolderDataModule the same stream a photo folder does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from stylenet import StylenetError
from stylenet.cli import prepare as prepare_cli
from stylenet.data import ImageFolderDataModule, ShardDataset, StreamSampler
from stylenet.shards import MANIFEST, ShardStore
from tests.conftest import make_photo


@pytest.fixture
def square_photos(tmp_path: Path) -> Path:
    """Seven 32x32 photos (already the prepared size, so no resampling), one broken file, one copy."""
    root = tmp_path / "photos"
    for i in range(7):
        make_photo(root / f"d{i % 2}" / f"p{i}.png", size=(32, 32), seed=i)
    (root / "broken.jpg").write_bytes(b"not a jpeg")
    (root / "d1" / "copy.png").write_bytes((root / "d0" / "p0.png").read_bytes())
    return root


def test_shards_round_trip_pixel_exact(square_photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "prepared"
    assert prepare_cli.main([str(square_photos), "-o", str(out), "--size", "32", "--shard-images", "3",
                             "--workers", "0", "--no-progress"]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["count"] == 7 and manifest["complete"] and manifest["size"] == 32
    assert [len(entry["sources"]) for entry in manifest["shards"]] == [3, 3, 1]
    reasons = {entry["path"]: entry["reason"] for entry in manifest["skipped"]}
    assert set(reasons) == {"broken.jpg", "d1/copy.png"}
    assert reasons["d1/copy.png"] == "duplicate of d0/p0.png"
    store = ShardStore(out)
    for row, source in enumerate(store.sources):
        original = np.asarray(Image.open(source).convert("RGB"))
        assert np.array_equal(store.image(row), original), source
    dataset = ShardDataset(store.sources, 32, store=store)
    item = dataset[(0, 5, 2)]
    assert item["path"] == str(store.sources[2])
    expected = torch.from_numpy(np.array(Image.open(store.sources[2]).convert("RGB"))).permute(2, 0, 1) / 255
    assert torch.equal(item["image"], expected)


def test_prepare_resumes_after_interruption(square_photos: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    whole = prepare_cli.prepare(square_photos, tmp_path / "whole", size=32, shard_images=2, progress=False)
    real_add_shard = prepare_cli.add_shard

    def add_then_die(out: Path, manifest: dict, group: list) -> None:
        real_add_shard(out, manifest, group)
        if len(manifest["shards"]) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(prepare_cli, "add_shard", add_then_die)
    with pytest.raises(KeyboardInterrupt):
        prepare_cli.prepare(square_photos, tmp_path / "resumed", size=32, shard_images=2, progress=False)
    interrupted = json.loads((tmp_path / "resumed" / MANIFEST).read_text())
    assert not interrupted["complete"] and interrupted["count"] == 4
    with pytest.raises(StylenetError, match="is incomplete .* again to finish it"):  # never trained on as if whole
        ShardStore(tmp_path / "resumed")
    monkeypatch.setattr(prepare_cli, "add_shard", real_add_shard)
    resumed = prepare_cli.prepare(square_photos, tmp_path / "resumed", size=32, shard_images=2, progress=False)
    assert resumed["shards"] == whole["shards"] and resumed["complete"]
    for entry in whole["shards"]:
        assert np.array_equal(np.load(tmp_path / "whole" / entry["file"]),
                              np.load(tmp_path / "resumed" / entry["file"]))
    with pytest.raises(StylenetError, match="use another -o"):
        prepare_cli.prepare(square_photos, tmp_path / "resumed", size=64, progress=False)


def first_batches(module: ImageFolderDataModule, count: int) -> list[dict]:
    module.setup("fit")
    loader = iter(module.train_dataloader())
    return [next(loader) for _ in range(count)]


def test_shard_data_module_keeps_the_stream_and_resumes(square_photos: Path, tmp_path: Path) -> None:
    """Same files, same held-out set, same order as the folder; larger shards give seeded crops."""
    out = tmp_path / "prepared48"
    prepare_cli.prepare(square_photos, out, size=48, progress=False)  # 32 px photos, enlarged to 48
    shards = ImageFolderDataModule(source="shards", root=str(out), image_size=32, batch_size=2, val_images=2)
    batches = first_batches(shards, 4)
    assert all(batch["images"].shape == (2, 3, 32, 32) for batch in batches)
    sampler = StreamSampler(len(shards.train_files), 2, seed=0)
    order = [shards.train_files[index] for batch in [next(iter(sampler))] for _, _, index in batch]
    assert batches[0]["paths"] == [str(path) for path in order]
    again = first_batches(ImageFolderDataModule(source="shards", root=str(out), image_size=32, batch_size=2,
                                                val_images=2), 4)
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(batches, again, strict=True))
    resumed = ImageFolderDataModule(source="shards", root=str(out), image_size=32, batch_size=2, val_images=2)
    resumed.load_state_dict({"next_batch": 2, "samples_seen": 4})
    assert torch.equal(first_batches(resumed, 1)[0]["images"], batches[2]["images"])
    val = next(iter(shards.val_dataloader()))["images"]
    assert val.shape == (2, 3, 32, 32)
    # a 48 px shard gives the crops a photo would: seeded by the stream's position, not always the centre
    dataset = ShardDataset(shards.train_files, 32, seed=0, store=ShardStore(out))
    crops = [dataset[(0, position, 0)]["image"] for position in range(6)]
    assert len({crop.sum().item() for crop in crops}) > 1
    assert torch.equal(crops[3], dataset[(5, 3, 0)]["image"])  # the position decides, not the batch
    with pytest.raises(StylenetError, match="smaller than data.image_size"):  # as the files are listed, before
        ImageFolderDataModule(source="shards", root=str(out), image_size=64, batch_size=2).setup("fit")  # fit()


def test_missing_manifest_is_a_one_line_error(tmp_path: Path) -> None:
    module = ImageFolderDataModule(source="shards", root=str(tmp_path), image_size=32)
    with pytest.raises(StylenetError, match="stylenet-prepare"):
        module.setup("fit")


def test_prepare_fails_on_a_folder_without_a_readable_photo(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = tmp_path / "photos"
    source.mkdir()
    (source / "broken.jpg").write_bytes(b"not a jpeg")
    assert prepare_cli.main([str(source), "-o", str(tmp_path / "out"), "--workers", "0", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("stylenet-prepare: error: no readable photos in") and "1 skipped" in err
    (source / "broken.jpg").unlink()  # a folder of no images at all: nothing made, no manifest of nothing
    assert prepare_cli.main([str(source), "-o", str(tmp_path / "empty"), "--workers", "0", "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == f"stylenet-prepare: error: {str(source)!r} contains no images"
    assert not (tmp_path / "empty").exists()
    (source / "IMG_0001.HEIC").write_bytes(b"a phone's photo")  # named, as training names them
    assert prepare_cli.main([str(source), "-o", str(tmp_path / "empty"), "--workers", "0", "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == (f"stylenet-prepare: error: {str(source)!r} contains no images (it "
                                               "holds 1 photo(s) in a format not read here (.heic): convert them to "
                                               "JPEG or PNG)")
    make_photo(source / "a.png", size=(40, 40))
    assert prepare_cli.main([str(source), "-o", str(tmp_path / "one"), "--workers", "0", "--no-progress"]) == 0
    assert capsys.readouterr().err.strip() == (f"stylenet-prepare: warning: {str(source)!r} holds 1 photo(s) in a "
                                               "format not read here (.heic): convert them to JPEG or PNG; they are "
                                               "not in the shards")


def test_a_named_pipe_a_huge_photo_and_a_home_relative_output(square_photos: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A named pipe among the photos hung prepare for ever (hashed before it was decoded); a photo over the
    pixel limit could not be admitted (--max-pixels, which its reason named, did not exist); `--output=~/x`,
    where the shell leaves the ~, made a folder named "~"."""
    os.mkfifo(square_photos / "pipe.png")
    make_photo(square_photos / "big.png", size=(40, 30))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert prepare_cli.main([str(square_photos), "--output=~/out", "--size", "32", "--max-pixels", "1100",
                             "--workers", "0", "--no-progress"]) == 0
    out = tmp_path / "home" / "out"
    assert not (tmp_path / "~").exists() and (out / MANIFEST).is_file()
    reasons = {entry["path"]: entry["reason"] for entry in json.loads((out / MANIFEST).read_text())["skipped"]}
    assert "not a regular file" in reasons["pipe.png"]
    assert "40x30 = 1200 pixels exceeds the limit of 1100" in reasons["big.png"]
    again = tmp_path / "again"  # the default limit admits it
    assert prepare_cli.main([str(square_photos), "-o", str(again), "--size", "32", "--workers", "0",
                             "--no-progress"]) == 0
    assert "big.png" not in {entry["path"] for entry in json.loads((again / MANIFEST).read_text())["skipped"]}
    # and so does the same output folder, run again as the reason advises (it was passed over as done)
    assert prepare_cli.main([str(square_photos), "--output=~/out", "--size", "32", "--workers", "0",
                             "--no-progress"]) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert "big.png" in {relative for shard in manifest["shards"] for relative, _ in shard["sources"]}
    assert sorted(entry["path"] for entry in manifest["skipped"]) == sorted(set(reasons) - {"big.png"})  # the rest


def test_a_damaged_shard_is_a_one_line_error_naming_it(square_photos: Path, tmp_path: Path) -> None:
    """Missing, truncated or short shards are refused when the store opens, not mid-run with a traceback."""
    whole = tmp_path / "whole"
    prepare_cli.prepare(square_photos, whole, size=32, shard_images=3, progress=False)
    second = json.loads((whole / MANIFEST).read_text())["shards"][1]["file"]
    damages = {"missing": lambda path: path.unlink(),
               "truncated": lambda path: path.write_bytes(path.read_bytes()[:-100]),
               "short": lambda path: np.save(path, np.load(path)[:2])}
    for damage, apply in damages.items():
        copy = tmp_path / damage
        copy.mkdir()
        for item in whole.iterdir():
            (copy / item.name).write_bytes(item.read_bytes())
        apply(copy / second)
        with pytest.raises(StylenetError, match=f"shard '{copy / second}'") as caught:
            ShardStore(copy)
        assert "\n" not in str(caught.value), damage
        assert damage != "short" or "the manifest lists 3 images" in str(caught.value)
    (prepare_out := tmp_path / "afile").write_text("x")  # prepare into an existing file: one line too
    assert prepare_cli.main([str(square_photos), "-o", str(prepare_out), "--workers", "0", "--no-progress"]) == 2


#: manifests that parse (or not) but are no manifest stylenet-prepare writes, by what is wrong with them
DAMAGED_MANIFESTS: dict[str, Any] = {
    "a list": [1],
    "not UTF-8": b"\xff\xfe{}",
    "no size": {"format": "stylenet-shards", "version": 1},
    "a shard without its file": lambda good: {**good, "shards": [{"sources": good["shards"][0]["sources"]}]},
    "shards null": lambda good: {**good, "shards": None},
    "a size that is no number": lambda good: {**good, "size": "abc"},
    "sources of three fields": lambda good: {**good, "shards": [{**good["shards"][0], "sources": [["a", "b", 1]]}]},
}


@pytest.mark.parametrize("damage", sorted(DAMAGED_MANIFESTS))
def test_a_damaged_manifest_is_one_line_naming_it(square_photos: Path, tmp_path: Path, damage: str,
                                                  capsys: pytest.CaptureFixture) -> None:
    """Training on the folder and stylenet-prepare run again onto it: one line naming the manifest, not a
    traceback from whichever field the code reaches first."""
    out = tmp_path / "prepared"
    prepare_cli.prepare(square_photos, out, size=32, shard_images=7, progress=False)
    made = DAMAGED_MANIFESTS[damage]
    made = made(json.loads((out / MANIFEST).read_text())) if callable(made) else made
    (out / MANIFEST).write_bytes(made if isinstance(made, bytes) else json.dumps(made).encode())
    with pytest.raises(StylenetError) as refused:
        ImageFolderDataModule(source="shards", root=str(out), image_size=32).setup("fit")
    assert f"'{out / MANIFEST}'" in str(refused.value) and "\n" not in str(refused.value)
    assert prepare_cli.main([str(square_photos), "-o", str(out), "--size", "32", "--workers", "0",
                             "--no-progress"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("stylenet-prepare: error: ") and f"'{out / MANIFEST}'" in line, line


def test_a_manifest_of_a_newer_format_says_a_newer_stylenet_made_it(square_photos: Path, tmp_path: Path) -> None:
    """As a model file of a newer format_version (stylenet.errors.check_format_version) is refused."""
    out = tmp_path / "prepared"
    prepare_cli.prepare(square_photos, out, size=32, progress=False)
    (out / MANIFEST).write_text(json.dumps({**json.loads((out / MANIFEST).read_text()), "version": 2}))
    with pytest.raises(StylenetError, match=r"manifest.json' was made by a newer stylenet \(format version 2\)"):
        ShardStore(out)


def test_a_full_disk_is_one_line_naming_the_shard_and_leaves_no_partial_file(
        square_photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills up while the second shard is written: one line naming it (as stylenet-export says
    it), exit 1, the first shard and the manifest that lists it kept, nothing else; run again, it finishes."""
    import errno

    from stylenet.shards import shard_name

    out, real_atomic_write = tmp_path / "out", prepare_cli.atomic_write

    def full_at_the_second_shard(path: Path, write: Any, **options: Any) -> Path:
        def half_then_full(tmp: Path) -> None:
            tmp.write_bytes(b"\x93NUMPY half a shard")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what write() raises: no file name

        return real_atomic_write(path, half_then_full if path.name == shard_name(1) else write, **options)

    monkeypatch.setattr(prepare_cli, "atomic_write", full_at_the_second_shard)
    arguments = [str(square_photos), "-o", str(out), "--size", "32", "--shard-images", "3", "--workers", "0",
                 "--no-progress"]
    assert prepare_cli.main(arguments) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"stylenet-prepare: error: cannot write '{out / shard_name(1)}': {os.strerror(errno.ENOSPC)}; free space "
        "and run the same command again to go on from the last complete shard"]
    assert sorted(path.name for path in out.iterdir()) == [MANIFEST, shard_name(0)]
    assert len(json.loads((out / MANIFEST).read_text())["shards"]) == 1
    monkeypatch.undo()
    assert prepare_cli.main(arguments) == 0
    assert len(ShardStore(out)) == 7


def test_ctrl_c_is_one_line_and_exit_130(square_photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare_cli, "prepare", interrupted)
    assert prepare_cli.main([str(square_photos), "-o", str(tmp_path / "out"), "--no-progress"]) == 130
    assert capsys.readouterr().err == ("stylenet-prepare: interrupted; run the same command again to go on "
                                       "from the last complete shard\n")


def prepare_in_a_fresh_python(patch: str, photos: Path, out: Path, *options: str) -> subprocess.CompletedProcess:
    """stylenet-prepare with two workers in a fresh interpreter (this one's OpenMP threads would not survive
    the workers' fork), after ``patch``: source run first, with os, signal, sys, threading, time and
    ``stylenet.cli.prepare`` imported."""
    script = ("import os, signal, sys, threading, time\nfrom stylenet.cli import prepare\n" + patch
              + "sys.exit(prepare.main(sys.argv[1:]))\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-c", script, str(photos), "-o", str(out), "--workers", "2", *options],
                          capture_output=True, text=True, timeout=120, env=env)


#: A patch for prepare_in_a_fresh_python: the progress bar's first update, in this process while the workers
#: run, sends it SIGTERM.
SIGTERM_AT_FIRST_PHOTO = ("import tqdm\n"
                          "class Bar:\n"
                          "    def __init__(self, *args, **kwargs): pass\n"
                          "    def update(self, n): os.kill(os.getpid(), signal.SIGTERM)\n"
                          "    def close(self): pass\n"
                          "tqdm.tqdm = Bar\n")


def test_sigterm_is_one_line_and_exit_143_and_stops_the_workers(square_photos: Path, tmp_path: Path) -> None:
    """A scheduler's stop while the decoding workers run: one line, exit 143, and not a word from the
    workers (their stderr is the same). In a fresh interpreter: this one's OpenMP threads would not
    survive the workers' fork."""
    result = prepare_in_a_fresh_python(SIGTERM_AT_FIRST_PHOTO, square_photos, tmp_path / "out")
    assert result.returncode == 143, result.stderr[-2000:]
    assert result.stderr == ("stylenet-prepare: terminated; run the same command again to go on from the last "
                             "complete shard\n")


def test_a_worker_that_sigterm_cannot_stop_is_killed_and_the_stop_ends(square_photos: Path, tmp_path: Path) -> None:
    """Pool.terminate() sends each worker SIGTERM and waits for it for ever: a worker that cannot take the
    signal (here it ignores it) hung the stop (as a CI run under load once did). It is killed after
    stylenet.cli.prepare.STOP_S, and the run ends as any stop does."""
    start = time.monotonic()
    result = prepare_in_a_fresh_python(
        "def deaf():  # runs in each forked worker, instead of leave_signals_to_parent\n"
        "    signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "prepare.leave_signals_to_parent = deaf\n"
        "prepare.STOP_S = 2.0\n" + SIGTERM_AT_FIRST_PHOTO, square_photos, tmp_path / "out")
    assert result.returncode == 143 and "terminated" in result.stderr, result.stderr[-2000:]
    assert time.monotonic() - start < 60


def test_a_worker_killed_from_outside_is_one_line_and_exit_2_not_a_hang(square_photos: Path, tmp_path: Path) -> None:
    """A decoding worker that dies (the OOM killer, a kill -9) while it holds photos: multiprocessing's Pool
    replaced it and waited for them for ever; the run now stops with one line and exit 2, to be run again."""
    result = prepare_in_a_fresh_python(
        "decode = prepare.prepare_one\n"
        "def dies_on_p3(job):  # runs in a forked worker\n"
        "    if job[0].name == 'p3.png': os._exit(9)\n"
        "    return decode(job)\n"
        "prepare.prepare_one = dies_on_p3\n", square_photos, tmp_path / "out", "--no-progress")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("stylenet-prepare: error: a decoding worker died (stopped from outside, or out of "
                                    "memory?)") and result.stderr.count("\n") == 1, result.stderr


def test_a_stop_ends_the_workers_at_once_not_after_the_photos_they_hold(square_photos: Path, tmp_path: Path) -> None:
    """SIGTERM while every worker decodes slow photos: the workers are ended with the run (as Pool.terminate
    did), not waited for until they finish the photos handed to them."""
    start = time.monotonic()
    result = prepare_in_a_fresh_python(
        "def slow(job):  # runs in a forked worker\n"
        "    time.sleep(60)\n"
        "prepare.prepare_one = slow\n"
        "threading.Timer(3, os.kill, (os.getpid(), signal.SIGTERM)).start()\n", square_photos, tmp_path / "out",
        "--no-progress")
    assert result.returncode == 143 and "terminated" in result.stderr, result.stderr[-2000:]
    assert time.monotonic() - start < 30  # not the 60 s the workers' photos take


def test_sigterm_while_decoding_in_this_process_is_no_broken_photo(square_photos: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """With --workers 0 the signal lands inside the decoder, whose errors become skipped photos: the
    stop must not be one of them (a skipped photo is never retried)."""
    import signal

    from PIL import Image

    load = Image.Image.load

    def load_then_stop(self: Image.Image) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        return load(self)

    monkeypatch.setattr(Image.Image, "load", load_then_stop)
    out = tmp_path / "out"
    assert prepare_cli.main([str(square_photos), "-o", str(out), "--workers", "0", "--no-progress"]) == 143
    assert "terminated" in capsys.readouterr().err
    manifest = json.loads((out / MANIFEST).read_text()) if (out / MANIFEST).exists() else {"skipped": []}
    assert not any("Terminated" in entry["reason"] for entry in manifest["skipped"])

