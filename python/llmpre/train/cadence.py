"""How long to train, when to evaluate and checkpoint, and which checkpoint is best:
PaddleNLP's ``num_train_epochs``, ``evaluation_strategy``, ``save_strategy`` and
``load_best_model_at_end``, and the run-level checks of ``model_type`` and ``device``.

An *epoch* is one pass over the train split: ``(tokens - 1) // max_seq_length``
samples (the samples PaddleNLP's dataset cuts from one pass; for a blend, the sum
over its corpora), of which every optimizer step consumes
``per_device_train_batch_size x gradient_accumulation_steps x data-parallel size``;
a partial last batch does not exist, so ``steps per epoch = max(1, samples // that)``.
With ``max_steps <= 0``, ``max_steps = ceil(num_train_epochs x steps per epoch)``
(HF/PaddleNLP's rule). The ``epoch`` strategies act after every ``steps per epoch``
steps and at the last step, as the HF/PaddleNLP loop does at the end of its
(possibly cut short) final epoch.

Every decision is a pure function of the step, so a resumed run evaluates and
saves where the uninterrupted one did.
"""

from __future__ import annotations

import math
import os

from llmpre.errors import ConfigError


def train_samples_per_epoch(args) -> int:
    """Samples in one pass over the train split of the run's data."""
    from llmpre import _core
    from llmpre.data import open_corpus
    from llmpre.train.data import resolve_data

    total = 0
    for prefix in resolve_data(args.input_dir).prefixes:
        corpus = open_corpus(prefix)
        bounds = _core.split_ranges(args.split, corpus.num_items)
        tokens = corpus.count_tokens(bounds[0], bounds[1]) if bounds[1] > bounds[0] else 0
        total += max(0, (tokens - 1) // args.max_seq_length)
    return total


def update_steps_per_epoch(samples: int, batch: int, data_world: int, accumulation: int) -> int:
    """Optimizer updates in one pass over ``samples``, counted as PaddleNLP's Trainer counts
    them: a rank's loader yields ceil(ceil(samples / ranks) / batch) batches (the last one
    short), an epoch is that // accumulation updates, at least 1."""
    per_rank = math.ceil(samples / data_world)
    return max(math.ceil(per_rank / batch) // accumulation, 1)


def steps_per_epoch(args, data_parallel_size: int) -> int:
    """Updates in one pass over the run's train split (:func:`update_steps_per_epoch`)."""
    samples = train_samples_per_epoch(args)
    if samples <= 0:
        raise ConfigError(f"the train split of {args.input_dir or 'the bundled corpus'} holds no "
                          f"sample of {args.max_seq_length} tokens, so an epoch has no step")
    return update_steps_per_epoch(samples, args.per_device_train_batch_size, data_parallel_size,
                                  args.gradient_accumulation_steps)


def needs_epochs(args) -> bool:
    return (args.max_steps <= 0 or "epoch" in (args.evaluation_strategy, args.save_strategy))


def resolve_max_steps(args, epoch_steps: int) -> int:
    """``max_steps`` as given, else from ``num_train_epochs``."""
    if args.max_steps > 0:
        return args.max_steps
    return max(1, math.ceil(args.num_train_epochs * epoch_steps))


class Cadence:
    """Which steps evaluate and which save."""

    def __init__(self, args, epoch_steps: int | None):
        self.args, self.epoch_steps = args, epoch_steps

    def _due(self, strategy: str, every: int, step: int) -> bool:
        if strategy == "no":
            return False
        if strategy == "epoch":
            return step % self.epoch_steps == 0 or step == self.args.max_steps
        return step % every == 0

    def eval_due(self, step: int) -> bool:
        return self.args.do_eval and self._due(self.args.evaluation_strategy,
                                               self.args.effective_eval_steps, step)

    def save_due(self, step: int) -> bool:
        return self._due(self.args.save_strategy, self.args.save_steps, step)

    def describe(self) -> str:
        a = self.args
        def one(strategy, every):
            if strategy == "epoch":
                return f"every epoch ({self.epoch_steps} steps) and at step {a.max_steps}"
            return f"every {every} steps" if strategy == "steps" else "never"
        ev = one(a.evaluation_strategy, a.effective_eval_steps) if a.do_eval else "never"
        return f"evaluate {ev}, checkpoint {one(a.save_strategy, a.save_steps)}"


class BestCheckpoint:
    """The checkpoint with the best eval loss so far (``load_best_model_at_end``)."""

    def __init__(self, greater_is_better: bool = False):
        self.greater = bool(greater_is_better)
        self.metric: float | None = None
        self.step: int | None = None

    def offer(self, metric: float, step: int) -> bool:
        """Record ``metric`` of the checkpoint at ``step``; True when it is the new best."""
        if not math.isfinite(metric):
            return False
        better = self.metric is None or (metric > self.metric if self.greater else metric < self.metric)
        if better:
            self.metric, self.step = float(metric), int(step)
        return better

    def state_dict(self) -> dict:
        return {"metric": self.metric, "step": self.step}

    def load_state_dict(self, state: dict | None) -> None:
        state = state or {}
        self.metric, self.step = state.get("metric"), state.get("step")

    def keep(self, checkpoint_steps: list[int], limit: int | None) -> int | None:
        """How many of the newest checkpoints rotation must keep so the best survives:
        ``limit``, or more while the best is older than the newest ``limit``."""
        if not limit or self.step is None or self.step not in checkpoint_steps:
            return limit
        newer_or_same = sum(1 for s in checkpoint_steps if s >= self.step)
        return max(limit, newer_or_same)


# PaddleNLP's model_type names -> the llmpre model_types they cover (a name not listed
# covers itself). PaddleNLP calls ChatGLM-6B "chatglm" and ChatGLM2/3 "chatglm_v2"; HF's
# config.json says "chatglm" for both, which llmpre builds as "glm" and "chatglm".
FAMILY_NAMES = {"gpt": {"gpt2"}, "gpt2": {"gpt2"}, "gpt3": {"gpt2"}, "gpt-3": {"gpt2"},
                "llama": {"llama", "mistral", "baichuan"}, "chatglm": {"glm", "chatglm"},
                "chatglm_v2": {"chatglm"}}


def check_model_type(model_type: str | None, config) -> None:
    """``model_type`` (PaddleNLP's run_pretrain flag) must name the model's family."""
    if not model_type:
        return
    name = model_type.lower().replace("-", "_")
    covered = FAMILY_NAMES.get(model_type.lower(), FAMILY_NAMES.get(name, {name}))
    if str(config.model_type).lower() not in covered:
        raise ConfigError(f"model_type {model_type!r} does not match the model, whose config says "
                          f"model_type {config.model_type!r}; remove model_type or fix "
                          "model_name_or_path")


def choose_device(device: str | None, paddle, world: int) -> str:
    """The Paddle device string: ``device`` as asked (gpu refused without a CUDA GPU),
    else a GPU when there is one."""
    gpu = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if device is not None and device.lower() == "gpu" and not gpu:
        raise ConfigError("device 'gpu' was asked for, but " + (
            "this Paddle build has no CUDA support (install paddlepaddle-gpu)"
            if not paddle.is_compiled_with_cuda() else "no GPU is visible") + "; set device cpu")
    if device is not None and device.lower() == "cpu":
        return "cpu"
    if gpu:
        index = int(os.environ.get("FLAGS_selected_gpus", "0").split(",")[0])
        return f"gpu:{index}" if world > 1 else "gpu"
    return "cpu"


def apply_model_keys(model, config, args, precision, paddle) -> list[str]:
    """Give a GPT model its dropout (PaddleNLP's run_pretrain sets
    ``hidden_dropout_prob`` / ``attention_probs_dropout_prob`` on configs that have
    them: GPT's); returns notice lines for the keys that do nothing for this model."""
    from llmpre.models.dropout import supports_dropout
    from llmpre.train.precision import unknown_ops

    notices = []
    given = getattr(args, "given", set())
    probs = (args.hidden_dropout_prob, args.attention_probs_dropout_prob)
    if supports_dropout(model, config):
        model.set_dropout(*probs, seed=args.seed)
    else:
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if name in given and getattr(args, name):
                notices.append(f"{name} = {getattr(args, name)} has no effect here: {config.model_type} "
                               "models have no dropout (PaddleNLP's run_pretrain sets it only on GPT "
                               "configs)")
    missing = unknown_ops(sorted(precision.black | precision.white), paddle)
    if missing:
        notices.append(f"amp custom op(s) {', '.join(missing)} have no effect here: this Paddle build "
                       "has no operator of that name")
    return notices
