"""The ratios the README and docs/benchmarks.md quote are the ones the report computes from the
committed results files (a number with no results file behind it does not belong on the page)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import report

ROOT = Path(__file__).resolve().parents[2]
PAGE = (ROOT / "docs" / "benchmarks.md").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")


def rows(name: str) -> list[dict]:
    path = ROOT / "docs" / "benchmarks" / name
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_the_smollm2_targets_table_is_the_reports():
    smollm2 = [r for r in rows("cpu_results.jsonl") if r["model"] == "smollm2" and not r.get("task")]
    lines = report.target_lines(smollm2)
    assert len(lines) > 5
    for line in lines:
        assert line in PAGE, line


def test_llmtunes_overhead_over_trl_is_the_pairs_median():
    ratio = report.step_ratio(rows("cpu_fused_pair_results.jsonl"), "full_fused", "trl_full")
    quoted = f"{ratio:.3f}x"
    assert quoted == "1.014x"
    assert "1.014x TRL's step time" in PAGE and f"takes {quoted} plain TRL's" in README


@pytest.mark.parametrize(("metric", "quoted"), [("step_seconds", "0.976x"), ("peak_rise_bytes", "0.949x")])
def test_block_against_the_badam_package_on_one_loss_path(metric, quoted):
    ratios, pairs = report.target_ratios(rows("cpu_smollm2_fused_head_2x128.jsonl"), "block", "badam_block", metric)
    assert pairs == 1 and f"{ratios[0]:.3f}x" == quoted and quoted in PAGE


def test_readme_peaks_are_the_tables():
    smollm2 = [r for r in rows("cpu_results.jsonl") if r["model"] == "smollm2" and not r.get("task")]
    block, _ = report.target_ratios(smollm2, "block", "full", "peak_rise_bytes")
    zo, _ = report.target_ratios(smollm2, "zo", "inference", "peak_rise_bytes")
    assert f"`block` peaks at {block[0]:.2f}x `full` and `zo` at {zo[0]:.2f}x" in README.replace("\n", " ")


def test_the_numbers_without_a_results_file_are_gone():
    for gone in ("5.81 s", "2.64 s", "1.76x", "0.943 in the rerun"):
        assert gone not in PAGE and gone not in README, gone


def test_the_kernel_pages_tiny_tables_are_the_results_files():
    from benchmarks.kernel_tiny import read, tables

    page = (ROOT / "docs" / "kernel.md").read_text(encoding="utf-8")
    for name, table in tables(read()).items():
        assert table in page, name


def test_the_zo_page_is_the_memory_suites_report():
    page = (ROOT / "docs" / "benchmarks" / "zo.md").read_text(encoding="utf-8")
    memory = [json.loads(line) for line in (ROOT / "docs/benchmarks/memory/results.jsonl").read_text().splitlines()]
    for precision in ("bf16", "fp32"):
        group = [r for r in memory if r.get("precision") == precision]
        for line in report.group_table(group) + report.target_lines(group):
            assert line in page, line
    bf16 = [r for r in memory if r.get("precision") == "bf16"]
    ratio, _ = report.target_ratios(bf16, "zo", "inference", "peak_rise_bytes")
    assert ratio[0] <= 1.05 and f"({ratio[0]:.3f}x;" in page  # MeZO's headline: bf16 zo within 1.05x inference


# docs/benchmarks/block.md and docs/quantization.md: `llmtune estimate` of the Llama-3-8B examples on the
# model's config shapes (no download); each row's numbers are what the estimate gives now.
ESTIMATE_ROWS = [
    ("docs/benchmarks/block.md", "examples/train_block/llama3_8b_badam_rtx3090.yaml", ("weights", "gradients", "optimizer", "activations", "total")),
    ("docs/benchmarks/block.md", "examples/train_block/llama3_8b_sparse_sft.yaml", ("weights", "gradients", "optimizer", "activations", "total")),
    ("docs/quantization.md", "examples/train_lora/llama3_8b_lora_sft.yaml", ("weights", "gradients", "optimizer", "total")),
    ("docs/quantization.md", "examples/train_qlora/llama3_8b_qlora_sft.yaml", ("weights", "gradients", "optimizer", "total")),
    ("docs/quantization.md", "examples/train_block/llama3_8b_badam_rtx3090.yaml", ("weights", "gradients", "optimizer", "total")),
    ("docs/quantization.md", "examples/train_qlora/llama3_8b_badam_adamw_8bit.yaml", ("weights", "gradients", "optimizer", "total")),
]  # fmt: skip


@pytest.mark.parametrize(("page", "example", "columns"), ESTIMATE_ROWS)
def test_the_llama3_8b_estimate_tables_are_the_estimators(page, example, columns, llama3_8b_config):
    from llmtune.train.estimate import estimate_memory, format_bytes, load_estimate_arguments

    args = load_estimate_arguments([str(ROOT / example), "--model_name_or_path", "llmtune/tiny-llama"])
    estimate = estimate_memory(args, llama3_8b_config)
    text = (ROOT / page).read_text(encoding="utf-8")
    name = Path(example).name
    row = next(line for line in text.splitlines() if line.startswith("|") and name in line)
    cells = [format_bytes(getattr(estimate, column)) for column in columns]
    assert row.endswith("| " + " | ".join(cells) + " |"), (row, cells)


def test_the_block_pages_llama3_8b_sentences_are_the_estimators(llama3_8b_config):
    from llmtune.train.estimate import estimate_memory, format_bytes, load_estimate_arguments

    example = str(ROOT / "examples/train_block/llama3_8b_badam_rtx3090.yaml")
    args = load_estimate_arguments([example, "--model_name_or_path", "llmtune/tiny-llama"])
    page = " ".join((ROOT / "docs/benchmarks/block.md").read_text(encoding="utf-8").split())
    block = estimate_memory(args, llama3_8b_config)
    full = estimate_memory(args, llama3_8b_config, finetuning_type="full")
    assert f"{block.trainable / 1e9:.2f}B of its {block.parameters / 1e9:.2f}B parameters train" in page
    assert f"The same runs as `full` (fp32 weights and AdamW): {format_bytes(full.total)}" in page


def test_the_readmes_fidelity_numbers_are_the_pages():
    from benchmarks import fidelity_report

    table = fidelity_report.summarise(fidelity_report.read(ROOT / "docs" / "fidelity" / "results.jsonl"))
    text = " ".join(README.split())

    def pct(row: str) -> str:
        return f"{100 * table[row]['test'][0]:.1f}%"

    memory = table["block"]["peak"] / table["full"]["peak"]
    assert (
        f"full {pct('full')}, LoRA {pct('lora')}, BAdam (`block`) {pct('block')} at {memory:.2f}x full's peak memory, "
        f"LoRETTA {pct('loretta_adp')}, against {pct('zero_shot')} zero-shot and {pct('icl')} in-context"
    ) in text
    below = 100 * (table["full"]["test"][0] - table["zo"]["test"][0])
    assert f"MeZO (`zo`, 200 steps) {pct('zo')}, above both but {below:.1f} points below full" in text
    assert f"AdaZeta ({pct('adazeta')}) is above MeZO-LoRA ({pct('zo_lora')}) at an equal query budget" in text
    adamu = 100 * (table["zo"]["test"][0] - table["zo_adamu"]["test"][0])
    assert f"ZO-AdaMU ({pct('zo_adamu')}) is {adamu:.1f} points below MeZO at the same 200 steps" in text
    above, seeds = fidelity_report._seeds_above(table, "zo_accuracy", "zero_shot")
    assert f"trains, weakly: {pct('zo_accuracy')}, above zero-shot on {above} of {seeds} seeds" in text
    assert (
        f"The eNTK kernel (`kernel_sgd`, no training) scores {pct('kernel_sgd')} against full's {pct('full')}" in text
    )
    prefix = f"MeZO on 5 prefix tokens (`zo_prefix`, {table['zo_prefix']['params']:,} trainable parameters) scores"
    assert f"{prefix} {pct('zo_prefix')}, level with MeZO on every weight" in text
    assert abs(table["zo_prefix"]["test"][0] - table["zo"]["test"][0]) <= 0.01  # "level": within a point
    assert (
        f"score {pct('kernel_signgd')} (`kernel_signgd`) and {pct('kernel_asymmetric_signgd')} "
        "(`kernel_asymmetric_signgd`): every row of the table is complete"
    ) in text
    from benchmarks.fidelity import ROWS

    assert all(len(table[row]["runs"]) == (1 if row == "zero_shot" else 5) for row in ROWS), "a row is not complete"


def test_the_block_pass_section_is_its_results_files():
    rows = [json.loads(line) for line in (ROOT / "docs/benchmarks/block_pass/results.jsonl").read_text().splitlines()]
    for line in report.group_table(rows) + report.target_lines(rows):
        assert line in PAGE, line
    ratios, pairs = report.target_ratios(rows, "block_pass", "full", "mean_step_seconds")
    import statistics

    assert pairs == 3 and f"**{statistics.median(ratios):.2f}x**" in PAGE
    assert f"{ratios[0]:.2f}x to {ratios[-1]:.2f}x" in PAGE


def test_the_zo_cache_lines_are_its_results_file():
    import statistics

    rows = [json.loads(line) for line in (ROOT / "docs/benchmarks/zo_cache/results.jsonl").read_text().splitlines()]
    pairs = sorted({r["pair"] for r in rows})
    by = {(r["pair"], r["cache_directions"]): r for r in rows}
    ratios = sorted(by[p, True]["mean_step_seconds"] / by[p, False]["mean_step_seconds"] for p in pairs)
    assert all(by[p, True]["weights_sum"] == by[p, False]["weights_sum"] for p in pairs)
    loads = [x for r in rows for x in r["load_average"]]
    page = (ROOT / "docs" / "benchmarks" / "zo.md").read_text(encoding="utf-8")
    assert f"{len(pairs)} interleaved pairs" in page and f"{statistics.median(ratios):.2f}x the uncached" in page
    assert f"{ratios[0]:.2f}x to {ratios[-1]:.2f}x" in page and f"load {min(loads):.1f}-{max(loads):.1f}" in page
    assert f"{by[pairs[0], True]['cache_bytes'] / 1e6:.0f} MB on SmolLM2" in page
