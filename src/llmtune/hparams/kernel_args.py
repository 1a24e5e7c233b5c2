"""Arguments of ``llmtune kernel``: the eNTK of prompt-based fine-tuning (Malladi et al., 2023).

The model keys are :class:`~llmtune.hparams.model_args.ModelArguments`' and a few data keys are
:class:`~llmtune.hparams.data_args.DataArguments`' (``KERNEL_DATA_KEYS``); the rest is here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The DataArguments keys that mean the same for a kernel run (max_samples caps the eval split; k_shot is
# the per-class draw of kshot.py that training makes too, so a kernel and a fine-tuning run share one key).
KERNEL_DATA_KEYS = ("dataset_dir", "max_samples", "cutoff_len", "skip_bad_rows", "k_shot")

KERNEL_FORMULAS = ("sgd", "signgd", "asymmetric_signgd")
KERNEL_SOLVERS = ("lstsq", "logistic", "svr")
KERNEL_PARAMS = ("all", "no_embeddings", "biases", "lora")
KERNEL_DTYPES = ("float32", "bfloat16", "float16")
COMPARE_METHODS = ("full", "zo")


@dataclass
class KernelArguments:
    """What ``llmtune kernel`` computes, how it solves the kernel problem, and where it writes."""

    task: str | None = field(
        default=None,
        metadata={
            "help": "A choice task from tasks.json (sst2, rte, cb, boolq, demo_sst2, ...): its prompt and label words."
        },
    )
    seed: int | list[int] = field(
        default=42,
        metadata={
            "help": "Seed of the k-shot draw, or several (13,21,42,87,100: LM-BFF's and MeZO's five): each seed draws "
            "its own k_shot training and dev sets (llmtune.data.kshot) and gets its own kernels; the test set is the "
            "task's eval split for every seed. results.json gives each seed's dev and test accuracy and their mean "
            "and standard deviation. Also the seed of the compared training runs (compare takes one seed)."
        },
    )
    kernel_formula: str = field(
        default="sgd",
        metadata={
            "help": "sgd: inner products of the label-word logits' Jacobians (the eNTK); signgd: inner products of "
            "their signs; asymmetric_signgd (binary tasks): sign of the training example's Jacobian against the "
            "plain Jacobian of the other, on the difference of the two label-word logits."
        },
    )
    kernel_solver: str = field(
        default="lstsq",
        metadata={
            "help": "lstsq: kernel least squares (kernel_ridge adds a ridge term); logistic: kernel logistic "
            "regression (cross-entropy over the label words); svr: L2-loss kernel SVR. With "
            "kernel_subtract_init they fit the change from the initial output."
        },
    )
    kernel_params: str = field(
        default="all",
        metadata={
            "help": "Parameters the Jacobians are taken over: all; no_embeddings (not the input embedding matrix); "
            "biases (parameters named *bias); lora (a fresh LoRA adapter, lora_rank on lora_target)."
        },
    )
    kernel_batch_size: int = field(
        default=8,
        metadata={
            "help": "Column examples (dev and test) per product with the held training Jacobians, and examples per "
            "forward pass for the initial outputs; the Jacobians themselves are taken one example at a time."
        },
    )
    kernel_block_params: int = field(
        default=20_000_000,
        metadata={
            "help": "Parameters per streamed block (a larger tensor is a block alone). The training examples' "
            "Jacobians of one block are held: about k_shot x classes x classes x kernel_block_params x 4 bytes "
            "(float32; 5.1 GB for 16-shot binary at the default), less the positions where all are zero (most of "
            "the embedding matrix), plus one column batch's kernel_batch_size x classes x kernel_block_params x 4. "
            "Fewer, larger blocks are faster: every block costs each column example a forward and backward pass."
        },
    )
    kernel_dtype: str = field(
        default="float32",
        metadata={
            "help": "Precision of the weights and the Jacobians: float32, bfloat16 or float16 (large models on a "
            "GPU); the kernel's products are always summed in float64."
        },
    )
    kernel_ridge: float = field(
        default=0.0,
        metadata={"help": "lstsq: ridge term lambda x ||K|| (Frobenius norm) added to the kernel's diagonal; 0: none."},
    )
    kernel_c: float = field(
        default=1000.0,
        metadata={
            "help": "logistic and svr: inverse regularisation strength C (as in scikit-learn), on the kernel divided "
            "by its mean diagonal; the default fits the k-shot training set, as fine-tuning does."
        },
    )
    kernel_svr_epsilon: float = field(
        default=0.1, metadata={"help": "svr: width of the loss-free tube around the targets."}
    )
    kernel_subtract_init: bool = field(
        default=False,
        metadata={
            "help": "Fit the targets (+1 gold, -1 others) minus the model's initial label-word logits f0 and add f0 "
            "back to predict: the linearised model's fit. Default false, as LM-Kernel-FT (adjust_for_init): the "
            "kernel alone fits the targets; measured no worse (docs/kernel.md)."
        },
    )
    kernel_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where kernels are cached, keyed by model, task, split, seed, formula and parameters "
            "(default: $LLMTUNE_HOME/kernel_cache). A second run with another solver loads no model; one pass caches "
            "every formula's kernels (the same Jacobians), so another kernel_formula loads none either."
        },
    )
    lora_rank: int = field(default=8, metadata={"help": "kernel_params lora: rank of the adapter."})
    lora_target: str = field(
        default="q_proj,v_proj",
        metadata={"help": "kernel_params lora: linear layers adapted, comma-separated, or all."},
    )
    output_dir: str | None = field(
        default=None, metadata={"help": "Where results go (<output_dir>/<task>/). Default: saves/kernel/<model>."}
    )
    model_id: str | None = field(
        default=None, metadata={"help": "The model's name in result files and tables (default: from the model path)."}
    )
    compare: str | None = field(
        default=None,
        metadata={
            "help": "Also fine-tune the same k-shot split with these finetuning types (full, zo; comma-separated) "
            "through llmtune train, and put their accuracies beside the kernel's."
        },
    )
    compare_config: str | None = field(
        default=None,
        metadata={
            "help": "A YAML file of llmtune train keys for the compared runs (learning_rate, max_steps, ...); a key "
            "named after a method (full:, zo:) holds keys for that method only."
        },
    )
