"""What the library leaves alone in the host process, and what only the applications change.

Process-wide switches (glibc's allocator through :func:`stylenet.fastpath.reuse_freed_memory`) are
the application's decision: the command-line tools make it, ``stylenet.load_model`` in a notebook or
a web server must not. And a data worker that only resizes photos must not pay for Lightning.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import stylenet
from stylenet import fastpath
from stylenet.cli.stylize import main as stylize_main
from stylenet.modelfile import save_model
from stylenet.nets import TransformerNet

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def allocator_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records every call of :func:`stylenet.fastpath.reuse_freed_memory` (and applies none)."""
    calls: list[int] = []
    monkeypatch.setattr(fastpath, "reuse_freed_memory", lambda: calls.append(1) or True)
    return calls


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    return save_model(tmp_path / "tiny.safetensors", TransformerNet(channels=8, residual_blocks=1),
                      {"task": "style", "style_name": "tiny"})


def test_load_model_and_stylize_leave_the_allocator_alone(model_file: Path, allocator_calls: list[int]) -> None:
    model = stylenet.load_model(model_file, device="cpu")
    output = model.stylize(torch.rand(3, 20, 24))
    assert output.shape == (3, 20, 24)
    assert allocator_calls == []


def test_the_stylize_command_switches_the_allocator_on_the_cpu(tmp_path: Path, model_file: Path,
                                                                 allocator_calls: list[int]) -> None:
    photo = tmp_path / "photo.png"
    Image.new("RGB", (24, 20), (40, 120, 200)).save(photo)
    code = stylize_main([str(photo), "-m", str(model_file), "-o", str(tmp_path / "out.png"), "--device", "cpu"])
    assert code == 0 and (tmp_path / "out.png").is_file()
    assert allocator_calls == [1]


def test_the_prepare_worker_does_not_import_lightning(tmp_path: Path) -> None:
    """``stylenet-prepare``'s worker processes decode, resize and crop: image code only."""
    Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "a.png")
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from stylenet.cli.prepare import prepare_one\n"
        f"job = (Path({str(tmp_path / 'a.png')!r}), Path({str(tmp_path)!r}), 16, 10**8)\n"
        "relative, digest, pixels, error, enlarged = prepare_one(job)\n"
        "assert error is None and pixels.shape == (16, 16, 3), error\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('pytorch_lightning', 'lightning', 'hydra'))\n"
        "print(heavy[:3])\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_import_stylenet_is_light_and_reaches_the_submodules_readme_names() -> None:
    """README's ``stylenet.video.stylize_video(src, dst, model)`` after ``import stylenet`` was an
    AttributeError (as was ``stylenet.image.load_image`` before a ``load_model`` call)."""
    script = ("import sys, stylenet\n"
              "assert 'torch' not in sys.modules\n"
              "assert callable(stylenet.image.load_image) and callable(stylenet.video.stylize_video)\n"
              "assert callable(stylenet.inference.InferenceModel)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_importing_the_library_leaves_warning_filters_and_torch_settings_alone() -> None:
    """Warning filters and torch's global settings are the application's: only the CLIs set them.
    (Third-party packages add filters of their own on import; only calls made by stylenet's own
    files count.)"""
    code = """
import importlib, pkgutil, sys, warnings, torch
import stylenet
package = stylenet.__path__[0]
callers = []
def recording(original):
    def wrapper(*args, **kwargs):
        callers.append(sys._getframe(1).f_code.co_filename)
        return original(*args, **kwargs)
    return wrapper
warnings.filterwarnings = recording(warnings.filterwarnings)
warnings.simplefilter = recording(warnings.simplefilter)
before = (torch.get_num_threads(), torch.get_default_dtype(), torch.backends.cudnn.benchmark)
for info in pkgutil.walk_packages(stylenet.__path__, "stylenet."):
    if not info.name.startswith(("stylenet.cli", "stylenet.bench")):
        importlib.import_module(info.name)
ours = [c for c in callers if c.startswith(package)]
assert not ours, ours
assert before == (torch.get_num_threads(), torch.get_default_dtype(), torch.backends.cudnn.benchmark)
print("unchanged")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "unchanged", result.stderr[-2000:]
