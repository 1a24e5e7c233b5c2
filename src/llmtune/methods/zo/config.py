"""Options of ``finetuning_type: zo`` (MeZO, Malladi et al. 2023; ZO-AdaMU, Jiang et al. 2024)."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmtune.errors import ConfigError, one_of
from llmtune.methods.zo.schedule import PAPER_ANNEAL_END, PAPER_PHI, PAPER_WARMUP_END, phi_limit

ZO_TARGETS = ("full", "lora", "prefix")
ZO_OPTIMIZERS = ("sgd", "adamu")
ZO_OBJECTIVES = ("loss", "accuracy", "f1")


@dataclass
class ZerothOrderArguments:
    """What a zeroth-order run trains, how it perturbs, and how it guards against divergence.

    The learning rate, its schedule, weight decay and the seed are the shared training options
    (``learning_rate``, ``lr_scheduler_type``, ``weight_decay``, ``seed``).
    """

    zo_target: str = field(
        default="full",
        metadata={
            "choices": ZO_TARGETS,
            "help": "What zo trains: full (every weight), lora (LoRA adapters, shaped by the lora_* options) "
            "or prefix (prefix tuning with zo_prefix_tokens virtual tokens).",
        },
    )
    zo_eps: float = field(
        default=1e-3,
        metadata={"help": "Perturbation scale eps of the SPSA estimate (L(w+eps*z) - L(w-eps*z)) / (2*eps)."},
    )
    zo_num_queries: int = field(
        default=1,
        metadata={"help": "Independent perturbations per step (2 forwards each); the update averages them."},
    )
    zo_optimizer: str = field(
        default="sgd",
        metadata={
            "choices": ZO_OPTIMIZERS,
            "help": "Update rule: sgd (MeZO) or adamu (ZO-AdaMU: momentum and uncertainty in the perturbation).",
        },
    )
    zo_objective: str = field(
        default="loss",
        metadata={
            "choices": ZO_OBJECTIVES,
            "help": "What the two forwards evaluate: loss (the model's loss; with train_as_classification the "
            "cross-entropy over the options), accuracy (minus the share of examples whose best-scored option "
            "is right; needs train_as_classification) or f1 (minus the token F1 of greedy answers; dataset: QA tasks "
            "such as squad, as MeZO trains SQuAD).",
        },
    )
    zo_prefix_tokens: int = field(
        default=5, metadata={"help": "Virtual tokens of zo_target: prefix (initialised from real activations)."}
    )
    zo_master_weights: bool = field(
        default=False,
        metadata={
            "help": "With bf16/fp16: keep float32 trainable weights (twice MeZO's weight memory for zo_target: full) "
            "instead of half-precision ones updated with stochastic rounding, as MeZO's fp16 weights. Also adazeta."
        },
    )
    zo_cache_directions: bool = field(
        default=False,
        metadata={
            "help": "Keep each step's perturbation once drawn (one more copy of the trainable weights) instead of "
            "drawing it for both forwards and the update: the same run bitwise, about a third of the random-number "
            "time (on SmolLM2 on a CPU, most of a zo_target: full step). Off: MeZO's inference memory. With "
            "zo_optimizer: adamu its two draws per step (two more copies), a third of its random-number work. "
            "Also adazeta."
        },
    )
    zo_max_grad_ratio: float = field(
        default=50.0,
        metadata={
            "help": "Skip an update whose projected gradient exceeds this many times its running scale (0: never; "
            "zo_objective: loss only: the accuracy and f1 objectives' projected gradient is 0 on most steps and "
            "at most 1/(2 zo_eps), so every step that moves them would look like a spike); a NaN/inf loss is "
            "always skipped."
        },
    )
    zo_max_skips: int = field(
        default=5,
        metadata={"help": "Skipped updates in a row that stop the run (with stop_on_nan) instead of training on."},
    )
    zo_divergence_factor: float = field(
        default=2.0,
        metadata={
            "help": "Stop the run (with stop_on_nan) when the smoothed loss climbs above this many times its value "
            "over the first 20 steps: the learning rate is too high (0: never; zo_objective: loss only)."
        },
    )
    zo_max_new_tokens: int = field(
        default=32, metadata={"help": "zo_objective: f1: tokens generated per answer (greedy)."}
    )
    zo_adamu_phi_alpha: float = field(
        default=PAPER_PHI[0],
        metadata={
            "help": "adamu: phi of the uncertainty alpha in the annealing of Eq. 7 (the paper's 1; a larger phi "
            "anneals faster and lower)."
        },
    )
    zo_adamu_phi_beta1: float = field(
        default=PAPER_PHI[1], metadata={"help": "adamu: phi of the momentum weight beta1 in Eq. 7 (the paper's 0.1)."}
    )
    zo_adamu_phi_beta2: float = field(
        default=PAPER_PHI[2],
        metadata={"help": "adamu: phi of the second-moment weight beta2 in Eq. 7 (the paper's 1.5)."},
    )
    zo_adamu_warmup_end: float = field(
        default=PAPER_WARMUP_END,
        metadata={
            "help": "adamu: step T1 where the warm-up (alpha = beta1 = beta2 = 1: MeZO's perturbation) ends and the "
            "annealing starts: a fraction of the training steps (<= 1; 0.0512 is the paper's 1024 of 20,000) "
            "or a step count (> 1)."
        },
    )
    zo_adamu_anneal_end: float = field(
        default=PAPER_ANNEAL_END,
        metadata={
            "help": "adamu: step T2 where the annealing ends and the weights hold: a fraction of the training "
            "steps (<= 1; the paper's 0.8) or a step count (> 1)."
        },
    )

    def __post_init__(self):
        for name, allowed in (
            ("zo_target", ZO_TARGETS),
            ("zo_optimizer", ZO_OPTIMIZERS),
            ("zo_objective", ZO_OBJECTIVES),
        ):
            if getattr(self, name) not in allowed:
                raise one_of(name, getattr(self, name), allowed)
        _check(self.zo_eps > 0 and self.zo_eps != float("inf"), f"zo_eps: {self.zo_eps} must be > 0")
        for name in ("zo_num_queries", "zo_prefix_tokens", "zo_max_skips", "zo_max_new_tokens"):
            _check(getattr(self, name) >= 1, f"{name}: {getattr(self, name)} must be a positive integer")
        _check(self.zo_max_grad_ratio >= 0, f"zo_max_grad_ratio: {self.zo_max_grad_ratio} must be >= 0 (0: never)")
        _check(
            self.zo_divergence_factor == 0 or self.zo_divergence_factor > 1,
            f"zo_divergence_factor: {self.zo_divergence_factor} must be > 1 (0: never)",
        )
        for name in ("zo_adamu_warmup_end", "zo_adamu_anneal_end"):
            value = getattr(self, name)
            _check(0 <= value < float("inf"), f"{name}: {value} must be a fraction in [0, 1] or a step count")
        # Eq. 7's period must stay positive; with T2 a step count that depends on the run's length (checked then).
        limit = phi_limit(self.zo_adamu_anneal_end) if self.zo_adamu_anneal_end <= 1 else float("inf")
        for name in ("zo_adamu_phi_alpha", "zo_adamu_phi_beta1", "zo_adamu_phi_beta2"):
            value = getattr(self, name)
            _check(
                0 <= value < limit,
                f"{name}: {value} must be in [0, {limit:.4g}) with zo_adamu_anneal_end {self.zo_adamu_anneal_end}",
            )
        if self.zo_optimizer == "adamu" and self.zo_num_queries != 1:
            raise ConfigError(
                f"zo_num_queries: {self.zo_num_queries} is not supported with zo_optimizer: adamu "
                "(its momentum follows one perturbation per step); use 1 or zo_optimizer: sgd"
            )

    @property
    def grad_ratio_guard(self) -> float:
        """``zo_max_grad_ratio`` where it applies (the loss objective), else 0 (never)."""
        return self.zo_max_grad_ratio if self.zo_objective == "loss" else 0.0

    def adamu_options(self) -> dict:
        """The keyword arguments of :class:`~llmtune.methods.zo.adamu.ZerothOrderAdaMU` these options set."""
        return {
            "phi": (self.zo_adamu_phi_alpha, self.zo_adamu_phi_beta1, self.zo_adamu_phi_beta2),
            "warmup_end": self.zo_adamu_warmup_end,
            "anneal_end": self.zo_adamu_anneal_end,
        }


def _check(condition: bool, message: str) -> None:
    # Written as "not (x > 0)" style checks so that NaN fails them too.
    if not condition:
        raise ConfigError(message)
