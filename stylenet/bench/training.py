"""The training step timed by ``stylenet-bench``: the reference configuration, stylenet's fast one, and
the table of variants between them (each ablation takes one fast path away)."""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from stylenet.fastpath import prepare_for_training, training_precision
from stylenet.losses import (
    PerceptualLoss,
    feature_reconstruction_loss,
    style_reconstruction_loss,
    total_variation_loss,
)
from stylenet.nets import TransformerNet

AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16, "32-true": None}


def reference_gram(features: torch.Tensor) -> torch.Tensor:
    """The Gram matrix as pytorch/examples computes it: one product, differentiated by autograd."""
    batch, channels, height, width = features.shape
    psi = features.reshape(batch, channels, height * width)  # (B, C, HW)
    return torch.bmm(psi, psi.transpose(1, 2)) / (channels * height * width)


def reference_objective(loss: PerceptualLoss, output: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """stylenet's objective computed with the reference's data flow: the content batch goes through
    VGG as deep as the output (relu4_3, as pytorch/examples' ``vgg(x)`` does), nothing is truncated."""
    layers = [*loss.content_layers, *loss.style_layers]
    out_features, content_features = loss.vgg(output, layers), loss.vgg(images, layers)
    weights = loss.term_weights
    content = sum(w * feature_reconstruction_loss(out_features[name], content_features[name])
                  for name, w in loss.content_layers.items())
    style = sum(w * style_reconstruction_loss(reference_gram(out_features[name]), loss.target_gram(name))
                for name, w in loss.style_layers.items())
    return weights["content"] * content + weights["style"] * style + weights["tv"] * total_variation_loss(output)


class TrainingStep:
    """A training step ``images -> total loss`` (forward, backward, Adam) with its own network.

    ``kind="reference"``: fp32, NCHW, eager, :func:`reference_objective`. ``kind="fast"``: what
    :class:`~stylenet.tasks.StyleTransferTask` does, ``loss(net(images), images)`` with the modules
    prepared by :func:`stylenet.fastpath.prepare_for_training` (``prepare=False``: not), under the
    autocast Lightning applies for ``precision`` (default: :func:`stylenet.fastpath.training_precision`)."""

    def __init__(self, kind: str, device: torch.device, style: torch.Tensor, *, weights: str = "random",
                 seed: int = 0, precision: str | None = None, prepare: bool = True,
                 model: dict[str, Any] | None = None, **fast_paths: Any) -> None:
        torch.manual_seed(seed)
        self.kind, self.device = kind, device
        self.net = TransformerNet(**(model or {})).to(device)
        self.loss = PerceptualLoss(weights=weights, seed=seed).to(device)
        self.loss.set_style([style])
        self.dtype = None
        if kind == "fast":
            if prepare:
                prepare_for_training(self.net, self.loss, device, **fast_paths)
            self.dtype = AUTOCAST[precision or training_precision(device.type)]
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=1e-3)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else contextlib.nullcontext():
            output = self.net(images)
            if self.kind == "reference":
                total = reference_objective(self.loss, output, images)
            else:
                total = self.loss(output, images)["total"]
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        return total.detach()

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor) -> float:
        """The objective of the network as trained so far on ``images``, in fp32, no update."""
        return float(self.loss(self.net(images), images)["total"])


@dataclass(frozen=True)
class Variant:
    """One training configuration timed in its own process: a :class:`TrainingStep` and its fast paths."""

    name: str
    kind: str = "fast"                  # reference | fast
    change: str = ""                    # what an ablation takes away, for the table; "": not an ablation
    precision: str | None = None        # None: the benchmark's fast precision
    prepare: bool = True                # apply stylenet.fastpath.prepare_for_training
    channels_last: bool | None = None   # None: per network, as prepare_for_training picks
    per_image_norms: bool = True
    system_malloc: bool = False
    compile: bool = False

    def step(self, device: torch.device, style: torch.Tensor, weights: str, precision: str) -> TrainingStep:
        fast_paths = {"channels_last": self.channels_last, "per_image_norms": self.per_image_norms,
                      "system_malloc": self.system_malloc, "compile": self.compile}
        return TrainingStep(self.kind, device, style, weights=weights, precision=self.precision or precision,
                            prepare=self.prepare, **fast_paths)


VARIANTS = (
    Variant("reference", kind="reference"),
    Variant("fast"),
    Variant("fast_fp32", change="precision 32-true", precision="32-true"),
    Variant("fast_nchw", change="both networks NCHW", channels_last=False),
    Variant("fast_channels_last", change="both networks channels_last", channels_last=True),
    Variant("fast_system_malloc", change="malloc returning memory", system_malloc=True),
    Variant("fast_instance_norm", change="InstanceNorm through F.instance_norm", per_image_norms=False),
    # what the objective does alone: bf16 and the truncated content pass
    Variant("fast_unprepared", change="no layer rewrites, NCHW, system malloc", prepare=False),
)
#: timed with ``--compile`` only: compiling takes minutes.
COMPILED = Variant("fast_compiled", compile=True)


def variant(name: str) -> Variant:
    return next(v for v in (*VARIANTS, COMPILED) if v.name == name)


def loss_curve(device: torch.device, steps: int, size: int, batch: int, precision: str, weights: str
               ) -> dict[str, Any]:
    """Train ``steps`` steps in fp32 and in the fast configuration from the same seed on the same
    batches (the bundled photos in the training stream's order) and compare where they end: the
    training losses of the last steps, and each final network's fp32 objective on fixed centre
    crops of all the photos (the comparison least affected by batch-to-batch noise)."""
    from stylenet.data import ImageFileDataset, ImageFolderDataModule
    from stylenet.image import load_rgb, resize_long_side, resolve_image_path

    data = ImageFolderDataModule(source="demo", image_size=size, batch_size=batch, val_images=0)
    data.setup("fit")

    def batches() -> Iterator[torch.Tensor]:
        """The stream's first ``steps`` batches, made again for each run (a fresh loader starts the seeded
        stream over): held in memory, 10k steps of 256 px batches would take 30 GB."""
        loader = iter(data.train_dataloader())
        for _ in range(steps):
            yield next(loader)["images"].to(device)

    crops = ImageFileDataset(data.list_files(), size)
    fixed = torch.stack([crops[index]["image"] for index in range(len(crops))]).to(device)
    style = resize_long_side(load_rgb(resolve_image_path("demo:ihc")), size).to(device)
    curves, final = {}, {}
    for name, chosen in (("fp32", "32-true"), ("fast", precision)):
        step = TrainingStep("fast", device, style, weights=weights, precision=chosen)
        curves[name] = [float(step(images)) for images in batches()]
        final[name] = step.evaluate(fixed)
    tail = min(10, steps)
    fp32_tail, fast_tail = statistics.fmean(curves["fp32"][-tail:]), statistics.fmean(curves["fast"][-tail:])
    return {"loss_curve_steps": steps, "loss_curve_fast_precision": precision,
            "loss_curve_fp32": curves["fp32"], "loss_curve_fast": curves["fast"],
            "loss_curve_rel_diff_last": abs(curves["fast"][-1] / curves["fp32"][-1] - 1),
            "loss_curve_rel_diff_mean_last10": abs(fast_tail / fp32_tail - 1),
            "loss_curve_fp32_final_eval": final["fp32"], "loss_curve_fast_final_eval": final["fast"],
            "loss_curve_rel_diff_final_eval": abs(final["fast"] / final["fp32"] - 1)}
