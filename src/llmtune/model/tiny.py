"""The embedded tiny model ``llmtune/tiny-llama``: a Llama built locally, for tests and demos.

Nothing is downloaded. On first use a ``LlamaForCausalLM`` (fixed seed, briefly pretrained on
the demo texts: see :func:`pretrain_tiny_llama`) and a byte-level BPE tokenizer trained on the
demo datasets are saved, with
``save_pretrained`` (safetensors), under ``$LLMTUNE_HOME/models/tiny-llama-v3``
(``LLMTUNE_HOME`` defaults to ``~/.cache/llmtune``). Every build gives the same files.

Shape: hidden 64, 2 layers, 4 attention heads sharing 2 key/value heads (grouped-query
attention, as in Llama-3), MLP 128, 512 positions, about 200k parameters in float32. The
input and output embeddings are *untied*, as in Llama-2/3-8B, so that methods which freeze,
partition or adapt ``embed_tokens`` and ``lm_head`` behave on the tiny model as on real ones.

The tokenizer knows the special tokens of every chat template llmtune ships (chatml, Llama-2,
Llama-3) and carries a chatml ``chat_template``. It adds no ``<s>`` by itself (templates
write their own), and splits digits one by one so arithmetic stays learnable.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from llmtune.data.demo import demo_texts

TINY_MODEL_NAME = "llmtune/tiny-llama"
TINY_MODEL_VERSION = "tiny-llama-v3"  # bump when the recipe below changes, so old caches are not reused
TINY_SEED = 0
PRETRAIN_STEPS = 300  # next-token prediction on the demo texts, ~4 s on 2 CPU cores
TINY_VOCAB_SIZE = 1000
BUILD_MARKER = "llmtune_build.json"  # written last: a folder without it is an unfinished build

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
CHAT_SPECIAL_TOKENS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|begin_of_text|>",
    "[INST]",
    "[/INST]",
)
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD, *CHAT_SPECIAL_TOKENS)  # ids 0..11 in this order

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Text that chat templates write around the demo rows; trained on (repeated, so it merges
# early) to keep rendered prompts short.
TEMPLATE_TEXTS = (
    "system\n",
    "user\n",
    "assistant\n",
    "Human: ",
    "Assistant: ",
    "<<SYS>>\n",
    "\n<</SYS>>\n\n",
    "### Instruction:\n",
    "### Input:\n",
    "### Response:\n",
    "You are a helpful assistant.",
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.",
)
TEMPLATE_REPEATS = 8

_build_lock = threading.Lock()  # weight init uses torch's global RNG: one build per process at a time


def llmtune_home() -> Path:
    """``$LLMTUNE_HOME`` or ``~/.cache/llmtune``: where llmtune caches what it builds."""
    return Path(os.environ.get("LLMTUNE_HOME") or Path.home() / ".cache" / "llmtune").expanduser()


def tiny_model_dir() -> Path:
    """The folder the tiny model is cached in (it may not exist yet)."""
    return llmtune_home() / "models" / TINY_MODEL_VERSION


def is_complete(folder: Path) -> bool:
    """True when ``folder`` holds a finished tiny-model build."""
    return (folder / BUILD_MARKER).is_file()


def ensure_tiny_model() -> Path:
    """Return the cached tiny-model folder, building it first if it is missing.

    The build goes into a temporary sibling folder that is renamed into place, so a reader
    never sees half a model; when two processes build at once, the first rename wins and
    the other discards its copy (both builds are identical).
    """
    target = tiny_model_dir()
    if is_complete(target):
        return target
    with _build_lock:
        if is_complete(target):
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{TINY_MODEL_VERSION}.", dir=target.parent))
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
        try:
            build_tiny_model(staging)
            _move_into_place(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; keep a complete ``target`` another process made first."""
    if target.exists() and not is_complete(target):
        # Left over from an interrupted copy: set it aside first, since rename needs an empty target.
        stale = Path(tempfile.mkdtemp(prefix=f".{TINY_MODEL_VERSION}.stale.", dir=target.parent))
        try:
            os.replace(target, stale / "old")
        except FileNotFoundError:
            pass  # another process moved it already
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.rename(staging, target)
    except OSError:
        if not is_complete(target):
            raise


def build_tiny_model(folder: Path) -> None:
    """Build the tiny tokenizer and model and save both into ``folder`` (which must exist)."""
    folder = Path(folder)
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_llama(tokenizer)
    pretrain_tiny_llama(model, tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    info = {"name": TINY_MODEL_NAME, "version": TINY_MODEL_VERSION, "seed": TINY_SEED, "pretrain_steps": PRETRAIN_STEPS}
    (folder / BUILD_MARKER).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (about 1000 tokens) trained on the demo texts."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE,
        min_frequency=1,  # the demo corpus is small: keep every merge it offers
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([*demo_texts(), *TEMPLATE_TEXTS * TEMPLATE_REPEATS], trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        additional_special_tokens=list(CHAT_SPECIAL_TOKENS),
        clean_up_tokenization_spaces=False,
        model_max_length=512,
    )
    wrapped.chat_template = CHATML_TEMPLATE
    return wrapped


def pretrain_tiny_llama(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    steps: int | None = None,
    seq_len: int = 64,
    batch_size: int = 16,
) -> None:
    """Pretrain ``model`` in place: next-token prediction on every demo string as its own document.

    The model learns the words, digits and letters of the demo data but not the tasks (no prompt
    is ever followed by its answer), so fine-tuning still has everything to learn, while adapters
    such as LoRA get a base with features to steer, as on a real pretrained model. A random base
    gives LoRA nothing: its frozen random head caps what the adapters can reach.
    """
    steps = PRETRAIN_STEPS if steps is None else steps
    eos = tokenizer.eos_token_id
    stream = [i for text in demo_texts() for i in (*tokenizer(text, add_special_tokens=False)["input_ids"], eos)]
    tokens = torch.tensor(stream)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        model.train()
        for _ in range(steps):
            starts = torch.randint(0, len(stream) - seq_len - 1, (batch_size,))
            batch = torch.stack([tokens[s : s + seq_len] for s in starts.tolist()])
            model(input_ids=batch, labels=batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    model.eval()


def build_tiny_llama(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A randomly initialised 2-layer Llama sized for ``tokenizer``; the same weights every call."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        initializer_range=0.1,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    with torch.random.fork_rng(devices=[]):  # seed locally; leave the caller's RNG untouched
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(config)
    # Generation stops at the end token of any template: </s>, <|im_end|> or <|eot_id|>.
    stop_ids = [tokenizer.eos_token_id, *tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|eot_id|>"])]
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id
    )
    return model
