"""The training loop: model, data, AdamW, schedule, evaluation, checkpoints.

Resuming from ``checkpoint-N`` restores the parameters, the optimizer moments
(and master weights), the loss scale, the RNG states and the data position (a
pure function of the step), so the continuation computes exactly what an
uninterrupted run would. A step whose loss or gradient norm is not finite is
skipped under fp16 loss scaling (the scale drops), skipped up to
``max_nonfinite_skips`` times otherwise, and then stops training with the
step and the last good checkpoint in the message.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import pickle
import random
import sys
import time

import numpy as np

from llmpre.errors import ConfigError
from llmpre.runtime import configure_threads, import_paddle
from llmpre.train import checkpoint as ckpt
from llmpre.train import guards
from llmpre.train.args import TrainingArguments
from llmpre.train.metrics import flops_per_token, format_log, memory_gb
from llmpre.train.monitor import Monitor
from llmpre.train.precision import DynamicLossScaler, Precision
from llmpre.train.schedule import schedule_from_args

logger = logging.getLogger("llmpre")


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

    cfg = get_config(args.model_name_or_path)
    changes = {}
    if args.num_hidden_layers is not None:
        if args.continue_training:
            raise ConfigError("num_hidden_layers cannot change the depth of a pretrained model "
                              "loaded with continue_training")
        changes["num_hidden_layers"] = args.num_hidden_layers
    if not args.continue_training:
        changes["max_position_embeddings"] = max(cfg.max_position_embeddings, args.max_seq_length)
        tok_vocab = _tokenizer_vocab(args.tokenizer_name_or_path)
        if tok_vocab is not None:
            changes["vocab_size"] = max(cfg.vocab_size, ((tok_vocab - 1) // 128 + 1) * 128)
    return cfg.replace(**changes) if changes else cfg


def _tokenizer_vocab(path: str | None) -> int | None:
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
        paddle.set_device("gpu" if paddle.is_compiled_with_cuda() and
                          paddle.device.cuda.device_count() > 0 else "cpu")
        self._seed_everything(args.seed)

        self.config = _model_config(args)
        logger.info("Final pre-training config: %s", json.dumps(self.config.to_hf_dict(), sort_keys=True))
        from llmpre.models import build_model, from_pretrained
        from llmpre.ops.select import describe, flags_from_args, select_ops

        self.ops = select_ops(**flags_from_args(args))  # the one kernel choice (llmpre.ops.select)
        logger.info("ops: %s", describe(self.ops))
        if args.continue_training:
            self.model = from_pretrained(args.model_name_or_path)
        else:
            self.model = build_model(self.config, seed=args.seed, ops=self.ops)
        self.precision.prepare_model(self.model)
        # causal_lm_loss with the selected cross-entropy (mean over labels != -100)
        self.loss_fn = functools.partial(self.ops.cross_entropy, ignore_index=-100)
        self.params = [(n, p) for n, p in self.model.named_parameters() if not p.stop_gradient]
        num_params = sum(int(np.prod(p.shape)) for _, p in self.params)
        logger.info("model %s: %s parameters, %s, %d CPU threads, device %s",
                    args.model_name_or_path, f"{num_params:,}",
                    self.precision.dtype + (f" {self.precision.level}" if self.precision.low else ""),
                    self.threads, paddle.get_device())

        from llmpre.train.data import TrainData

        self.data = TrainData(args, self.config.vocab_size)
        logger.info("data %s: %s", self.data.prefix, ", ".join(
            f"{k} {v.summary()['len']} samples ({v.num_epochs} epochs)"
            for k, v in self.data.datasets.items() if v is not None))

        from llmpre.train.optim import AdamW

        self.optimizer = AdamW(self.params, betas=(args.adam_beta1, args.adam_beta2),
                               eps=args.adam_epsilon, weight_decay=args.weight_decay)
        self.scaler = DynamicLossScaler(args.scale_loss, enabled=self.precision.loss_scaling)
        self.lr_at = schedule_from_args(args)
        self.global_step = 0
        self.skipped_steps = 0
        self.flops_per_token = flops_per_token(
            self.config.hidden_size, self.config.intermediate_size,
            self.config.num_hidden_layers, self.config.vocab_size, args.max_seq_length)
        self.monitor = Monitor(args.output_dir, enabled=False)  # opened by train()

    # ---- state -------------------------------------------------------------
    def _seed_everything(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        self.paddle.seed(seed)

    def _checkpoint_writers(self) -> dict:
        from safetensors.numpy import save_file

        model_arrays = {n: _to_numpy(p) for n, p in self.model.named_parameters()}
        opt_arrays, opt_scalars = self.optimizer.state_dict()
        state = {
            "global_step": self.global_step,
            "consumed_samples": self.global_step * self.samples_per_step,
            "skipped_steps": self.skipped_steps,
            "optimizer": opt_scalars,
            "loss_scaler": self.scaler.state_dict(),
            "args": self.args.to_dict(),
            "model_config": self.config.to_hf_dict(),
        }
        rng = {"python": random.getstate(), "numpy": np.random.get_state(),
               "paddle": self.paddle.get_rng_state()}

        def write_json(obj):
            return lambda path: open(path, "w", encoding="utf-8").write(json.dumps(obj, indent=1))

        return {
            "model.safetensors": lambda path: save_file(model_arrays, path),
            "optimizer.safetensors": lambda path: save_file(opt_arrays, path),
            "trainer_state.json": write_json(state),
            "rng_state.pkl": lambda path: open(path, "wb").write(pickle.dumps(rng)),
        }

    def save(self) -> str:
        path = ckpt.save_checkpoint(self.args.output_dir, self.global_step, self._checkpoint_writers())
        removed = ckpt.rotate_checkpoints(self.args.output_dir, self.args.save_total_limit)
        logger.info("Saving checkpoint to %s%s", path,
                    f" (removed {', '.join(os.path.basename(r) for r in removed)})" if removed else "")
        return path

    def load(self, path: str, verified: bool = False) -> None:
        from safetensors.numpy import load_file

        if not verified:
            ckpt.verify_checkpoint(path)
        model_arrays = load_file(os.path.join(path, "model.safetensors"))
        own = dict(self.model.named_parameters())
        missing, unexpected = set(own) - set(model_arrays), set(model_arrays) - set(own)
        if missing or unexpected:
            raise ckpt.CheckpointError(
                f"{path}: parameters do not match this model (missing {sorted(missing)[:4]}, "
                f"unexpected {sorted(unexpected)[:4]}); it was saved for another configuration")
        for name, p in own.items():
            a = model_arrays[name]
            if tuple(a.shape) != tuple(p.shape):
                raise ckpt.CheckpointError(f"{path}: {name} has shape {a.shape}, the model "
                                           f"needs {tuple(p.shape)}")
            p.set_value(self.paddle.to_tensor(a).astype(p.dtype))
        with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as fh:
            state = json.load(fh)
        self.optimizer.load_state_dict(load_file(os.path.join(path, "optimizer.safetensors")),
                                       state["optimizer"])
        self.scaler.load_state_dict(state["loss_scaler"])
        with open(os.path.join(path, "rng_state.pkl"), "rb") as fh:
            rng = pickle.load(fh)
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        self.paddle.set_rng_state(rng["paddle"])
        self.global_step = int(state["global_step"])
        self.skipped_steps = int(state["skipped_steps"])

    def _prepare_run_directory(self) -> str | None:
        """Check the run directory's identity, clear or tidy it; returns the
        checkpoint to resume from (None to start fresh)."""
        args = self.args
        identity = guards.run_identity(args, self.config.to_hf_dict())
        if args.resume_from_checkpoint:
            if not os.path.isdir(args.resume_from_checkpoint):
                raise ConfigError(f"resume_from_checkpoint '{args.resume_from_checkpoint}': "
                                  "no such checkpoint directory")
            # An explicit resume may change settings on purpose (e.g. a lower learning rate
            # after a divergence): record the new identity instead of refusing it.
            diffs = guards.replace_identity(args.output_dir, identity)
            if diffs:
                logger.warning("resume_from_checkpoint with changed settings: %s", "; ".join(diffs))
            return args.resume_from_checkpoint
        has_checkpoints = bool(ckpt.list_checkpoints(args.output_dir))
        guards.check_run_directory(args.output_dir, identity, args.overwrite_output_dir, has_checkpoints)
        debris = guards.remove_debris(args.output_dir)
        if debris:
            logger.info("Removed %d incomplete checkpoint(s) left by an interrupted save: %s",
                        len(debris), ", ".join(debris))
        return ckpt.latest_valid_checkpoint(args.output_dir, warn=logger.warning)

    # ---- steps -------------------------------------------------------------
    @property
    def samples_per_step(self) -> int:
        return self.args.per_device_train_batch_size * self.args.gradient_accumulation_steps

    def _split(self, tokens: np.ndarray):
        t = self.paddle.to_tensor(tokens)
        return t[:, :-1], t[:, 1:]

    def _loss(self, tokens: np.ndarray, training: bool = True):
        """LM loss of a batch; in training, plus the MoE router's auxiliary loss
        (already scaled by its coefficient) when the model has one."""
        inputs, labels = self._split(tokens)
        with self.precision.autocast(self.paddle):
            logits = self.model(inputs)
            loss = self.loss_fn(logits, labels)
        aux = getattr(self.model, "aux_loss", None)
        return loss + aux if training and aux is not None else loss

    def _eval_loss(self, reader, batches: int) -> float:
        paddle = self.paddle
        self.model.eval()
        total = 0.0
        with paddle.no_grad():
            for tokens in reader.iterate(0, batches, self.args.dataloader_num_workers):
                total += float(self._loss(tokens, training=False).item())
        self.model.train()
        return total / batches

    def evaluate(self, split: str = "eval") -> dict:
        reader = self.data.valid if split == "eval" else self.data.test
        batches = self.args.eval_iters * (1 if split == "eval" else 10)
        start = time.time()
        loss = self._eval_loss(reader, batches)
        runtime = time.time() - start
        samples = batches * reader.batch_size
        result = {f"{split}_loss": round(loss, 8), f"{split}_runtime": round(runtime, 4),
                  f"{split}_samples_per_second": round(samples / runtime, 4),
                  f"{split}_steps_per_second": round(batches / runtime, 4)}
        logger.info(format_log(result))
        self.monitor.log(split, self.global_step, result)
        return result

    def _train_step(self, batches):
        """One optimizer step. Returns (loss tensor, gradient norm, status) with
        status "ok", "overflow" (fp16 scale lowered) or "skipped" (non-finite)."""
        acc = self.args.gradient_accumulation_steps
        lr = self.lr_at(self.global_step)
        loss_sum = None
        for _ in range(acc):
            loss = self._loss(next(batches))
            (loss * (self.scaler.scale / acc)).backward()
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        step_loss = loss_sum / acc

        from llmpre.train.optim import clip_coefficient, global_grad_norm

        inv_scale = 1.0 / self.scaler.scale
        norm = global_grad_norm(self.params) * inv_scale
        loss_value = float(step_loss.item())
        if math.isfinite(norm) and math.isfinite(loss_value):
            coef = clip_coefficient(norm, self.args.max_grad_norm)
            self.optimizer.step(lr, grad_scale=inv_scale * coef)
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
        self.optimizer.zero_grad()
        self.global_step += 1
        return step_loss, norm, status

    def train(self) -> dict:
        args = self.args
        resume = self._prepare_run_directory()
        self.monitor = Monitor(args.output_dir, args.report_to, args.logging_dir)
        try:
            return self._train(resume)
        finally:
            self.monitor.close()

    def _train(self, resume: str | None) -> dict:
        args, paddle = self.args, self.paddle
        if resume:
            # an automatic resume point was verified when it was chosen
            self.load(resume, verified=not self.args.resume_from_checkpoint)
            logger.info("Resuming from %s at global_step %d", resume, self.global_step)
        if self.global_step >= args.max_steps:
            logger.info("Nothing to do: global_step %d >= max_steps %d", self.global_step,
                        args.max_steps)
            return {}

        acc = args.gradient_accumulation_steps
        seq = args.max_seq_length
        steps_left = args.max_steps - self.global_step
        batches = self.data.train.iterate(self.global_step * acc, steps_left * acc,
                                          args.dataloader_num_workers)
        bar = _progress(args, self.global_step)
        train_start = interval_start = time.time()
        interval_losses: list = []
        interval_steps = 0
        start_step = self.global_step
        eval_steps = args.effective_eval_steps
        self.model.train()
        while self.global_step < args.max_steps:
            step_loss, grad_norm, status = self._train_step(batches)
            interval_steps += 1
            if status == "ok":
                interval_losses.append(step_loss)
            else:
                logger.warning("step %d: non-finite loss or gradients; %s", self.global_step,
                               f"step skipped, loss scale now {self.scaler.scale:g}"
                               if status == "overflow" else
                               f"step skipped ({self.skipped_steps} of {args.max_nonfinite_skips} allowed)")
                self.monitor.log("skip", self.global_step, {"reason": status, "grad_norm": grad_norm,
                                                            "loss_scale": self.scaler.scale})
            if bar is not None:
                bar.update(1)

            if self.global_step % args.logging_steps == 0 or self.global_step == args.max_steps:
                runtime = time.time() - interval_start
                loss_value = (float(paddle.stack(interval_losses).mean().item())
                              if interval_losses else 0.0)
                self._log_train(loss_value, grad_norm, runtime, interval_steps, seq)
                interval_losses, interval_steps = [], 0
                interval_start = time.time()
            paused = time.time()
            if args.do_eval and self.global_step % eval_steps == 0:
                self.evaluate("eval")
            if self.global_step % args.save_steps == 0:
                self.save()
            interval_start += time.time() - paused  # evaluation and saving are not training time
        if bar is not None:
            bar.close()
        runtime = time.time() - train_start
        trained = (self.global_step - start_step) * self.samples_per_step * seq
        summary = {"train_runtime": round(runtime, 4),
                   "train_tokens_per_second": round(trained / runtime, 4) if runtime else 0.0}
        if args.do_predict and self.data.test is not None:
            summary.update(self.evaluate("test"))
        self.save_final()
        logger.info("Effective Tokens per second: %.2f", summary["train_tokens_per_second"])
        return summary

    def _log_train(self, loss: float, grad_norm: float, runtime: float, steps: int, seq: int):
        cur, peak = memory_gb(self.paddle)
        samples = self.samples_per_step * steps
        tokens_per_s = samples * seq / runtime  # one device: tokens/s per device
        consumed = self.global_step * self.samples_per_step
        values = {
            "loss": round(loss, 8),
            "learning_rate": float(f"{self.lr_at(self.global_step):.3e}"),
            "global_step": self.global_step,
            "current_memory_allocated": cur,
            "max_memory_allocated": peak,
            "interval_runtime": round(runtime, 4),
            "interval_samples_per_second": round(samples / runtime, 4),
            "interval_tokens_per_second_per_device": round(tokens_per_s, 4),
            "interval_hardware_tflops_per_device": round(tokens_per_s * self.flops_per_token / 2 ** 40, 2),
            "interval_steps_per_second": round(steps / runtime, 4),
            "progress_or_epoch": round(consumed / len(self.data.datasets["train"]), 4),
        }
        logger.info(format_log(values))
        self.monitor.log("train", self.global_step, {
            **values, "grad_norm": grad_norm, "loss_scale": self.scaler.scale,
            "skipped_steps": self.skipped_steps, "consumed_tokens": consumed * seq,
            "time": time.time()})

    def save_final(self) -> None:
        """Final weights in HuggingFace layout in output_dir (loadable by from_pretrained)."""
        from llmpre.models import save_pretrained

        save_pretrained(self.model, self.args.output_dir)
        logger.info("Saved the final model to %s", self.args.output_dir)


def _to_numpy(p) -> np.ndarray:
    """Parameters as numpy for safetensors; bf16 (which numpy lacks) is saved as fp32."""
    if str(p.dtype).endswith("bfloat16"):
        return p.astype("float32").numpy()
    return p.numpy()


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
