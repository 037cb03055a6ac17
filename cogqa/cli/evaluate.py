"""``cogqa eval loss|niah|harness``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import CogqaError, require
from ..files import save_figure, write_text_atomic
from ..units import parse_contexts




def load_any(path: str):
    """(model, tokenizer-or-None) from a cogqa checkpoint directory or a local Hugging Face directory."""
    p = Path(path)
    require(p.is_dir(), f"model {path!r} is not a directory; give a cogqa checkpoint or a local Hugging Face model dir")
    if (p / "shape.json").exists():
        from ..checkpoint import load_model
        return load_model(p), None
    require((p / "config.json").exists(), f"{path}: neither shape.json (cogqa) nor config.json (Hugging Face) found")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(p)
    try:
        tok = AutoTokenizer.from_pretrained(p)
    except Exception:
        tok = None
    return model, tok


def cmd_loss(args) -> int:
    import numpy as np
    from ..evaluate import evaluate_positions, loss_at_contexts, model_max_context, relative_delta
    from ..data import TokenChunks
    chunks = TokenChunks(args.data, split=args.split)
    contexts = parse_contexts(args.contexts) if args.contexts else [chunks.context]
    names = list(args.models) + ([args.baseline] if args.baseline and args.baseline not in args.models else [])
    results = {}
    for name in names:
        model, _ = load_any(name)
        for T in contexts:
            require(T <= model_max_context(model),
                    f"--contexts: {T} tokens is longer than {name} supports ({model_max_context(model)} tokens)")
        pos = evaluate_positions(model, chunks, max_chunks=args.max_chunks)
        results[name] = {"position_loss": pos.tolist(), "context_loss": loss_at_contexts(pos, contexts)}
    rows = []
    for name in names:
        for T in contexts:
            L = results[name]["context_loss"][T]
            d = float(relative_delta(L, results[args.baseline]["context_loss"][T])) if args.baseline else None
            rows.append({"model": name, "context": T, "loss_nats_per_token": L, "delta_rel": d})
    print(f"{'model':40s} {'context (tokens)':>16s} {'loss (nats/token)':>18s} {'ΔL (%)':>8s}")
    for r in rows:
        d = "" if r["delta_rel"] is None else f"{100 * r['delta_rel']:+.3f}"
        print(f"{r['model'][-40:]:40s} {r['context']:16d} {r['loss_nats_per_token']:18.4f} {d:>8s}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "loss.json", json.dumps({"rows": rows, "positions": results}, indent=1))
        write_text_atomic(out / "loss.csv", "model,context_tokens,loss_nats_per_token,delta_rel\n" + "".join(
            f"{r['model']},{r['context']},{r['loss_nats_per_token']},{'' if r['delta_rel'] is None else r['delta_rel']}\n" for r in rows))
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
        save_figure(fig, out / "loss_by_position.png", dpi=100)
        print(f"wrote {out}/loss.csv, loss.json, loss_by_position.png")
    return 0


def make_generate_fn(model, tok):
    """A callable (prompt, max_new_tokens) -> generated text using greedy decoding."""
    import torch

    def gen(prompt, n):
        ids = torch.tensor([tok.encode(prompt)], dtype=torch.long)
        with torch.no_grad():
            if hasattr(model, "max_seq_len"):
                out = model.generate(ids, max_new_tokens=n)
            else:
                out = model.generate(ids, max_new_tokens=n, do_sample=False)
        return tok.decode(out[0, ids.shape[1]:].tolist())
    return gen


def cmd_niah(args) -> int:
    from ..niah import check_depths, heatmap, run_niah
    from ..evaluate import model_max_context
    depths = check_depths(float(d) for d in args.depths.split(","))
    contexts = parse_contexts(args.contexts)
    hay, corpus_text = args.haystack, None
    if hay.startswith("corpus"):
        path = hay.split(":", 1)[1] if ":" in hay else None
        if path is None:
            from ..data import offline_corpus
            path = offline_corpus()
        corpus_text = Path(path).read_text(errors="replace")[:2_000_000]
        hay = "corpus"
    model, tok = load_any(args.model)
    if tok is None:
        from ..tokenizer import get_tokenizer
        tok = get_tokenizer(args.tokenizer)
    for T in contexts:
        require(T <= model_max_context(model), f"--contexts: {T} tokens is longer than the model supports ({model_max_context(model)} tokens)")
    rows = run_niah(make_generate_fn(model, tok), tok, contexts, depths, args.needle, hay, corpus_text,
                    samples=args.samples, max_new_tokens=args.max_new_tokens)
    print(f"{'context (tokens)':>16s} {'depth (%)':>9s} {'accuracy (%)':>12s}")
    for r in rows:
        print(f"{r['context']:16d} {r['depth']:9g} {100 * r['accuracy']:12.1f}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "niah.json", json.dumps(rows, indent=1))
        heatmap(rows, out / "niah_heatmap.png")
        print(f"wrote {out}/niah.json, niah_heatmap.png")
    return 0


def harness_command(export_dir, tasks, batch_size="auto", device="cpu") -> list[str]:
    """The lm_eval command line run on ``export_dir``:
    ``lm_eval --model hf --model_args pretrained=EXPORT_DIR --tasks T1,T2 --batch_size auto --device cpu``."""
    return ["lm_eval", "--model", "hf", "--model_args", f"pretrained={export_dir}", "--tasks", ",".join(tasks),
            "--batch_size", str(batch_size), "--device", device]


def average_last_k(checkpoint_dir: Path, k: int):
    """A cogqa model whose weights are the mean of the last ``k`` checkpoints under ``checkpoint_dir``."""
    from ..checkpoint import load_model
    root = checkpoint_dir / "checkpoints" if (checkpoint_dir / "checkpoints").is_dir() else checkpoint_dir
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    if not steps and (checkpoint_dir / "shape.json").exists():
        steps = [checkpoint_dir]
    require(len(steps) >= 1, f"{checkpoint_dir}: no checkpoints (step_*/) found")
    chosen = steps[-k:]
    model = load_model(chosen[0])
    sd = {n: t.double().clone() for n, t in model.state_dict().items()}
    for p in chosen[1:]:
        for n, t in load_model(p).state_dict().items():
            sd[n] += t.double()
    model.load_state_dict({n: (t / len(chosen)).to(model.state_dict()[n].dtype) for n, t in sd.items()})
    return model, chosen


def cmd_harness(args) -> int:
    import importlib.util
    import subprocess
    if importlib.util.find_spec("lm_eval") is None:
        raise CogqaError("lm-evaluation-harness is not installed; run: pip install lm-eval")
    tasks = [t for t in args.tasks.split(",") if t]
    require(bool(tasks), "--tasks: give at least one task name, e.g. hellaswag,arc_easy")
    try:
        from lm_eval.tasks import TaskManager
        known = set(TaskManager().all_tasks)
        bad = [t for t in tasks if t not in known]
        require(not bad, f"--tasks: unknown task name(s) {', '.join(bad)}; see `lm_eval --tasks list`")
    except ImportError:
        pass
    model, chosen = average_last_k(Path(args.checkpoint_dir), args.last_k)
    from ..hf import export_hf
    export_dir = Path(args.export_dir or Path(args.checkpoint_dir) / f"hf_avg_last{len(chosen)}")
    export_hf(model, export_dir, tokenizer=args.tokenizer)
    cmd = harness_command(export_dir, tasks, args.batch_size, args.device)
    print("averaged " + ", ".join(p.name for p in chosen) + f" -> {export_dir}")
    print(" ".join(cmd))
    if args.dry_run:
        return 0
    return subprocess.call(cmd)


def register(sub) -> None:
    """Register the ``eval`` command group."""
    ev = sub.add_parser("eval", help="evaluate models: loss by context length, needle-in-a-haystack, lm-eval harness")
    es = ev.add_subparsers(dest="eval_command", metavar="EVAL")
    es.required = True
    p = es.add_parser("loss", help="loss by token position and context length; ΔL(T) vs a baseline")
    p.add_argument("models", nargs="+", metavar="MODEL", help="cogqa checkpoint directories or local Hugging Face model directories")
    p.add_argument("--data", required=True, help="prepared data directory (cogqa data prepare)")
    p.add_argument("--split", default="val", help="data split to evaluate on (default val)")
    p.add_argument("--contexts", default=None, help="evaluation context lengths, e.g. 1k,2k,4k (tokens)")
    p.add_argument("--baseline", default=None, metavar="MODEL", help="model the relative loss difference ΔL(T) is taken against")
    p.add_argument("--max-chunks", type=int, default=64, help="evaluate on at most this many chunks per context (default 64)")
    p.add_argument("--out", default=None, help="directory for loss.csv, loss.json, loss_by_position.png")
    p.set_defaults(func=cmd_loss)
    p = es.add_parser("niah", help="RULER-style single needle in a haystack")
    p.add_argument("model", help="a cogqa checkpoint directory or a local Hugging Face model directory")
    p.add_argument("--contexts", default="1k,2k", help="prompt lengths in tokens (default 1k,2k)")
    p.add_argument("--depths", default="0,25,50,75,100", help="needle depths in %% of the haystack, in [0, 100]")
    p.add_argument("--needle", default="words", help="kind of needle value: words, numbers or uuids (default words)")
    p.add_argument("--haystack", default="noise", help="noise, corpus or corpus:PATH")
    p.add_argument("--samples", type=int, default=4, help="samples per (context, depth) cell (default 4)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="greedy tokens generated per answer (default 16)")
    p.add_argument("--tokenizer", default="gpt2", help="tokenizer for cogqa checkpoints")
    p.add_argument("--out", default=None, help="directory for niah.json and niah_heatmap.png")
    p.set_defaults(func=cmd_niah)
    p = es.add_parser("harness", help="average the last k checkpoints, export to HF, run lm_eval")
    p.add_argument("checkpoint_dir")
    p.add_argument("--last-k", type=int, default=4)
    p.add_argument("--tasks", default="hellaswag,arc_easy,arc_challenge,piqa,winogrande")
    p.add_argument("--export-dir", default=None)
    p.add_argument("--tokenizer", default="gpt2")
    p.add_argument("--batch-size", default="auto")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dry-run", action="store_true", help="export and print the lm_eval command without running it")
    p.set_defaults(func=cmd_harness)
