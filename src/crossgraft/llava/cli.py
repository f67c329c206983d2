"""`crossgraft llava COMMAND` and `train_alternating`: each command parses its config (`llava/config.py`) and
calls library functions; this file only parses, calls and prints."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from crossgraft.args import Command, dispatch, run_command

if TYPE_CHECKING:  # the configs load when a command's parser is built, the library when the command runs
    from crossgraft.llava.config import (
        DataArguments,
        DemoConfig,
        EvaluateConfig,
        LlavaCompareConfig,
        LlavaExportConfig,
        MakeSampleConfig,
        MakeTinyConfig,
        MergeLoraConfig,
        ModelArguments,
        PlotRunsConfig,
    )
    from crossgraft.llava.training_args import AlternatingTrainingArguments

CONFIGS = "crossgraft.llava.config"
TrainArguments = tuple["ModelArguments", "DataArguments", "AlternatingTrainingArguments"]


def cmd_train(arguments: TrainArguments) -> int:
    from crossgraft.llava.configuration import LlavaConfigError
    from crossgraft.llava.train import backbone_plan, describe_plan, dry_run, inspect_data, train

    model_args, data_args, training_args = arguments
    if model_args.dry_run:
        checked = dry_run(model_args, data_args)
        print(checked.kind.describe())
        for note in checked.notes:
            print(note)
        if checked.problem and not model_args.force:
            print(f"error: {checked.problem}")
            return 2
        if checked.problem:
            print(f"--force: continuing; the weights would be loaded into the {model_args.variant} class")
        print("dry run: nothing loaded or trained")
        return 0
    if model_args.inspect_data:
        inspection = inspect_data(data_args, model_args, training_args)
        records = inspection.records
        print(f"records: {len(records)} (from {data_args.data_path})")
        if records:
            print(f"first record ({records[0].where}):")
            print(json.dumps(records[0].data, indent=2, ensure_ascii=False)[:4000])
        if inspection.problems:
            print(f"{len(inspection.problems)} invalid record(s); the first: {inspection.problems[0]}")
            return 2
        if inspection.limit is not None and inspection.cut:
            print(
                f"{len(inspection.cut)} record(s) would be cut before their first answer token at model_max_length "
                f"{inspection.limit.max_length} (training skips them): "
                + "; ".join(f"{where} needs {needed}" for where, needed in inspection.cut[:20])
                + (" ..." if len(inspection.cut) > 20 else "")
            )
        elif inspection.limit is not None:
            print(f"every record keeps an answer token within model_max_length {inspection.limit.max_length}")
        print(f"all {len(records)} records are valid")
        return 0
    if model_args.inspect_weights:
        if not model_args.init_from_backbone:
            raise LlavaConfigError(
                "--inspect_weights reports an --init_from_backbone copy; add --init_from_backbone --backbone_model …"
            )
        print(describe_plan(backbone_plan(model_args)))
        return 0
    train(model_args, data_args, training_args)
    return 0


def cmd_make_sample(config: MakeSampleConfig) -> int:
    from crossgraft.llava.sample import HELD_OUT_FILE, make_sample

    path = make_sample(config.out, config.count, config.seed, config.heldout)
    print(f"wrote {config.count} records to {path}")
    if config.heldout:
        print(f"wrote {config.heldout} held-out records (other ids and images) to {path.parent / HELD_OUT_FILE}")
    return 0


def cmd_make_tiny(config: MakeTinyConfig) -> int:
    from crossgraft.llava.sample import make_tiny_model

    make_tiny_model(config.out, config.model_type, config.seed)
    print(f"wrote a tiny {config.model_type} model to {config.out}")
    return 0


def cmd_demo(config: DemoConfig) -> int:
    from crossgraft.llava.demo import format_results, run_demo

    results = run_demo(config)
    print(format_results(results.variants, results.comparison))
    print(f"written to {config.out}/results.md; loss curves: {config.out}/training_curves.png")
    return 0


def cmd_plot_runs(config: PlotRunsConfig) -> int:
    from crossgraft.llava.plots import plot_runs

    plotted = plot_runs(config.runs, config.out)
    if plotted.without_records:
        print(f"note: {', '.join(plotted.without_records)} logged no loss yet (see --logging_steps)")
    print(f"loss and throughput curves of {len(config.runs)} run(s): {plotted.written[0]}, {plotted.written[1]}")
    return 0


def cmd_evaluate(config: EvaluateConfig) -> int:
    from crossgraft.llava.evaluate import evaluate

    folder, _ = evaluate(config)  # the summary is logged (console and evaluate.log)
    print(f"predictions: {folder}/predictions.jsonl; summary: {folder}/summary.json")
    return 0


def cmd_compare(config: LlavaCompareConfig) -> int:
    from crossgraft.llava.compare import compare

    print(compare(config.runs, config.data_path, config.out, config.seed))
    if config.out is not None:
        print(f"written to {config.out}/compare.txt and compare.json")
    return 0


def cmd_export(config: LlavaExportConfig) -> int:
    from crossgraft.llava.export import describe_export, export_llava_next

    print(describe_export(export_llava_next(config.model_name_or_path, config.out, config.dtype)))
    return 0


def cmd_merge_lora(config: MergeLoraConfig) -> int:
    from crossgraft.llava.export import merge_lora
    from crossgraft.llava.lora import lora_base

    out = merge_lora(config.model_name_or_path, config.out)
    print(f"merged {config.model_name_or_path} (base {lora_base(config.model_name_or_path)}) into {out}")
    return 0


COMMANDS = {
    "train": Command(
        (
            f"{CONFIGS}:ModelArguments",
            f"{CONFIGS}:DataArguments",
            "crossgraft.llava.training_args:AlternatingTrainingArguments",  # TrainingArguments: loaded for train only
        ),
        cmd_train,
        "train base / alternating / alternating_cross (= train_alternating; every Hugging Face TrainingArguments flag)",
        "Train LLaVA-OneVision (Qwen2 + SigLIP) as base, alternating or alternating_cross. Images go through the "
        "checkpoint's own image path (OneVision: anyres_max_9 tiles with spatial_unpad; pad and square also work). "
        "--dry_run, --inspect_data and --inspect_weights report and exit before anything is loaded or trained.",
    ),
    "make-sample": Command(
        f"{CONFIGS}:MakeSampleConfig",
        cmd_make_sample,
        "write a tiny LAION-style image-caption set in LLaVA format",
        "Write generated images (coloured shapes) and their captions as LLaVA conversation records: "
        "OUT/images/*.png and OUT/sample.json.",
    ),
    "make-tiny": Command(
        f"{CONFIGS}:MakeTinyConfig",
        cmd_make_tiny,
        "write a tiny random model and its tokenizer (any variant, a bare Qwen2 LM or a SigLIP tower)",
        "Write a tiny random checkpoint (config.json, model.safetensors, tokenizer) to try every command offline. "
        "'qwen2' writes a bare language model, the backbone of --init_from_backbone.",
    ),
    "evaluate": Command(
        f"{CONFIGS}:EvaluateConfig",
        cmd_evaluate,
        "generate answers for held-out records and score them (loss, perplexity, BLEU-4, ROUGE-L, CIDEr-D)",
        "Each held-out record's first question is answered with the KV-cached generate(); the answer is scored "
        "against the record's first gpt turn (BLEU-4, ROUGE-L, CIDEr-D computed in-house with coco-caption's "
        "definitions; attribute words when records carry 'attributes') and the reference answer's teacher-forced "
        "loss is measured. Writes predictions.jsonl (resumable: samples already written are skipped), summary.json "
        "and evaluate.log under --out.",
    ),
    "compare": Command(
        f"{CONFIGS}:LlavaCompareConfig",
        cmd_compare,
        "metric differences between variants on the same held-out data, with paired bootstrap 95% intervals",
        "The first NAME=PATH is the reference. Every metric of every other variant minus the reference's, with a "
        "paired bootstrap 95% interval over the held-out samples (10,000 resamples; several comma-separated runs "
        "per variant are seeds, paired by position). Refuses evaluations of different samples or generation "
        "settings.",
    ),
    "export": Command(
        f"{CONFIGS}:LlavaExportConfig",
        cmd_export,
        "write a run as a LLaVA-NeXT checkpoint folder (base, alternating, alternating_cross mask)",
        "The weights keep LLaVA-NeXT's names; config.json gets rope_theta, torch_dtype and "
        "mm_use_im_patch_token false (else LLaVA-NeXT's builder adds a token and resizes the embeddings). LLaVA-NeXT's "
        "builder picks the model class from the folder's name, so OUT's name is checked first. Gated "
        "alternating_cross runs are refused: their blocks exist in neither LLaVA-NeXT nor the alternating fork.",
    ),
    "merge-lora": Command(
        f"{CONFIGS}:MergeLoraConfig",
        cmd_merge_lora,
        "merge a LoRA run's adapters into its base and write an ordinary checkpoint",
        "Loads the run's base (adapter_config.json's base_model_name_or_path, or the run's own base folder), its "
        "fully trained parameters (non_lora_trainables.safetensors) and its adapters, merges them and writes "
        "config.json, model.safetensors and the tokenizer to OUT (staged, then renamed).",
    ),
    "plot-runs": Command(
        f"{CONFIGS}:PlotRunsConfig",
        cmd_plot_runs,
        "loss and throughput curves of one or several runs on one figure (PNG and SVG)",
        "Reads each run's trainer_state.json: training loss and eval_loss, samples per second and time per step "
        "(logged with --throughput_log_steps) against the optimizer step, one colour per run.",
    ),
    "demo": Command(
        f"{CONFIGS}:DemoConfig",
        cmd_demo,
        "train base, alternating and both alternating_cross modes from one tiny backbone; compare them",
        "Write the tiny caption sample (75% train / 25% held out) and a tiny random LLaVA backbone, train the four "
        "variants from it with identical settings, and print the held-out caption loss before and after. Results: "
        "OUT/results.md and OUT/results.json; each run's log in its own folder.",
    ),
}
SUMMARY = "LLaVA-OneVision (Qwen2 + SigLIP) with alternating attention."


def run(command: str, argv: Sequence[str], prog: str | None = None, **defaults: Any) -> int:
    """Run one llava command (`train_alternating` comes through here with its own name)."""
    return run_command("llava", command, COMMANDS[command], argv, prog, **defaults)


def main(argv: Sequence[str]) -> int:
    return dispatch("llava", SUMMARY, COMMANDS, argv)
