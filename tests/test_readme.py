"""Every command in README.md's ```bash blocks runs as written (issue 13): the README cannot drift
from the CLIs again.

Each command is one test, named by the command. It runs through bash in a fresh folder that holds
small generated stand-ins for the README's relative paths (``photo.jpg``, ``photos/``,
``candy.safetensors``, ...); only three kinds of change are made to the text:

* ``SUBSTITUTIONS``: placeholders that cannot exist here (``/path/to/painting.jpg``,
  ``/data/coco/train2014``, ``outputs/my_style/<time>/...``) become generated files, ``trainer=gpu``
  becomes ``trainer=cpu``, and the set-up line's ``python3 -m venv ... && pip install ... &&`` (which
  CI runs itself, in ``.ci/run``) is dropped so that its last part, ``stylenet-train experiment=demo``,
  runs;
* ``PROGRAMS``: arguments appended per program to make a run tiny (2 training steps, 32 px, a tiny
  network, random VGG weights where the README would download ImageNet's). Hydra and argparse both
  let the last value win, so the README's own values stay in the command, overridden;
* ``SKIP``: the few commands deliberately not run, each with its reason.

A README command that matches no program and no skip entry fails, as does one with a placeholder left
(``<...>``, ``/path/...``, ``/data/...``): add the program or the substitution here when the README
gains a command.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from stylenet.bench.worker import MODELS
from stylenet.modelfile import save_model
from stylenet.nets import SuperResolutionNet, TransformerNet
from stylenet.nets.vgg import layer_names, random_state
from tests.conftest import make_photo
from tests.test_video import make_clip

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent  # the console scripts and `python` of this environment
TIMEOUT_S = 300

#: (pattern, reason): README commands deliberately not run here.
SKIP: list[tuple[str, str]] = [
    (r"-m pytest\b", "the test suite itself: CI runs it (.ci/run); running it from a test would recurse"),
    (r"^bash \.ci/run\b", "CI's entry point: recreates .venv and runs the whole suite, this test included"),
    (r"^stylenet-train\b.*\btrainer=ddp\b", "needs 4 GPUs; tests/test_ddp.py runs the same DDP code path "
                                            "with trainer=ddp_cpu (two gloo processes)"),
    (r"^torchrun\b", "two nodes of 4 GPUs each ($RANK, $HOST)"),
    (r"^srun\b", "a SLURM cluster with GPUs"),
    (r"^tensorboard\b", "starts a web server that runs until stopped"),
    (r"^pip install -e \"\.\[web\]\"", "installs into the environment: CI installs the web extra with the test "
                                         "extra (.ci/run)"),
    (r"^stylenet-serve\b", "starts a web server that runs until stopped; tests/test_serve*.py starts it"),
]

#: (pattern, replacement): placeholders -> generated files. ``{assets}``, ``{bin}`` and ``{root}`` are
#: filled in; applied in order, to the command as written.
SUBSTITUTIONS: list[tuple[str, str]] = [
    # set-up: CI creates the environment itself; what is left is the command's own job
    (r"^python3 -m venv \.venv && \.venv/bin/pip install [^&]*&& ", ""),
    (r"(?<![\w/.])\.venv/bin/", "{bin}/"),
    (r"/path/to/[\w.-]+\.(?:jpg|jpeg|png)\b", "{assets}/painting.jpg"),
    (r"/path/(?:to/)?vgg16[\w.-]*\.pth\b", "{assets}/vgg16.pth"),
    (r"/data/coco/train2014\b", "{assets}/coco/train2014"),
    (r"/data/coco_shards\b", "coco_shards"),
    (r"\boutputs/(\w+)/<time>/checkpoints/last\.ckpt\b", r"{assets}/checkpoints/\1.ckpt"),
    (r"\boutputs/\w+/<time>/(\w+\.safetensors)\b", r"\1"),  # a trained model: the stand-in in the run folder
    (r"\btrainer=gpu\b", "trainer=cpu"),
    (r"^python scripts/", "python {root}/scripts/"),
]

#: What is left of a placeholder after the substitutions: the command cannot run as written.
PLACEHOLDER = re.compile(r"<[^<>\s]+>|(?<![\w.])/(?:path|data)/")

#: Hydra overrides that make any stylenet-train run tiny (the README's values are overridden, the
#: command's groups, data source, task and style stay). 48 px: x8 super-resolution needs LR patches of 5 px.
#: A style added to a model file trains that file's network: no model settings (task=add_style refuses them).
RUN_TINY = ("trainer.max_steps=2 trainer.val_check_interval=2 trainer.log_every_n_steps=1 "
            "data.image_size=48 data.batch_size=1 data.num_workers=0 data.val_images=1")
TRAIN_TINY_BASE = f"{RUN_TINY} style.size=32"
TRAIN_TINY = f"{TRAIN_TINY_BASE} model.channels=8 model.residual_blocks=1"
SR_TINY = f"{RUN_TINY} model.channels=8 model.residual_blocks=1"  # no style: refused for super-resolution


@dataclass
class Program:
    """How to run one README program small, and what it must have written."""

    pattern: str
    append: str = ""
    #: appended only when the command does not set the key itself (e.g. its own VGG weights file)
    defaults: dict[str, str] = field(default_factory=dict)
    #: globs (relative to the run folder) that must match a file afterwards
    expect: tuple[str, ...] = ()
    #: run in the repository instead of a scratch folder (development commands)
    in_repo: bool = False
    #: regexes its standard output must match
    says: tuple[str, ...] = ()


PROGRAMS: list[Program] = [
    # a sweep: every job tiny; it must end with the sweep's contact sheet and table
    Program(r"^\S*stylenet-train (?:-m|--multirun)\b", TRAIN_TINY, {"loss.weights=": "loss.weights=random"},
            expect=("outputs/multirun/*/contact_sheet.png", "outputs/multirun/*/sweep.md",
                    "outputs/multirun/*/0/*.safetensors")),
    Program(r"^\S*stylenet-train\b.*\btask=add_style\b", TRAIN_TINY_BASE, {"loss.weights=": "loss.weights=random"},
            expect=("outputs/*/*/*.safetensors", "outputs/*/*/checkpoints/last.ckpt")),
    Program(r"^\S*stylenet-train\b.*\bexperiment=sr_", SR_TINY, {"loss.weights=": "loss.weights=random"},
            expect=("outputs/*/*/*.safetensors", "outputs/*/*/checkpoints/last.ckpt")),
    Program(r"^\S*stylenet-train\b", TRAIN_TINY, {"loss.weights=": "loss.weights=random"},
            expect=("outputs/*/*/*.safetensors", "outputs/*/*/checkpoints/last.ckpt")),
    # 96 px: scales=3 with VGG-19 up to relu5_1 needs 16 px at the coarsest scale
    Program(r"^stylenet-gatys\b", "size=96 iterations=2 image_every=0 progress=false",
            {"loss.weights=": "loss.weights=random"}, expect=("outputs/gatys/*/*.png",)),
    Program(r"^stylenet-export\b"),
    Program(r"^stylenet-stylize\b"),
    Program(r"^stylenet-upscale\b"),
    Program(r"^stylenet-evaluate-sr\b"),
    Program(r"^stylenet-report\b", "--size 32 --gatys-iterations 2 --device cpu",
            expect=("report/figure.png", "report/report.md", "report/report.json")),
    Program(r"^stylenet-stability\b", "photo.jpg --size 24 --frames 3 --max-frames 4"),
    Program(r"^stylenet-prepare\b", "--workers 1 --no-progress", expect=("coco_shards/manifest.json",)),
    # a trained model's rows, as written, and named in the table (the stand-ins have the widths they need)
    Program(r"^stylenet-bench\b.*--sections (?:frames|photo) .*--model-file", "--quick --threads 1",
            says=(r"(?:half|paper) net: (?:demo|paper)\.safetensors",)),
    # one section: tests/test_bench.py runs every section with --quick (~45 s here)
    Program(r"^stylenet-bench\b", "--quick --sections conv --threads 1"),
    Program(r"^python \S*/scripts/reproduce_table1\.py\b", "--sizes 32 --iterations 2 --repeats 1 --weights random"),
    Program(r"^python \S*/scripts/multistyle_check\.py\b", "--steps 1 --channels 8 --residual-blocks 1 --image-size "
            "32 --style-size 32 --styles demo:ihc demo:brick --loss-weights random",
            expect=("outputs/multistyle/results.md",)),
    Program(r"^python \S*/scripts/reproduce_fig5\.py\b", "--sizes 32 --iterations 2 --inits content --max-images 1"),
    Program(r"^\S*/ruff check\b", in_repo=True),
]

#: Options whose value is a file or folder the command writes: it must exist afterwards.
OUTPUT_OPTIONS = re.compile(r"(?:^|\s)(?:-o|--output|--out|--json)\s+(\"[^\"]+\"|'[^']+'|\S+)")


# ------------------------------------------------------------------------------------ the README


def strip_comment(line: str) -> str:
    """``line`` without its shell comment: a ``#`` outside quotes at the start or after a blank."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].rstrip()
    return line.rstrip()


def readme_commands(text: str) -> list[str]:
    """The commands of every ```bash block: continuation lines joined, comments and blanks dropped."""
    commands = []
    for block in re.findall(r"^```bash[ \t]*\n(.*?)^```", text, flags=re.M | re.S):
        pending = ""
        for raw in block.splitlines():
            line = strip_comment(raw)
            if line.endswith("\\"):
                pending += line[:-1].rstrip() + " "
                continue
            command = " ".join((pending + line).split())
            pending = ""
            if command:
                commands.append(command)
    return commands


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def skip_reason(command: str) -> str | None:
    return next((reason for pattern, reason in SKIP if re.search(pattern, command)), None)


def runnable(command: str, assets: Path) -> tuple[str, Program]:
    """The command with placeholders replaced and the program's tiny settings appended."""
    values = {"assets": str(assets), "bin": str(BIN), "root": str(ROOT)}
    for pattern, replacement in SUBSTITUTIONS:
        command = re.sub(pattern, lambda match, template=replacement: match.expand(template).format(**values),
                         command)
    left = PLACEHOLDER.search(command)
    if left:
        pytest.fail(f"placeholder {left[0]!r} left in {command!r}: add a substitution to SUBSTITUTIONS")
    program = next((p for p in PROGRAMS if re.search(p.pattern, command)), None)
    if program is None:
        pytest.fail(f"README command neither run nor skipped: {command!r}; add its program to PROGRAMS "
                    "(with the settings that make it small) or, with a reason, to SKIP")
    extra = [program.append] + [value for key, value in program.defaults.items() if key not in command]
    return " ".join([command, *filter(None, extra)]), program


# ------------------------------------------------------------------------------------ stand-ins


def style_model(path: Path, name: str, style_image: Path, channels: int = 8) -> Path:
    """A tiny random style network with the metadata stylenet-train would record (Fig. 5 reads the
    loss configuration and style image from it); ``channels``: the width stylenet-bench's rows need."""
    torch.manual_seed(len(name))
    net = TransformerNet(channels=channels, residual_blocks=1)
    return save_model(path, net, {"task": "style", "style_name": name, "style_image": str(style_image),
                                  "style_size": 32, "loss": {"weights": "random"}})


def lightning_checkpoint(path: Path, net: torch.nn.Module, hparams: dict) -> Path:
    """What stylenet-export reads from a stylenet-train checkpoint (see tests/test_export_formats.py)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {f"net.{key}": value for key, value in net.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"model": net.config, **hparams}, "global_step": 2},
               path)
    return path


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small generated stand-ins: ``cwd/`` is copied into each command's run folder (the README's
    relative paths), the rest is reached through ``SUBSTITUTIONS``."""
    root = tmp_path_factory.mktemp("readme_assets")
    cwd = root / "cwd"
    painting = make_photo(root / "painting.jpg", size=(48, 40), seed=99)
    for i in range(4):
        make_photo(root / "coco" / "train2014" / f"COCO_train2014_{i:012d}.jpg", size=(64, 48), seed=i)
    # a local VGG-16 weights file as torchvision names its keys, up to relu2_2 (what the SR feature loss uses)
    layers = layer_names("vgg16").index("relu2_2") + 1
    torch.save({f"features.{key}": value for key, value in random_state("vgg16", layers, seed=0).items()},
               root / "vgg16.pth")
    torch.manual_seed(0)
    lightning_checkpoint(root / "checkpoints" / "my_style.ckpt", TransformerNet(channels=8, residual_blocks=1),
                         {"style": {"name": "my_style", "image": str(painting)}})
    lightning_checkpoint(root / "checkpoints" / "sr_x4.ckpt", SuperResolutionNet(4, channels=8, residual_blocks=1),
                         {"task": "sr", "factor": 4})

    for name, size in (("photo.jpg", (48, 40)), ("photo.png", (24, 20)), ("huge.tif", (72, 56)),
                       ("painting.jpg", (40, 32)), ("new.jpg", (40, 32)),
                       ("a.jpg", (40, 32)), ("b.jpg", (32, 40)), ("p.jpg", (40, 40)),
                       ("photos/one.png", (40, 32)), ("photos/sub/two.jpg", (36, 28)), ("more/three.jpg", (32, 32)),
                       ("Set5/baby.png", (48, 48)), ("Set5/bird.png", (40, 40)),
                       ("coco/val2014/COCO_val2014_000000000001.jpg", (48, 40))):
        make_photo(cwd / name, size=size, seed=len(name))
    for name in ("my_style", "candy", "mosaic", "video"):
        style_model(cwd / f"{name}.safetensors", name, painting)
    # the main job's network is half width, the 12 MP photo row's the paper's (stylenet.bench.worker.MODELS)
    style_model(cwd / "demo.safetensors", "demo", painting, channels=MODELS["half"]["channels"])
    style_model(cwd / "paper.safetensors", "paper", painting, channels=MODELS["paper"]["channels"])
    make_clip(cwd / "clip.mp4", frames=6)  # the Video section's clip (PyAV: the test extra installs it)
    torch.manual_seed(2)  # several styles in one network (README: "Several styles in one network")
    styles = [{"name": name, "sha256": None, "image": str(painting)} for name in ("ihc", "brick")]
    save_model(cwd / "multi.safetensors", TransformerNet(channels=8, residual_blocks=1, styles=2),
               {"task": "style", "style_name": "multi", "styles": styles})
    torch.manual_seed(1)
    save_model(cwd / "sr_x4.safetensors", SuperResolutionNet(4, channels=8, residual_blocks=1),
               {"task": "sr", "factor": 4})
    return root


# ------------------------------------------------------------------------------------ the tests


def test_the_readme_has_commands_to_check() -> None:
    programs = {command.split()[0] for command in COMMANDS}
    assert {"stylenet-train", "stylenet-stylize", "stylenet-upscale", "stylenet-export"} <= programs, programs


def test_every_skip_entry_still_names_a_readme_command() -> None:
    """The SKIP list stays short and true: an entry that no longer matches anything is removed."""
    unused = [pattern for pattern, _ in SKIP if not any(re.search(pattern, command) for command in COMMANDS)]
    assert not unused, f"SKIP entries that match no README command: {unused}"


def test_the_parser_joins_continuations_and_drops_comments() -> None:
    text = ("```bash\nfoo a \\\n  b   # a comment\n# only a comment\nbar \"x # y\" #c\n```\n"
            "```python\nnot_a_command\n```\n")
    assert readme_commands(text) == ["foo a b", 'bar "x # y"']


def test_an_unknown_program_or_a_leftover_placeholder_fails(tmp_path: Path) -> None:
    """What keeps the README from drifting: a new command must be run or skipped, explicitly."""
    with pytest.raises(pytest.fail.Exception, match="neither run nor skipped"):
        runnable("stylenet-frobnicate photo.jpg", tmp_path)
    with pytest.raises(pytest.fail.Exception, match="placeholder '<model>' left"):
        runnable("stylenet-stylize -m <model> photo.jpg -o out.png", tmp_path)
    with pytest.raises(pytest.fail.Exception, match="placeholder '/data/' left"):
        runnable("stylenet-prepare /data/imagenet -o shards", tmp_path)
    line, program = runnable("stylenet-train data.root=/data/coco/train2014 trainer=gpu", tmp_path)
    assert line.startswith(f"stylenet-train data.root={tmp_path}/coco/train2014 trainer=cpu trainer.max_steps=2 ")
    assert line.endswith(" loss.weights=random") and program.expect


@pytest.mark.parametrize("command", COMMANDS, ids=COMMANDS)
def test_readme_command_runs_as_written(command: str, assets: Path, tmp_path: Path) -> None:
    reason = skip_reason(command)
    if reason:
        pytest.skip(reason)
    line, program = runnable(command, assets)
    cwd = ROOT if program.in_repo else tmp_path
    if not program.in_repo:
        shutil.copytree(assets / "cwd", tmp_path, dirs_exist_ok=True)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", "-o", "pipefail", "-c", line], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, (f"{line}\nexit {result.returncode}\n"
                                    f"{result.stdout[-1500:]}\n{result.stderr[-3000:]}")
    for match in OUTPUT_OPTIONS.finditer(line):
        written = cwd / match[1].strip("\"'")
        assert written.exists(), f"{line}: {written} was not written"
    for pattern in program.expect:
        assert list(cwd.glob(pattern)), f"{line}: nothing matches {pattern}"
    for pattern in program.says:
        assert re.search(pattern, result.stdout), f"{line}: its output does not say {pattern!r}\n{result.stdout}"
