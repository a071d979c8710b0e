"""A tiny Llama-style language model (Hugging Face `LlamaForCausalLM`), trained on the wiki text in minutes on CPU.

What the SPD reference decomposes on language models are small Llama-style models of 1–4 layers
(RMSNorm, rotary attention, SwiGLU MLP) trained on simple text; this is that model at CPU scale:
d_model 64, 4 heads, MLP width 256, 1 or 2 layers, untied embeddings. Data, vocabulary and the
training loop are the MoE toy's (`moe_lm`): the wiki corpus in rows of 64 SmolLM2 tokens, the
2,047 most frequent tokens plus UNK (the model's `vocab` buffer maps our ids to SmolLM2's, so token
strings come from the SmolLM2 tokenizer), AdamW with warm-up and gradient clipping, a held-out loss
beside the unigram baseline. Module names are Hugging Face's (`model.layers.0.mlp.gate_proj`,
`model.layers.0.self_attn.q_proj`, ...), so every tool that reads a Llama reads this one.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from anatomist.core.errors import AnatomistError
from anatomist.nets.toys.base import ToyConfig
from anatomist.nets.toys.ground_truth import GroundTruth
from anatomist.nets.toys.moe_lm import MoELMConfig, random_rows, warmed_up


def _moe(name: str) -> Any:
    """The MoE toy's field `name` (default, bounds, description), to declare the same field here."""
    return MoELMConfig.model_fields[name]


class LlamaLMConfig(ToyConfig):
    """The tiny Llama: architecture, data and training recipe."""

    kind: Literal["llama_lm"] = Field(default="llama_lm", description="Toy family; selects the config class.")
    name: str = Field(default="llama-lm-1", description="Registry name of the toy; names the cache folder.")
    # the data and most of the recipe are the MoE toy's: the same fields, defaults and descriptions
    vocab_size: int = _moe("vocab_size")
    d_model: int = _moe("d_model")
    n_layers: int = Field(default=1, ge=1, description="decoder layers")
    n_heads: int = Field(default=4, ge=1, description="attention heads per layer (as many key/value heads)")
    d_mlp: int = Field(default=256, ge=1, description="hidden width of each SwiGLU MLP")
    seq_len: int = _moe("seq_len")
    n_test_seqs: int = _moe("n_test_seqs")
    warmup: int = _moe("warmup")
    steps: int = Field(default=600, gt=0, description="optimizer steps")
    batch_size: int = _moe("batch_size")
    lr: float = _moe("lr")
    lr_schedule: Literal["constant", "cosine"] = _moe("lr_schedule")
    weight_decay: float = _moe("weight_decay")

    max_cpu_threads: ClassVar[int | None] = 1  # small matrices: a second thread only adds OpenMP waits

    def lr_at(self, step: int) -> float:
        return warmed_up(self, step, super().lr_at(step))

    def build(self) -> nn.Module:
        """A fresh `LlamaForCausalLM` with a `vocab` buffer (our id -> SmolLM2 id, -1 for UNK)."""
        from transformers import LlamaConfig, LlamaForCausalLM  # a slow import, needed only here

        if self.d_model % self.n_heads:
            raise AnatomistError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        torch.manual_seed(self.seed)
        hf = LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.d_model,
            intermediate_size=self.d_mlp,
            num_hidden_layers=self.n_layers,
            num_attention_heads=self.n_heads,
            num_key_value_heads=self.n_heads,
            max_position_embeddings=self.seq_len,
            tie_word_embeddings=False,
            initializer_range=0.02,
        )
        hf._attn_implementation = "sdpa"
        model = LlamaForCausalLM(hf)
        model.register_buffer("vocab", torch.full((self.vocab_size,), -1, dtype=torch.long))
        return model

    def sample_batch(
        self, batch_size: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
    ) -> tuple[Tensor, Tensor]:
        """(inputs, next tokens): random training rows, our ids [batch, seq_len - 1] each."""
        return random_rows(self, batch_size, generator, device)

    def loss(self, output: Any, labels: Tensor) -> Tensor:
        """Next-token cross-entropy."""
        return F.cross_entropy(output.logits.flatten(0, 1), labels.flatten())

    def ground_truth(self, model: nn.Module) -> GroundTruth:
        raise AnatomistError(f"{self.name} is trained on real text: it has no known ground truth")
