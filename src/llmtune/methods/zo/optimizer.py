"""MeZO's SPSA estimate and ZO-SGD update (``zo_optimizer: sgd``); ``adamu.py`` builds ZO-AdaMU on it.

The optimizers are plain ``torch.optim.Optimizer``s, usable without a Trainer::

    optimizer = ZerothOrderSGD(trainable_params, lr=1e-6, eps=1e-3, seed=0)
    for batch in batches:
        optimizer.estimate(model, lambda: model(**batch).loss)  # two forward passes, no backward
        optimizer.step()                                        # the update from the projected gradient

``estimate`` may be called several times before ``step`` (gradient accumulation: the same
perturbation on every micro-batch, the projected gradients summed, so the closure returns each
micro-batch's share of the batch loss) and once per query ``q < num_queries``.

How the perturbation is applied. MeZO adds ``eps*z`` to the weights in place, then ``-2*eps*z``,
then ``eps*z`` again; in floating point that does not restore the weights bitwise (and in fp16 it
drifts, MeZO #42). Here the stored weights are never written by a forward: while a module runs, a
forward pre-hook hands it ``w + sign*eps*z`` computed into a fresh tensor, and a forward hook puts
the parameter back. Only one parameter-sized tensor lives at a time (as in MeZO; ZO-AdaMU's update
needs three), restoring is exact in every dtype, and ``lr = 0`` leaves the weights bitwise equal. The price: a parameter must
be read through its own module's forward (every ``nn.Linear``, ``nn.Embedding`` and norm is);
``estimate`` refuses a model whose trainable parameters a forward never reaches that way.

The random stream. ``z`` for parameter ``i`` at optimizer step ``t``, query ``q`` is drawn from a
generator seeded with ``mix_seed(seed, t, q, i)``: it is regenerated for the update, never stored,
does not touch the global RNG, and depends only on ``(seed, t)``, both in ``state_dict()``, so a
resumed run draws the same perturbations as an uninterrupted one.

Half precision. MeZO keeps OPT's weights in fp16; so may these optimizers (bf16 or fp16 parameters).
An update of 1e-6..1e-7 is mostly below one ulp of a half-precision weight, so it is computed in
float32 a chunk at a time and rounded stochastically (unbiased: the stored weight equals the float32
result in expectation), with uniforms from ``mix_seed(seed, t, ROUNDING_STREAM, i)``, as reproducible
and resumable as ``z``. No parameter-sized float32 tensor is made; ``z`` has the parameter's dtype.
ZO-SGD then steps along the direction the two half-precision forwards actually compared,
``(round(w + eps*z) - round(w - eps*z)) / (2*eps)``, not ``z``: where ``eps*z`` is below half a ulp
(bf16 norm weights near 1 with eps 1e-3) that is 0, and ``z`` would add noise the estimate never saw
(on the tiny model, 300 steps: 3.9% above the float32 run's loss along ``z``, 0.8% below along it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from llmtune.errors import ConfigError
from llmtune.methods.zo.rounding import CHUNK_NUMEL, HALF_DTYPES, add_stochastic_

MASK64 = 2**64 - 1
GUARD_WARMUP_STEPS = 10  # accepted updates before the projected-gradient scale is trusted
GUARD_EMA = 0.9
ROUNDING_STREAM = -1  # the "query" of the rounding uniforms in mix_seed (queries are >= 0)


def mix_seed(*values: int) -> int:
    """A well-spread 63-bit seed from integers (SplitMix64 applied to each value in turn)."""
    state = 0
    for value in values:
        state = ((state ^ (int(value) & MASK64)) + 0x9E3779B97F4A7C15) & MASK64
        state = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        state = ((state ^ (state >> 27)) * 0x94D049BB133111EB) & MASK64
        state ^= state >> 31
    return state >> 1


@dataclass
class StepReport:
    """What one optimizer step saw: losses summed over micro-batches, averaged over queries."""

    step: int  # 0-based optimizer step
    loss_plus: float
    loss_minus: float
    projected_grads: list[float]
    skipped: str | None = None  # why the update was skipped, or None when it was applied


@dataclass
class _Pending:
    """The estimates of the current step, until ``step()`` applies them."""

    grads: list[float]
    loss_plus: float = 0.0
    loss_minus: float = 0.0
    estimates: int = 0
    queries_seen: set[int] = field(default_factory=set)


class ZerothOrderSGD(torch.optim.Optimizer):
    """MeZO (Malladi et al., 2023, Algorithm 1): ZO-SGD with the SPSA estimate.

    Per step: ``g_q = (L(w + eps*z_q) - L(w - eps*z_q)) / (2*eps)`` for each query ``q``, then
    ``w <- w - lr * (mean_q(g_q * z_q) + weight_decay * w)`` with each ``z_q ~ N(0, I)``
    regenerated from its seed. Parameter groups carry ``lr`` and ``weight_decay`` (no decay for
    biases and norms, as HF's Trainer groups them), so learning-rate schedulers work unchanged.

    Args:
        params: the trainable parameters or parameter groups: float32, or bfloat16/float16 as MeZO's
            fp16 weights (each update then rounds stochastically, see :mod:`~llmtune.methods.zo.rounding`).
        lr: learning rate.
        eps: perturbation scale.
        weight_decay: MeZO's L2 term, added to the update (``lr * weight_decay * w``).
        num_queries: perturbations per step (q); the update averages their estimates.
        seed: base seed of the perturbation stream.
        max_grad_ratio: skip an update whose largest ``|g_q|`` exceeds this many times the running
            mean of ``|g|`` over accepted steps (0: never). A non-finite loss is always skipped.
        chunk_numel: elements of a half-precision weight updated at a time (the float32 temporaries).
        cache_directions: keep each step's ``z`` once drawn (one more copy of the trainable parameters)
            instead of drawing it for each forward and again for the update: the same values bitwise, a
            third of the random-number work (more with gradient accumulation). Off by default: MeZO's
            point is inference memory. ZO-SGD only (subclasses that shape ``z`` refuse it).
    """

    caches_its_draws = False  # a subclass that shapes z and caches its own draws under cache_directions

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-6,
        eps: float = 1e-3,
        weight_decay: float = 0.0,
        num_queries: int = 1,
        seed: int = 0,
        max_grad_ratio: float = 50.0,
        chunk_numel: int = CHUNK_NUMEL,
        cache_directions: bool = False,
    ):
        if not lr >= 0:
            raise ValueError(f"lr: {lr} must be >= 0")
        if not eps > 0:
            raise ValueError(f"eps: {eps} must be > 0")
        if num_queries < 1:
            raise ValueError(f"num_queries: {num_queries} must be >= 1")
        shaped = type(self).direction is not ZerothOrderSGD.direction
        if cache_directions and shaped and not self.caches_its_draws:
            raise ValueError(f"cache_directions: {type(self).__name__} shapes its own directions; it cannot cache them")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})
        self.params = [p for group in self.param_groups for p in group["params"]]
        self._index = {id(p): i for i, p in enumerate(self.params)}
        self.eps = float(eps)
        self.num_queries = int(num_queries)
        self.seed = int(seed)
        self.max_grad_ratio = float(max_grad_ratio)
        self.chunk_numel = int(chunk_numel)
        self.step_count = 0  # optimizer steps taken (skipped ones included): the position in the seed stream
        self.consecutive_skips = 0
        self.last_report: StepReport | None = None
        self._scale_ema = 0.0  # running mean of |g| over accepted steps (bias-corrected on use)
        self._scale_count = 0
        self._pending = _Pending([0.0] * self.num_queries)
        self._generators: dict[torch.device, torch.Generator] = {}
        # Reused buffers for the perturbed weights of the forwards (see perturbed): a fresh tensor per module
        # and forward cost a page-faulting allocation each time (on SmolLM2 on a CPU, most of a step).
        self._free: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
        self.cache_directions = bool(cache_directions)
        self._cached: dict[tuple[int, int], torch.Tensor] = {}  # (index, query) -> this step's z

    # -- the random directions --------------------------------------------------------------------

    def normal(self, index: int, query: int, draws: int = 1) -> list[torch.Tensor]:
        """``draws`` fresh N(0, 1) tensors shaped like parameter ``index``, for the current step and ``query``."""
        param = self.params[index]
        generator = self._generator(param.device)
        generator.manual_seed(mix_seed(self.seed, self.step_count, query, index))
        return [
            torch.randn(param.shape, generator=generator, device=param.device, dtype=param.dtype) for _ in range(draws)
        ]

    def _fill_direction(self, index: int, query: int, out: torch.Tensor) -> torch.Tensor:
        """``out`` filled with :meth:`direction`'s values (``torch.randn`` is ``normal_`` on a new tensor)."""
        cached = self._cached_direction(index, query)
        if cached is not None:
            return out.copy_(cached)
        return self._draw(index, query, out)

    def _draw(self, index: int, query: int, out: torch.Tensor) -> torch.Tensor:
        generator = self._generator(out.device)
        generator.manual_seed(mix_seed(self.seed, self.step_count, query, index))
        return out.normal_(generator=generator)

    def _cached_direction(self, index: int, query: int) -> torch.Tensor | None:
        """This step's ``z`` of parameter ``index`` from the cache (drawn into it on first use), or None when
        directions are not cached."""
        if not self.cache_directions:
            return None
        key = (index, query)
        if key not in self._cached:
            self._cached[key] = self._draw(index, query, torch.empty_like(self.params[index]))
        return self._cached[key]

    def _acquire(self, param: torch.Tensor) -> torch.Tensor:
        """A free flat buffer of ``param``'s device and dtype with room for it (the largest such trainable
        parameter's size, so that one buffer serves every module that runs on its own)."""
        key = (param.device, param.dtype)
        free = self._free.setdefault(key, [])
        if free:
            return free.pop()
        size = max(p.numel() for p in self.params if (p.device, p.dtype) == key)
        return torch.empty(size, device=param.device, dtype=param.dtype)

    def _generator(self, device: torch.device) -> torch.Generator:
        generator = self._generators.get(device)
        if generator is None:
            generator = self._generators[device] = torch.Generator(device=device)
        return generator

    def direction(self, index: int, query: int) -> torch.Tensor:
        """The perturbation ``z`` of parameter ``index`` (a fresh tensor the caller may overwrite)."""
        if self.cache_directions:  # the update is its last use this step: hand the cached tensor over
            cached = self._cached_direction(index, query)
            del self._cached[(index, query)]
            return cached
        return self.normal(index, query)[0]

    # -- the estimate ---------------------------------------------------------------------------

    @contextmanager
    def perturbed(self, model: torch.nn.Module, query: int = 0, sign: float = 1.0) -> Iterator[set[int]]:
        """While the block runs, every forward of ``model`` sees ``w + sign*eps*z`` for the trainable ``w``.

        Yields the set of parameter indices a forward has perturbed so far. The stored
        parameters are not modified; on exit every module holds its own parameter again.
        """
        owners = self._owners(model)
        used: set[int] = set()
        scale = sign * self.eps
        held: dict[torch.nn.Module, list[torch.Tensor]] = {}
        pooled = type(self).direction is ZerothOrderSGD.direction  # subclasses that shape z allocate as before

        def substitute(module, args):
            for name, index in owners[module]:
                param = self.params[index]
                if pooled:
                    buffer = self._acquire(param)
                    held.setdefault(module, []).append(buffer)
                    z = self._fill_direction(index, query, buffer[: param.numel()].view(param.shape))
                else:
                    z = self.direction(index, query)
                module._parameters[name] = z.mul_(scale).add_(param.detach())
                used.add(index)

        def put_back(module, args, output):
            for name, index in owners[module]:
                module._parameters[name] = self.params[index]
            for buffer in held.pop(module, []):
                self._free[(buffer.device, buffer.dtype)].append(buffer)

        handles = []
        for module in owners:
            handles.append(module.register_forward_pre_hook(substitute))
            handles.append(module.register_forward_hook(put_back, always_call=True))
        try:
            yield used
        finally:
            for handle in handles:
                handle.remove()
            for module, entries in owners.items():
                for name, index in entries:
                    module._parameters[name] = self.params[index]

    def estimate(
        self, model: torch.nn.Module, closure: Callable[[], torch.Tensor | float], query: int = 0
    ) -> tuple[float, float, float]:
        """Two forwards: ``closure()`` at ``w + eps*z`` and at ``w - eps*z``; returns ``(L+, L-, g)``.

        ``g`` is added to this step's projected gradient for ``query`` (summed over calls until
        ``step()``). No autograd graph is built. Raises :class:`ConfigError` when a trainable
        parameter was not reached by the forward (see the module docstring).
        """
        if not 0 <= query < self.num_queries:
            raise ValueError(f"query {query} is outside 0..{self.num_queries - 1}")
        with torch.no_grad():
            with self.perturbed(model, query, +1.0) as used:
                loss_plus = float(closure())
            self._check_reached(model, used)
            with self.perturbed(model, query, -1.0):
                loss_minus = float(closure())
        projected = (loss_plus - loss_minus) / (2 * self.eps)
        pending = self._pending
        pending.grads[query] += projected
        pending.loss_plus += loss_plus / self.num_queries
        pending.loss_minus += loss_minus / self.num_queries
        pending.estimates += 1
        pending.queries_seen.add(query)
        return loss_plus, loss_minus, projected

    # -- the update -----------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure=None):
        """Apply the update from the projected gradients ``estimate`` gathered, unless the guard skips it.

        ``closure`` is not supported (the estimate needs the model: call ``estimate`` first).
        Returns None; ``last_report`` says what happened.
        """
        if closure is not None:
            raise TypeError("zeroth-order optimizers take no closure: call estimate(model, closure) before step()")
        pending = self._pending
        if len(pending.queries_seen) != self.num_queries:
            raise RuntimeError(
                f"step() needs an estimate for each of the {self.num_queries} queries; got {sorted(pending.queries_seen)}"
            )
        grads, loss_plus, loss_minus = _average_across_ranks(pending.grads, pending.loss_plus, pending.loss_minus)
        skipped = self._skip_reason(grads, loss_plus, loss_minus)
        if skipped is None:
            for group in self.param_groups:
                for param in group["params"]:
                    self._update(param, self._index[id(param)], grads, group["lr"], group["weight_decay"])
            self._observe_scale(grads)
            self.consecutive_skips = 0
        else:
            self.consecutive_skips += 1
        self.last_report = StepReport(self.step_count, loss_plus, loss_minus, grads, skipped)
        self._cached.clear()  # a skipped update leaves its directions behind
        self.step_count += 1
        self._pending = _Pending([0.0] * self.num_queries)

    def _update(self, param: torch.Tensor, index: int, grads: list[float], lr: float, weight_decay: float) -> None:
        update, scale = None, 1.0
        for query, projected in enumerate(grads):
            z = self.direction(index, query)
            if param.dtype in HALF_DTYPES:
                z = self._seen_direction(param, z)
            if len(grads) == 1 and param.dtype in HALF_DTYPES:
                update, scale = z, projected  # the product is taken in float32, chunk by chunk
            elif update is None:
                update = z.mul_(projected / len(grads))
            else:
                update.add_(z, alpha=projected / len(grads))
        self._apply(param, index, update, lr, weight_decay, scale)

    def _seen_direction(self, param: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``(round(w + eps*z) - round(w - eps*z)) / (2*eps)``: the direction the two half-precision forwards
        actually compared, computed as :meth:`perturbed` rounds them (overwrites ``z``). Where ``eps*z`` is
        below half a ulp of ``w`` (bf16 norm weights near 1) it is 0, so those weights get no update the
        estimate did not see, instead of ``lr*g*z`` of pure noise."""
        step = z.mul_(self.eps)
        plus = step.add(param)
        return plus.sub_(torch.sub(param, step, out=step)).div_(2 * self.eps)

    def _apply(
        self, param: torch.Tensor, index: int, update: torch.Tensor, lr: float, weight_decay: float, scale: float = 1.0
    ) -> None:
        """``param <- param - lr * (scale * update + weight_decay * param)``; half-precision weights round stochastically."""
        if param.dtype not in HALF_DTYPES:
            if scale != 1.0:
                update.mul_(scale)
            if weight_decay:
                update.add_(param, alpha=weight_decay)
            param.add_(update, alpha=-lr)
            return
        generator = self._generator(param.device)
        generator.manual_seed(mix_seed(self.seed, self.step_count, ROUNDING_STREAM, index))
        add_stochastic_(param, update, lr, weight_decay, generator, self.chunk_numel, scale)

    # -- divergence guard -------------------------------------------------------------------------

    def _skip_reason(self, grads: list[float], loss_plus: float, loss_minus: float) -> str | None:
        if not all(math.isfinite(v) for v in (loss_plus, loss_minus, *grads)):
            return f"non-finite loss (L+ = {loss_plus:.4g}, L- = {loss_minus:.4g})"
        scale = self.grad_scale
        largest = max(abs(g) for g in grads)
        if self.max_grad_ratio > 0 and scale is not None and largest > self.max_grad_ratio * scale:
            times = f"{largest / scale:.0f}x" if scale > 0 else "above"  # a scale of 0: every earlier g was 0
            return (
                f"projected gradient {largest:.4g} is {times} its running scale {scale:.4g} "
                f"(zo_max_grad_ratio: {self.max_grad_ratio:g})"
            )
        return None

    @property
    def grad_scale(self) -> float | None:
        """Running mean of ``|g|`` over accepted steps; None until enough steps were seen."""
        if self._scale_count < GUARD_WARMUP_STEPS:
            return None
        return self._scale_ema / (1 - GUARD_EMA**self._scale_count)

    def _observe_scale(self, grads: list[float]) -> None:
        mean_abs = sum(abs(g) for g in grads) / len(grads)
        self._scale_ema = GUARD_EMA * self._scale_ema + (1 - GUARD_EMA) * mean_abs
        self._scale_count += 1

    # -- checkpointing --------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Torch's optimizer state plus ``"zo"``: the seed stream position and the guard's statistics."""
        state = super().state_dict()
        state["zo"] = {
            "seed": self.seed,
            "step_count": self.step_count,
            "consecutive_skips": self.consecutive_skips,
            "scale_ema": self._scale_ema,
            "scale_count": self._scale_count,
        }
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        zo = state_dict.pop("zo", None)
        super().load_state_dict(state_dict)
        if zo is not None:
            self.seed = int(zo["seed"])
            self.step_count = int(zo["step_count"])
            self.consecutive_skips = int(zo["consecutive_skips"])
            self._scale_ema = float(zo["scale_ema"])
            self._scale_count = int(zo["scale_count"])

    # -- helpers --------------------------------------------------------------------------------

    def _owners(self, model: torch.nn.Module) -> dict[torch.nn.Module, list[tuple[str, int]]]:
        """The modules that hold a trainable parameter directly, with (attribute name, index) pairs."""
        owners: dict[torch.nn.Module, list[tuple[str, int]]] = {}
        for module in model.modules():
            for name, param in module._parameters.items():
                if param is not None and id(param) in self._index:
                    owners.setdefault(module, []).append((name, self._index[id(param)]))
        return owners

    def _check_reached(self, model: torch.nn.Module, used: set[int]) -> None:
        missing = set(range(len(self.params))) - used
        if not missing:
            return
        names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        shown = ", ".join(names.get(id(self.params[i]), f"#{i}") for i in sorted(missing)[:3])
        raise ConfigError(
            f"zo: {len(missing)} trainable parameters are not read through their module's forward, so their "
            f"perturbation cannot be applied (e.g. {shown}); freeze them, or choose another zo_target"
        )


def _average_across_ranks(grads: list[float], loss_plus: float, loss_minus: float) -> tuple[list[float], float, float]:
    """Data parallel: every rank drew the same z, so averaging the scalars keeps the ranks' weights equal."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return list(grads), loss_plus, loss_minus
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    values = torch.tensor([*grads, loss_plus, loss_minus], dtype=torch.float64, device=device)
    dist.all_reduce(values)
    values = (values / dist.get_world_size()).tolist()
    return values[:-2], values[-2], values[-1]
