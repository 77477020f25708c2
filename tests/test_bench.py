"""stylenet-bench runs end to end at tiny sizes and writes valid JSON with every figure and ratio;
its reference step computes the same objective as the fast one."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch

from stylenet import StylenetError
from stylenet.bench import measure, report, sections, training
from stylenet.bench.worker import Job, Measured, WorkerFailed, run_worker
from stylenet.cli import bench
from tests.helpers import console_script


def test_quick_benchmark_writes_valid_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every section at tiny sizes, in two runs at once on one thread each (the sections' worker
    processes start a fresh interpreter each, which is most of the time here): the training half in
    this process, named backwards (data's feed ratio needs train's step time, the fraction of peak
    the conv ceiling), the inference half through the console script."""
    out, other_out = tmp_path / "bench.json", tmp_path / "other.json"
    other = subprocess.Popen([*console_script("stylenet-bench"), "--quick", "--threads", "1", "--sections",
                              "gatys,photo,frames,infer", "--sizes", "32", "32", "--json", str(other_out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert bench.main(["--quick", "--threads", "1", "--sections", "data,conv,train", "--json", str(out)]) == 0
        other_table, other_err = other.communicate(timeout=300)
    finally:
        other.kill()
    assert other.returncode == 0, other_err[-2000:]
    results, other_results = json.loads(out.read_text()), json.loads(other_out.read_text())
    numbers = {key: value for run in (results, other_results) for key, value in run.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)}
    assert all(math.isfinite(value) and value >= 0 for value in numbers.values()), numbers
    for key in ("train_speedup", "train_fraction_of_peak", "infer_speedup_32", "train_reference_s",
                "train_fast_s", "train_fast_gflop", "infer_fast_paper_32_seconds", "infer_fp32_paper_32_peak_mb",
                "gatys_iteration_s", "gatys500_over_feedforward", "conv_fp32_gflops", "conv_bf16_gflops",
                "data_jpeg_img_s", "data_shard_img_s", "data_shard_feed_ratio", "frames_half_64x48_fps",
                "frames_half_64x48_onepass_fps",
                "frames_paper_64x48_fps", "photo_default_128x96_seconds", "photo_onepass_128x96_peak_mb",
                "photo_default_128x96_psnr_db", "photo_default_128x96_time_ratio"):
        assert numbers.get(key, 0) > 0, key
    # the ratios the targets judge are their own measurements' (>= 4x, >= 20x, <= 1.2x)
    assert results["train_speedup"] == pytest.approx(results["train_reference_s"] / results["train_fast_s"])
    assert results["data_shard_feed_ratio"] == pytest.approx(
        results["data_shard_img_s"] * results["train_fast_s"] / results["train_batch"])
    assert other_results["photo_default_128x96_time_ratio"] == pytest.approx(
        other_results["photo_default_128x96_seconds"] / other_results["photo_onepass_128x96_seconds"])
    # The reference pushes the content batch through VGG to relu4_3; the fast path stops at relu2_2.
    assert results["train_reference_gflop"] > results["train_fast_gflop"]
    assert results["meta"]["command"].startswith("stylenet-bench --quick")
    table = capsys.readouterr().out
    assert "train step" in table and "conv ceiling" in table and "ran on: " in table and "bf16 native: " in table
    assert other_table.count("stylize 32 px (paper net)") == 1  # --sizes 32 32: measured once
    assert "frames 64x48 streamed (half net)" in other_table
    # the targets' sizes were not measured: each named, with the sizes that were
    assert other_results["targets_not_judged"]["infer_fast_paper_1024_seconds"].endswith("measured at 32 only")
    assert other_results["targets_not_judged"]["frames_half_640x480_fps"].endswith("measured at 64x48 only")
    assert "photo 128x96 (paper net)" in other_table and "ran on: " in other_table


def test_ctrl_c_is_one_line_and_exit_130(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop while a section measures: one line and 130, as the other commands (it printed a traceback)."""
    def stopped(*_args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(bench, "bench_conv", stopped)
    assert bench.main(["--quick", "--sections", "conv", "--json", str(tmp_path / "b.json")]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == "stylenet-bench: interrupted"
    assert not (tmp_path / "b.json").exists()


def test_a_failed_worker_is_one_line_and_the_sections_before_it_are_kept(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker out of memory at a large size (or killed) was two tracebacks, no table and no --json, after
    minutes of other sections."""
    with pytest.raises(WorkerFailed) as err:  # a worker that raises: its last line, not its traceback
        run_worker(Job(section="nonsense", device="cpu", size=32, reps=1))
    assert str(err.value) == "the nonsense worker (paper, 32 px) failed: KeyError: 'nonsense'"

    def killed(*_args: object) -> None:
        raise WorkerFailed("the frames worker (half, 640x480 px) failed: killed by signal 9")

    monkeypatch.setattr(bench, "bench_conv", killed)
    out = tmp_path / "b.json"
    assert bench.main(["--quick", "--sections", "infer,conv", "--sizes", "16", "--json", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines()[-1] == ("stylenet-bench: error: the frames worker (half, 640x480 px) failed: "
                                             "killed by signal 9; the sections finished before it follow")
    assert "stylize 16 px" in captured.out and json.loads(out.read_text())["infer_fast_paper_16_seconds"] > 0


def test_sections_and_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "conv.json"
    assert bench.main(["--quick", "--sections", "conv", "--json", str(out), "--compile"]) == 0
    assert ("stylenet-bench: note: --compile is used by the train section only, and --sections has none of them: "
            "it changes nothing here") in capsys.readouterr().err
    conv = json.loads(out.read_text())
    assert set(conv) == {"meta", "conv_fp32_gflops", "conv_bf16_gflops", "conv_fp32_gflops_by_shape",
                         "conv_bf16_gflops_by_shape", "targets"}
    assert conv["conv_fp32_gflops"] == max(conv["conv_fp32_gflops_by_shape"].values())
    assert len(conv["conv_fp32_gflops_by_shape"]) == len(sections.VGG_CONV_SHAPES) and conv["targets"] == {}
    with pytest.raises(SystemExit):
        bench.main(["--sections", "train,nonsense"])


def test_the_conv_ceiling_counts_two_flops_per_multiply_add(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3x3 convolution of C to C channels on B x S x S: 2 * 9 * C * C * S * S * B FLOP per call."""
    monkeypatch.setattr(sections, "median_seconds", lambda *_args: 0.5)
    profile = sections.PROFILES["quick"]  # batch 2, 32 px: sides 32, 16, 8 and 4 (the smallest side)
    by_shape = sections.bench_conv(torch.device("cpu"), profile, 1)["conv_fp32_gflops_by_shape"]
    assert by_shape == pytest.approx({f"{c}x{s}": 2 * 9 * c * c * s * s * 2 / 0.5 / 1e9
                                      for c, s in ((64, 32), (128, 16), (256, 8), (512, 4))})


@pytest.mark.parametrize(("bad", "named"), [
    (["--train-size", "18"], "--train-size must be a multiple of 4, >= 16, got 18"),
    (["--sizes", "64", "0"], "--sizes must be each >= 16, got 64 0"),
    (["--threads", "-1"], "--threads must be >= 1, got -1"),
    (["--reps", "0"], "--reps must be >= 1, got 0"), (["--weights", "nosuch.pth"], "--weights must be"),
    (["--sections", "infer,nonsense"], "--sections: unknown section 'nonsense'; choose from train,"),
    (["--sections", ""], "--sections is empty and there is no --loss-curve: nothing to measure"),
    (["--json", "."], "cannot write --json '.': it is a folder")])
def test_bad_arguments_are_refused_before_any_measuring(bad: list[str], named: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        bench.main(["--quick", "--sections", "infer", *bad])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"stylenet-bench: error: {named}" in err, err


def test_a_json_that_would_replace_a_model_or_weights_file_is_refused(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``--json half.safetensors`` wrote the figures over the model they were measured with, exit 0."""
    weights = tmp_path / "vgg16_weights"  # a weights file of any name
    weights.write_bytes(b"weights")
    for bad, named in ((["--weights", str(weights), "--json", str(weights)], f"is an input ({str(weights)!r})"),
                       (["--json", str(tmp_path / "half.safetensors")], "names a picture, video or model file")):
        with pytest.raises(SystemExit) as stop:
            bench.main(["--quick", "--sections", "infer", *bad])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and named in err.splitlines()[-1], err
    assert weights.read_bytes() == b"weights"


@pytest.mark.parametrize("section", ["gatys", "train"])  # in this process, and in a worker process
def test_a_section_that_refuses_a_setting_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      section: str) -> None:
    (weights := tmp_path / "vgg.pth").write_bytes(b"not a state dict")
    assert bench.main(["--quick", "--sections", section, "--weights", str(weights)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("stylenet-bench: error: ") and str(weights) in err[-1], err
    # the loss curve, which runs after every section: refused before them, not after their minutes
    assert bench.main(["--quick", "--sections", "conv", "--loss-curve", "2", "--weights", str(weights)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("stylenet-bench: error: ") and "stylenet-bench: conv ..." not in err, err


def test_model_file_rows_follow_its_width(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A trained file is timed in the row of its width: a half-width one in the frames section's
    half-width row, and refused by the 12 MP photo row (the paper's width) before any section runs,
    with a one-line error naming it; a width the benchmark has no row for is refused too."""
    from stylenet.modelfile import save_model
    from stylenet.nets import TransformerNet

    files = {}
    for channels in (8, 16, 32):
        files[channels] = tmp_path / f"width{channels}.safetensors"
        save_model(files[channels], TransformerNet(channels=channels, residual_blocks=1), {"task": "style"})
    assert sections.model_file_row(str(files[16])) == "half"
    assert sections.model_file_row(str(files[32]), paper_only=True) == "paper"
    with pytest.raises(StylenetError, match="width 8"):
        sections.model_file_row(str(files[8]))
    capsys.readouterr()
    assert bench.main(["--quick", "--sections", "conv,photo", "--model-file", str(files[16])]) == 2
    error = capsys.readouterr().err
    assert "width16.safetensors" in error and "paper" in error and len(error.strip().splitlines()) == 1
    # --models without the file's row: said, not timed silently under no row (nor refused: the others are wanted)
    monkeypatch.setattr(bench, "bench_frames", lambda *args: {})
    assert bench.main(["--quick", "--sections", "frames", "--models", "paper", "--model-file", str(files[16])]) == 0
    assert ("stylenet-bench: note: --model-file is timed in the half net's rows, which --models leaves out: it changes "
            "nothing here") in capsys.readouterr().err
    # a super-resolution network of the paper's width is no style network to time in its rows
    from stylenet.nets import SuperResolutionNet

    save_model(upscaler := tmp_path / "x4.safetensors", SuperResolutionNet(factor=4, channels=32, residual_blocks=1),
               {"task": "sr", "factor": 4})
    assert bench.main(["--quick", "--sections", "frames", "--model-file", str(upscaler)]) == 2
    assert capsys.readouterr().err == (f"stylenet-bench: error: model file {str(upscaler)!r} is a 'sr' model, "
                                       "not a 'style' model\n")


def test_a_json_the_disk_refuses_at_the_end_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A --json path that passes the check before the sections but cannot be written after them (/proc,
    a full disk): one line naming it, exit 1, the table already printed (it was a traceback)."""
    monkeypatch.setattr(bench, "bench_conv", lambda *_args: {"conv_fp32_gflops": 1.0, "conv_bf16_gflops": 2.0})
    assert bench.main(["--quick", "--sections", "conv", "--json", "/proc/bench.json"]) == 1
    printed = capsys.readouterr()
    assert printed.err.splitlines()[-1] == ("stylenet-bench: error: cannot write '/proc/bench.json': No such file "
                                            "or directory (the table above holds the figures)")
    assert "ran on: " in printed.out


def test_the_loss_curve_trains_both_runs_on_the_same_stream() -> None:
    """Its batches are made again for each run (not held: 10k steps of them were 30 GB): at one precision
    the two runs are then the same run, step for step."""
    curve = training.loss_curve(torch.device("cpu"), 3, 32, 2, "32-true", "random")
    assert curve["loss_curve_fp32"] == curve["loss_curve_fast"] and len(curve["loss_curve_fast"]) == 3
    assert curve["loss_curve_rel_diff_final_eval"] == 0.0
    assert curve["loss_curve_fp32"][-1] < curve["loss_curve_fp32"][0]


def test_reference_and_fast_steps_give_the_same_first_loss() -> None:
    """Same seed, same batch: the first step's loss (before any update) is the same objective, up to
    bf16 where the fast path uses it."""
    device = torch.device("cpu")
    images, style = measure.random_images(2, 32, device), measure.random_images(1, 32, device, seed=1)[0]
    reference = float(training.TrainingStep("reference", device, style)(images))
    fast_fp32 = float(training.TrainingStep("fast", device, style, precision="32-true")(images))
    fast = float(training.TrainingStep("fast", device, style)(images))
    assert fast_fp32 == pytest.approx(reference, rel=1e-5)
    assert fast == pytest.approx(reference, rel=2e-2)


def test_repeated_sizes_and_models_are_measured_once() -> None:
    args = bench.parse_args(["--quick", "--sizes", "64", "32", "64", "--models", "half", "paper", "half"])
    assert (args.sizes, args.models) == ([64, 32], ["half", "paper"])


def test_derived_figures_and_targets_hand_computed() -> None:
    """The floor, the bound and the targets from a hand-made set of figures."""
    results = {"meta": {"bf16_native": True, "device": "cpu"}, "photo_model_file": "paper.safetensors",
               "train_size": 256, "train_batch": 4, "train_fast_precision": "32-true", "train_fast_s": 4.0,
               "train_reference_s": 8.0,
               "train_fast_gflop": 600.0, "train_fast_executed_gflop": 500.0, "train_reference_gflop": 700.0,
               "conv_fp32_gflops": 250.0, "conv_bf16_gflops": 20.0,
               "gatys_size": 256, "gatys_iteration_s": 0.5, "infer_fast_paper_256_seconds": 0.2,
               "infer_fast_paper_1024_seconds": 0.34, "infer_fast_half_1024_seconds": 0.13,
               "frames_half_640x480_fps": 31.0,
               "frames_paper_640x480_fps": 9.0, "photo_default_4000x3000_time_ratio": 1.1,
               "photo_default_4000x3000_peak_mb": 1900.0, "photo_default_4000x3000_psnr_db": 49.0}
    report.derived(results)
    # the executed FLOPs (the rewrites execute fewer than the network counts) at the fp32 ceiling for 32-true
    assert results["train_fraction_of_peak"] == pytest.approx(500 / 4 / 250)
    assert results["train_floor_s"] == pytest.approx(500 / 250)
    assert results["train_speedup_bound"] == pytest.approx(8.0 / 2.0)
    assert results["gatys500_over_feedforward"] == pytest.approx(500 * 0.5 / 0.2)
    # the targets are set for the default precision of a bf16-native CPU: fp32 there is not judged
    assert results["targets_not_judged"]["train_fraction_of_peak"].endswith(
        "measured at train_fast_precision 32-true (the target's: bf16-mixed)")
    results |= {"train_fast_precision": "bf16-mixed", "conv_bf16_gflops": 250.0}
    report.derived(results)
    targets = results["targets"]
    assert not targets["train_fraction_of_peak"]["met"]  # 0.5 < 0.83
    assert targets["infer_fast_paper_1024_seconds"]["met"] and targets["gatys500_over_feedforward"]["met"]
    assert not targets["infer_fast_half_1024_seconds"]["met"]  # 0.13 > 0.12
    assert "train_speedup" not in targets  # not measured here: no verdict
    assert targets["frames_half_640x480_fps"]["met"] and not targets["frames_paper_640x480_fps"]["met"]
    assert targets["photo_default_4000x3000_time_ratio"]["met"] and targets["photo_default_4000x3000_peak_mb"]["met"]
    assert not targets["photo_default_4000x3000_psnr_db"]["met"]
    assert "targets_not_judged" not in results
    # a step of another size than the targets' (--quick, --train-size): no verdict, and why
    results |= {"train_size": 32, "train_batch": 2, "gatys_size": 32}
    report.derived(results)
    assert not {"train_fraction_of_peak", "gatys500_over_feedforward"} & set(results["targets"])
    assert results["targets_not_judged"]["train_fraction_of_peak"] == (
        "training step's executed FLOP rate / conv ceiling: measured at train_size 32 (the target's: 256), "
        "train_batch 2 (the target's: 4)")
    # fp16 has no ceiling measured: no fraction (it was judged against bf16's); a short loss curve is not judged
    results |= {"train_size": 256, "train_batch": 4, "train_fast_precision": "16-mixed", "loss_curve_steps": 2,
                "loss_curve_rel_diff_final_eval": 0.02, "loss_curve_fast_precision": "bf16-mixed"}
    del results["train_fraction_of_peak"]
    report.derived(results)
    assert "train_fraction_of_peak" not in results and "loss_curve_rel_diff_final_eval" not in results["targets"]
    assert results["targets_not_judged"]["loss_curve_rel_diff_final_eval"].endswith(
        "measured at loss_curve_steps 2 (the target's: at least 200)")
    results |= {"loss_curve_steps": 1000, "loss_curve_fast_precision": "32-true"}  # fp32 against fp32: no measure
    report.derived(results)
    assert results["targets_not_judged"]["loss_curve_rel_diff_final_eval"].endswith(
        "measured at loss_curve_fast_precision 32-true (the target's: bf16-mixed)")
    results |= {"loss_curve_fast_precision": "bf16-mixed"}  # a longer curve in bf16 is judged
    report.derived(results)
    assert not results["targets"]["loss_curve_rel_diff_final_eval"]["met"]
    # the 12 MP photo's PSNR with random weights is bf16 rounding (~47 dB), no measure of the path
    results["photo_model_file"] = None
    report.derived(results)
    assert "photo_default_4000x3000_psnr_db" not in results["targets"]
    assert "photo_default_4000x3000_peak_mb" in results["targets"]
    assert results["targets_not_judged"]["photo_default_4000x3000_psnr_db"].endswith(
        "measured at photo_weights random (the target's: trained)")
    # measured at other sizes only (--quick, --sizes): named, with the sizes
    del results["infer_fast_paper_1024_seconds"], results["frames_half_640x480_fps"]
    results |= {"infer_fast_paper_512_seconds": 0.1, "infer_fast_paper_2048_seconds": 1.0,
                "frames_half_64x48_fps": 90.0, "frames_half_64x48_onepass_fps": 80.0}
    report.derived(results)
    assert results["targets_not_judged"]["infer_fast_paper_1024_seconds"] == (
        "stylize 1024 px, paper net, seconds: measured at 256, 512, 2048 only")
    assert results["targets_not_judged"]["frames_half_640x480_fps"].endswith("measured at 64x48 only")
    assert "infer_fast_half_1024_seconds" in results["targets"]
    # a GPU has native bf16 too, but the targets are a 2-core CPU's
    results["meta"]["device"] = "cuda:0"
    report.derived(results)
    assert not results["targets"] and results["targets_not_judged"]["infer_fast_half_1024_seconds"].endswith(
        "measured at device cuda (the target's: cpu)")
    # on a CPU without native bf16 no target is judged: the README gives the bound its arithmetic allows
    results["meta"] |= {"device": "cpu", "bf16_native": False}
    report.derived(results)
    assert not results["targets"] and results["targets_not_judged"]["infer_fast_half_1024_seconds"].endswith(
        "measured at bf16_native False (the target's: True)")


def test_rows_timed_with_a_model_file_name_it() -> None:
    """Only the row the trained file was timed in carries its name; the other row is the fresh network's."""
    results = {"frames_size": "640x480", "frames_model_file": "runs/demo/demo.safetensors",
               "frames_model_file_row": "half", measure.key("frames", "half", "640x480", "fps"): 12.0,
               measure.key("frames", "paper", "640x480", "fps"): 4.0}
    photo = "4000x3000"
    results |= {"photo_size": photo, "photo_model_file": "runs/paper/paper.safetensors",
                measure.key("photo_default", photo, "time_ratio"): 0.96,
                measure.key("photo_default", photo, "psnr_db"): 58.4}
    results |= {measure.key("photo", mode, photo, figure): 1.0 for mode in ("onepass", "default")
                for figure in ("seconds", "peak_mb")}
    results[measure.key("video", "half", "640x480", "fps")] = 9.0
    labels = [row[0] for row in report.stream_rows(results)]
    assert labels == ["frames 640x480 streamed (half net: demo.safetensors)", "frames 640x480 streamed (paper net)",
                      "video 640x480 end to end, decode + encode (half net: demo.safetensors)",
                      "photo 4000x3000 (paper net: paper.safetensors): one pass / default"]
    results["frames_model_file"] = results["frames_model_file_row"] = results["photo_model_file"] = None
    labels = [row[0] for row in report.stream_rows(results)]
    assert labels[0] == "frames 640x480 streamed (half net)"
    results[measure.key("frames", "half", "640x480", "onepass_fps")] = 10.0  # the ablation: 12 / 10 frames/s
    assert next(report.stream_rows(results))[1:] == ("10.0 frames/s (one pass)", "12.0 frames/s", "1.20x")
    assert labels[2:] == ["video 640x480 end to end, decode + encode (half net)",
                          "photo 4000x3000 (paper net): one pass / default"]


def test_the_video_rows_clip_is_written_in_a_folder_the_parent_removes(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker made its own temporary folder for the clip and its outputs, and a worker stopped by
    SIGTERM is killed (subprocess.run), so every stopped bench left one in /tmp: the parent owns it."""
    pytest.importorskip("av")
    from stylenet.bench.worker import VideoWork

    work = VideoWork(Job("video", "cpu", 32, 1, model="half", height=24, frames=3, output=str(tmp_path)),
                     torch.device("cpu"))
    work()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["clip.mp4", "out1.mp4"]
    seen: list[str] = []

    def recorded(job: Job) -> Measured:
        seen.append(job.output)
        assert job.section != "video" or Path(job.output).is_dir()
        return Measured(1.0, 1.0, None, 1.0, None)

    monkeypatch.setattr(sections, "run_worker", recorded)
    sections.bench_frames(torch.device("cpu"), sections.PROFILES["quick"], 1)
    assert seen[-1] and not Path(seen[-1]).exists()  # the video job's folder, removed once it was measured


def test_a_model_file_is_timed_in_every_row_of_its_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """The video row (issue 17's end-to-end figure) was timed with fresh weights though --model-file was given."""
    jobs: list[Job] = []

    def recorded(job: Job) -> Measured:
        jobs.append(job)
        return Measured(1.0, 1.0, None, 1.0, None)

    monkeypatch.setattr(sections, "run_worker", recorded)
    monkeypatch.setattr(sections, "model_file_row", lambda model_file: "half")
    sections.bench_frames(torch.device("cpu"), sections.PROFILES["quick"], 1, "half.safetensors")
    timed = {(job.section, job.model, job.mode): job.model_file for job in jobs}
    assert timed == {("frames", "half", "fp32"): "half.safetensors", ("frames", "paper", "fp32"): "",
                     ("frames", "half", "onepass"): "half.safetensors", ("video", "half", "fp32"): "half.safetensors"}
    jobs.clear()  # --models paper: the half-width rows (its frames, the ablation, the video) are not timed
    sections.bench_frames(torch.device("cpu"), sections.PROFILES["quick"], 1, models=["paper"])
    assert [(job.section, job.model) for job in jobs] == [("frames", "paper")]
