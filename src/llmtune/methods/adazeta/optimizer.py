"""``AdaZetaOptimizer``: MeZO's ZO-SGD with a query count that follows the epoch, split across processes.

It is :class:`~llmtune.methods.zo.optimizer.ZerothOrderSGD` (the same perturbation stream,
estimate, update, divergence guard and checkpointed seed position) with three additions:

* the number of queries ``Q`` of a step is ``schedule.queries(epoch)``, set by :meth:`start_step`;
* with ``world_size`` processes, process ``rank`` evaluates queries ``rank, rank + N, ...`` on the
  same batch, and :meth:`step` all-gathers the projected gradients, so every process applies the
  update of all ``Q`` queries (AdaZeta's distributed variant): the result equals one process
  evaluating every query with the same seeds;
* the schedule (``alpha``, ``beta``, ``Q_max``) is part of ``state_dict()``, so a resumed run keeps
  the schedule it started with.

Usable without a Trainer::

    optimizer = AdaZetaOptimizer(params, schedule=QuerySchedule(0.85, 0.62, 15), lr=1e-4, eps=1e-3)
    for epoch, batch in batches:
        optimizer.start_step(epoch)
        for query in optimizer.local_queries():
            optimizer.estimate(model, lambda: model(**batch).loss, query)
        optimizer.step()
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from llmtune.methods.adazeta.schedule import QuerySchedule
from llmtune.methods.zo.optimizer import ZerothOrderSGD, _Pending


class AdaZetaOptimizer(ZerothOrderSGD):
    """ZO-SGD with ``Q = schedule.queries(epoch)`` queries per step (the update averages them).

    Args:
        params: the trainable parameters or parameter groups (float32, or half precision: stochastic rounding).
        schedule: the query schedule.
        rank, world_size: this process and the number of processes sharing the queries
            (default: from ``torch.distributed`` when it is initialised, else 0 and 1).
        Other arguments as :class:`~llmtune.methods.zo.optimizer.ZerothOrderSGD`.
    """

    def __init__(
        self,
        params,
        schedule: QuerySchedule,
        lr: float = 1e-4,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
        max_grad_ratio: float = 50.0,
        rank: int | None = None,
        world_size: int | None = None,
        **kwargs,
    ):
        super().__init__(
            params,
            lr=lr,
            eps=eps,
            weight_decay=weight_decay,
            num_queries=schedule.queries(0),
            seed=seed,
            max_grad_ratio=max_grad_ratio,
            **kwargs,
        )
        self.schedule = schedule
        distributed = dist.is_available() and dist.is_initialized()
        self.world_size = int(world_size if world_size is not None else dist.get_world_size() if distributed else 1)
        self.rank = int(rank if rank is not None else dist.get_rank() if distributed else 0)
        self.epoch = 0

    # -- the schedule -------------------------------------------------------------------------

    @property
    def step_started(self) -> bool:
        """Whether an estimate was already made for the current step (its ``Q`` is then fixed)."""
        return self._pending.estimates > 0

    def start_step(self, epoch: int) -> int:
        """Set the query count of the coming step from ``epoch``; returns it. No-op once the step has estimates."""
        if not self.step_started:
            self.epoch = int(epoch)
            self.num_queries = self.schedule.queries(self.epoch)
            self._pending = _Pending([0.0] * self.num_queries)
        return self.num_queries

    def local_queries(self) -> range:
        """The queries this process evaluates: ``rank, rank + world_size, ... < Q`` (maybe none)."""
        return range(self.rank, self.num_queries, self.world_size)

    # -- the update -----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        """All-gather the projected gradients of every process's queries, then ZO-SGD's update of all ``Q``."""
        if self.world_size > 1:
            self._gather_queries()
        # ZerothOrderSGD.step then averages the (now identical) estimates across processes: a no-op.
        super().step(closure)

    def _gather_queries(self) -> None:
        pending, queries = self._pending, self.num_queries
        mine = set(self.local_queries())
        if pending.queries_seen != mine:
            raise RuntimeError(
                f"rank {self.rank} must estimate queries {sorted(mine)} before step(); got {sorted(pending.queries_seen)}"
            )
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
        local = torch.zeros(queries + 2, dtype=torch.float64, device=device)
        for query in mine:
            local[query] = pending.grads[query]
        local[queries], local[queries + 1] = pending.loss_plus, pending.loss_minus  # sums of L/Q over my queries
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local)
        rows = [row.tolist() for row in gathered]
        pending.grads = [rows[query % self.world_size][query] for query in range(queries)]
        pending.loss_plus = sum(row[queries] for row in rows)
        pending.loss_minus = sum(row[queries + 1] for row in rows)
        pending.queries_seen = set(range(queries))

    # -- checkpointing --------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """ZO-SGD's state (seed stream position, guard) plus ``"adazeta"``: the schedule and the current epoch."""
        state = super().state_dict()
        state["adazeta"] = {**self.schedule.to_dict(), "epoch": self.epoch, "num_queries": self.num_queries}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        saved = state_dict.pop("adazeta", None)
        super().load_state_dict(state_dict)
        if saved is not None:
            self.schedule = QuerySchedule(float(saved["alpha"]), float(saved["beta"]), int(saved["max_queries"]))
            self.epoch = int(saved["epoch"])
            self.num_queries = self.schedule.queries(self.epoch)
            self._pending = _Pending([0.0] * self.num_queries)
