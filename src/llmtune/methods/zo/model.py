"""Prepare a model for ``finetuning_type: zo``: choose what is trained (``zo_target``)."""

from __future__ import annotations

from typing import Any

import torch

from llmtune.errors import ConfigError
from llmtune.methods.lora.model import prepare_lora
from llmtune.model.loader import compute_dtype, set_training_dtypes

# The prepared model carries its zo options here, for the trainer (as PEFT models carry ``peft_config``).


def prepare_zo(model: Any, args: Any) -> Any:
    """Return ``model`` ready for zeroth-order training (the options reach the trainer through ``trainer_kwargs``).

    ``zo_target: full`` trains every weight; ``lora`` wraps the model with LoRA adapters exactly as
    ``finetuning_type: lora`` does (the ``lora_*`` options); ``prefix`` adds ``zo_prefix_tokens``
    PEFT prefix-tuning tokens initialised from the model's own keys and values of random vocabulary
    tokens (MeZO's ``init_by_real_act``). The dtypes follow :func:`set_zo_dtypes`.
    """
    zo = args.methods["zo"]
    check_zo_run(args)  # parsing ran it already; again for models prepared by hand
    if zo.zo_target == "full":
        for param in model.parameters():
            param.requires_grad_(True)
    elif zo.zo_target == "lora":
        model = prepare_lora(model, args)
    else:
        model = prepare_prefix(model, zo.zo_prefix_tokens)
    set_zo_dtypes(model, args)
    return model


def set_zo_dtypes(model: Any, args: Any) -> None:
    """Every floating-point parameter in the compute dtype (``bf16``/``fp16``, else float32), trainable
    ones included, as MeZO keeps OPT's weights in fp16: the optimizer then rounds each update
    stochastically (:mod:`~llmtune.methods.zo.rounding`). With ``zo_master_weights: true`` the trainable
    parameters are float32 instead (the frozen ones stay in the compute dtype)."""
    dtype = compute_dtype(args.training.bf16, args.training.fp16)
    if args.methods["zo"].zo_master_weights:
        set_training_dtypes(model, dtype)
        return
    for param in model.parameters():
        if param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)


def check_zo_run(args: Any) -> None:
    """The registry's ``check`` of ``zo``: option combinations it cannot train, in one line before any model
    loads (DeepSpeed and FSDP are refused by the compatibility table)."""
    zo = args.methods["zo"]
    bits = args.model.quantization_bit
    if bits and zo.zo_target == "full":
        raise ConfigError(
            f"quantization_bit: {bits} cannot be used with zo_target: full: zo would perturb and update the "
            f"quantised base weights, which are {bits}-bit integers; use zo_target: lora or prefix"
        )
    if zo.zo_target == "lora" and args.methods["lora"].use_dora:
        raise ConfigError(
            "use_dora: true is not supported with zo_target: lora (DoRA reads its weights outside the adapter "
            "modules' forward, where zo's perturbation does not reach); set use_dora: false"
        )


def prepare_prefix(model: Any, num_tokens: int) -> Any:
    """Wrap ``model`` with PEFT prefix tuning, the prefix set to real keys and values (MeZO's init).

    The prefix of layer ``l`` is the key/value cache the model itself computes for ``num_tokens``
    random vocabulary tokens, so the model starts near its own behaviour instead of attending to
    N(0, 1) noise.
    """
    from peft import PrefixTuningConfig, get_peft_model

    peft_model = get_peft_model(model, PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=num_tokens))
    config = peft_model.peft_config[peft_model.active_adapter]
    embedding = peft_model.prompt_encoder[peft_model.active_adapter].embedding
    vocab = model.get_input_embeddings().weight.shape[0]
    tokens = torch.randint(0, vocab, (1, num_tokens), device=embedding.weight.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        outputs = model(input_ids=tokens, use_cache=True)
        cache = getattr(outputs, "cache", None)  # transformers >= 5.x; past_key_values before
        cache = outputs.past_key_values if cache is None else cache
        layers = []
        for layer in range(config.num_layers):
            keys, values = cache.layers[layer].keys, cache.layers[layer].values  # [1, heads, n, head_dim]
            layers += [keys[0], values[0]]
        stacked = torch.stack(layers)  # [layers * 2, heads, n, head_dim]
        rows = stacked.permute(2, 0, 1, 3).reshape(num_tokens, -1)
        if rows.shape != embedding.weight.shape:
            raise ConfigError(
                f"zo_target: prefix: this model's cache has shape {tuple(rows.shape)} per prefix, PEFT expects "
                f"{tuple(embedding.weight.shape)}; use zo_target: lora"
            )
        embedding.weight.copy_(rows)
    model.train(was_training)
    return peft_model
