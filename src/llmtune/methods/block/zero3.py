"""``block`` under DeepSpeed ZeRO-3: the optimizer's partitions follow the active block.

ZeRO-3 builds its flat fp16/fp32 partitions, its gradient buffers and its gradient-reduction hooks for
the parameters that are trainable when the engine is made. BAdam changes which parameters train at
every switch, so after a switch :func:`repartition` builds them again for the new block, with the
same calls (in the same order) that ``DeepSpeedZeroOptimizer_Stage3.__init__`` makes: the old block's
weights stay in their (frozen) partitions, the new block gets fresh fp32 partitions and, with a new
base optimizer, fresh Adam state, as on one process. LLaMA-Factory runs BAdam's layer mode under
ZeRO-3 the same way (the badam package resets the stage-3 bookkeeping at each switch); the calls
follow DeepSpeed's own stage-3 code, which is why the DeepSpeed versions are pinned where this is
tested (``tests/train/test_distributed.py``).

A resumed run starts on the first block; DeepSpeed then loads the optimizer's state, and
:meth:`~llmtune.methods.block.optimizer.BlockOptimizer.load_state_dict` switches to the saved block
(rebuilding the partitions) before DeepSpeed copies the saved fp32 partitions into them. The weights
of the other blocks come back with the module's state (llmtune's checkpoints need
``stage3_gather_16bit_weights_on_model_save``).
"""

from __future__ import annotations

from typing import Any

import torch

from llmtune.errors import ConfigError


def zero3_optimizer(params: list[torch.nn.Parameter]) -> Any | None:
    """The ZeRO-3 optimizer that owns ``params`` (DeepSpeed links every module parameter to it), or None
    before the engine exists."""
    for param in params:
        found = getattr(param, "_z3_optimizer", None)
        if found is not None:
            return found
    return None


# What repartition calls on DeepSpeed's stage-3 optimizer (its private methods, as of the tested 0.19.8).
USED = (
    "_grad_acc_hooks",
    "_leaf_module_hooks",
    "_get_trainable_parameter_groups",
    "_create_fp16_partitions_with_defragmentation",
    "get_param_id",
    "_setup_for_real_optimizer",
    "set_grad_positions",
    "create_reduce_and_remove_grad_hooks",
    "_link_all_hp_params",
    "_get_param_coordinator",
    "_set_fp32_optimizer_param_groups",
)


def check_supported(ds: Any) -> None:
    """Raise a one-line :class:`ConfigError` when ``ds`` lacks what :func:`repartition` calls."""
    missing = [name for name in USED if not hasattr(ds, name)]
    if missing:
        import deepspeed

        raise ConfigError(
            f"deepspeed: finetuning_type: block under ZeRO-3 rebuilds DeepSpeed's partitions at each switch with its "
            f"stage-3 optimizer's own methods, and DeepSpeed {deepspeed.__version__} lacks {', '.join(missing)}; "
            "install the tested version (pip install deepspeed==0.19.8)"
        )


def repartition(ds: Any) -> None:
    """Rebuild ``ds`` (a ``DeepSpeedZeroOptimizer_Stage3``) for the parameters now trainable in its client
    optimizer's ``param_groups``: partitions, fp32 masters, gradient buffers and reduction hooks."""
    for hook in [*ds._grad_acc_hooks, *ds._leaf_module_hooks]:
        hook.remove()
    ds._grad_acc_hooks.clear()
    ds._leaf_module_hooks.clear()
    for name in (
        "fp16_groups",
        "fp16_partitioned_groups",
        "fp16_partitioned_groups_flat",
        "fp16_partitioned_groups_flat_numel",
        "fp16_partitioned_groups_flat_id",
        "groups_padding",
        "fp32_partitioned_groups_flat",
        "next_swappable_fp32_partitioned_groups",
        "sub_group_process_groups",
        "sub_group_partition_counts",
        "partition_size",
    ):
        setattr(ds, name, [])
    ds.sub_group_to_group_id = {}
    ds.trainable_param_groups = ds._get_trainable_parameter_groups()
    ds._create_fp16_partitions_with_defragmentation(ds.trainable_param_groups)
    ds.param_dict, ds.params_already_reduced = {}, {}
    for group in ds.fp16_groups:
        for param in group:
            param_id = ds.get_param_id(param)
            ds.param_dict[param_id] = param
            ds.params_already_reduced[param_id] = False
    ds._setup_for_real_optimizer()
    ds.grad_position = {}
    ds.set_grad_positions()
    ds.is_partition_reduced, ds.is_grad_computed, ds.averaged_gradients = {}, {}, {}
    ds.create_reduce_and_remove_grad_hooks()
    ds.debug_fp16_grads = [{} for _ in ds.fp16_groups]
    ds._link_all_hp_params()
    # The recorded order of parameter fetches: the backward now stops at another layer.
    ds._get_param_coordinator()._invalidate_trace()
