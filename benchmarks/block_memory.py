"""Memory and step time of BAdam (``block``, ``sparse``) against full AdamW and LoRA, with the estimate.

Each configuration runs in a fresh Python process: a randomly initialised Llama (default about 31M
parameters) trains a few steps on random tokens with the optimizer llmtune would build. Reported:

* measured model states, counted tensor by tensor: weights; the gradients alive after backward
  (dense ``.grad`` tensors plus ``sparse``'s compact buffers); the optimizer state at its peak (moments,
  fp32 masters and, for ``block`` with bf16 weights, the masters' fp32 gradients, which exist while the
  base optimizer steps);
* ``llmtune estimate``'s figure for the same three, from the model's config alone;
* how far the process's peak resident memory (``ru_maxrss``) rose above what it was before the model
  was built (activations and allocator slack included), and the median seconds per step.

    python benchmarks/block_memory.py                 # the table (markdown) on stdout
    python benchmarks/block_memory.py --layers 4      # a smaller model
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {  # name -> (finetuning_type, weight dtype, extra llmtune options)
    "full AdamW": ("full", "float32", {}),
    "LoRA r=8, all linear": ("lora", "float32", {}),
    "block, fp32 weights": ("block", "float32", {}),
    "block, bf16 weights": ("block", "bfloat16", {}),
    "sparse 5%, bf16 weights": ("sparse", "bfloat16", {"badam_update_ratio": 0.05}),
}
MIB = 2**20


def model_config(layers: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=512,
        intermediate_size=1408,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=8192,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )


def llmtune_args(finetuning_type: str, dtype: str, extra: dict, folder: str, batch: int, length: int):
    from llmtune.hparams import parse_args

    config = {
        "model_name_or_path": folder,
        "finetuning_type": finetuning_type,
        "per_device_train_batch_size": batch,
        "cutoff_len": length,
        "learning_rate": 1e-4,
        "badam_switch_interval": 1000,
        "output_dir": os.path.join(folder, "out"),
        **extra,
    }
    args = parse_args(config, for_training=False)
    args.training.bf16 = dtype == "bfloat16"  # as on a GPU; this CPU process only counts bytes
    return args


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def run_one(name: str, layers: int, batch: int, length: int, steps: int) -> dict:
    """Train ``steps`` steps of configuration ``name`` in this process and measure it."""
    import torch
    from transformers import LlamaForCausalLM

    from llmtune.methods import get_method
    from llmtune.methods.block.model import badam_setup
    from llmtune.train.estimate import estimate_memory

    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.manual_seed(0)
    finetuning_type, dtype, extra = CONFIGS[name]
    config = model_config(layers)
    folder = tempfile.mkdtemp()
    config.save_pretrained(folder)
    args = llmtune_args(finetuning_type, dtype, extra, folder, batch, length)
    estimate = estimate_memory(args, config)

    model = LlamaForCausalLM(config)
    model.config.use_cache = False
    model = get_method(finetuning_type).prepare_fn()(model, args)
    if finetuning_type in ("block", "sparse"):
        optimizer = get_method(finetuning_type).trainer_class().build_optimizer(badam_setup(model), args.training)
    else:
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    peak = {"optimizer": 0}
    if finetuning_type == "block":  # count while the base optimizer steps: the masters' fp32 gradients exist then
        base_step = optimizer.base.step

        def counted_step(*a, **k):
            result = base_step(*a, **k)
            masters = [m for _, m in optimizer._masters]
            peak["optimizer"] = max(
                peak["optimizer"], optimizer.optimizer_state_bytes() + tensor_bytes(m.grad for m in masters)
            )
            return result

        optimizer.base.step = counted_step
    generator = torch.Generator().manual_seed(1)
    seconds, gradients = [], 0
    for _ in range(steps):
        ids = torch.randint(0, config.vocab_size, (batch, length), generator=generator)
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        compact = [s.get("grad") for s in optimizer.state.values()] if finetuning_type == "sparse" else []
        gradients = max(gradients, tensor_bytes([p.grad for p in model.parameters()] + compact))
        optimizer.step()
        optimizer.zero_grad()
        seconds.append(time.perf_counter() - start)
        if hasattr(optimizer, "optimizer_state_bytes"):
            held = optimizer.optimizer_state_bytes()
        else:
            held = tensor_bytes(v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
        peak["optimizer"] = max(peak["optimizer"], held)
    weights = tensor_bytes(model.parameters())
    return {
        "name": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "measured": {"weights": weights, "gradients": gradients, "optimizer": peak["optimizer"]},
        "estimated": {"weights": estimate.weights, "gradients": estimate.gradients, "optimizer": estimate.optimizer},
        "peak_rss_rise_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - start_rss,
        "step_seconds": statistics.median(seconds[1:] or seconds),
    }


def table(results: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"Llama with hidden 512, {args.layers} layers, vocab 8192 ({results[0]['parameters'] / 1e6:.1f}M parameters); "
        f"batch {args.batch} x {args.length} tokens; {args.steps} steps; MiB.",
        "",
        "| configuration | weights | gradients | optimizer state | model states (estimate) | peak RSS rise | s/step |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        m, e = r["measured"], r["estimated"]
        total, predicted = sum(m.values()), sum(e.values())
        lines.append(
            f"| {r['name']} | {m['weights'] / MIB:.1f} | {m['gradients'] / MIB:.1f} | {m['optimizer'] / MIB:.1f} | "
            f"{total / MIB:.1f} ({predicted / MIB:.1f}) | {r['peak_rss_rise_bytes'] / MIB:.0f} | {r['step_seconds']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one configuration (in a child process)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.layers, args.batch, args.length, args.steps)))
        return
    results = []
    for name in CONFIGS:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            name,
            *[f"--{k}={getattr(args, k)}" for k in ("layers", "batch", "length", "steps")],
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1])
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"done: {name}", file=sys.stderr)
    print(table(results, args))


if __name__ == "__main__":
    main()
