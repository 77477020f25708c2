"""Lightning callbacks specific to stylenet (everything else is Lightning's own)."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

from stylenet.atomic import unwritable
from stylenet.checkpoints import EXPERIMENT_KEY, LAST, SEED_KEY
from stylenet.errors import StylenetError
from stylenet.modelfile import checkpoint_metadata, first_non_finite, save_model

log = logging.getLogger(__name__)


class ExportStyleModel(pl.Callback):
    """Write the per-style model file (network weights + metadata, no VGG, no optimiser) when
    training ends, from rank 0 only, so one run ends with one small file to share."""

    def __init__(self, path: str) -> None:
        """Checked here, before any step: a path that cannot take the file would fail only at the end,
        with the run's training in its checkpoints alone."""
        self.path = Path(path)
        if self.path.suffix.lower() != ".safetensors":  # what save_model writes, whatever the name says
            raise StylenetError(f"callbacks.export.path={path}: the model file is safetensors, so its name must end "
                                "in .safetensors (stylenet-export converts it to .onnx or .pt2)")
        reason = unwritable(self.path)
        if reason is not None:
            raise StylenetError(f"callbacks.export.path={path}: cannot write it: {reason}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metadata = checkpoint_metadata(dict(pl_module.hparams), trainer.global_step)
        save_model(self.path, pl_module.net, metadata)
        log.info("exported the model to %s", self.path)


class TrainingInterrupted(SystemExit):
    """The run stopped on SIGTERM or Ctrl-C after saving a checkpoint. Its exit status is the shell's
    128 + signal number (143 for SIGTERM, 130 for SIGINT), so a scheduler sees a job killed by a
    signal (to requeue), while the work up to the last step is safe."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def stop_at_once(signum: int, frame: FrameType | None) -> None:
    """A signal once training is over: stop where the run stands, its finished state saved (on_exception)."""
    raise TrainingInterrupted(signum)


class ResumableRun(pl.Callback):
    """Makes every run resumable by ``resume=auto``.

    * Checkpoints carry the experiment ``name`` (how ``resume=auto`` recognises its own among the
      sibling run folders) and its ``seed`` (a run of another seed is not its continuation), and are
      refused, with an error, if a weight is not finite.
    * SIGTERM (preemption, ``scancel``, ``kill``) and a first Ctrl-C let the current step finish
      (its periodic checkpoint, its validation, its logged points), save ``last.ckpt`` at that step and
      stop; Lightning then flushes and closes the loggers. A second Ctrl-C aborts at once without a new
      checkpoint. Both stop through Lightning's own :class:`SIGTERMException`, raised once the step is
      done (Lightning saves nothing and exits with status 0: the checkpoint is ours, the exit status the
      CLI's, from :attr:`stopping`). Once training is over, either signal stops the end (the model
      file's export) at once.
    * Both handlers only note the signal, and the ranks agree to stop at a batch's end. Lightning's
      own SIGTERM handler, replaced while training, broadcasts from inside the handler, which hangs
      when a launcher (torchrun, SLURM) signals every rank at once (Lightning-AI/pytorch-lightning#20806).
    * A resumed run logs its first step at the step an uninterrupted run logs it at
      (:meth:`on_train_batch_start`).
    """

    def __init__(self, name: str, seed: int | None = None) -> None:
        self.name, self.seed = name, seed
        self.sigint = self.sigterm = False
        self.stopping: int | None = None  # the signal every rank agreed to stop on, at a step's end
        self.restored = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Installed after Lightning saved every signal handler at the start of fit, so Lightning's
        # teardown puts the previous handlers back, on success and on any exception alike.
        self.sigint = self.sigterm = False
        self.stopping = None
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self.on_sigint)
            signal.signal(signal.SIGTERM, self.on_sigterm)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # no step is left to stop after: a signal now stops the export at once (noted only, it was ignored)
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, stop_at_once)

    def on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.sigint:
            raise KeyboardInterrupt
        self.sigint = True
        log.warning("Ctrl-C: stopping after this step with a checkpoint (press again to abort at once)")

    def on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self.sigterm = True
        log.warning("SIGTERM: stopping after this step with a checkpoint")

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        self.restored = True

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        """The first batch after a resume logs at ``global_step``, as every batch of an uninterrupted run does.

        Lightning logs at ``_batches_that_stepped``, which its restart sets from the checkpoint's loop state
        by guessing when the checkpoint was written. A whole batch at a validation step it takes for a save in
        ``on_validation_end``, before that step's count, and adds one (it skips the validation, then counts
        the step). ``last.ckpt`` of a finished run (written in ``on_train_end``) and of a SIGTERM (in
        :meth:`on_exception`) come after the count: a run trained on from them logged every later point, and
        its validation images, one step late, with a gap before the first. Each optimiser step is one step of
        both counts, so ``global_step`` is the one to resume at, however the checkpoint was written."""
        if self.restored:
            self.restored = False
            trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        # any rank's signal stops all ranks at the same step and the same way (a lone rank would hang the
        # others, as would one rank saving on Ctrl-C while another waits in Lightning's SIGTERM broadcast)
        if (batch_idx + 1) % trainer.accumulate_grad_batches:  # not the end of an optimiser step: a stop here
            return  # would drop the gradients of the window's batches so far (the checkpoint holds the last step)
        seen = torch.tensor([self.sigint, self.sigterm], dtype=torch.float32, device=trainer.strategy.root_device)
        sigint, sigterm = (trainer.strategy.reduce(seen, reduce_op="sum") > 0).tolist()
        if not (sigint or sigterm):
            return
        # a signal here or on another rank: Lightning's stop at the end of this step, after the hooks that follow
        # this one (the periodic checkpoint), its validation and its logging (raised here, a Ctrl-C lost them)
        self.stopping = signal.SIGINT if sigint else signal.SIGTERM
        trainer._signal_connector.received_sigterm = True

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.stopping is not None:  # the stopping step's validation runs whole: Lightning stops between its
            trainer._signal_connector.received_sigterm = False  # batches on the flag

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.stopping is not None:
            trainer._signal_connector.received_sigterm = True

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        """Save the step just finished; only on a signal, when the state between two steps is whole."""
        if not isinstance(exception, (TrainingInterrupted, SIGTERMException)):
            return
        path = self.interrupt_checkpoint_path(trainer)
        trainer.save_checkpoint(path)  # every rank takes part; rank 0 writes the file, and says so once
        if trainer.is_global_zero:
            if trainer.max_steps is not None and 0 <= trainer.max_steps <= trainer.global_step:
                # the last step: what is left is the run's end (model file, report), written in its own folder
                log.warning("interrupted: saved %s at step %d, the last; run again with hydra.run.dir=%s to write "
                            "its model file", path, trainer.global_step, Path(trainer.default_root_dir))
            else:
                log.warning("interrupted: saved %s at step %d; run again (resume=auto) to continue", path,
                            trainer.global_step)

    @staticmethod
    def interrupt_checkpoint_path(trainer: pl.Trainer) -> Path:
        """``last.ckpt`` beside the periodic checkpoints, so ``ckpt_path=last`` finds it as well."""
        callback = trainer.checkpoint_callback
        folder = getattr(callback, "dirpath", None) or Path(trainer.default_root_dir) / "checkpoints"
        return Path(folder) / LAST

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        bad = first_non_finite(checkpoint["state_dict"])
        if bad is not None:
            raise StylenetError(f"not saving a checkpoint at step {trainer.global_step}: {bad} holds NaN or "
                                "infinite values; the previous checkpoint is the last good one")
        checkpoint[EXPERIMENT_KEY] = self.name
        if self.seed is not None:
            checkpoint[SEED_KEY] = self.seed
