"""Common-sense evaluation as the paper ran it (Appendix J.2) through lm-evaluation-harness.

The paper's tasks: ARC-Challenge, ARC-Easy, BoolQ, HellaSwag, LAMBADA, PIQA, SocialIQA and
Winograd, averaged (Table 5's "common-sense"), plus WikiText, reported as perplexity and left out
of the average. "When available, we use the normalized accuracy": the score of a task is its
``acc_norm`` when lm-eval reports one (arc_challenge, arc_easy, hellaswag, piqa) and ``acc``
otherwise (boolq, lambada_openai, social_iqa, wsc273). lm-eval task names: LAMBADA is
``lambada_openai`` (the OpenAI detokenised split GPT-style evaluations use) and Winograd is
``wsc273`` (the 273-problem Winograd Schema Challenge, not Winogrande).
"""

from __future__ import annotations

import math

from .errors import require

ACCURACY_TASKS = ("arc_challenge", "arc_easy", "boolq", "hellaswag", "lambada_openai", "piqa", "social_iqa", "wsc273")
PERPLEXITY_TASKS = ("wikitext",)
PAPER_TASKS = ACCURACY_TASKS + PERPLEXITY_TASKS
#: preferred metric keys of lm-eval results, best first (acc_norm when available, as the paper)
ACCURACY_METRICS = ("acc_norm", "acc", "exact_match")
PERPLEXITY_METRICS = ("word_perplexity", "perplexity")


def task_score(metrics: dict) -> tuple[str, float, str]:
    """(metric name, value, kind) of one task's lm-eval results: kind ``accuracy`` (a fraction 0..1, acc_norm
    preferred over acc) or ``perplexity`` (per word); a one-line error if neither is reported."""
    plain = {k.split(",")[0]: v for k, v in metrics.items() if isinstance(v, (int, float)) and "_stderr" not in k}
    for name in ACCURACY_METRICS:
        if name in plain:
            return name, float(plain[name]), "accuracy"
    for name in PERPLEXITY_METRICS:
        if name in plain:
            return name, float(plain[name]), "perplexity"
    require(False, f"lm-eval results carry no accuracy or perplexity metric (got {sorted(plain)})")


def summarize(results: dict) -> dict:
    """Scores of one model from lm-eval's ``results`` section ({task: {metric: value}}): {"tasks": {task:
    {metric, value, kind}}, "average": mean accuracy over the accuracy tasks (fraction), "average_tasks": [...]}."""
    tasks = {}
    for task, metrics in results.items():
        name, value, kind = task_score(metrics)
        tasks[task] = {"metric": name, "value": value, "kind": kind}
    acc = [t for t, s in tasks.items() if s["kind"] == "accuracy"]
    average = sum(tasks[t]["value"] for t in acc) / len(acc) if acc else math.nan
    return {"tasks": tasks, "average": average, "average_tasks": acc}


def mean_over_checkpoints(summaries: dict) -> dict:
    """The paper's last-k score: each task's value and the average, as the mean over checkpoints
    ({name: summary} -> summary of means, with ``checkpoints`` listing the names)."""
    require(bool(summaries), "no checkpoint was scored")
    first = next(iter(summaries.values()))
    tasks = {}
    for task, s in first["tasks"].items():
        values = [m["tasks"][task]["value"] for m in summaries.values()]
        tasks[task] = {**s, "value": sum(values) / len(values)}
    averages = [m["average"] for m in summaries.values()]
    return {
        "tasks": tasks,
        "average": sum(averages) / len(averages),
        "average_tasks": first["average_tasks"],
        "checkpoints": list(summaries),
    }


def run_lm_eval(
    hf_dir, tasks, device: str, dtype: str, batch_size="auto", limit=None, include_path=None, task_manager=None
) -> dict:
    """lm-eval's ``results`` section ({task: {metric: value}}) for the transformers directory ``hf_dir`` (zero-shot,
    in this process, offline); ``limit`` caps the examples per task; ``include_path`` adds a folder of task YAMLs
    (or pass a ready lm-eval ``task_manager``: building one indexes every task, seconds)."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager

    hf_dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(dtype, dtype)
    out = evaluator.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(hf_dir), "dtype": hf_dtype},
        tasks=list(tasks),
        device=device,
        batch_size=batch_size,
        limit=limit,
        task_manager=task_manager or TaskManager(include_path=include_path),
        log_samples=False,
        bootstrap_iters=0,
    )
    return {t: out["results"][t] for t in tasks if t in out["results"]}
