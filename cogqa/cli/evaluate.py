"""``cogqa eval loss|niah|harness``."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CogqaError, require
from ..files import (
    check_output_dir,
    check_output_file,
    json_file_with,
    save_figure,
    write_output_dir,
    write_text_atomic,
)
from ..units import parse_contexts

# help texts spelled here so that `cogqa --help` imports neither numpy nor cogqa.harness
PAPER_TASKS_HELP = "arc_challenge,arc_easy,boolq,hellaswag,lambada_openai,piqa,social_iqa,wsc273,wikitext"
DEVICE_HELP = "auto (CUDA when present, else CPU), cpu, cuda or cuda:N"
DTYPE_HELP = "auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16"


def _device_args(p) -> None:
    p.add_argument("--device", default="auto", help=f"device: {DEVICE_HELP}; default auto")
    p.add_argument("--dtype", default="auto", help=f"weights dtype: {DTYPE_HELP}; default auto")
    p.add_argument(
        "--max-seq-len",
        type=lambda s: parse_contexts(s)[0],
        default=None,
        metavar="TOKENS",
        help="context the model is loaded at (default: the checkpoint's training context, "
        "HF max_position_embeddings); evaluating beyond it needs this",
    )


def _check_context(name, T, context, what="--contexts") -> None:
    require(
        T <= context,
        f"{what}: {T} tokens is longer than {name} is loaded for ({context} tokens, its training "
        f"context); pass --max-seq-len {T} to evaluate beyond it",
    )


def _only(*names):
    """legacy_ok for an eval output directory of an older cogqa (no marker): it holds exactly these files."""

    def ok(path: Path) -> bool:
        return {p.name for p in path.iterdir()} <= set(names)

    return ok


LOSS_FILES = _only("loss.json", "loss.csv", "loss_by_position.png")
NIAH_FILES = _only("niah.json", "niah_heatmap.png")


def _old_export(path: Path) -> bool:
    """legacy_ok for an export of an older cogqa (no marker): a Hugging Face directory and nothing else."""
    names = {p.name for p in path.iterdir()}
    hf = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    return (
        "config.json" in names
        and "model.safetensors" in names
        and all(n in hf or n.endswith((".json", ".txt", ".model")) for n in names)
    )


def _loss_of_models(args, chunks, contexts: list[int], names: list[str]) -> dict:
    """Per model name: its checkpoint, loss by position and at each context (nats/token), chunk losses, mean and
    standard error; one model in memory at a time."""
    from ..evaluate import check_data_tokenizer, checkpoints_to_score, evaluate_chunks, load_for_eval, loss_at_contexts

    results = {}
    for name in names:
        path = checkpoints_to_score(name, 1)[-1]  # a run directory: its newest checkpoint
        model, _, context = load_for_eval(path, args.device, args.dtype, args.max_seq_len, need=chunks.context)
        _check_context(name, chunks.context, context, "--data")
        check_data_tokenizer(path, model, chunks.manifest, args.data)
        r = evaluate_chunks(
            model, chunks, max_chunks=args.max_chunks, batch=args.batch, position_block=args.position_block
        )
        results[name] = {
            "checkpoint": str(path),
            "position_loss": r.position.tolist(),
            "context_loss": loss_at_contexts(r.position, contexts),
            "chunk_loss": r.chunk.tolist(),
            "mean_loss": r.mean,
            "standard_error": r.standard_error,
        }
        del model
    return results


def _loss_rows(results: dict, names: list[str], contexts: list[int], baseline: str | None) -> list[dict]:
    """One row per (model, context): loss (nats/token) and its relative difference to ``baseline`` (or None)."""
    from ..evaluate import relative_delta

    rows = []
    for name in names:
        for T in contexts:
            L = results[name]["context_loss"][T]
            d = float(relative_delta(L, results[baseline]["context_loss"][T])) if baseline else None
            rows.append({"model": name, "context": T, "loss_nats_per_token": L, "delta_rel": d})
    return rows


def _print_loss(rows: list[dict], results: dict, names: list[str], chunk_tokens: int) -> None:
    print(f"{'model':40s} {'context (tokens)':>16s} {'loss (nats/token)':>18s} {'ΔL (%)':>8s}")
    for r in rows:
        d = "" if r["delta_rel"] is None else f"{100 * r['delta_rel']:+.3f}"
        print(f"{r['model'][-40:]:40s} {r['context']:16d} {r['loss_nats_per_token']:18.4f} {d:>8s}")
    for name in names:
        n = len(results[name]["chunk_loss"])
        print(
            f"{name[-40:]}: mean {results[name]['mean_loss']:.4f} ± {results[name]['standard_error']:.4f} "
            f"nats/token (standard error over {n} chunks of {chunk_tokens} tokens)"
        )


def _write_loss_dir(out: Path, rows: list[dict], results: dict, names: list[str], overwrite: bool) -> None:
    """``out``/loss.json, loss.csv and loss_by_position.png, swapped in as one directory."""
    import numpy as np

    def build(tmp: Path) -> None:
        write_text_atomic(tmp / "loss.json", json.dumps({"rows": rows, "positions": results}, indent=1))
        write_text_atomic(
            tmp / "loss.csv",
            "model,context_tokens,loss_nats_per_token,delta_rel\n"
            + "".join(
                f"{r['model']},{r['context']},{r['loss_nats_per_token']},"
                f"{'' if r['delta_rel'] is None else r['delta_rel']}\n"
                for r in rows
            ),
        )
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        for name in names:
            pos = np.asarray(results[name]["position_loss"])
            ax.plot(np.arange(1, len(pos) + 1), pos, label=Path(name).name)
        ax.set_xlabel("token position (tokens of context)")
        ax.set_ylabel("loss (nats/token)")
        ax.legend()
        save_figure(fig, tmp / "loss_by_position.png", dpi=100)

    write_output_dir(out, "eval loss", build, overwrite, legacy_ok=LOSS_FILES)
    print(f"wrote {out}/loss.csv, loss.json, loss_by_position.png")


def cmd_eval_loss(args) -> int:
    from ..data import TokenChunks

    if args.out:  # refused before the evaluation, not after it
        check_output_dir(args.out, "eval loss", args.overwrite, legacy_ok=LOSS_FILES)
    chunks = TokenChunks(args.data, split=args.split)
    contexts = parse_contexts(args.contexts) if args.contexts else [chunks.context]
    require(args.max_chunks >= 1, f"--max-chunks must be >= 1, got {args.max_chunks}")
    names = list(args.models) + ([args.baseline] if args.baseline and args.baseline not in args.models else [])
    results = _loss_of_models(args, chunks, contexts, names)
    rows = _loss_rows(results, names, contexts, args.baseline)
    _print_loss(rows, results, names, chunks.context)
    if args.out:
        _write_loss_dir(Path(args.out), rows, results, names, args.overwrite)
    return 0


def make_generate_fn(model, tok):
    """A callable (prompt, max_new_tokens) -> generated text (greedy), on the model's device."""
    import torch

    device = next(model.parameters()).device

    def gen(prompt, n):
        ids = torch.tensor([tok.encode(prompt)], dtype=torch.long, device=device)
        with torch.no_grad():
            if hasattr(model, "max_seq_len"):
                out = model.generate(ids, max_new_tokens=n)
            else:
                out = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=n,
                    do_sample=False,
                    pad_token_id=getattr(tok, "eos_token_id", None) or 0,
                )
        return tok.decode(out[0, ids.shape[1] :].tolist())

    return gen


def _scored_models(args, need: int):
    """[(label, model, tokenizer, context)] for the eval command's model argument: the last-k checkpoints one at a
    time (a generator: one model in memory), or their weight average with --average-weights."""
    from ..checkpoint import average_weights
    from ..evaluate import checkpoints_to_score, load_for_eval

    chosen = checkpoints_to_score(args.model, args.last_k)
    if args.average_weights:
        require(len(chosen) >= 2, "--average-weights needs at least 2 checkpoints (--last-k)")
        import tempfile

        from ..checkpoint import save_model
        from ..evaluate import CONTEXT_METADATA, checkpoint_context

        with tempfile.TemporaryDirectory() as tmp:
            ctx = checkpoint_context(chosen[-1])
            save_model(
                average_weights(chosen), Path(tmp) / "avg", extra_metadata={CONTEXT_METADATA: ctx} if ctx else None
            )
            model, tok, context = load_for_eval(Path(tmp) / "avg", args.device, args.dtype, args.max_seq_len, need)
        yield "weight average of " + "+".join(p.name for p in chosen), model, tok, context
        return
    for p in chosen:
        model, tok, context = load_for_eval(p, args.device, args.dtype, args.max_seq_len, need)
        yield p.name, model, tok, context


def cmd_eval_niah(args) -> int:
    from ..niah import TASKS, check_depths, check_tasks, essay_words, heatmap, mean_rows, run_niah

    if args.out:  # refused before the evaluation, not after it
        check_output_dir(args.out, "eval niah", args.overwrite, legacy_ok=NIAH_FILES)
    depths = check_depths(float(d) for d in args.depths.split(","))
    contexts = parse_contexts(args.contexts)
    tasks = check_tasks(t for t in args.tasks.split(",") if t)
    essay = None
    if any(TASKS[t][0] == "essay" for t in tasks):
        path = args.haystack_file
        if path is None:
            from ..data import offline_corpus

            path = offline_corpus()
        require(Path(path).is_file(), f"--haystack-file: {path} is not a file")
        essay = essay_words(Path(path).read_text(errors="replace"))
    per_model = {}
    for label, model, tok, context in _scored_models(args, max(contexts)):
        if tok is None:
            from ..tokenizer import get_tokenizer

            tok = get_tokenizer(args.tokenizer)
            vocab = int(model.shape.vocab_size)
            require(
                vocab == tok.padded_vocab_size,
                f"--tokenizer {args.tokenizer}: padded vocabulary {tok.padded_vocab_size}, but {label} has vocabulary "
                f"{vocab}: it was trained with another tokenizer; pass that one with --tokenizer",
            )
        for T in contexts:
            _check_context(label, T, context)
        per_model[label] = run_niah(
            make_generate_fn(model, tok), tok, tasks, contexts, depths, essay, samples=args.samples, seed=args.seed
        )
        print(f"{label}: mean accuracy {100 * _mean_acc(per_model[label]):.1f} %")
        del model
    rows = mean_rows(list(per_model.values()))
    n = len(per_model)
    print(
        f"S-NIAH accuracy (%), mean over {len(tasks)} task(s) x {len(depths)} depth(s)"
        + (f" x {n} checkpoints (each above)" if n > 1 else "")
    )
    print(f"{'context (tokens)':>16s} " + " ".join(f"{t:>14s}" for t in tasks) + f" {'mean':>8s}")
    for T in contexts:
        cells = [_mean_acc([r for r in rows if r["context"] == T and r["task"] == t]) for t in tasks]
        print(f"{T:16d} " + " ".join(f"{100 * c:14.1f}" for c in cells) + f" {100 * sum(cells) / len(cells):8.1f}")
    print(f"{'all':>16s} {'':{15 * len(tasks)}s}{100 * _mean_acc(rows):8.1f}")
    if args.out:
        out = Path(args.out)
        record = {"rows": rows, "per_checkpoint": per_model, "mean_accuracy": _mean_acc(rows)}

        def build(tmp: Path) -> None:
            write_text_atomic(tmp / "niah.json", json.dumps(record, indent=1))
            heatmap(rows, tmp / "niah_heatmap.png", title=f"S-NIAH accuracy, mean of {', '.join(tasks)}")

        write_output_dir(out, "eval niah", build, args.overwrite, legacy_ok=NIAH_FILES)
        print(f"wrote {out}/niah.json, niah_heatmap.png")
    return 0


def _mean_acc(rows) -> float:
    return sum(r["accuracy"] for r in rows) / len(rows)


def harness_command(export_dir, tasks, batch_size="auto", device="cpu", dtype=None) -> list[str]:
    """The equivalent lm_eval command line for ``export_dir``:
    ``lm_eval --model hf --model_args pretrained=EXPORT_DIR[,dtype=D] --tasks T1,T2 --batch_size auto --device cpu``."""
    model_args = f"pretrained={export_dir}" + (f",dtype={dtype}" if dtype else "")
    return [
        "lm_eval",
        "--model",
        "hf",
        "--model_args",
        model_args,
        "--tasks",
        ",".join(tasks),
        "--batch_size",
        str(batch_size),
        "--device",
        device,
    ]


def _harness_tasks(args):
    """The checked ``--tasks`` list (default: the paper's) and lm_eval's TaskManager that knows them."""
    from ..harness import PAPER_TASKS

    tasks = [t for t in args.tasks.split(",") if t] if args.tasks else list(PAPER_TASKS)
    require(bool(tasks), "--tasks: give at least one task name, e.g. hellaswag,arc_easy")
    require(
        args.include_path is None or Path(args.include_path).is_dir(),
        f"--include-path: {args.include_path} is not a directory of task YAML files",
    )
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=args.include_path)
    known = set(manager.all_tasks)
    bad = [t for t in tasks if t not in known]
    require(not bad, f"--tasks: unknown task name(s) {', '.join(bad)}; see `lm_eval --tasks list`")
    return tasks, manager


def _harness_targets(args, chosen: list[Path]) -> list[tuple[str, Path]]:
    """[(label, Hugging Face directory)] to evaluate: a Hugging Face model as it is, else each chosen cogqa
    checkpoint (or their weight average) exported under ``--export-dir``."""
    is_hf = not (chosen[0] / "shape.json").is_file()
    require(not (is_hf and args.average_weights), "--average-weights: needs cogqa checkpoints of a training run")
    if is_hf:
        return [(chosen[0].name, chosen[0])]
    from ..checkpoint import average_weights, load_model
    from ..hf import export_hf

    export_root = Path(args.export_dir or Path(args.checkpoint_dir) / "hf_eval")
    groups = (
        [("weight average of " + "+".join(p.name for p in chosen), chosen)]
        if args.average_weights
        else [(p.name, [p]) for p in chosen]
    )
    targets = []
    for label, paths in groups:
        model = average_weights(paths) if len(paths) > 1 else load_model(paths[0])
        target = export_root if len(groups) == 1 else export_root / paths[0].name
        write_output_dir(  # its own scratch export is replaced; a directory of someone else's never
            target,
            "eval harness",
            lambda tmp, model=model: export_hf(model, tmp, tokenizer=args.tokenizer),
            overwrite=True,
            field="--export-dir",
            legacy_ok=_old_export,
            inputs=tuple(paths),
        )
        targets.append((label, target))
        print(f"exported {label} -> {target}")
    return targets


def _print_harness(summaries: dict) -> dict:
    """Print the per-task scores averaged over checkpoints and the accuracy average (%); returns that mean."""
    from ..harness import ACCURACY_TASKS, mean_over_checkpoints

    total = mean_over_checkpoints(summaries)
    n = len(summaries)
    print(f"{'task':18s} {'metric':16s} {'score':>10s}" + ("   (mean of " + str(n) + " checkpoints)" if n > 1 else ""))
    for task, s in total["tasks"].items():
        value = f"{100 * s['value']:9.2f}%" if s["kind"] == "accuracy" else f"{s['value']:10.3f}"
        print(f"{task:18s} {s['metric']:16s} {value}")
    label = "8-task average" if sorted(total["average_tasks"]) == sorted(ACCURACY_TASKS) else "average"
    print(
        f"{label} ({', '.join(total['average_tasks'])}): {100 * total['average']:.2f} % "
        "(acc_norm where reported, else acc)"
    )
    return total


def cmd_eval_harness(args) -> int:
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise CogqaError("lm-evaluation-harness is not installed; run: pip install lm-eval")
    from ..evaluate import checkpoints_to_score, resolve_device, resolve_dtype
    from ..harness import run_lm_eval, summarize
    from ..model import dtype_name

    if args.out:  # refused before the evaluation, not after it
        check_output_file(args.out, args.overwrite, "--out", ours=json_file_with("mean", "per_checkpoint"))
    tasks, manager = _harness_tasks(args)
    device = resolve_device(args.device)
    dtype = dtype_name(resolve_dtype(args.dtype, device))
    targets = _harness_targets(args, checkpoints_to_score(args.checkpoint_dir, args.last_k))
    for _label, target in targets:
        hf_dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype]
        print(" ".join(harness_command(target, tasks, args.batch_size, str(device), hf_dtype)))
    if args.dry_run:
        return 0
    summaries = {}
    for label, target in targets:
        results = run_lm_eval(
            target, tasks, str(device), dtype, args.batch_size, args.limit, args.include_path, manager
        )
        summaries[label] = summarize(results)
        s = summaries[label]
        print(f"{label}: average {100 * s['average']:.2f} % over {len(s['average_tasks'])} accuracy task(s)")
    total = _print_harness(summaries)
    if args.out:
        write_text_atomic(Path(args.out), json.dumps({"mean": total, "per_checkpoint": summaries}, indent=1))
        print(f"wrote {args.out}")
    return 0


def register(sub) -> None:
    """Register the ``eval`` command group."""
    ev = sub.add_parser("eval", help="evaluate models: loss by context length, needle-in-a-haystack, lm-eval harness")
    es = ev.add_subparsers(dest="eval_command", metavar="EVAL")
    es.required = True
    p = es.add_parser("loss", help="loss by token position and context length; ΔL(T) vs a baseline")
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="cogqa checkpoints, training runs (their newest checkpoint) or local Hugging Face model directories",
    )
    p.add_argument("--data", required=True, help="prepared data directory (cogqa data prepare)")
    p.add_argument("--split", default="val", help="data split to evaluate on (default val)")
    p.add_argument("--contexts", default=None, help="evaluation context lengths, e.g. 1k,2k,4k (tokens)")
    p.add_argument(
        "--baseline", default=None, metavar="MODEL", help="model the relative loss difference ΔL(T) is taken against"
    )
    p.add_argument("--max-chunks", type=int, default=64, help="evaluate on at most this many chunks (default 64)")
    p.add_argument("--batch", type=int, default=1, help="chunks per forward pass (default 1)")
    p.add_argument(
        "--position-block",
        type=int,
        default=1024,
        help="positions whose logits are held at once (default 1024; memory O(block x vocab))",
    )
    _device_args(p)
    p.add_argument("--out", default=None, help="directory for loss.csv, loss.json, loss_by_position.png")
    p.add_argument("--overwrite", action="store_true", help="replace --out if an earlier cogqa eval wrote it")
    p.set_defaults(func=cmd_eval_loss)
    average_help = "score one model with the mean weights of the last K checkpoints instead (not the paper's method)"
    last_k_help = (
        "score each of the last K checkpoints of a training run and report the mean and each "
        "(default 4, the paper's Appendix J.2; a checkpoint or HF directory is one model)"
    )
    p = es.add_parser("niah", help="RULER's single-needle S-NIAH tasks by context length and depth")
    p.add_argument("model", help="a training run, a cogqa checkpoint or a local Hugging Face model directory")
    p.add_argument(
        "--tasks",
        default="niah_single_1,niah_single_2,niah_single_3",
        help="RULER tasks (default all three: niah_single_1,niah_single_2,niah_single_3)",
    )
    p.add_argument("--contexts", default="1k,2k", help="prompt lengths in tokens (default 1k,2k)")
    p.add_argument("--depths", default="0,25,50,75,100", help="needle depths in %% of the haystack, in [0, 100]")
    p.add_argument(
        "--haystack-file",
        default=None,
        help="text of the essay haystack (default: the offline corpus, the King James Bible)",
    )
    p.add_argument("--samples", type=int, default=4, help="prompts per (task, context, depth) cell (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of keys and values (default 0)")
    p.add_argument("--tokenizer", default="gpt2", help="tokenizer for cogqa checkpoints (default gpt2)")
    p.add_argument("--last-k", type=int, default=None, help=last_k_help)
    p.add_argument("--average-weights", action="store_true", help=average_help)
    _device_args(p)
    p.add_argument("--out", default=None, help="directory for niah.json and niah_heatmap.png")
    p.add_argument("--overwrite", action="store_true", help="replace --out if an earlier cogqa eval wrote it")
    p.set_defaults(func=cmd_eval_niah)
    p = es.add_parser("harness", help="the paper's common-sense tasks through lm-eval, last-k checkpoints")
    p.add_argument("checkpoint_dir", help="a training run, a cogqa checkpoint or a local Hugging Face model directory")
    p.add_argument("--last-k", type=int, default=None, help=last_k_help)
    p.add_argument("--average-weights", action="store_true", help=average_help)
    p.add_argument("--tasks", default=None, help="lm-eval tasks (default the paper's: " + PAPER_TASKS_HELP + ")")
    p.add_argument("--include-path", default=None, help="a folder of extra lm-eval task YAML files")
    p.add_argument("--limit", type=int, default=None, help="examples per task (default all)")
    p.add_argument("--export-dir", default=None, help="where the Hugging Face exports go (default RUN/hf_eval)")
    p.add_argument("--tokenizer", default="gpt2", help="tokenizer written with the export (default gpt2)")
    p.add_argument("--batch-size", default="auto", help="lm-eval batch size (default auto)")
    p.add_argument("--device", default="auto", help=f"device: {DEVICE_HELP}; default auto")
    p.add_argument("--dtype", default="auto", help=f"weights dtype: {DTYPE_HELP}; default auto")
    p.add_argument("--out", default=None, help="JSON file for the scores (mean and per checkpoint)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if an earlier cogqa eval wrote it")
    p.add_argument("--dry-run", action="store_true", help="export and print the lm_eval command without running it")
    p.set_defaults(func=cmd_eval_harness)
