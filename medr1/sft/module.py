"""Supervised fine-tuning baseline on the same data, prompts and evaluation as GRPO.

The target is `<answer> X </answer>` (or think + answer where the data has reasoning) tokenised as a
completion; the loss is the mean negative log-likelihood of the target tokens only, the prompt being
masked. Med-R1's SFT script trained on the literal string "None" as reasoning and on the prompt;
neither happens here.
"""

from __future__ import annotations

from medr1.sft.loss import target_nll
from medr1.vqa_module import VQAModule


class SFTModule(VQAModule):
    def training_step(self, batch, batch_idx):
        loss, tokens = target_nll(self.model, batch)
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=len(batch))
        self.log("train/target_tokens", float(tokens), on_step=True, batch_size=len(batch))
        return loss
