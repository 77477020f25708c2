"""Arbitrary and tampered bytes against the loaders of files users download: model files
(:func:`stylenet.modelfile.read_model`) and training checkpoints (:func:`checkpoint_problem`).

Only the project's one-line errors may come out, never a traceback from a library, a crash or a
hang (each example has a deadline). The image loader has the same test in tests/test_image.py."""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stylenet import StylenetError
from stylenet.checkpoints import checkpoint_problem
from stylenet.modelfile import read_model, save_model
from stylenet.nets import TransformerNet
from tests.helpers import RunsCode

TINY = {"channels": 4, "residual_blocks": 1, "norm": "instance"}


def model_bytes() -> bytes:
    """A valid stylenet model file for a 4-channel network (about 30 kB)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        return save_model(Path(folder) / "m.safetensors", TransformerNet(**TINY), {"steps": 1}).read_bytes()


VALID = model_bytes()


def split(data: bytes) -> tuple[dict, bytes]:
    """safetensors = 8-byte little-endian header length, JSON header, raw tensor bytes."""
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + length]), data[8 + length:]


def join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


def with_header(change: Callable[[dict], None]) -> bytes:
    header, body = split(VALID)
    change(header)
    return join(header, body)


def with_stylenet_metadata(change: Callable[[dict], None]) -> bytes:
    def apply(header: dict) -> None:
        metadata = json.loads(header["__metadata__"]["stylenet"])
        change(metadata)
        header["__metadata__"]["stylenet"] = json.dumps(metadata)

    return with_header(apply)


def first_tensor_name(header: dict) -> str:
    return next(key for key in header if key != "__metadata__")


def first_tensor(header: dict) -> dict:
    return header[first_tensor_name(header)]


CORPUS: dict[str, Callable[[], bytes]] = {
    "empty": lambda: b"",
    "seven_bytes": lambda: VALID[:7],
    "header_only": lambda: VALID[:8 + struct.unpack("<Q", VALID[:8])[0]],
    "truncated_data": lambda: VALID[: len(VALID) - 100],
    "huge_header_length": lambda: struct.pack("<Q", 2**62) + VALID[8:],
    "header_not_json": lambda: struct.pack("<Q", 5) + b"{{{{{" + VALID[8:],
    "a_pickle": lambda: torch_save_bytes({"weights": torch.zeros(2)}),
    "a_png": lambda: b"\x89PNG\r\n\x1a\n" + bytes(100),
    "no_metadata": lambda: with_header(lambda h: h.pop("__metadata__")),
    "metadata_not_json": lambda: with_header(lambda h: h["__metadata__"].update(stylenet="{not json")),
    "metadata_a_list": lambda: with_header(lambda h: h["__metadata__"].update(stylenet="[1, 2]")),
    "other_format": lambda: with_stylenet_metadata(lambda m: m.update(format="diffusers")),
    "unknown_network": lambda: with_stylenet_metadata(lambda m: m["network"].update({"class": "os.system"})),
    "network_a_list": lambda: with_stylenet_metadata(lambda m: m.update(network=[1, 2])),
    "network_a_string": lambda: with_stylenet_metadata(lambda m: m.update(network="TransformerNet")),
    "bad_network_argument": lambda: with_stylenet_metadata(lambda m: m["network"].update(norm="layer")),
    "unknown_network_argument": lambda: with_stylenet_metadata(lambda m: m["network"].update(exec="rm")),
    "negative_channels": lambda: with_stylenet_metadata(lambda m: m["network"].update(channels=-4)),
    "other_channels": lambda: with_stylenet_metadata(lambda m: m["network"].update(channels=8)),
    "dtype_changed": lambda: with_header(lambda h: first_tensor(h).update(dtype="F64")),
    "shape_changed": lambda: with_header(lambda h: first_tensor(h).update(shape=[1, 2, 3])),
    "offsets_outside": lambda: with_header(lambda h: first_tensor(h).update(data_offsets=[0, 10**9])),
    "tensor_renamed": lambda: with_header(lambda h: h.update(renamed=h.pop(first_tensor_name(h)))),
}


def torch_save_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


CHECKPOINT = torch_save_bytes({"state_dict": {}, "global_step": 1})


def assert_clear_error_or_model(path: Path) -> None:
    try:
        model = read_model(path)
    except StylenetError as err:
        message = str(err)
        assert path.name in message and "\n" not in message, message
    else:
        assert isinstance(model.net, TransformerNet)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_replay_bad_model_files(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(CORPUS[name]())
    with pytest.raises(StylenetError) as err:
        read_model(path)
    assert path.name in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("suffix", [".ckpt", ".pth", ".safetensors"])
def test_a_model_file_that_would_run_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     suffix: str) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    path = tmp_path / f"downloaded{suffix}"
    payload = {"state_dict": {"net.w": torch.zeros(1)}, "x": RunsCode(tmp_path / "pwned")}
    path.write_bytes(torch_save_bytes(payload))
    with pytest.raises(StylenetError, match=path.name):
        read_model(path)
    assert not (tmp_path / "pwned").exists()


@st.composite
def tampered_model_bytes(draw: st.DrawFn) -> bytes:
    """Random bytes, or the valid file with a few bytes overwritten and maybe cut short."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=400))
    data = bytearray(draw(st.sampled_from([VALID, *(make() for make in CORPUS.values())])) or b"\0")
    header_end = min(len(data), 8 + 2000)
    for _ in range(draw(st.integers(1, 6))):  # mostly in the length and JSON header, where parsing happens
        end = header_end if draw(st.booleans()) else len(data)
        data[draw(st.integers(0, end - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@settings(max_examples=60, deadline=3000, suppress_health_check=[HealthCheck.too_slow])
@given(data=tampered_model_bytes())
def test_fuzz_model_loader_gives_only_clear_errors(tmp_path_factory: pytest.TempPathFactory,
                                                   data: bytes) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz.safetensors"
    path.write_bytes(data)
    assert_clear_error_or_model(path)


CHECKPOINT_KEYS = {"state_dict": {}, "optimizer_states": [], "global_step": 1, "loops": {}}
NOT_A_CHECKPOINT = "not a Lightning training checkpoint (needs state_dict, optimizer_states, global_step, loops)"
#: name -> (checkpoint, the reason it cannot resume a run of no recorded settings)
BAD_CHECKPOINTS = {
    "a_list": ([1, 2], NOT_A_CHECKPOINT), "no_keys": ({"weights": torch.zeros(1)}, NOT_A_CHECKPOINT),
    "state_dict_a_list": ({**CHECKPOINT_KEYS, "state_dict": [torch.zeros(1)]}, NOT_A_CHECKPOINT),
    # settings that are not a mapping are no settings: a run that has some is another run's
    "hparams_a_list": ({**CHECKPOINT_KEYS, "hyper_parameters": [1]}, None),
    "inf_weight": ({**CHECKPOINT_KEYS, "state_dict": {"net.w": torch.tensor([float("inf")])}},
                   "non-finite weights in net.w")}


@pytest.mark.parametrize("name", sorted(BAD_CHECKPOINTS))
def test_replay_bad_checkpoints(tmp_path: Path, name: str) -> None:
    checkpoint, reason = BAD_CHECKPOINTS[name]
    path = tmp_path / f"{name}.ckpt"
    path.write_bytes(torch_save_bytes(checkpoint))
    assert checkpoint_problem(path, "exp", {}) == reason
    if reason is None:
        assert checkpoint_problem(path, "exp", {"model": {"channels": 8}}) == (
            "trained with another model (None, this run has {'channels': 8})")


@settings(max_examples=40, deadline=3000, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=400), st.builds(lambda cut: CHECKPOINT[:cut], st.integers(0, 2000))))
def test_fuzz_checkpoint_check_never_raises(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz.ckpt"
    path.write_bytes(data)
    assert isinstance(checkpoint_problem(path, "exp", {}), str)  # never valid, never an exception
