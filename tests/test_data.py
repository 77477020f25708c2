import json
import logging
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from stylenet import StylenetError
from stylenet.data import (
    ImageFileDataset,
    ImageFolderDataModule,
    StreamSampler,
    collate_skipping_bad,
)
from stylenet.errors import EveryRankError
from stylenet.image import DEMO_PHOTOS, resize_long_side, resolve_image_path
from tests.conftest import make_photo


def mixed_mode_folder(root: Path) -> Path:
    """One photo per PIL mode the data must handle, a 16-bit PNG, an EXIF-rotated JPEG, and a
    corrupt file."""
    for i, mode in enumerate(["RGB", "L", "P", "RGBA", "CMYK", "1", "LA"]):
        suffix = ".jpg" if mode == "CMYK" else ".png"
        make_photo(root / f"{mode}{suffix}", size=(70, 60), seed=i, mode=mode)
    Image.fromarray(np.full((60, 70), 40000, np.uint16)).save(root / "grey16.png")
    rotated = Image.new("RGB", (80, 60), (200, 10, 10))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    (root / "nested").mkdir()
    rotated.save(root / "nested" / "rotated.jpg", exif=exif)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return root


def test_every_mode_becomes_an_rgb_crop_and_bad_files_are_reported(tmp_path: Path) -> None:
    root = mixed_mode_folder(tmp_path / "mixed")
    dataset = ImageFileDataset(sorted(p for p in root.rglob("*") if p.is_file()), image_size=32)
    samples = [dataset[i] for i in range(len(dataset))]
    good = [s for s in samples if s["image"] is not None]
    assert len(good) == len(samples) - 1
    assert all(s["image"].shape == (3, 32, 32) and 0 <= s["image"].min() <= s["image"].max() <= 1 for s in good)
    grey16 = next(s for s in good if s["path"].endswith("grey16.png"))
    torch.testing.assert_close(grey16["image"], torch.full((3, 32, 32), 40000 / 65535), atol=2e-3, rtol=0)
    batch = collate_skipping_bad(samples)
    assert batch["images"].shape == (len(good), 3, 32, 32)
    assert len(batch["skipped"]) == 1 and "broken.jpg" in batch["skipped"][0]


def test_a_photo_too_elongated_to_resize_is_a_bad_file_not_gigabytes(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """A 1 x 30000 strip (a few hundred bytes, well under data.max_pixels) would be 256 x 7.68M px at
    256 px on its short side: refused as a bad file (training) and a skipped one (stylenet-prepare)."""
    from stylenet.cli.prepare import main as prepare_main
    from stylenet.shards import MANIFEST

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (30000, 1), (90, 120, 200)).save(tmp_path / "photos" / "strip.png")
    make_photo(tmp_path / "photos" / "fine.png", size=(48, 40), seed=1)
    files = sorted((tmp_path / "photos").iterdir())
    samples = [ImageFileDataset(files, image_size=32, scale_size=256)[i] for i in range(2)]
    assert samples[0]["image"] is not None and samples[1]["image"] is None
    assert samples[1]["error"] == (f"cannot use image {str(files[1])!r}: a 30000x1 px photo would be 7680000x256 px "
                                   "at 256 px on its short side, over 120000000 pixels")
    assert prepare_main([str(tmp_path / "photos"), "-o", str(tmp_path / "shards"), "--size", "256",
                         "--workers", "0"]) == 0
    assert "1 images in 1 shards" in capsys.readouterr().out
    skipped = json.loads((tmp_path / "shards" / MANIFEST).read_text())["skipped"]
    assert [(entry["path"], "7680000x256 px" in entry["reason"]) for entry in skipped] == [("strip.png", True)]


def test_datamodule_holds_out_fixed_validation_files(photo_folder: Path) -> None:
    dm = ImageFolderDataModule(source="folder", root=str(photo_folder), image_size=32, batch_size=2, val_images=2)
    dm.setup("fit")
    assert len(dm.val_files) == 2 and len(dm.train_files) == 4
    assert not set(dm.val_files) & set(dm.train_files)
    again = ImageFolderDataModule(source="folder", root=str(photo_folder), image_size=32, val_images=2)
    again.setup("fit")
    assert again.val_files == dm.val_files
    batch = next(iter(dm.train_dataloader()))
    assert batch["images"].shape == (2, 3, 32, 32) and batch["batch_number"] == 0
    val = next(iter(dm.val_dataloader()))
    assert torch.equal(val["images"], next(iter(dm.val_dataloader()))["images"])  # centre crops, fixed


def test_copies_of_held_out_photos_are_not_trained_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A backup folder and a link beside the photos: the copies of a held-out photo leave the training set
    (a photo of the same size with other bytes stays), so validation measures photos never trained on."""
    root = tmp_path / "photos"
    for k in range(6):
        make_photo(root / "a" / f"p{k}.bmp", size=(120, 100), seed=k)
    (root / "b").mkdir()
    shutil.copy(root / "a" / "p0.bmp", root / "b" / "backup_p0.bmp")
    (root / "b" / "link_p4.bmp").symlink_to(root / "a" / "p4.bmp")
    edited = np.asarray(Image.open(root / "a" / "p0.bmp")).copy()
    edited[30, 0] ^= 1  # one bit differs: another photo, of the same file size (BMP), the same first, middle and
    # last 4 KB (stylenet.data.sampled_bytes; rows are stored bottom up, 360 bytes each): told apart by its hash
    Image.fromarray(edited).save(root / "b" / "edited_p0.bmp")
    dm = ImageFolderDataModule(source="folder", root=str(root), image_size=32, val_images=2)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert [path.relative_to(root).as_posix() for path in dm.val_files] == ["a/p0.bmp", "a/p4.bmp"]  # 0 and 4 of 9
    assert [path.relative_to(root).as_posix() for path in dm.train_files] == [
        "a/p1.bmp", "a/p2.bmp", "a/p3.bmp", "a/p5.bmp", "b/edited_p0.bmp"]
    assert "2 training photo(s) left out as copies of held-out photos" in caplog.text


def test_coco_at_the_dataset_root_trains_on_train2014_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """data=coco with data.root (or $COCO_ROOT) at the unpacked dataset's root, beside val2014: the paper's
    training photos are train2014's alone, and a missing root says where COCO is looked for."""
    for split, count in (("train2014", 3), ("val2014", 2)):
        for k in range(count):
            make_photo(tmp_path / "coco" / split / f"COCO_{split}_{k:012d}.jpg", size=(40, 32), seed=k)
    dm = ImageFolderDataModule(source="coco", root=str(tmp_path / "coco"), image_size=16, val_images=1)
    dm.setup("fit")
    assert {path.parent.name for path in dm.train_files + dm.val_files} == {"train2014"}
    assert len(dm.train_files + dm.val_files) == 3
    # the two spellings of one data.root list the same photos: a run resumed with the other is not warned of
    # "other photos" (the listing named them relative to the root given, train2014/ or not)
    folder = ImageFolderDataModule(source="coco", root=str(tmp_path / "coco" / "train2014"), image_size=16,
                                   val_images=1)
    folder.setup("fit")
    assert folder.listing() == dm.listing()
    # a checkpoint written before, which named the photos relative to data.root as given (train2014/...)
    older = {"next_batch": 1, "samples_seen": 1, **dm.listing(tmp_path / "coco")}
    assert older["photos_sha256"] != dm.listing()["photos_sha256"]
    with caplog.at_level(logging.WARNING, logger="stylenet.data"):
        for root in (tmp_path / "coco", tmp_path / "coco" / "train2014"):  # resumed with either spelling
            ImageFolderDataModule(source="coco", root=str(root), image_size=16, val_images=1).load_state_dict(older)
    assert "other photos" not in caplog.text
    with pytest.raises(StylenetError, match=r"is not a folder \(data=coco: set data.root or \$COCO_ROOT"):
        ImageFolderDataModule(source="coco", root=str(tmp_path / "missing")).setup("fit")


def test_bad_data_settings_fail_with_the_setting_named(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(StylenetError, match="contains no images"):
        ImageFolderDataModule(source="folder", root=str(tmp_path / "empty")).setup("fit")
    (tmp_path / "empty" / "IMG_0001.HEIC").write_bytes(b"a phone's photo")  # named, not "no images" alone
    with pytest.raises(StylenetError, match=r"contains no images \(it holds 1 photo\(s\) in a format not read here "
                                            r"\(.heic\): convert them to JPEG or PNG\)$"):
        ImageFolderDataModule(source="folder", root=str(tmp_path / "empty")).setup("fit")
    make_photo(tmp_path / "empty" / "a.png", (40, 40))
    (tmp_path / "empty" / "run" / ".hydra").mkdir(parents=True)  # an earlier run's folder inside: left out
    with caplog.at_level(logging.WARNING):
        ImageFolderDataModule(source="folder", root=str(tmp_path / "empty"), val_images=0).setup("fit")
    assert "holds 1 photo(s) in a format not read here (.heic): convert them to JPEG or PNG; they are not trained" \
        in caplog.text
    assert caplog.text.count("that hold a run's outputs") == 1  # one walk of the folder, one warning
    with pytest.raises(StylenetError, match="is not a folder"):
        ImageFolderDataModule(source="folder", root=str(tmp_path / "missing")).setup("fit")
    for size in (30, 4):
        with pytest.raises(StylenetError, match=f"data.image_size must be a multiple of 4 and at least 8, got {size}"):
            ImageFolderDataModule(image_size=size)
    for setting, message in (({"batch_size": "abc"}, "data.batch_size must be a whole number, got 'abc'"),
                             ({"num_workers": -1}, "data.num_workers must be >= 0, got -1"),
                             ({"max_bad_fraction": "abc"}, "data.max_bad_fraction must be a number from 0 to 1"),
                             # data=coco forgotten: the run trained on the bundled photos without a word
                             ({"root": "/data/coco"}, "^data.root=/data/coco is read by data=folder, coco or shards")):
        with pytest.raises(StylenetError, match=message):
            ImageFolderDataModule(**setting)


def test_too_many_bad_files_stop_the_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    dm = ImageFolderDataModule(source="folder", root=str(tmp_path), batch_size=1, max_bad_fraction=0.1)
    dm.report_path = tmp_path / "skipped_images.txt"
    dm.samples_seen = 100
    assert dm.record_bad(["cannot read image 'a.jpg': truncated"] * 5) is None
    assert dm.record_bad(["cannot read image 'a.jpg': truncated"]) is None  # met again, a later epoch
    assert dm.report_path.read_text() == "cannot read image 'a.jpg': truncated\n"  # listed once, counted 6 times
    dm.samples_seen = 104
    assert dm.record_bad(["cannot read image 'b.jpg': truncated"] * 6) == (  # two files, drawn 12 times
        "12 of 104 training samples drawn were unreadable or unusable (11.5% > data.max_bad_fraction=0.1), from 2 "
        f"file(s), each counted every time it is drawn: see {dm.report_path} (remove them, or raise "
        "data.max_bad_fraction)")
    resumed = ImageFolderDataModule(source="folder", root=str(tmp_path), batch_size=1, max_bad_fraction=0.1)
    resumed.report_path = dm.report_path  # a resumed run's list goes on without repeats
    resumed.record_bad(["cannot read image 'b.jpg': truncated", "cannot read image 'c.jpg': truncated"])
    assert dm.report_path.read_text().splitlines() == [f"cannot read image '{name}.jpg': truncated" for name in "abc"]
    # the processes of a multi-GPU run share the list: a file two of them meet is listed (and warned of) once
    other_rank = ImageFolderDataModule(source="folder", root=str(tmp_path), batch_size=1, max_bad_fraction=0.1)
    other_rank.report_path, other_rank.bad_listed = dm.report_path, set()  # (read its list before the others wrote)
    with caplog.at_level(logging.WARNING, logger="stylenet.data"):
        dm.record_bad(["cannot read image 'd.jpg': truncated"])
        other_rank.record_bad(["cannot read image 'd.jpg': truncated", "cannot read image 'a.jpg': truncated"])
    assert dm.report_path.read_text().splitlines() == [f"cannot read image '{name}.jpg': truncated" for name in "abcd"]
    assert caplog.text.count("skipped cannot read image") == 1


def test_every_process_stops_when_one_finds_too_many_bad_files(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Under DDP each process counts its own files; whether to stop is decided by all of them (any one
    over the limit), so that none stops alone and leaves the others waiting in a collective; and each stops
    with the words of the process that found the files (the first one's "another process found ..." was
    the line a user saw first)."""
    class OtherProcessOverTheLimit:
        def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
            assert all is False
            return True

    found = "2 of 2 training samples drawn were unreadable or unusable (100.0% > data.max_bad_fraction=0.05)"

    def gather(into: list[str | None], mine: str | None) -> None:  # what this process and rank 0 hold
        into[:] = [found, mine]

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_gather_object", gather)
    dm = ImageFolderDataModule(source="folder", root=str(tmp_path), batch_size=1)
    dm.trainer = SimpleNamespace(training=True, strategy=OtherProcessOverTheLimit(), world_size=2, global_rank=1)
    with pytest.raises(EveryRankError, match=rf"^{re.escape(found)}$"):
        dm.on_before_batch_transfer({"batch_number": 0, "position": 1, "images": torch.zeros(1, 3, 8, 8),
                                     "skipped": []}, 0)
    assert dm.next_batch == 1 and dm.next_position == 2 and dm.samples_seen == 1 and dm.bad_seen == 0


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_batches_are_pinned_for_a_gpu_run_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    """Pinned memory starts CUDA: on a GPU machine a CPU run (trainer=cpu, ddp_cpu) must not."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    dm = ImageFolderDataModule(source="folder", root=str(tmp_path), batch_size=1, num_workers=0)
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))
    assert dm._loader(dm.make_dataset([])).pin_memory is (device == "cuda")


def test_a_short_run_whose_first_batches_hold_no_readable_image_stops_at_once(tmp_path: Path) -> None:
    dm = ImageFolderDataModule(source="folder", root=str(tmp_path), batch_size=4, max_bad_fraction=0.05)
    dm.samples_seen = 4
    assert dm.record_bad(["cannot read image 'e.jpg': truncated"] * 4) is None  # one bad batch may be bad luck
    dm.samples_seen = 8
    # two, and nothing read: no training at all
    assert dm.record_bad(["cannot read image 'e.jpg': truncated"] * 4).startswith(
        "8 of 8 training samples drawn were unreadable or unusable")


def test_a_resumed_datamodule_keeps_counting_bad_files_against_the_budget(tmp_path: Path) -> None:
    def module() -> ImageFolderDataModule:
        return ImageFolderDataModule(source="folder", root=str(tmp_path), batch_size=1, max_bad_fraction=0.1)

    before = module()
    before.samples_seen = 20
    before.record_bad(["cannot read image 'a.jpg': truncated"] * 2)  # 2 of 20: within the budget
    state = before.state_dict()
    assert state == {"next_batch": 0, "samples_seen": 20, "bad_files": 2}
    resumed, fresh = module(), module()
    resumed.load_state_dict(state)
    assert resumed.bad_seen == 2
    resumed.samples_seen = fresh.samples_seen = 21
    assert fresh.record_bad(["cannot read image 'b.jpg': truncated"]) is None  # 1 of 21 alone would pass
    assert re.match(r"^3 of 21 training samples drawn were unreadable or unusable \(14\.3% > "
                    r"data\.max_bad_fraction=0\.1, 2 of them before the resume\)",
                    resumed.record_bad(["cannot read image 'b.jpg': truncated"]))
    resumed.load_state_dict({"next_batch": 2, "samples_seen": 4})  # a state without the count starts at 0
    assert resumed.bad_seen == 0 and resumed.next_batch == 2


def test_resuming_on_a_folder_that_now_lists_other_photos_warns(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The held-out set and the stream's positions follow from the listing: a checkpoint records it."""
    for seed, name in enumerate(("a.png", "b.png", "sub/c.png")):
        make_photo(tmp_path / name, (40, 40), seed=seed)

    def module() -> ImageFolderDataModule:
        datamodule = ImageFolderDataModule(source="folder", root=str(tmp_path), image_size=32, val_images=1)
        datamodule.setup("fit")
        return datamodule

    state = module().state_dict()
    assert state["photos"] == 3 and len(state["photos_sha256"]) == 64
    with caplog.at_level(logging.WARNING, logger="stylenet.data"):
        module().load_state_dict(state)
        assert "other photos" not in caplog.text  # the same listing
        (tmp_path / "b.png").rename(tmp_path / "b2.png")  # as many photos, another one
        module().load_state_dict(state)
        make_photo(tmp_path / "d.png", (40, 40), seed=3)
        ImageFolderDataModule(source="folder", root=str(tmp_path), image_size=32, val_images=1).load_state_dict(state)
    warnings = [record.getMessage() for record in caplog.records if "other photos" in record.getMessage()]
    assert [message.split(" (")[1].split(")")[0] for message in warnings] == ["3 now, 3 then", "4 now, 3 then"]



def test_the_demo_photos_listing_does_not_depend_on_where_they_are_installed(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    import stylenet.data

    def listing() -> dict[str, object]:
        datamodule = ImageFolderDataModule(source="demo", image_size=32, val_images=1)
        datamodule.setup("fit")
        return datamodule.listing()

    here = listing()
    moved = tmp_path / "elsewhere"
    shutil.copytree(stylenet.data.demo_root(), moved, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    monkeypatch.setattr(stylenet.data, "demo_root", lambda: moved)
    assert listing() == here and here["photos"] == len(DEMO_PHOTOS)


def test_a_bad_held_out_photo_is_named_once_however_often_validation_meets_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    datamodule = ImageFolderDataModule(source="folder", root=str(tmp_path))
    datamodule.report_path = tmp_path / "skipped_images.txt"
    datamodule.trainer = SimpleNamespace(training=False)  # validating
    batch = {"images": torch.zeros(1, 3, 8, 8), "skipped": ["cannot read image 'v.jpg': truncated"],
             "batch_number": -1}
    with caplog.at_level(logging.WARNING, logger="stylenet.data"):
        for _ in range(3):  # three validation checks
            datamodule.on_before_batch_transfer(batch, 0)
        datamodule.record_bad_held_out("cannot read image 'v.jpg': truncated")  # the end of the run
        datamodule.record_bad_held_out("cannot read image 'w.jpg': truncated")
    assert datamodule.report_path.read_text() == ("held-out photo: cannot read image 'v.jpg': truncated\n"
                                                  "held-out photo: cannot read image 'w.jpg': truncated\n")
    assert caplog.text.count("held-out photo skipped") == 2
    assert datamodule.samples_seen == 0 and datamodule.bad_seen == 0  # not training's budget
    datamodule.trainer = SimpleNamespace(training=False, is_global_zero=False)  # another DDP process
    datamodule.on_before_batch_transfer({**batch, "skipped": ["cannot read image 'x.jpg': truncated"]}, 0)
    assert "x.jpg" not in datamodule.report_path.read_text()


def test_stream_is_deterministic_sharded_and_resumable() -> None:
    def take(sampler: StreamSampler, batches: int) -> list[list[tuple[int, int, int]]]:
        stream = iter(sampler)
        return [next(stream) for _ in range(batches)]

    full = take(StreamSampler(10, batch_size=2, seed=3), 12)
    assert full == take(StreamSampler(10, batch_size=2, seed=3), 12)
    assert [[index for *_, index in batch] for batch in full] != [  # seed= chooses the photos' order
        [index for *_, index in batch] for batch in take(StreamSampler(10, batch_size=2, seed=4), 12)]
    first_epoch = [index for batch in full[:5] for _, _, index in batch]
    assert sorted(first_epoch) == list(range(10))  # each epoch is a permutation
    assert [b[0][0] for b in full] == list(range(12))
    resumed = take(StreamSampler(10, batch_size=2, seed=3, start_batch=7), 5)
    assert resumed == full[7:12]
    # resumed with another batch size from the first position not taken: the same samples, regrouped
    regrouped = take(StreamSampler(10, batch_size=3, seed=3, start_batch=7, start_position=14), 2)
    assert [[p for _, p, _ in batch] for batch in regrouped] == [[14, 15, 16], [17, 18, 19]]
    assert [batch[0][0] for batch in regrouped] == [7, 8]
    assert [i for batch in regrouped for _, _, i in batch] == [i for batch in full[7:10] for _, _, i in batch]
    rank0 = take(StreamSampler(10, batch_size=2, seed=3, rank=0, world_size=2), 3)
    rank1 = take(StreamSampler(10, batch_size=2, seed=3, rank=1, world_size=2), 3)
    positions0 = {p for batch in rank0 for _, p, _ in batch}
    positions1 = {p for batch in rank1 for _, p, _ in batch}
    assert not positions0 & positions1 and positions0 | positions1 == set(range(12))


def test_random_crops_depend_only_on_seed_and_position(tmp_path: Path) -> None:
    path = make_photo(tmp_path / "wide.png", size=(120, 40))
    dataset = ImageFileDataset([path], image_size=16, seed=5)
    assert torch.equal(dataset[(0, 3, 0)]["image"], dataset[(9, 3, 0)]["image"])
    crops = {dataset[(0, p, 0)]["image"].sum().item() for p in range(8)}
    assert len(crops) > 1
    other_seed = ImageFileDataset([path], image_size=16, seed=6)  # seed= chooses the crops too
    assert {other_seed[(0, p, 0)]["image"].sum().item() for p in range(8)} != crops


def test_scale_size_crops_photos_resized_to_that_scale(tmp_path: Path) -> None:
    ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))  # 64 x 64, +4 grey levels per column
    path = tmp_path / "ramp.png"
    Image.fromarray(np.stack([ramp] * 3, -1)).save(path)
    kept = ImageFileDataset([path], image_size=16, scale_size=64)[0]["image"]  # a centre crop at full scale
    shrunk = ImageFileDataset([path], image_size=16)[0]["image"]  # the whole photo at 16 px
    assert torch.allclose(kept[0, 8].diff(), torch.full((15,), 4 / 255), atol=1e-6)
    assert torch.allclose(shrunk[0, 8, 4:12].diff(), torch.full((7,), 16 / 255), atol=2 / 255)  # 4 columns a pixel
    with pytest.raises(StylenetError, match=r"^data.scale_size must be null or >= data.image_size \(64\)"):
        ImageFolderDataModule(source="demo", image_size=64, scale_size=32)
    with pytest.raises(StylenetError, match=r"^data.scale_size is not used with source=shards"):
        ImageFolderDataModule(source="shards", root="unused", image_size=64, scale_size=128)


def test_demo_source_and_demo_paths_use_bundled_photos() -> None:
    dm = ImageFolderDataModule(source="demo", image_size=64, val_images=2)
    dm.setup("fit")
    assert len(dm.train_files) + len(dm.val_files) == len(DEMO_PHOTOS)
    assert resolve_image_path("demo:chelsea").name == "chelsea.png"
    with pytest.raises(StylenetError, match="no bundled demo image"):
        resolve_image_path("demo:nonexistent")


def test_resize_long_side() -> None:
    assert resize_long_side(torch.rand(3, 100, 50), 40).shape == (3, 40, 20)


def test_a_dataloader_worker_ends_once_the_training_process_is_killed() -> None:
    """Workers started by a forkserver are not the training process's children: after a ``kill -9`` or
    the OOM killer nothing told them, and they lived on with their memory. Each watches the training
    process's pid (a zombie counts as gone) and ends with it."""
    import subprocess
    import sys
    import time

    from stylenet.data import process_alive

    main = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    worker = subprocess.Popen([sys.executable, "-c", "import time; from stylenet.data import exit_with_main; "
                               f"exit_with_main({main.pid}, 0); time.sleep(120)"])
    try:
        time.sleep(1.0)
        assert worker.poll() is None and process_alive(main.pid)
        main.kill()
        time.sleep(0.5)
        assert not process_alive(main.pid)  # a zombie until reaped: already gone to the workers
        main.wait()
        assert worker.wait(timeout=30) == 0
    finally:
        for process in (main, worker):
            if process.poll() is None:
                process.kill()
                process.wait()


def test_the_workers_are_still_seeded_as_lightning_seeds_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lightning seeds workers (seed_everything(workers=True)) only through a loader without a
    worker_init_fn: the one that watches the training process seeds them as Lightning's would, per rank."""
    import os
    import random

    from lightning_fabric.utilities.seed import pl_worker_init_function

    from stylenet.data import exit_with_main

    def draws() -> tuple[int, float, float]:
        return int(torch.randint(0, 2**30, ())), random.random(), float(np.random.random())

    monkeypatch.setenv("PL_SEED_WORKERS", "1")
    torch.manual_seed(5)
    pl_worker_init_function(1, rank=2)
    expected = draws()
    torch.manual_seed(5)
    exit_with_main(os.getpid(), 2, 1)  # this process lives on: its watcher only waits
    assert draws() == expected
    torch.manual_seed(5)
    exit_with_main(os.getpid(), 3, 1)
    assert draws() != expected  # another rank, other streams
