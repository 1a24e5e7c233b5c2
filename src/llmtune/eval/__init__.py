"""``llmtune eval``: task scoring (accuracy, EM, F1) and MT-bench with an OpenAI-compatible judge.

``config`` parses and validates the arguments (a YAML file, a training run folder and flags);
``task_eval`` scores the tasks of ``tasks.json``; ``mt_bench`` answers the questions and builds the
judge's prompts, ``judge`` asks the judge, ``mt_bench_report`` aggregates and draws; ``run`` ties
them together for the CLI.
"""

from llmtune.eval.config import EvalRun, load_eval_arguments, parse_eval_args

__all__ = ["EvalRun", "load_eval_arguments", "parse_eval_args"]
