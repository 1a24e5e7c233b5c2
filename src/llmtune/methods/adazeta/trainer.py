"""``AdaZetaTrainer``: the ``zo`` trainer with AdaZeta's query schedule and query-parallel processes.

It subclasses :class:`~llmtune.methods.zo.trainer.ZerothOrderTrainer` (eval-mode forwards, no
gradient clipping, the ``zo_*`` logs, the divergence monitor) and changes three hooks:

* ``create_optimizer`` builds an :class:`~llmtune.methods.adazeta.optimizer.AdaZetaOptimizer` whose
  schedule is derived from the run's length in epochs (``set_initial_training_values``);
* ``training_step`` sets the step's query count from the epoch on the first micro-batch of each
  optimizer step, and estimates this process's share of the queries on every micro-batch (gradient
  accumulation: the same perturbations on each micro-batch, the projected gradients summed over
  micro-batch shares of the loss, i.e. averaged);
* ``get_train_dataloader``: under torchrun every process reads the same batches (queries, not data,
  are split across processes, as in the reference's distributed trainer).
"""

from __future__ import annotations

import logging
import math
from functools import partial

import torch
import torch.distributed as dist

from llmtune.methods.adazeta.config import AdaZetaArguments
from llmtune.methods.adazeta.optimizer import AdaZetaOptimizer
from llmtune.methods.adazeta.schedule import QuerySchedule
from llmtune.methods.zo.trainer import ZerothOrderTrainer, _parameter_groups

logger = logging.getLogger("llmtune")


def trainer_kwargs(args) -> dict:
    """The registry's ``trainer_kwargs``: the options reach the trainer as constructor arguments."""
    return {"zo_arguments": args.methods["zo"], "adazeta_arguments": args.methods["adazeta"]}


class AdaZetaTrainer(ZerothOrderTrainer):
    """Zeroth-order training of tensor-train adapters with AdaZeta's adaptive query schedule."""

    def __init__(self, *args, adazeta_arguments: AdaZetaArguments | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.adazeta_args = adazeta_arguments or AdaZetaArguments()
        self.total_epochs: float = float(self.args.num_train_epochs)
        if self.args.world_size > 1:
            # Query-parallel: every process reads the same batch (get_train_dataloader), so a process's own
            # label-token count is the batch's; summing it over processes would scale the loss by 1 / N.
            self.args.average_tokens_across_devices = False

    def set_initial_training_values(self, args, dataloader):
        values = super().set_initial_training_values(args, dataloader)
        num_update_steps_per_epoch, max_steps = values[1], values[-1]
        self.total_epochs = max_steps / max(num_update_steps_per_epoch, 1)
        return values

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            schedule = QuerySchedule.from_arguments(self.adazeta_args, self.total_epochs)
            self.optimizer = self.zo_optimizer = AdaZetaOptimizer(
                _parameter_groups(self, model or self.model),
                schedule=schedule,
                lr=self.args.learning_rate,
                eps=self.zo_args.zo_eps,
                seed=self.args.seed,
                max_grad_ratio=self.zo_args.grad_ratio_guard,
                cache_directions=self.zo_args.zo_cache_directions,
            )
            logger.info(
                "adazeta: queries per step Q(e) = min(max(int(%g * e^%.4f), 1), %d) over %.2f epochs: %s",
                schedule.alpha,
                schedule.beta,
                schedule.max_queries,
                self.total_epochs,
                _schedule_preview(schedule, self.total_epochs),
            )
        return self.optimizer

    def _start_queries(self, optimizer) -> None:
        optimizer.start_step(math.floor(self.state.epoch or 0))  # Q from the epoch's schedule

    def _queries(self, optimizer):
        return optimizer.local_queries()  # this process's share of the step's queries

    def _mean_loss(self, estimates) -> float:
        local_sum = sum((plus + minus) / 2 for plus, minus, _ in estimates)
        return _mean_over_processes(local_sum, len(estimates))  # the mean over all queries

    def get_train_dataloader(self):
        if self.args.world_size <= 1:
            return super().get_train_dataloader()
        # Query-parallel: the dataloader is prepared as for one process, so every rank reads every batch.
        self.accelerator.prepare = partial(_prepare_unsharded, self.accelerator)
        try:
            return super().get_train_dataloader()
        finally:
            del self.accelerator.prepare  # the class's own method again


def _prepare_unsharded(accelerator, dataloader):
    from accelerate.data_loader import prepare_data_loader

    return prepare_data_loader(
        dataloader,
        accelerator.device,
        num_processes=1,
        process_index=0,
        put_on_device=True,
        rng_types=accelerator.rng_types.copy(),
        use_seedable_sampler=accelerator.use_seedable_sampler,
        data_seed=accelerator.dataloader_config.data_seed,
        non_blocking=accelerator.non_blocking,
    )


def _mean_over_processes(local_sum: float, local_count: int) -> float:
    """The mean of the query losses of every process (a process may have no query in a step)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return local_sum / max(local_count, 1)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    totals = torch.tensor([local_sum, float(local_count)], dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    return float(totals[0] / totals[1])


def _schedule_preview(schedule: QuerySchedule, total_epochs: float) -> str:
    last = max(math.ceil(total_epochs) - 1, 0)
    epochs = sorted({0, last // 4, last // 2, (3 * last) // 4, last})
    return ", ".join(f"epoch {e}: {schedule.queries(e)}" for e in epochs)
