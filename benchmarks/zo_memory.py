"""Peak memory and step time of ``zo`` (MeZO) against inference, ``zo`` with LoRA and full AdamW fine-tuning.

Each configuration runs in a fresh Python process on the CPU: a randomly initialised Llama-shaped
model (default 134M parameters: hidden 768, 12 layers, vocab 32000, untied head) in float32, the
same batch of random tokens every step, the model and optimizer llmtune builds for that
configuration (``prepare_zo`` / ``prepare_full`` and ``build_optimizer`` / AdamW). Reported:

* the weights' bytes and, for ``zo``, the bytes a step allocates beyond them (nothing is kept:
  the perturbation is regenerated from its seed);
* peak resident memory during the measured steps (``VmHWM``, reset after the model and batch are
  built and one warm-up step has run) minus the resident memory before the model was built: the
  model, optimizer state, activations and allocator slack of a step, without the interpreter and
  libraries; and its ratio to inference's;
* the median seconds per step (inference: one forward; zo: two forwards and the update).

    python benchmarks/zo_memory.py                  # the table (markdown) on stdout
    python benchmarks/zo_memory.py --layers 4       # a smaller model
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = ("inference (forward only)", "zo (full)", "zo + LoRA r=8 q,v", "full AdamW (backprop)")
MIB = 2**20


def model_config(layers: int, hidden: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=hidden,
        intermediate_size=hidden * 8 // 3,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        num_key_value_heads=hidden // 64,
        vocab_size=32000,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )


def rss_bytes(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (the peak since the last reset) of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM restarts from the current RSS


def llmtune_args(folder: str, finetuning_type: str, extra: dict):
    from llmtune.hparams import parse_args

    config = {"model_name_or_path": folder, "finetuning_type": finetuning_type, "output_dir": folder, **extra}
    return parse_args(config, for_training=False)


def build(name: str, model, folder: str):
    """Prepare ``model`` as llmtune does for configuration ``name``; return ``(model, step)``."""
    import torch

    from llmtune.methods import get_method
    from llmtune.methods.zo.trainer import build_optimizer

    if name.startswith("inference"):
        model.eval()

        def step(batch):
            with torch.no_grad():
                model(**batch)

        return model, step
    if name.startswith("zo"):
        extra = {"zo_target": "lora", "lora_rank": 8, "lora_target": "q_proj,v_proj"} if "LoRA" in name else {}
        args = llmtune_args(folder, "zo", extra)
        model = get_method("zo").prepare_fn()(model, args).eval()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = build_optimizer(args.methods["zo"], params, lr=1e-6, seed=0)

        def step(batch):
            optimizer.estimate(model, lambda: model(**batch).loss)
            optimizer.step()

        return model, step
    args = llmtune_args(folder, "full", {})
    model = get_method("full").prepare_fn()(model, args).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(batch):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step


def run_one(name: str, layers: int, hidden: int, batch: int, length: int, steps: int) -> dict:
    """Run configuration ``name`` for one warm-up step and ``steps`` measured steps in this process."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    before_model = rss_bytes("VmRSS")
    config = model_config(layers, hidden)
    folder = tempfile.mkdtemp()
    config.save_pretrained(folder)
    model = LlamaForCausalLM(config)
    model.config.use_cache = False
    model, step = build(name, model, folder)
    ids = torch.randint(0, config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(1))
    batch_inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    step(batch_inputs)  # warm-up: optimizer state, allocator pools
    reset_peak()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step(batch_inputs)
        seconds.append(time.perf_counter() - start)
    return {
        "name": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad and not name.startswith("inf")),
        "weights_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "largest_tensor_bytes": max(p.numel() * p.element_size() for p in model.parameters()),
        "peak_rise_bytes": rss_bytes("VmHWM") - before_model,
        "step_seconds": statistics.median(seconds),
    }


def table(results: list[dict], args: argparse.Namespace) -> str:
    first = results[0]
    inference = first["peak_rise_bytes"]
    lines = [
        f"Llama-shaped, hidden {args.hidden}, {args.layers} layers, vocab 32000, untied head: "
        f"{first['parameters'] / 1e6:.0f}M parameters, {first['weights_bytes'] / MIB:.0f} MiB of float32 weights "
        f"(largest tensor {first['largest_tensor_bytes'] / MIB:.0f} MiB); batch {args.batch} x {args.length} tokens; "
        f"median of {args.steps} steps after one warm-up step; CPU.",
        "",
        "| configuration | trainable parameters | peak memory rise (MiB) | x inference | s/step |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        trainable = f"{r['trainable'] / 1e6:.2f}M" if r["trainable"] else "-"
        lines.append(
            f"| {r['name']} | {trainable} | {r['peak_rise_bytes'] / MIB:.0f} | "
            f"{r['peak_rise_bytes'] / inference:.2f} | {r['step_seconds']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # run one configuration (in a child process)
    args = parser.parse_args()
    sizes = ("layers", "hidden", "batch", "length", "steps")
    if args.one:
        print(json.dumps(run_one(args.one, *(getattr(args, k) for k in sizes))))
        return
    results = []
    for name in CONFIGS:
        cmd = [sys.executable, __file__, "--one", name, *[f"--{k}={getattr(args, k)}" for k in sizes]]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=Path(__file__).parents[1])
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"done: {name}", file=sys.stderr)
    print(table(results, args))


if __name__ == "__main__":
    main()
