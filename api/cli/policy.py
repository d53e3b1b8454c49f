"""``espalier policy train``: a policy update (RL against the reward model, or DPO) with a progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from espalier.api.cli.common import console, platform
from espalier.api.cli.progress import follow_job
from espalier.core.infrastructure.errors import EspalierError

policy_app = typer.Typer(help="Policy updates: LoRA fine-tunes of a chat model from feedback.", no_args_is_help=True)


@policy_app.command("train")
def train(
    method: Annotated[
        str,
        typer.Option(
            help="rl (against the reward model, KL-penalised), dpo (on pairs), rsft (best of n samples, "
            "then fine-tuning) or sft (on curated demonstrations and corrections)."
        ),
    ] = "rl",
    model: Annotated[str | None, typer.Option(help="Registered chat model; default: the default model.")] = None,
    reward_model: Annotated[
        str | None, typer.Option(help="Reward model version or id; default: the current one.")
    ] = None,
    steps: Annotated[
        int | None, typer.Option(help="Step budget (default 60 for rl, rsft and sft, 20 for dpo).")
    ] = None,
    learning_rate: Annotated[
        float | None, typer.Option(help="LoRA learning rate (2e-3 for rl, 5e-4 for rsft and sft, 1e-4 for dpo).")
    ] = None,
    lora_rank: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    beta: Annotated[float | None, typer.Option(help="KL coefficient (default 0.04 for rl, 0.1 for dpo).")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Prompts (rl: 2), pairs (dpo: 4) or examples (rsft, sft: 8) per step.")
    ] = None,
    num_generations: Annotated[int | None, typer.Option(help="rl: completions per prompt (4).")] = None,
    max_completion_tokens: Annotated[
        int | None, typer.Option(help="Tokens per sampled completion (12 for rl, else 32).")
    ] = None,
    prompts: Annotated[Path | None, typer.Option(help="JSONL or text file of prompts.")] = None,
    prompt: Annotated[list[str] | None, typer.Option(help="A prompt (repeatable).")] = None,
    from_conversations: Annotated[int, typer.Option(help="Use up to this many prompts from logged chats.")] = 0,
    max_prompts: Annotated[int, typer.Option(help="At most this many prompts.")] = 500,
    prompt_format: Annotated[str, typer.Option(help="chat (the chat template) or text (plain continuation).")] = "chat",
    toxicity_weight: Annotated[
        float | None,
        typer.Option(help="rl, rsft, sampled dpo: subtract weight x toxicity (1 rl, 2 rsft, else 0)."),
    ] = None,
    target_reward: Annotated[float | None, typer.Option(help="Stop once the recent mean reward reaches this.")] = None,
    eval_prompts: Annotated[int, typer.Option(help="Prompts held out to measure base and policy.")] = 8,
    min_pairs: Annotated[int, typer.Option(help="dpo: refuse fewer pairs than this.")] = 8,
    pairs: Annotated[
        str,
        typer.Option(
            help="dpo: 'store' (the pairs held) or 'sampled' (best vs worst of the policy's own samples by the reward)."
        ),
    ] = "store",
    samples_per_prompt: Annotated[
        int, typer.Option(help="dpo with sampled pairs, rsft: completions sampled per prompt.")
    ] = 4,
    max_kept_toxicity: Annotated[
        float | None, typer.Option(help="rsft: a prompt whose best sample is still this toxic keeps none.")
    ] = None,
    toxicity_scorer: Annotated[
        str | None,
        typer.Option(help="The guardrail scorer the toxicity penalty uses; default: detoxify when served."),
    ] = None,
    label: Annotated[str | None, typer.Option(help="Version label of the result.")] = None,
    budget: Annotated[
        float | None, typer.Option(help="Minutes the run may take: sampling and training stop in time.")
    ] = None,
    sft_path: Annotated[Path | None, typer.Option(help="sft: JSONL of curated demonstrations.")] = None,
    include_corrections: Annotated[bool, typer.Option(help="sft: train on users' corrections too.")] = True,
) -> None:
    """Check the settings, run the job here (a running server lists it too) and register the result
    as a candidate version of the model (promote it to serve it)."""
    from espalier.core.sources.learning import policy

    params = {
        "method": method,
        "model": model,
        "reward_model": reward_model,
        "steps": steps,
        "learning_rate": learning_rate,
        "lora_rank": lora_rank,
        "beta": beta,
        "batch_size": batch_size,
        "num_generations": num_generations,
        "max_completion_tokens": max_completion_tokens,
        "prompts": list(prompt or []),
        "prompts_path": str(prompts.resolve()) if prompts else None,
        "prompts_from_conversations": from_conversations,
        "max_prompts": max_prompts,
        "prompt_format": prompt_format,
        "toxicity_weight": toxicity_weight,
        "target_reward": target_reward,
        "eval_prompts": eval_prompts,
        "min_pairs": min_pairs,
        "label": label,
        "pairs": pairs,
        "samples_per_prompt": samples_per_prompt,
        "max_kept_toxicity": max_kept_toxicity,
        "toxicity_scorer": toxicity_scorer,
        "budget_minutes": budget,
        "sft_path": str(sft_path.resolve()) if sft_path else None,
        "include_corrections": include_corrections if method == "sft" else None,
    }
    instance = platform().start(migrate=False, run_jobs=True)
    job = None
    try:
        job, plan = policy.submit(instance, {k: v for k, v in params.items() if v is not None}, by=None)
        summary = plan.summary()
        pairs = "pairs sampled by the job" if summary["pair_source"] == "sampled" else f"{summary['pairs']} pairs"
        console.print(
            f"job {job.id} ({job.kind}): model {summary['model']}, {summary['prompts']} prompts, "
            f"{pairs}, reward model {summary['reward_model'] or '-'}"
        )
        job = follow_job(instance.jobs, job)
    except KeyboardInterrupt:
        if job is not None:
            instance.jobs.cancel(job.id)
            console.print(f"cancelled {job.id}")
        raise
    finally:
        instance.close()
    if job.status != "succeeded":
        raise EspalierError(f"policy training {job.status}: {job.error or job.message}")
    result = job.result or {}
    table = Table("", "before", "after")
    for name in ("reward", "toxicity"):
        before, after = result.get("evaluation", {}).get("base", {}), result.get("evaluation", {}).get("policy", {})
        if name in before:
            table.add_row(f"mean {name}", f"{before[name]:.4f}", f"{after[name]:.4f}")
    kl = result.get("evaluation", {}).get("kl")
    if kl is not None:
        table.add_row("KL from reference", "0", f"{kl:.4f}")
    console.print(table)
    for warning in result.get("warnings", []):
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(
        f"registered {result.get('model')} version '{result.get('label')}' (candidate); "
        f"adapter {result.get('adapter')}; curves {result.get('plot')}"
    )
