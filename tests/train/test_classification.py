"""``train_as_classification``: the loss, the trainer hook, and learning the SST-2-style demo task."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from llmtune.arguments import parse_args
from llmtune.cli import main
from llmtune.data.task_encoding import encode_choice
from llmtune.data.tasks import load_task_examples, load_tasks
from llmtune.errors import ConfigError
from llmtune.hparams import ModelArguments
from llmtune.model import load_model, load_tokenizer
from llmtune.train.classification import ClassificationCollator, classification_loss, option_scores
from llmtune.train.run import run_sft

TINY = ModelArguments(model_name_or_path="llmtune/tiny-llama")


def cls_config(make_config, output_dir, finetuning_type: str = "full", **overrides) -> dict:
    settings = {
        "dataset": "demo_sst2",
        "train_as_classification": True,
        "max_samples": None,
        "per_device_train_batch_size": 8,
        "learning_rate": {"full": 5e-3, "lora": 1e-2}.get(finetuning_type, 3e-3),
        "max_steps": 30,
        "save_steps": 1000,
        "logging_steps": 10,
    }
    return make_config(output_dir, finetuning_type, **{**settings, **overrides})


def accuracy(model, tokenizer, split: str = "eval") -> float:
    examples, _ = load_task_examples(load_tasks()["demo_sst2"], split)
    collate = ClassificationCollator(tokenizer.pad_token_id)
    features = [encode_choice(tokenizer, e).as_features() for e in examples]
    right = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(features), 64):
            batch = collate(features[start : start + 64])
            right += int((option_scores(model, batch).argmax(1) == batch["cls_labels"]).sum())
    return right / len(features)


def test_single_token_options_give_the_cross_entropy_over_the_label_words_logits() -> None:
    """MeZO's loss: softmax over the label words' logits at the answer position."""
    model, tokenizer = load_model(TINY, for_training=False), load_tokenizer(TINY)
    prompts, words = [[5, 6, 7, 8], [9, 10]], [20, 21]
    batch = ClassificationCollator(tokenizer.pad_token_id)(
        [
            {"prompt_ids": p, "option_ids": [[w] for w in words], "label": y}
            for p, y in zip(prompts, [1, 0], strict=True)
        ]
    )
    loss, _ = classification_loss(model, batch)
    with torch.no_grad():
        last = torch.stack([model(input_ids=torch.tensor([p])).logits[0, -1] for p in prompts])
    expected = F.cross_entropy(last[:, words], torch.tensor([1, 0]))
    assert loss.item() == pytest.approx(expected.item(), abs=1e-4)


def test_train_as_classification_raises_accuracy_well_above_chance(tmp_path, make_config) -> None:
    """Full fine-tuning, 30 steps of 8 (one epoch): the tiny model goes from about chance to > 80% on held-out rows."""
    tokenizer = load_tokenizer(TINY)
    before = accuracy(load_model(TINY, for_training=False), tokenizer)
    result = run_sft(parse_args(cls_config(make_config, tmp_path / "run", eval_dataset="demo_sst2")))
    after = accuracy(result.model, tokenizer)
    assert before < 0.75, before  # the pretrained tiny model has never seen the task
    assert after > 0.8, (before, after)
    logged = [entry for entry in result.log_history if "cls_accuracy" in entry]
    assert logged and "eval_cls_accuracy" in result.metrics and result.metrics["eval_cls_accuracy"] > 0.8

    # The run folder is evaluated by `llmtune eval` without restating its options.
    assert main(["eval", str(tmp_path / "run"), "--task", "demo_sst2", "--max_samples", "64"]) == 0
    scored = json.loads((tmp_path / "run" / "eval" / "demo_sst2" / "results.json").read_text())
    assert scored["format"] == "plain" and scored["metrics"]["accuracy"] > 0.8


def test_generation_tasks_and_registry_datasets_are_refused(tmp_path, make_config) -> None:
    for dataset in ("demo_squad", "demo_alpaca"):
        config = cls_config(make_config, tmp_path / dataset, dataset=dataset)
        with pytest.raises(ConfigError, match=f"train_as_classification: '{dataset}' is a"):
            run_sft(parse_args(config))


@pytest.mark.slow
@pytest.mark.parametrize("finetuning_type", ["lora", "block", "sparse", "loretta"])
def test_every_gradient_method_trains_as_classification(tmp_path, make_config, finetuning_type) -> None:
    """The hook is the trainer's compute_loss: every method that trains through it learns the task, and
    its run folder (a LoRA or LoRETTA adapter, or a full model) is scored by `llmtune eval`."""
    overrides = {"badam_switch_interval": 10} if finetuning_type in ("block", "sparse") else {}
    if finetuning_type == "sparse":
        overrides["badam_update_ratio"] = 0.5
    if finetuning_type == "loretta":
        overrides["learning_rate"] = 1e-2
    result = run_sft(parse_args(cls_config(make_config, tmp_path / "run", finetuning_type, max_steps=40, **overrides)))
    losses = [entry["loss"] for entry in result.log_history if "loss" in entry]
    assert losses[-1] < losses[0], losses
    assert main(["eval", str(tmp_path / "run"), "--task", "demo_sst2", "--max_samples", "16"]) == 0
    assert (tmp_path / "run" / "eval" / "demo_sst2" / "results.json").is_file()


def test_k_shot_trains_on_k_per_class_and_evaluates_another_k(tmp_path, make_config) -> None:
    """``k_shot: 4`` on demo_sst2: 8 training rows and 8 dev rows, another draw per seed; SFT refuses it.
    (That train and dev are disjoint is tested in tests/data/test_corpora.py: demo_sst2 repeats sentences.)"""
    from llmtune.train.classification import get_classification_dataset

    args = parse_args(cls_config(make_config, tmp_path / "k", k_shot=4, seed=13))
    tokenizer = load_tokenizer(TINY)
    data = get_classification_dataset(args.data, tokenizer, seed=13)
    assert Counter(data.train["label"]) == Counter(data.eval["label"]) == {0: 4, 1: 4}
    other = get_classification_dataset(args.data, tokenizer, seed=21)
    assert other.train["prompt_ids"] != data.train["prompt_ids"]
    with pytest.raises(ConfigError, match="k_shot: draws k examples per class"):
        parse_args(cls_config(make_config, tmp_path / "sft", k_shot=4, train_as_classification=False))
