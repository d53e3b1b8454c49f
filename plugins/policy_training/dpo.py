"""DPO directly on the preference pairs: TRL's DPOTrainer with a LoRA adapter (reference = the
adapter disabled).

Per step the job records DPO's loss, its implicit reward margin as ``reward``
(beta * [log-ratio of chosen - log-ratio of rejected]) and, every few steps, ``kl``: the KL from the
reference per token, estimated on completions sampled from the policy for two held-out prompts
(DPO itself never samples, so this is the only way to see drift as the RL path does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from espalier.core.policy import PolicySettings

from .common import RunLog, fit_messages, fit_text, make_callback, messages_from_transcript, quiet, sample


def dpo_rows(tokenizer: Any, pairs: list[Any], settings: PolicySettings) -> list[dict[str, Any]]:
    """Pairs in TRL's format, cut to fit: the prompt keeps its end, the replies their start."""
    rows = []
    for pair in pairs:
        chosen = fit_text(tokenizer, pair.chosen, settings.max_completion_tokens, keep="start")
        rejected = fit_text(tokenizer, pair.rejected, settings.max_completion_tokens, keep="start")
        if settings.prompt_format == "chat":
            prompt = fit_messages(tokenizer, messages_from_transcript(pair.prompt), settings.max_prompt_tokens)
            rows.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                         "rejected": [{"role": "assistant", "content": rejected}]})  # fmt: skip
        else:
            rows.append({"prompt": fit_text(tokenizer, pair.prompt, settings.max_prompt_tokens),
                         "chosen": " " + chosen.lstrip(), "rejected": " " + rejected.lstrip()})  # fmt: skip
    return rows


def train_dpo(model: Any, tokenizer: Any, pairs: list[Any], probe: list[Any], settings: PolicySettings, lora: Any,
              run: RunLog, out: Path) -> Any:  # fmt: skip
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    config = DPOConfig(
        output_dir=str(out / "trainer"), max_steps=settings.steps, learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size, gradient_accumulation_steps=1, beta=settings.effective_beta,
        max_length=settings.max_prompt_tokens + settings.max_completion_tokens + 32, logging_steps=1,
        save_strategy="no", report_to=[], bf16=False, gradient_checkpointing=False,
        use_cpu=not torch.cuda.is_available(), seed=settings.seed, data_seed=settings.seed, disable_tqdm=True,
        dataloader_num_workers=0,
    )  # fmt: skip
    probe_every = max(1, settings.steps // 10)

    def on_log(step: int, logs: dict[str, float], policy: Any) -> dict[str, float | None]:
        values = {"reward": logs.get("rewards/margins"), "loss": logs.get("loss"),
                  "accuracy": logs.get("rewards/accuracies"), "chosen": logs.get("rewards/chosen"),
                  "rejected": logs.get("rewards/rejected")}  # fmt: skip
        if probe and policy is not None and (step % probe_every == 0 or step == settings.steps):
            samples = sample(policy, tokenizer, probe, max_new_tokens=settings.max_completion_tokens,
                             temperature=settings.temperature, seed=settings.seed + step, with_kl=True)  # fmt: skip
            values["kl"] = sum(samples.kl) / max(1, sum(samples.tokens))
        return values

    trainer = DPOTrainer(model=model, ref_model=None, args=config,
                         train_dataset=Dataset.from_list(dpo_rows(tokenizer, pairs, settings)),
                         processing_class=tokenizer, peft_config=lora,
                         callbacks=[make_callback(run, on_log)])  # fmt: skip
    run.job.progress(0.05, f"training {settings.steps} steps on {len(pairs)} pairs")
    quiet(trainer)
    trainer.train()
    return trainer
