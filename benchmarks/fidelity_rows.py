"""The fidelity suite's rows and budgets, as data (read by the runner and the report)."""

from __future__ import annotations

ICL_DEMOS = 4  # demonstrations per test example, drawn from the seed's k-shot training set

LORA = {"lora_rank": 8, "lora_alpha": 16, "lora_target": "q_proj,v_proj"}  # MeZO's LoRA
ADAM = {"weight_decay": 0.0}
ZO_CACHE = {"zo_cache_directions": True}  # full-parameter zo: z drawn once a step, not three times
# BAdam over a whole pass of SmolLM2's 30 layers within the CPU budget: a switch every 5 steps.
BLOCK = {"badam_switch_mode": "random", "badam_switch_interval": 5}

# Steps and batch per budget. ``paper``: MeZO's 20,000 zeroth-order steps at batch 16 (its OPT set-up)
# and 1,000 fine-tuning steps at batch 8.
BUDGETS = {
    # What fits about 7 hours for the whole suite on 2 CPU cores, where SmolLM2-135M runs about 400
    # tokens/s forward (one test pass over 200 tweets: about a minute): the first 200 test tweets (100
    # per class), 40 Adam steps at batch 4 (5 epochs of the 32 examples), 200 zeroth-order steps at
    # batch 4. That is far below the papers' zeroth-order budgets (MeZO's k-shot RoBERTa runs take
    # 100,000 steps), which the page says.
    "cpu": {
        "test_samples": 200,
        "gradient": {"steps": 40, "batch": 4, "points": 2},
        "zo": {"steps": 200, "batch": 4, "points": 4},
        # the kernel's parameters streamed in 4 blocks, not llmtune kernel's default 7 (20M each): every block
        # costs each of the 264 examples a forward and backward pass; rows held: about 10 GB (seed 13's sgd
        # pass ran at the default)
        "kernel": {"block_params": 40_000_000},
    },
    "smoke": {"gradient": {"steps": 2, "batch": 4, "points": 1}, "zo": {"steps": 2, "batch": 4, "points": 1}},
    "paper": {
        "gradient": {"steps": 1000, "batch": 8, "points": 10},
        "zo": {"steps": 20000, "batch": 16, "points": 20},
    },
}

# name -> how the row runs. ``family`` picks the budget; ``grid`` the learning rates tried on the dev set
# (two or three values each, from MeZO's grids where it gives one, to fit the CPU budget).
ROWS: dict[str, dict] = {
    "zero_shot": {"kind": "score", "demos": 0},
    "icl": {"kind": "score", "demos": ICL_DEMOS},
    "full": {"kind": "train", "family": "gradient", "options": {"finetuning_type": "full", **ADAM},
             "grid": [1e-5, 1e-4]},
    "lora": {"kind": "train", "family": "gradient", "options": {"finetuning_type": "lora", **LORA, **ADAM},
             "grid": [1e-4, 1e-3]},
    "block": {"kind": "train", "family": "gradient", "options": {"finetuning_type": "block", **BLOCK, **ADAM},
              "grid": [1e-5, 1e-4]},
    "sparse": {"kind": "train", "family": "gradient",
               "options": {"finetuning_type": "sparse", "badam_update_ratio": 0.1, "badam_switch_interval": 5},
               "grid": [1e-5, 1e-4]},
    "loretta_adp": {"kind": "train", "family": "gradient",
                    "options": {"finetuning_type": "loretta", "loretta_mode": "adapter", **ADAM},
                    "grid": [1e-4, 1e-3]},
    # LoRETTA's reference initialisation (every core random, the model starts perturbed) against llmtune's
    # identity default: whether the default costs accuracy (issue #18, section 4)
    "loretta_adp_ref": {"kind": "train", "family": "gradient",
                        "options": {"finetuning_type": "loretta", "loretta_mode": "adapter", "loretta_init": "reference",
                                    **ADAM},
                        "grid": [1e-4, 1e-3]},
    "loretta_rep": {"kind": "train", "family": "gradient",
                    "options": {"finetuning_type": "loretta", "loretta_mode": "reparam", **ADAM},
                    "grid": [1e-4, 1e-3]},
    # zo_cache_directions: the same runs bitwise in about half the time on this CPU (docs/benchmarks/zo.md)
    "zo": {"kind": "train", "family": "zo", "options": {"finetuning_type": "zo", "zo_eps": 1e-3, **ZO_CACHE},
           "grid": [1e-6, 1e-5]},
    "zo_accuracy": {"kind": "train", "family": "zo",
                    "options": {"finetuning_type": "zo", "zo_eps": 1e-3, "zo_objective": "accuracy", **ZO_CACHE},
                    "grid": [1e-6, 1e-5]},
    # MeZO's LoRA rates (1e-4, 5e-5) are for 20,000 steps; on 200 neither moved the test accuracy off
    # zero-shot, so the grid reaches 10x up, as zo's 1e-5 is 10x MeZO's full-parameter 1e-6
    "zo_lora": {"kind": "train", "family": "zo",
                "options": {"finetuning_type": "zo", "zo_target": "lora", "zo_eps": 1e-2, **LORA},
                "grid": [1e-4, 3e-4, 1e-3]},
    "zo_prefix": {"kind": "train", "family": "zo",
                  "options": {"finetuning_type": "zo", "zo_target": "prefix", "zo_eps": 1e-1},
                  "grid": [1e-3, 1e-2]},
    # cached draws: the same run bitwise (tests/methods/test_zo.py), a third of the random draws
    # (seed 13's 1e-6 grid run was made without them)
    "zo_adamu": {"kind": "train", "family": "zo",
                 "options": {"finetuning_type": "zo", "zo_optimizer": "adamu", "zo_eps": 1e-3, **ZO_CACHE},
                 "grid": [1e-6, 1e-5]},
    # AdaZeta's claim is at an equal query budget: its queries per step grow (up to 15), so its run stops
    # once it has made as many queries as a MeZO run of the budget makes (one per step); the schedule is
    # the one of the budget's whole run.
    "adazeta": {"kind": "train", "family": "zo", "options": {"finetuning_type": "adazeta"},
                "grid": [1e-4, 3e-4, 1e-3], "equal_queries": True},  # AdaZeta's 1e-4, and up as zo_lora's
    # LM-Kernel-FT: no training; the eNTK of the label-word logits on the seed's k-shot split (llmtune kernel)
    "kernel_sgd": {"kind": "kernel", "formula": "sgd", "solver": "lstsq"},
    "kernel_signgd": {"kind": "kernel", "formula": "signgd", "solver": "lstsq"},
    "kernel_asymmetric_signgd": {"kind": "kernel", "formula": "asymmetric_signgd", "solver": "lstsq"},
}  # fmt: skip
