"""The training loop: model, data, AdamW, schedule, evaluation, checkpoints.

Resuming from ``checkpoint-N`` restores the parameters, the optimizer moments
(and master weights), the loss scale, the RNG states and the data position (a
pure function of the step), so the continuation computes exactly what an
uninterrupted run would. A step whose loss or gradient norm is not finite is
skipped under fp16 loss scaling (the scale drops), skipped up to
``max_nonfinite_skips`` times otherwise, and then stops training with the
step and the last good checkpoint in the message; skipped steps are logged as
skipped (the non-finite loss and a count), never as a loss of 0.

One run per output directory (:mod:`llmpre.train.lock`). SIGTERM or SIGINT
finishes the current step, writes a checkpoint at it and stops with
:class:`TrainingStopped`; a second signal (more than a second later: launchers
repeat theirs) aborts at once. A run with nothing left to train still writes the
final weights when they are missing or older than its newest checkpoint.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import re
import shutil
import signal
import sys
import time

import numpy as np

from llmpre.errors import USER_ERRORS, ConfigError, LlmpreError
from llmpre.models import hub
from llmpre.models.hf_config import to_hf_dict
from llmpre.runtime import configure_threads, import_paddle
from llmpre.train import checkpoint as ckpt
from llmpre.train import paddlenlp_ckpt as pnlp
from llmpre.train import cadence, guards
from llmpre.train.args import TrainingArguments
from llmpre.train.lock import RunLock
from llmpre.train import outputs
from llmpre.train.memory import memory_source
from llmpre.train.metrics import flops_per_token, format_log, interval_speed, train_log_values
from llmpre.train.monitor import Monitor
from llmpre.train.precision import DynamicLossScaler, Precision
from llmpre.train.schedule import schedule_from_args

logger = logging.getLogger("llmpre")

FINAL_STEP_KEY = "llmpre_step"   # metadata of the final weights: the step they are from


class TrainingStopped(Exception):
    """Training stopped on a signal after saving a checkpoint at ``step``."""

    def __init__(self, signum: int, step: int, checkpoint: str):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; "
                         f"{checkpoint} saved: run the same command to resume")


class FinalSaveError(LlmpreError):
    """The final HF weights could not be written."""


def setup_logging() -> None:
    """PaddleNLP's line format: ``[2024-01-01 12:00:00,123] [    INFO] - message``."""
    if logger.handlers:
        return
    handler = _TqdmAwareHandler()
    handler.setFormatter(logging.Formatter("[%(asctime)s] [%(levelname)8s] - %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


class _TqdmAwareHandler(logging.StreamHandler):
    """Writes to stdout without tearing an active progress bar."""

    def __init__(self):
        super().__init__(sys.stdout)

    def emit(self, record):
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stdout)
            sys.stdout.flush()
        except Exception:
            self.handleError(record)


def _model_config(args: TrainingArguments):
    """The model config after PaddleNLP's adjustments for a from-scratch run:
    max_position_embeddings >= max_seq_length and the vocabulary padded to a
    multiple of 128 that covers the tokenizer."""
    from llmpre.models import get_config

    cfg = get_config(hub.model_source(args.model_name_or_path, weights=args.continue_training))
    changes = {}
    if args.num_hidden_layers is not None:
        if args.continue_training and args.num_hidden_layers > cfg.num_hidden_layers:
            raise ConfigError(f"num_hidden_layers={args.num_hidden_layers}: {args.model_name_or_path} has "
                              f"{cfg.num_hidden_layers} layers; continue_training loads its first N layers "
                              f"(N <= {cfg.num_hidden_layers}) and cannot add new ones")
        if args.continue_training and args.num_hidden_layers < cfg.num_hidden_layers:
            logger.info("continue_training with num_hidden_layers=%d: loading layers 0..%d of the %d in %s "
                        "(as PaddleNLP does)", args.num_hidden_layers, args.num_hidden_layers - 1,
                        cfg.num_hidden_layers, args.model_name_or_path)
        changes["num_hidden_layers"] = args.num_hidden_layers
    if not args.continue_training:
        changes["max_position_embeddings"] = max(cfg.max_position_embeddings, args.max_seq_length)
        tok_vocab = _tokenizer_vocab(args.tokenizer_name_or_path)
        if tok_vocab is not None:
            changes["vocab_size"] = max(cfg.vocab_size, ((tok_vocab - 1) // 128 + 1) * 128)
    return cfg.replace(**changes) if changes else cfg


def _tokenizer_vocab(path: str | None) -> int | None:
    path = hub.tokenizer_source(path)        # a hub name: its local directory
    if path is None:
        return None
    if os.path.isdir(path):
        path = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(path):
        raise ConfigError(f"tokenizer_name_or_path '{path}': no tokenizer.json there")
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path).get_vocab_size(with_added_tokens=True)


class Trainer:
    def __init__(self, args: TrainingArguments):
        self.args = args
        setup_logging()
        self.threads = configure_threads(args.num_threads)
        self.paddle = paddle = import_paddle()
        self.precision = Precision.from_args(args)
        self.precision.check_available(paddle)
        from llmpre.parallel.dims import dims_from_args
        from llmpre.parallel.env import world_info

        rank, world = world_info()
        self.dims = dims_from_args(args, world)
        paddle.set_device(cadence.choose_device(args.device, paddle, world))
        if rank != 0:
            logger.setLevel(logging.WARNING)   # one rank reports
        logger.info("world size %d (%s)", world, os.environ.get("LLMPRE_WORLD_SOURCE", "one process")
                    if world > 1 else "one process")
        for line in getattr(args, "notices", ()):   # keys without effect here (llmpre.train.args)
            logger.info("%s", line)
        self._seed_everything(args.seed)

        self.config = _model_config(args)
        cadence.check_model_type(args.model_type, self.config)
        self.dims.validate(world, self.config, args.gradient_accumulation_steps, args.max_seq_length)
        logger.info("Final pre-training config: %s", outputs.config_text(to_hf_dict(self.config)))
        from llmpre.models import build_model
        from llmpre.models.hf_load import open_pretrained
        from llmpre.ops.select import describe, flags_from_args, select_ops

        self.ops = select_ops(**flags_from_args(args))  # the one kernel choice (llmpre.ops.select)
        logger.info("ops: %s", describe(self.ops))
        # deferred either way: each rank materialises only its own shard (llmpre.models.init),
        # computed from the seed or read from the checkpoint's slices (llmpre.models.hf_load)
        reader = None
        if args.continue_training:
            source = hub.model_source(args.model_name_or_path, weights=True)   # a hub name: its directory
            model, reader = open_pretrained(source, dtype=self.precision.param_dtype,
                                            ops=self.ops, config=self.config)
        else:
            model = build_model(self.config, seed=args.seed, ops=self.ops, lazy=True,
                                dtype=self.precision.param_dtype)
        for line in cadence.apply_model_keys(model, self.config, args, self.precision, paddle):
            logger.info("%s", line)
        from llmpre.models.dropout import set_dropout_step   # after import_paddle (its warnings)

        self.set_dropout_step = set_dropout_step
        # causal_lm_loss with the selected cross-entropy (mean over labels != -100)
        loss_fn = functools.partial(self.ops.cross_entropy, ignore_index=-100)
        num_params = sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)
        logger.info("model %s: %s parameters, %s, %d CPU threads, device %s",
                    args.model_name_or_path, f"{num_params:,}",
                    self.precision.dtype + (f" {self.precision.level}" if self.precision.low else ""),
                    self.threads, paddle.get_device())
        from llmpre.parallel.env import init_parallel
        from llmpre.train.engine import Engine

        # one engine: a single process is the layout whose every degree is 1
        self.env = init_parallel(self.dims, timeout_s=args.distributed_timeout)
        if self.dims.world_size > 1 or self.dims.recompute:
            logger.info("layout: %s", self.dims.describe())
        if self.dims.pp > 1:
            counts = [len(r) for r in self.dims.chunk_layers(self.config.num_hidden_layers)]
            logger.info("pipeline chunks' layers (forward order): %s", ",".join(map(str, counts)))
        try:
            self.engine = Engine(paddle, model, self.precision, args, self.env, loss_fn)
        finally:
            if reader is not None:
                reader.close()
        if reader is not None:
            logger.info("continue_training: read %.1f MiB of the %.1f MiB checkpoint %s (this rank's slices)",
                        reader.bytes_read / 2 ** 20, reader.checkpoint_bytes / 2 ** 20, args.model_name_or_path)
        data_world, data_rank = self.dims.data_parallel_size, self.dims.data_rank(rank)
        self.model = self.engine.model

        from llmpre.train.data import TrainData

        # num_train_epochs and the epoch strategies need the steps of one pass over the data
        self.epoch_steps = cadence.steps_per_epoch(args, data_world) if cadence.needs_epochs(args) else None
        args.max_steps = cadence.resolve_max_steps(args, self.epoch_steps)
        self.cadence = cadence.Cadence(args, self.epoch_steps)
        self.best = cadence.BestCheckpoint()     # load_best_model_at_end: lowest eval loss
        self._last_eval: tuple | None = None     # (step, eval loss) of the latest evaluation
        logger.info("max_steps %d%s; %s", args.max_steps, f" ({self.epoch_steps} steps per epoch)"
                    if self.epoch_steps else "", self.cadence.describe())
        self.data = TrainData(args, self.config.vocab_size, world=data_world, rank=data_rank)
        logger.info("data %s: %s", self.data.prefix, ", ".join(
            f"{k} {v.summary()['len']} samples ({v.num_epochs} epochs)"
            for k, v in self.data.datasets.items() if v is not None))

        self.scaler = DynamicLossScaler(args.scale_loss, enabled=self.precision.loss_scaling)
        self.lr_at = schedule_from_args(args)
        self.global_step = 0
        self.skipped_steps = 0
        self._saved_step = None   # the step of this run's newest checkpoint save
        self._stop = None         # (signal, time) of a stop request
        self.flops_per_token = flops_per_token(
            self.config.hidden_size, self.config.intermediate_size,
            self.config.num_hidden_layers, self.config.vocab_size, args.max_seq_length)
        self.memory = memory_source(paddle)   # GPU allocator counters, else process memory
        self.moe_load: dict = {}               # the last step's expert loads (llmpre.train.balance)
        self.monitor = Monitor(args.output_dir, enabled=False)  # opened by train()

    # ---- state -------------------------------------------------------------
    def _seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        self.paddle.seed(seed)

    def _state(self) -> dict:
        return {
            "global_step": self.global_step,
            "consumed_samples": self.global_step * self.samples_per_step * self.dims.data_parallel_size,
            "skipped_steps": self.skipped_steps,
            "loss_scaler": self.scaler.state_dict(),
            "args": self.args.to_dict(),
            "model_config": to_hf_dict(self.config),
            "best_checkpoint": self.best.state_dict(),
        }

    def save(self) -> str:
        if self.args.load_best_model_at_end and self._last_eval and self._last_eval[0] == self.global_step:
            self.best.offer(self._last_eval[1], self.global_step)
        path = self.engine.save(self.args.output_dir, self.global_step, self._state())
        self._saved_step = self.global_step
        keep = self.best.keep([s for s, _ in ckpt.list_checkpoints(self.args.output_dir)],
                              self.args.save_total_limit)   # never the best checkpoint
        removed = ckpt.rotate_checkpoints(self.args.output_dir, keep) if self.engine.is_main else []
        logger.info("Saving checkpoint to %s%s", path,
                    f" (removed {', '.join(os.path.basename(r) for r in removed)})" if removed else "")
        return path

    def load(self, path: str, verified: bool = False) -> None:
        if not verified:
            ckpt.verify_checkpoint(path)
        state = self.engine.load(path)
        self.scaler.load_state_dict(state["loss_scaler"])
        self.global_step = int(state["global_step"])
        self.skipped_steps = int(state["skipped_steps"])
        self.best.load_state_dict(state.get("best_checkpoint"))

    def _prepare_run_directory(self) -> str | None:
        """Check the run directory's identity, clear or tidy it; returns the
        checkpoint to resume from (None to start fresh)."""
        args = self.args
        identity = guards.run_identity(args, to_hf_dict(self.config))
        if args.resume_from_checkpoint:
            if not os.path.isdir(args.resume_from_checkpoint):
                raise ConfigError(f"resume_from_checkpoint '{args.resume_from_checkpoint}': "
                                  "no such checkpoint directory")
            # An explicit resume may change settings on purpose (e.g. a lower learning rate
            # after a divergence): record the new identity instead of refusing it.
            diffs = guards.replace_identity(args.output_dir, identity)
            if diffs:
                logger.warning("resume_from_checkpoint with changed settings: %s", "; ".join(diffs))
            if pnlp.is_paddlenlp_checkpoint(args.resume_from_checkpoint):
                return self._import_paddlenlp(pnlp.examine(args.resume_from_checkpoint))
            return args.resume_from_checkpoint
        has_checkpoints = bool(ckpt.list_checkpoints(args.output_dir))
        fresh = not os.path.exists(os.path.join(args.output_dir, guards.RUN_CONFIG))
        guards.check_run_directory(args.output_dir, identity, args.overwrite_output_dir, has_checkpoints)
        debris = ckpt.remove_stale_temps(args.output_dir) + _remove_stale_final_temps(args.output_dir)
        if debris:
            logger.info("Removed %d incomplete save(s) left by an interrupted run: %s",
                        len(debris), ", ".join(debris))
        latest = ckpt.latest_valid_checkpoint(args.output_dir, warn=logger.warning)
        # a PaddleNLP checkpoint-N newer than llmpre's newest is resumed, or refused: never ignored
        foreign = pnlp.find(args.output_dir)
        if foreign and foreign[-1].step > (ckpt.step_of(latest) if latest else -1):
            try:
                return self._import_paddlenlp(foreign[-1])
            except LlmpreError:
                if fresh:   # nothing was trained: the directory stays the PaddleNLP run's
                    os.unlink(os.path.join(args.output_dir, guards.RUN_CONFIG))
                raise
        if foreign:
            logger.info("Not resuming from the older PaddleNLP checkpoint(s) %s: %s is newer",
                        ", ".join(os.path.basename(f.path) for f in foreign), latest)
        return latest

    def _import_paddlenlp(self, found) -> str:
        """A temporary llmpre checkpoint holding the PaddleNLP checkpoint's state (see
        :mod:`llmpre.train.paddlenlp_ckpt`); ``_train`` removes it once loaded."""
        state = {**self._state(), "consumed_samples":
                 found.step * self.samples_per_step * self.dims.data_parallel_size}
        path = pnlp.prepare(found, self.args, self.config, self.dims.data_parallel_size, state,
                            logger.warning)
        logger.info("Found %s; resuming from it (weights, Adam moments, step; the data position "
                    "follows from the step)", found.describe())
        self._imported_from = found.path
        return path

    # ---- steps -------------------------------------------------------------
    @property
    def samples_per_step(self) -> int:
        return self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps

    def _consumed_samples(self) -> int:
        return self.global_step * self.samples_per_step * self.dims.data_parallel_size

    def _progress(self) -> float:
        """``progress_or_epoch``: epochs of the train split consumed so far."""
        return round(self._consumed_samples() / len(self.data.datasets["train"]), 4)

    def _eval_loss(self, reader, batches: int) -> float:
        self.engine.train_mode(False)
        total = 0.0
        for tokens in reader.iterate(0, batches, self.args.dataloader_num_workers):
            total += self.engine.eval_loss(tokens)
        self.engine.train_mode(True)
        return total / batches

    def evaluate(self, split: str = "eval") -> dict:
        reader = self.data.valid if split == "eval" else self.data.test
        batches = self.args.eval_iters * (1 if split == "eval" else 10)
        start = time.time()
        loss = self._eval_loss(reader, batches)
        if split == "eval":
            self._last_eval = (self.global_step, loss)
        runtime = time.time() - start
        samples = batches * reader.batch_size
        result = {f"{split}_loss": round(loss, 8), f"{split}_runtime": round(runtime, 4),
                  f"{split}_samples_per_second": round(samples / runtime, 4),
                  f"{split}_steps_per_second": round(batches / runtime, 4)}
        if split == "eval":   # PaddleNLP logs evaluations as a line; the test split as a block (_train)
            result["progress_or_epoch"] = self._progress()
            logger.info(format_log(result))
        self.monitor.log(split, self.global_step, result)
        return result

    def _train_step(self, batches):
        """One optimizer step. Returns (loss, gradient norm, status) with status
        "ok", "overflow" (fp16 scale lowered) or "skipped" (non-finite)."""
        from llmpre.train import balance
        from llmpre.train.optim import clip_coefficient

        lr = self.lr_at(self.global_step + 1)    # update g uses the schedule at g, as PaddleNLP's
        self.set_dropout_step(self.model, self.global_step + 1)   # dropout masks: f(seed, step, sample)
        loss_value = self.engine.forward_backward(lambda: next(batches),
                                                  self.args.gradient_accumulation_steps,
                                                  self.scaler.scale)
        self.engine.reduce()
        inv_scale = 1.0 / self.scaler.scale
        norm = self.engine.grad_norm() * inv_scale
        if math.isfinite(norm) and math.isfinite(loss_value):
            coef = clip_coefficient(norm, self.args.max_grad_norm)
            self.engine.step(lr, grad_scale=inv_scale * coef)
            status = "ok"
        elif self.scaler.enabled:
            status = "overflow"
        elif self.skipped_steps < self.args.max_nonfinite_skips:
            self.skipped_steps += 1
            status = "skipped"
        else:
            last = ckpt.latest_checkpoint(self.args.output_dir)
            where = (f"the last good checkpoint is {last}; the next run resumes from it (lower "
                     "learning_rate or check the data first: resume_from_checkpoint accepts "
                     "changed settings)") if last else "no checkpoint was saved yet"
            raise guards.NonFiniteError(
                f"step {self.global_step + 1}: the loss is {loss_value} and the gradient norm is "
                f"{norm}; training stopped ({where}; max_nonfinite_skips allows skipping such steps)")
        self.scaler.update(found_inf=status == "overflow")
        self.moe_load = balance.balance_step(self.engine.model, self.engine.env,
                                             self.args.moe_bias_update_rate if status == "ok" else 0.0)
        self.engine.zero_grad()
        self.global_step += 1
        return loss_value, norm, status

    def train(self) -> dict:
        args = self.args
        self._lock = None
        try:
            # rank 0 locks, checks and tidies the run directory; every rank resumes from its choice
            resume, message = None, None
            try:
                if self.engine.is_main:
                    self._lock = RunLock.for_worker(args.output_dir)
                    resume = self._prepare_run_directory()
            except LlmpreError as e:
                if self.engine.world_size == 1:
                    raise
                message = f"error:{e}"
            reply = self.engine.broadcast_text(message or resume)
            if reply and reply.startswith("error:"):
                raise ConfigError(reply[len("error:"):])
            resume = reply
            self.monitor = Monitor(args.output_dir, args.report_to, args.logging_dir,
                                   enabled=self.engine.is_main)
            previous = self._install_signal_handlers()
            try:
                return self._train(resume)
            finally:
                self._restore_signal_handlers(previous)
                self.monitor.close()
        finally:
            if self._lock is not None:
                self._lock.release()

    # ---- signals -------------------------------------------------------------
    def _install_signal_handlers(self) -> dict:
        """SIGTERM/SIGINT: stop after the current step (see the module docstring)."""
        self._stop: tuple | None = None
        previous = {}
        if threading_main():
            for signum in (signal.SIGTERM, signal.SIGINT):
                previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _restore_signal_handlers(self, previous: dict) -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self._stop is None:
            self._stop = (signum, now)
            logger.warning("%s received: stopping after the current step and saving a checkpoint "
                           "(send it again to abort at once)", name)
        elif now - self._stop[1] > 1.0:   # the launcher's own repeats come within a second
            sys.stderr.write(f"{name} received again: aborting at step {self.global_step} "
                             "without saving\n")
            sys.stderr.flush()
            os._exit(128 + signum)

    def _stop_requested(self) -> int:
        """The signal number when this or any other rank was asked to stop, else 0."""
        mine = self._stop[0] if self._stop else 0
        return self.engine.any_rank(mine)

    def _train(self, resume: str | None) -> dict:
        args, paddle = self.args, self.paddle
        if resume:
            # an automatic resume point was verified when it was chosen
            imported = ckpt.is_temporary(resume)     # a converted PaddleNLP checkpoint
            self.load(resume, verified=imported or not self.args.resume_from_checkpoint)
            if imported:
                self.engine.barrier()               # every rank has read it
                if self.engine.is_main:
                    shutil.rmtree(resume, ignore_errors=True)
                resume = getattr(self, "_imported_from", None) or "a PaddleNLP checkpoint"
            logger.info("Resuming from %s at global_step %d", resume, self.global_step)
        if self.global_step >= args.max_steps:
            logger.info("Nothing to do: global_step %d >= max_steps %d", self.global_step,
                        args.max_steps)
            trained = self._load_best()
            if self._final_weights_missing():
                logger.info("The final weights of step %d are missing: writing them", self.global_step)
                self.save_final()
            self.global_step = trained
            return {}

        acc = args.gradient_accumulation_steps
        seq = args.max_seq_length
        steps_left = args.max_steps - self.global_step
        batches = self.data.train.iterate(self.global_step * acc, steps_left * acc,
                                          args.dataloader_num_workers)
        bar = _progress(args, self.global_step)
        train_start = interval_start = time.time()
        interval_losses: list = []
        run_losses: list = []   # this run's finite step losses: train_loss at the end
        interval_steps = interval_skipped = 0
        skipped_loss = float("nan")
        self._saved_step = None
        start_step = self.global_step
        self.engine.train_mode(True)
        while self.global_step < args.max_steps:
            step_loss, grad_norm, status = self._train_step(batches)
            interval_steps += 1
            if status == "ok":
                interval_losses.append(step_loss)
                run_losses.append(step_loss)
            else:
                interval_skipped += 1
                skipped_loss = step_loss if not math.isfinite(step_loss) else float("nan")
                logger.warning("step %d: non-finite loss or gradients; %s", self.global_step,
                               f"step skipped, loss scale now {self.scaler.scale:g}"
                               if status == "overflow" else
                               f"step skipped ({self.skipped_steps} of {args.max_nonfinite_skips} allowed)")
                self.monitor.log("skip", self.global_step, {
                    "reason": status, "loss": _json_number(step_loss),
                    "grad_norm": _json_number(grad_norm), "loss_scale": self.scaler.scale})
            if bar is not None:
                bar.update(1)

            if self.global_step % args.logging_steps == 0 or self.global_step == args.max_steps:
                runtime = time.time() - interval_start
                # an interval of skipped steps only has the non-finite loss (or nan) to show
                loss_value = (sum(interval_losses) / len(interval_losses) if interval_losses
                              else skipped_loss)
                self._log_train(loss_value, grad_norm, runtime, interval_steps, seq, interval_skipped)
                interval_losses, interval_steps, interval_skipped = [], 0, 0
                interval_start = time.time()
            paused = time.time()
            if self.cadence.eval_due(self.global_step):
                self.evaluate("eval")
            if self.cadence.save_due(self.global_step):
                self.save()
            stop = self._stop_requested() if self.global_step < args.max_steps else 0
            if stop:
                if bar is not None:
                    bar.close()
                path = self.save() if self._saved_step != self.global_step else \
                    os.path.join(args.output_dir, f"{ckpt.PREFIX}{self.global_step}")
                self.monitor.log("stop", self.global_step, {"signal": signal.Signals(stop).name,
                                                            "checkpoint": path, "time": time.time()})
                raise TrainingStopped(stop, self.global_step, path)
            interval_start += time.time() - paused  # evaluation and saving are not training time
        if bar is not None:
            bar.close()
        runtime = time.time() - train_start
        logger.info("Training completed.")
        metrics = self._train_metrics(runtime, self.global_step - start_step, run_losses)
        logger.info(format_log(metrics))
        self.monitor.log("train_metrics", self.global_step, outputs.json_safe(metrics))
        trained = self._load_best()
        self.save_final()
        self.global_step = trained
        if self.engine.is_main:
            try:
                self._write_outputs(metrics)
            except OSError as e:
                raise FinalSaveError(f"writing the run's results (train_results.json, all_results.json, "
                                     f"trainer_state.json) to {args.output_dir} failed ({e}); the final "
                                     "weights are saved") from e
        if args.do_predict and self.data.test is not None:
            test = self.evaluate("test")
            outputs.log_metrics("test", test)
            metrics = {**metrics, **test}
        tokens = (self.global_step - start_step) * self.samples_per_step * self.dims.data_parallel_size * seq
        tokens_per_s = tokens / runtime if runtime else 0.0
        logger.info("Effective Tokens per second: %.2f", tokens_per_s)
        logger.info("ips: %.2f tokens/s", tokens_per_s)
        return metrics

    def _train_metrics(self, runtime: float, steps: int, losses: list) -> dict:
        """PaddleNLP's end-of-training metrics for this run's steps: runtime
        (evaluation and saving included), global samples and steps per second,
        the mean step loss (finite steps; nan if none) and progress_or_epoch."""
        samples = steps * self.samples_per_step * self.dims.data_parallel_size
        return {"train_runtime": round(runtime, 4),
                "train_samples_per_second": round(samples / runtime, 4) if runtime else 0.0,
                "train_steps_per_second": round(steps / runtime, 4) if runtime else 0.0,
                "train_loss": sum(losses) / len(losses) if losses else float("nan"),
                "progress_or_epoch": self._progress()}

    def _write_outputs(self, metrics: dict) -> None:
        """The train metrics block, train_results.json, all_results.json and the
        top-level trainer_state.json (main rank; see llmpre.train.outputs)."""
        from llmpre.train.monitor import read_metrics

        args = self.args
        outputs.log_metrics("train", metrics)
        outputs.save_metrics(args.output_dir, "train", metrics)
        history = outputs.log_history(read_metrics(args.output_dir), self.global_step)
        history.append({**metrics, "step": self.global_step})
        epochs = outputs.num_train_epochs(args.max_steps, len(self.data.datasets["train"]),
                                          args.per_device_train_batch_size,
                                          self.dims.data_parallel_size, args.gradient_accumulation_steps)
        best = self.best.step if args.load_best_model_at_end else None
        outputs.save_state(args.output_dir, outputs.trainer_state(
            global_step=self.global_step, max_steps=args.max_steps, epoch=metrics["progress_or_epoch"],
            num_train_epochs=epochs, history=history, best_metric=self.best.metric if best else None,
            best_model_checkpoint=os.path.join(args.output_dir, f"{ckpt.PREFIX}{best}") if best else None))

    def _log_train(self, loss: float, grad_norm: float, runtime: float, steps: int, seq: int,
                   skipped: int = 0):
        samples = self.samples_per_step * steps * self.dims.data_parallel_size   # global
        speed = interval_speed(runtime, samples, steps, seq, self.dims.world_size, self.flops_per_token)
        values = train_log_values(loss, self.lr_at(self.global_step + 1), self.global_step,   # the next update's
                                  self.memory, speed, self._progress(), skipped, self.moe_load)
        logger.info(format_log(values))
        record = {**values, "loss": _json_number(values["loss"]), "grad_norm": _json_number(grad_norm),
                  "loss_scale": self.scaler.scale, "skipped_steps": self.skipped_steps,
                  "interval_skipped_steps": skipped, "consumed_tokens": self._consumed_samples() * seq,
                  "time": time.time(), **self.moe_load}
        if record["loss"] is None:
            record["nonfinite_loss"] = str(loss)
        self.monitor.log("train", self.global_step, record)

    def _load_best(self) -> int:
        """load_best_model_at_end: load the best-eval checkpoint, so the final weights
        are its weights (as PaddleNLP loads them before saving the model). Returns the
        step trained to, for the caller to restore after the final save."""
        trained = self.global_step
        if not self.args.load_best_model_at_end or self.best.step in (None, self.global_step):
            return trained
        path = os.path.join(self.args.output_dir, f"{ckpt.PREFIX}{self.best.step}")
        if not os.path.isdir(path):
            raise ConfigError(f"load_best_model_at_end: the best checkpoint {path} (eval loss "
                              f"{self.best.metric}) is gone")
        logger.info("Loading best model from %s (score: %s).", path, self.best.metric)
        self.load(path)
        return trained

    def _final_weights_missing(self) -> bool:
        """Whether output_dir lacks the final weights of this step (rank 0 decides)."""
        from llmpre.models.hf import weights_metadata

        missing = None
        if self.engine.is_main:
            meta = weights_metadata(self.args.output_dir)
            missing = "1" if meta is None or meta.get(FINAL_STEP_KEY) != str(self.global_step) else ""
        return bool(self.engine.broadcast_text(missing))

    def save_final(self) -> None:
        """Final weights in HuggingFace layout in output_dir (loadable by from_pretrained);
        a parallel run assembles them from its final checkpoint. Each file replaces the
        previous one atomically; a failure (a full disk) is one line, and the previous
        final weights, if any, stay."""
        try:
            self._save_final()
        except (OSError, _safetensors_error()) as e:
            last = ckpt.latest_checkpoint(self.args.output_dir)
            raise FinalSaveError(
                f"saving the final weights to {self.args.output_dir} failed ({e}); any previous "
                "final weights there are intact" + (f", and {last} holds this run's state: free "
                "space and run the same command again to write them" if last else "")) from e
        logger.info("Saved the final model to %s", self.args.output_dir)

    def _save_final(self) -> None:
        from llmpre.models.hf_stream import DEFAULT_MAX_SHARD_SIZE, parse_size, save_streamed

        meta = {FINAL_STEP_KEY: str(self.global_step)}
        path = None
        if not self.engine.holds_whole_model:   # assembled from this step's checkpoint
            path = os.path.join(self.args.output_dir, f"{ckpt.PREFIX}{self.global_step}")
            if not os.path.isdir(path):
                self.save()
        weights = self.engine.final_weights(path)
        if weights is not None:     # written one parameter at a time, in shards past 5GB
            shapes, tensor, dtype = weights
            save_streamed(self.engine.config, shapes, tensor, self.args.output_dir, dtype=dtype,
                          max_shard_bytes=parse_size(DEFAULT_MAX_SHARD_SIZE), metadata=meta)
        if self.engine.is_main:     # the tokenizer beside the weights (llmpre.data.tokenizer_files)
            from llmpre.data.tokenizer_files import run_tokenizer, save_tokenizer

            source = run_tokenizer(hub.tokenizer_source(self.args.tokenizer_name_or_path),  # hub name: its dir
                                   self.args.input_dir)
            if source is None:
                logger.info("No tokenizer files written to %s: set tokenizer_name_or_path to the tokenizer "
                            "input_dir was made with", self.args.output_dir)
            else:
                try:
                    save_tokenizer(self.args.output_dir, source)
                except USER_ERRORS as e:    # the weights are saved; say why the tokenizer is not
                    logger.warning("No tokenizer files written to %s: %s", self.args.output_dir, e)
        self.engine.barrier()


def _json_number(value: float):
    """A float for metrics.jsonl: None for inf/nan (JSON has no such numbers)."""
    value = float(value)
    return value if math.isfinite(value) else None


def _safetensors_error():
    from safetensors import SafetensorError

    return SafetensorError


_FINAL_TEMP = re.compile(r"^\..+\.tmp(\d+)$")   # models.hf_stream.save_streamed's temporaries


def _remove_stale_final_temps(output_dir: str) -> list[str]:
    """Temporaries of a final-weights save whose writer is gone."""
    removed = []
    if os.path.isdir(output_dir):
        for name in sorted(os.listdir(output_dir)):
            m = _FINAL_TEMP.match(name)
            path = os.path.join(output_dir, name)
            if m and os.path.isfile(path) and not ckpt.pid_alive(int(m.group(1))):
                os.unlink(path)
                removed.append(name)
    return removed


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _progress(args: TrainingArguments, initial: int):
    if args.disable_tqdm or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=args.max_steps, initial=initial, desc="train", unit="step", file=sys.stderr,
                dynamic_ncols=True, leave=False)


def run(args: TrainingArguments) -> dict:
    """Train with ``args`` (the entry point of ``llmpre train``)."""
    trainer = Trainer(args)
    return trainer.train() if args.do_train else {}
