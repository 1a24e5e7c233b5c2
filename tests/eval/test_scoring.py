"""Options ranked by log-likelihood: constructed cases with known probabilities, and padding invariance."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from llmtune.train.classification import ClassificationCollator, option_log_likelihoods, option_scores

PAD = 0


class BigramModel(torch.nn.Module):
    """Next-token log-probabilities from a fixed table: ``log p(next | current) = table[current, next]``."""

    def __init__(self, probabilities: dict[int, dict[int, float]], vocab: int = 6):
        super().__init__()
        table = torch.full((vocab, vocab), 1e-9)
        for current, row in probabilities.items():
            rest = (1.0 - sum(row.values())) / (vocab - len(row))
            table[current] = rest
            for token, p in row.items():
                table[current, token] = p
        self.register_buffer("log_table", table.log())

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.log_table[input_ids])


# p(2|1) = 0.5, p(3|1) = 0.4, p(4|2) = 0.5: option [2, 4] has the better mean (log 0.5 per token),
# option [3] the better sum (log 0.4 > 2 log 0.5).
MODEL = BigramModel({1: {2: 0.5, 3: 0.4}, 2: {4: 0.5}, 3: {5: 0.9}})


def batch(*examples: tuple[list[int], list[list[int]], int]) -> dict:
    collate = ClassificationCollator(pad_token_id=PAD)
    return collate([{"prompt_ids": p, "option_ids": o, "label": y} for p, o, y in examples])


def test_collator_follows_the_batch_contract() -> None:
    b = batch(([1], [[2, 4], [3]], 0), ([5, 1], [[2], [3], [5]], 2))
    assert b["input_ids"].tolist() == [[1, 2, 4], [1, 3, PAD], [5, 1, 2], [5, 1, 3], [5, 1, 5]]
    assert b["cls_option_mask"].tolist() == [[0, 1, 1], [0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 0, 1]]
    assert b["attention_mask"].tolist()[1] == [1, 1, 0]
    assert b["cls_option_index"].tolist() == [[0, 1, -1], [2, 3, 4]] and b["cls_labels"].tolist() == [0, 2]


def test_log_likelihoods_equal_the_hand_computed_values() -> None:
    b = batch(([1], [[2, 4], [3]], 0))
    summed = option_log_likelihoods(MODEL, b, length_normalized=False)
    assert summed.tolist() == pytest.approx([2 * math.log(0.5), math.log(0.4)], abs=1e-5)
    mean = option_log_likelihoods(MODEL, b, length_normalized=True)
    assert mean.tolist() == pytest.approx([math.log(0.5), math.log(0.4)], abs=1e-5)


def test_length_normalisation_decides_between_long_and_short_options() -> None:
    b = batch(([1], [[2, 4], [3]], 0))
    assert option_scores(MODEL, b, length_normalized=True).argmax(1).tolist() == [0]
    assert option_scores(MODEL, b, length_normalized=False).argmax(1).tolist() == [1]


def test_the_likeliest_option_wins_and_absent_options_never_do() -> None:
    b = batch(([1], [[3], [2]], 1), ([3], [[4], [5], [1]], 1), ([2], [[1], [4]], 1))
    scores = option_scores(MODEL, b)
    assert scores.argmax(1).tolist() == [1, 1, 1]
    assert torch.isinf(scores[0, 2]) and scores[0, 2] < 0  # the first example has 2 options of 3


def test_scores_do_not_depend_on_padding_or_batching() -> None:
    """On the tiny Llama: an example scored alone equals the same example in a padded batch."""
    from llmtune.hparams import ModelArguments
    from llmtune.model import load_model

    model = load_model(ModelArguments(model_name_or_path="llmtune/tiny-llama"), for_training=False).eval()
    examples = [([5, 6, 7, 8, 9, 10], [[20, 21], [22]], 0), ([30], [[31, 32, 33], [34]], 1), ([40, 41], [[42]] * 2, 0)]
    with torch.no_grad():
        together = option_scores(model, batch(*examples))
        alone = [option_scores(model, batch(example))[0] for example in examples]
    for row, single in zip(together, alone, strict=True):
        n = int(torch.isfinite(single).sum())
        assert row[:n].tolist() == pytest.approx(single[:n].tolist(), abs=1e-4)


def test_single_token_options_share_the_prompt_and_score_as_the_option_rows_do() -> None:
    """The shared-prompt form (one row per example) gives the per-option rows' scores, with half the rows."""
    from llmtune.hparams import ModelArguments
    from llmtune.model import load_model

    model = load_model(ModelArguments(model_name_or_path="llmtune/tiny-llama"), for_training=False).eval()
    features = [
        {"prompt_ids": [5, 6, 7, 8, 9, 10], "option_ids": [[20], [22]], "label": 0},
        {"prompt_ids": [30], "option_ids": [[31], [34], [35]], "label": 2},
        {"prompt_ids": [40, 41], "option_ids": [[42], [43]], "label": None},
    ]
    shared = ClassificationCollator(pad_token_id=PAD)(features)
    rows = ClassificationCollator(pad_token_id=PAD, share_prompt=False)(features)
    assert shared["input_ids"].shape[0] == 3 and rows["input_ids"].shape[0] == 7
    assert shared["cls_option_tokens"].tolist() == [[20, 22, -1], [31, 34, 35], [42, 43, -1]]
    assert shared["cls_option_mask"].tolist()[1] == [1, 0, 0, 0, 0, 0]  # the last prompt token predicts the answer
    assert shared["cls_labels"].tolist() == rows["cls_labels"].tolist() == [0, 2, -100]
    with torch.no_grad():
        got, want = option_scores(model, shared), option_scores(model, rows)
    assert torch.isinf(got[0, 2]) and torch.isinf(want[0, 2])
    finite = torch.isfinite(want)
    torch.testing.assert_close(got[finite], want[finite], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="option_scores"):
        option_log_likelihoods(model, shared)
