"""Kernels against dense autograd, their structure, and the kernel solution of a linear model against GD."""

from __future__ import annotations

import pytest
import torch

from llmtune.data.tasks import load_task_examples, load_tasks
from llmtune.hparams.model_args import ModelArguments
from llmtune.kernel.features import KernelBatch, batches, encode_examples, label_logits, select_parameters
from llmtune.kernel.kernels import compute_kernel, initial_outputs, parameter_blocks
from llmtune.kernel.solvers import solve


@pytest.fixture(scope="module")
def tiny():
    """The tiny model, five demo_sst2 prompts of different lengths, and their dense Jacobians by plain autograd."""
    from llmtune.model import load_model, load_tokenizer

    args = ModelArguments(model_name_or_path="llmtune/tiny-llama")
    tokenizer, model = load_tokenizer(args), load_model(args, for_training=False).eval()
    task = load_tasks()["demo_sst2"]
    examples, _ = load_task_examples(task, "train", 40)
    items = encode_examples(tokenizer, examples, "demo_sst2", 64)
    items = sorted(items, key=lambda item: len(item[0]))[::8][:5]  # lengths differ: batches need padding
    assert len({len(prompt) for prompt, _ in items}) > 1
    # The last layer and the final norm: the backward stops there, which keeps the test fast.
    params = {
        n: p for n, p in select_parameters(model, "no_embeddings").items() if "layers.1." in n or "model.norm" in n
    }
    named = dict(model.named_parameters())
    live = [named[name] for name in params]
    rows = []
    for prompt, words in items:  # one example at a time, no padding, torch.autograd
        logits = model(input_ids=torch.tensor([prompt])).logits[0, -1]
        grads = [torch.autograd.grad(logits[w], live, retain_graph=True) for w in words]
        rows.append(torch.stack([torch.cat([g.reshape(-1) for g in per]) for per in grads]))
    dense = torch.stack(rows).double()  # [N, C, P]
    return model, tokenizer, items, params, dense


def _kernel(tiny, formula, batch_size=2, block_params=30_000, columns=None):
    model, tokenizer, items, params, _ = tiny
    every = {n: p.detach() for n, p in model.named_parameters()}
    output_fn = label_logits(model)

    def fn(part, batch):
        return output_fn({**every, **part}, batch)

    blocks = parameter_blocks(params, block_params)
    assert len(blocks) >= 2  # several streamed blocks
    rows = batches(items, batch_size, tokenizer.pad_token_id)
    formulas = formula if isinstance(formula, tuple) else (formula,)
    kernels = compute_kernel(fn, params, blocks, rows, columns or {"train": None}, formulas)
    return kernels if isinstance(formula, tuple) else kernels[formula]


@pytest.fixture(scope="module")
def sgd_kernel(tiny):
    return _kernel(tiny, "sgd", batch_size=3)["train"]


def test_sgd_kernel_equals_dense_jacobian_products(tiny, sgd_kernel):
    dense, kernel = tiny[4], sgd_kernel
    expected = torch.einsum("acp,bdp->acbd", dense, dense)
    assert kernel.shape == (5, 2, 5, 2)
    torch.testing.assert_close(kernel, expected, rtol=2e-4, atol=1e-6 * expected.abs().max().item())


def test_column_sets_are_the_rows_against_other_examples(tiny):
    """Two column sets beside the rows themselves, in batches of 2 and 3 (padded): each at its own offsets."""
    _, tokenizer, items, _, dense = tiny
    pad = tokenizer.pad_token_id
    columns = {"train": None, "dev": batches(items[3:], 2, pad), "eval": batches(items[::-1], 3, pad)}
    kernels = _kernel(tiny, "sgd", batch_size=2, columns=columns)
    for name, cols in (("train", dense), ("dev", dense[3:]), ("eval", dense.flip(0))):
        expected = torch.einsum("acp,bdp->acbd", dense, cols)
        assert kernels[name].shape == expected.shape
        torch.testing.assert_close(kernels[name], expected, rtol=2e-4, atol=1e-6 * expected.abs().max().item())


def test_positions_where_every_row_is_zero_are_dropped_exactly(tiny):
    """With the embedding matrix in the block, the rows keep only its non-zero positions; the kernels are
    the dense Jacobians' products all the same (rows against themselves and against other examples)."""
    from llmtune.kernel.kernels import jacobian, row_jacobians

    model, tokenizer, items, _, _ = tiny
    every = {n: p.detach() for n, p in model.named_parameters()}
    output_fn = label_logits(model)

    def fn(part, batch):
        return output_fn({**every, **part}, batch)

    params = {n: p for n, p in select_parameters(model, "all").items() if "embed" in n or "layers.1.mlp" in n}
    rows, cols = batches(items[:3], 2, tokenizer.pad_token_id), batches(items[3:], 2, tokenizer.pad_token_id)
    names = list(params)
    _, kept = row_jacobians(fn, params, names, rows)
    size, embedding = sum(p.numel() for p in params.values()), params["model.embed_tokens.weight"].numel()
    assert kept is not None and size - len(kept) > embedding // 2  # most of the embedding matrix is dropped
    dense_rows = torch.cat([jacobian(fn, params, names, b) for b in rows]).double()
    dense_cols = torch.cat([jacobian(fn, params, names, b) for b in cols]).double()
    kernels = compute_kernel(fn, params, [names], rows, {"train": None, "eval": cols}, ("sgd",))["sgd"]
    for name, other in (("train", dense_rows), ("eval", dense_cols)):
        expected = torch.einsum("acp,bdp->acbd", dense_rows, other)
        torch.testing.assert_close(kernels[name], expected, rtol=1e-5, atol=1e-7 * expected.abs().max().item())


def test_signgd_kernel_is_the_inner_product_of_signs(tiny):
    dense = tiny[4]
    kernel = _kernel(tiny, "signgd", batch_size=5)["train"]
    signs = dense.sign()
    expected = torch.einsum("acp,bdp->acbd", signs, signs)
    # An entry is a count of agreeing minus disagreeing signs; float noise may flip the sign of a few
    # entries that are ~0, so allow a handful of flips out of the ~50k parameters.
    assert (kernel - expected).abs().max() <= 8
    assert expected.abs().max() > 1000  # entries count many parameters


def test_asymmetric_signgd_pairs_signs_with_plain_jacobians(tiny):
    dense = tiny[4]
    diff = (dense[:, 1] - dense[:, 0]).unsqueeze(1)  # the logit difference's Jacobian
    kernel = _kernel(tiny, "asymmetric_signgd", batch_size=5)["train"]
    expected = torch.einsum("acp,bdp->acbd", diff.sign(), diff)
    assert kernel.shape == (5, 1, 5, 1)
    torch.testing.assert_close(kernel, expected, rtol=1e-3, atol=1e-4 * expected.abs().max().item())
    assert not torch.allclose(kernel[:, 0, :, 0], kernel[:, 0, :, 0].T)  # both orders kept, they differ


def test_one_pass_gives_every_formula_as_its_own_pass_does(tiny):
    """The three formulas from one set of Jacobians (against the rows and another column set) equal each
    formula computed alone, and the asymmetric one equals the Jacobian of the logit difference itself."""
    _, tokenizer, items, _, dense = tiny
    columns = {"train": None, "eval": batches(items[::-1], 2, tokenizer.pad_token_id)}
    together = _kernel(tiny, ("sgd", "signgd", "asymmetric_signgd"), batch_size=2, columns=columns)
    for formula, kernels in together.items():
        alone = _kernel(tiny, formula, batch_size=2, columns=columns)
        for name in columns:
            assert torch.equal(kernels[name], alone[name]), (formula, name)
    diff = (dense[:, 1] - dense[:, 0]).unsqueeze(1)
    expected = torch.einsum("acp,bdp->acbd", diff.sign(), diff.flip(0))
    got = together["asymmetric_signgd"]["eval"]
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-4 * expected.abs().max().item())


def test_a_block_with_no_kept_position_adds_zeros():
    """Rows all zero in a block (a fresh LoRA adapter's A matrices alone): nothing kept, a kernel of zeros."""
    from llmtune.kernel.kernels import VIEWS, kernel_product

    rows, cols = torch.zeros(3, 2, 0), torch.zeros(4, 2, 0)
    for formula, outputs in (("sgd", 2), ("signgd", 2), ("asymmetric_signgd", 1)):
        product = kernel_product(rows, cols, *VIEWS[formula])
        assert product.shape == (3, outputs, 4, outputs) and not product.any()


def test_sgd_kernel_is_symmetric_positive_semidefinite(sgd_kernel):
    kernel = sgd_kernel.reshape(10, 10)
    assert torch.equal(kernel, kernel.T)
    eigenvalues = torch.linalg.eigvalsh(kernel)
    assert eigenvalues.min() >= -1e-9 * eigenvalues.max()


def test_kernel_prediction_equals_gradient_descent_on_a_linear_model():
    """f(x) = W x + b is linear in (W, b): GD on the squared loss converges to the kernel lstsq solution."""
    torch.manual_seed(0)
    n_train, n_eval, features, classes = 6, 10, 8, 2
    x_train, x_eval = (
        torch.randn(n_train, features, dtype=torch.float64),
        torch.randn(n_eval, features, dtype=torch.float64),
    )
    labels = torch.tensor([0, 1, 1, 0, 1, 0])
    params = {
        "W": torch.randn(classes, features, dtype=torch.float64) * 0.3,
        "b": torch.zeros(classes, dtype=torch.float64),
    }

    def output_fn(p, batch: KernelBatch):
        return batch.input_ids @ p["W"].T + p["b"]

    def as_batch(x):  # the kernel code reads only the example count from label_ids
        return KernelBatch(x, torch.ones(len(x)), torch.zeros(len(x)), torch.zeros(len(x), classes, dtype=torch.long))

    train_batches, eval_batches = [as_batch(x_train[:4]), as_batch(x_train[4:])], [as_batch(x_eval)]
    blocks = parameter_blocks(params, 10)
    kernels = compute_kernel(output_fn, params, blocks, train_batches, {"train": None, "eval": eval_batches}, ("sgd",))[
        "sgd"
    ]
    k_train, k_eval = kernels["train"], kernels["eval"]
    f0_train, f0_eval = (
        initial_outputs(output_fn, params, train_batches),
        initial_outputs(output_fn, params, eval_batches),
    )
    _, predicted = solve("lstsq", k_train, k_eval, labels, f0_train, f0_eval)

    targets = torch.nn.functional.one_hot(labels, classes).double() * 2 - 1
    trained = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    optimizer = torch.optim.SGD(trained.values(), lr=0.05)
    for _ in range(4_000):
        optimizer.zero_grad()
        loss = 0.5 * (x_train @ trained["W"].T + trained["b"] - targets).square().sum()
        loss.backward()
        optimizer.step()
    assert loss.item() < 1e-12  # converged: the training set is interpolated
    with torch.no_grad():
        trained_eval = x_eval @ trained["W"].T + trained["b"]
    torch.testing.assert_close(predicted, trained_eval, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(predicted, f0_eval, atol=1e-2)  # the prediction moved from the initial output


def test_lora_parameters_start_with_zero_jacobians_for_a(tiny):
    """kernel_params lora: a fresh adapter; at initialisation B = 0, so only the B matrices move the logits."""
    from llmtune.kernel.features import add_lora
    from llmtune.model import load_model

    _, tokenizer, items, _, _ = tiny
    model = add_lora(
        load_model(ModelArguments(model_name_or_path="llmtune/tiny-llama"), for_training=False), 4, "q_proj"
    )
    params = select_parameters(model.eval(), "lora")
    assert params and all("lora_" in name for name in params)
    every = {n: p.detach() for n, p in model.named_parameters()}
    output_fn = label_logits(model)
    batch = batches(items, 5, tokenizer.pad_token_id)[0]
    from llmtune.kernel.kernels import jacobian

    def fn(part, batch):
        return output_fn({**every, **part}, batch)

    jac = {name: jacobian(fn, params, [name], batch) for name in params}
    assert all(jac[n].abs().max() == 0 for n in params if "lora_A" in n)
    assert all(jac[n].abs().max() > 0 for n in params if "lora_B" in n)
