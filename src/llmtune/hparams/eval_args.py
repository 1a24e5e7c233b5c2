"""Arguments of ``llmtune eval``: which task, how to score it, and the MT-bench judge.

The model keys are :class:`~llmtune.hparams.model_args.ModelArguments`' and a few data keys are
:class:`~llmtune.hparams.data_args.DataArguments`' (``EVAL_DATA_KEYS``); everything else an
evaluation needs is here. The judge's API key is never a config value: ``judge_api_key_env``
names the environment variable that holds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# The DataArguments keys that mean the same in an evaluation.
EVAL_DATA_KEYS = ("template", "dataset_dir", "max_samples", "cutoff_len", "default_system", "skip_bad_rows")

TASK_FORMATS = ("auto", "plain", "chat")


@dataclass
class EvalArguments:
    """What ``llmtune eval`` scores and where it writes the results."""

    task: str | None = field(
        default=None,
        metadata={
            "help": "What to evaluate: a task from tasks.json (sst2, rte, cb, boolq, wic, wsc, copa, multirc, squad, "
            "drop, demo_sst2, ...), several comma-separated, or mt_bench."
        },
    )
    output_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where results go. Default: <run dir>/eval when evaluating a training run, else saves/eval/<model>."
        },
    )
    num_demos: int = field(
        default=0,
        metadata={"help": "In-context demonstrations before each prompt, drawn from the task's train split with seed."},
    )
    eval_split: str = field(
        default="eval", metadata={"help": "Which split of the task to score: eval (validation) or train."}
    )
    task_file: str | None = field(
        default=None,
        metadata={"help": "A local file or folder to score instead of the task's declared source (same columns)."},
    )
    task_format: str = field(
        default="auto",
        metadata={
            "help": "How prompts reach the model: plain (MeZO's text), chat (the user turn of `template`, as SFT on "
            "the task trained it), or auto: chat for a run trained with SFT on a task, else plain."
        },
    )
    length_normalization: bool = field(
        default=True,
        metadata={"help": "Rank options by mean log-probability per token (true) or by their sum (false)."},
    )
    eval_batch_size: int = field(
        default=8, metadata={"help": "Examples (with all their options) or MT-bench questions per forward pass."}
    )
    max_new_tokens: int | None = field(
        default=None,
        metadata={"help": "Tokens generated per answer: default 32 for QA tasks (squad, drop), 1024 for mt_bench."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of the demonstration draws and of sampled MT-bench answers."})
    mt_bench_dir: str | None = field(
        default=None,
        metadata={
            "help": "A folder in FastChat's layout: question.jsonl, reference_answer/gpt-4.jsonl, and optionally "
            "judge_prompts.jsonl. Default: the questions from mt_bench_hub_id."
        },
    )
    mt_bench_hub_id: str = field(
        default="HuggingFaceH4/mt_bench_prompts",
        metadata={"help": "Hub dataset with the 80 MT-bench questions and references, used without mt_bench_dir."},
    )
    category_temperatures: bool = field(
        default=False,
        metadata={
            "help": "Sample MT-bench answers at FastChat's per-category temperatures (writing 0.7, stem 0.1, ...) "
            "instead of greedy decoding."
        },
    )
    model_id: str | None = field(
        default=None,
        metadata={"help": "Name of the answering model in MT-bench files and tables (default: from the model path)."},
    )
    judge_model: str | None = field(
        default=None,
        metadata={
            "help": "Judge model name sent to the endpoint (e.g. gpt-4). Without it, answers are only generated."
        },
    )
    judge_api_base: str = field(
        default="https://api.openai.com/v1",
        metadata={
            "help": "Base URL of an OpenAI-compatible chat-completions endpoint: OpenAI, vLLM, llama.cpp's "
            "llama-server (http://127.0.0.1:8080/v1), ..."
        },
    )
    judge_api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={
            "help": "NAME of the environment variable holding the judge's API key (the key itself is never a config "
            "value); unset variable: no key is sent, as local servers expect."
        },
    )
    judge_runs: int = field(
        default=1,
        metadata={"help": "Ask for every judgment this many times; results give the median and spread over runs."},
    )
    judge_concurrency: int = field(default=4, metadata={"help": "Judge requests in flight at once."})
    judge_max_retries: int = field(
        default=3,
        metadata={"help": "Retries of a failed judge request (with exponential backoff) before it counts as missing."},
    )
    judge_backoff_seconds: float = field(
        default=2.0, metadata={"help": "Wait before the first retry; doubled after each further failure."}
    )
    judge_timeout_seconds: float = field(default=120.0, metadata={"help": "Timeout of one judge request."})
    judge_temperature: float = field(default=0.0, metadata={"help": "Sampling temperature asked of the judge."})
    judge_max_tokens: int = field(default=2048, metadata={"help": "Longest judgment the judge may write."})
    compare: str | None = field(
        default=None,
        metadata={
            "help": "Put several evaluated runs side by side (MT-bench): folders with results, comma-separated or "
            "as `--compare run_a run_b`."
        },
    )
