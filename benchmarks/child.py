"""Run one benchmark configuration in this (fresh) process and write its measurements as JSON.

    python -m benchmarks.child JOB.json RESULT.json

``JOB.json`` holds the configuration name, the model folder, the llmtune config of the run and the
warm-up step count (see ``run.py``). The runners ``llmtune``, ``trl`` and ``inference`` run here;
``llamafactory`` runs in its own environment (``llamafactory.py``). Every runner trains with a
HF ``Trainer`` that carries the same :class:`benchmarks.measure.Measure` callback.
"""

from __future__ import annotations

import json
import sys

from benchmarks.configs import CONFIGS
from benchmarks.measure import Measure, Memory, write_result


def llmtune_run(job: dict, measure: Measure) -> None:
    """``llmtune train`` on the job's config, with the measuring callback."""
    from llmtune.arguments import parse_args
    from llmtune.errors import LlmtuneError
    from llmtune.train.estimate import estimate_memory, load_model_config
    from llmtune.train.run import run_sft

    args = parse_args(job["config"])
    if CONFIGS[job["name"]].get("all_logits"):
        every_positions_logits()
    try:  # from the config alone, as `llmtune estimate`; not every type has a memory model
        estimate = estimate_memory(args, load_model_config(args))
        measure.extra["estimate_bytes"] = estimate.total
        measure.extra["estimate_model_states_bytes"] = estimate.weights + estimate.gradients + estimate.optimizer
    except LlmtuneError:
        pass
    result = run_sft(args, callbacks=[measure])
    if job.get("task") and job.get("score", True):
        measure.extra["task_metrics"] = task_metrics(str(result.output_dir), job["task"])


def every_positions_logits() -> None:
    """The code before the LM head ran only where a loss reads it (issue #19), for the "before" side of
    the ``head`` suite: with no output embedding found, :func:`llmtune.model.head.logits_at` computes
    every position's logits and picks the read ones, and ``zo``'s loss is the model's own loss over
    full logits. The losses are the same to rounding; only the work differs."""
    import llmtune.methods.zo.objectives as objectives
    import llmtune.model.head as head

    def no_head(model):
        return None

    head.output_head = objectives.output_head = no_head


def task_metrics(model: str, task: str) -> dict:
    """``llmtune eval`` of ``model`` (a model folder or a training run's folder) on ``task``: its metrics."""
    import tempfile

    from llmtune.eval.config import parse_eval_args
    from llmtune.eval.run import run_eval

    with tempfile.TemporaryDirectory() as out:
        run = parse_eval_args({"model_name_or_path": model, "task": task, "output_dir": out})
        [result] = run_eval(run, say=lambda _: None)
    return result["metrics"]


def zero_shot_run(job: dict, measure: Measure) -> None:
    """No training: the base model's metrics on the job's task (the "before" of the quality table)."""
    measure.extra["task_metrics"] = task_metrics(job["model_path"], job["task"])


def _prepared(job: dict):
    """llmtune's arguments, tokenizer and tokenised data for the job (not measured: data prep is shared)."""
    from llmtune.arguments import parse_args
    from llmtune.data import get_dataset
    from llmtune.model import load_tokenizer

    args = parse_args(job["config"])
    tokenizer = load_tokenizer(args.model)
    return args, tokenizer, get_dataset(args.data, tokenizer, seed=args.training.seed)


def trl_run(job: dict, measure: Measure) -> None:
    """Plain TRL ``SFTTrainer`` (PEFT LoRA, or an optimizer of the ``badam`` package) on the same data."""
    import torch
    from transformers import AutoModelForCausalLM, set_seed
    from trl import SFTTrainer

    config = CONFIGS[job["name"]]
    args, tokenizer, prepared = _prepared(job)
    args.training.max_length = None  # rows are already cut to cutoff_len, as in llmtune
    set_seed(args.training.seed)
    dtype = torch.bfloat16 if args.training.bf16 else torch.float32
    model = AutoModelForCausalLM.from_pretrained(job["model_path"], dtype=dtype)
    model.config.use_cache = False
    optimizers = (None, None)
    lr = job["config"]["learning_rate"]
    if job["config"]["finetuning_type"] == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    elif config.get("optimizer") == "badam_block":
        from badam import BlockOptimizer

        base = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        options = job["config"]
        optimizers = (
            BlockOptimizer(
                base,
                list(model.named_parameters()),
                switch_block_every=options["badam_switch_interval"],
                switch_mode=options["badam_switch_mode"],
                verbose=0,
            ),
            None,
        )
    elif config.get("optimizer") == "badam_ratio":
        from badam import BlockOptimizerRatio

        options = job["config"]
        optimizers = (
            BlockOptimizerRatio(
                [{"params": list(model.parameters()), "weight_decay": 0.0}],
                list(model.named_parameters()),
                update_ratio=options["badam_update_ratio"],
                switch_every=options["badam_switch_interval"],
                lr=lr,
                verbose=0,
            ),
            None,
        )
    trainer_class = SFTTrainer
    if config.get("optimizer") == "badam_ratio":

        class trainer_class(SFTTrainer):  # noqa: N801
            """transformers 5 takes the gradient norm every step; badam's ratio mode leaves torch sparse
            gradients, which the norm refuses, so this baseline skips the (logging-only) norm."""

            def _get_grad_norm(self, model, grad_norm=None):
                return grad_norm

    trainer = trainer_class(
        model=model,
        args=args.training,
        train_dataset=prepared.train,
        processing_class=tokenizer,
        callbacks=[measure],
        optimizers=optimizers,
    )
    trainer.train()


def inference_run(job: dict, measure: Measure) -> None:
    """Forward passes only, on the first batch of the same data, in the run's precision (bf16 weights
    under ``bf16``), computing the loss as ``zo``'s forwards do (the LM head at the labelled positions
    only): what ``zo`` is compared with."""
    import torch

    from llmtune.model import load_model
    from llmtune.model.head import causal_lm_loss

    args, tokenizer, prepared = _prepared(job)
    dtype = torch.bfloat16 if args.training.bf16 else torch.float32
    model = load_model(args.model, dtype, for_training=False).eval()
    batch_size = job["config"]["per_device_train_batch_size"]
    rows = [{"input_ids": row["input_ids"]} for row in prepared.train.select(range(batch_size))]
    batch = tokenizer.pad(rows, return_tensors="pt")
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    tokens = int(batch["attention_mask"].sum())
    measure.on_train_begin(None, None, None, model=model)
    for _ in range(job["config"]["max_steps"]):
        with torch.no_grad():
            measure.time_step(lambda: causal_lm_loss(model, batch)[0], tokens)


RUNNERS = {"llmtune": llmtune_run, "trl": trl_run, "inference": inference_run, "zero_shot": zero_shot_run}


def main(job_path: str, result_path: str) -> None:
    # The libraries every runner uses are imported first, so the baseline (this process before any
    # model loads) holds them and the peak rise counts the run, not the imports.
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import trl  # noqa: F401

    import llmtune.train.run  # noqa: F401

    memory = Memory()
    job = json.loads(open(job_path, encoding="utf-8").read())
    measure = Measure(job["warmup"], memory)
    RUNNERS[CONFIGS[job["name"]]["runner"]](job, measure)
    write_result(result_path, measure.result())


if __name__ == "__main__":
    main(*sys.argv[1:3])
