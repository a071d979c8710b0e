"""A tiny Mixture-of-Experts language model, trained on the Wikipedia text in minutes on CPU.

No pretrained MoE ships offline, so the routes lens needs one whose router has learned something.
Architecture: pre-norm decoder-only transformer; every MLP is an MoE block (Switch/Mixtral style):
a linear router `gate` [n_experts, d_model], softmax, top-k experts per token (each a small GELU
MLP) weighted by their renormalised router probabilities. A load-balancing loss (Switch
Transformer: n_experts * sum_e f_e * P_e, which is 1 at perfect balance) keeps all experts in use.
Module names follow Hugging Face's (`layers.3.mlp.gate`, `layers.3.mlp.experts`) so the routes
lens finds the blocks the same way it finds them in OLMoE or Mixtral.

Vocabulary: the `vocab_size - 1` most frequent SmolLM2 tokens of the training text plus one
UNK; `vocab[i]` is the SmolLM2 id of our token i (-1 for UNK), so token strings and labels
come from the SmolLM2 tokenizer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from anatomist.core.config import Config
from anatomist.core.errors import AnatomistError

UNK = 0  # our id of the unknown token


class MoELMConfig(Config):
    """Shape of the tiny MoE LM and how it is trained."""

    vocab_size: int = Field(default=4096, ge=2, description="the most frequent SmolLM2 tokens kept, plus one UNK")
    d_model: int = Field(default=128, ge=8, description="width of the residual stream")
    n_layers: int = Field(default=4, ge=1, description="transformer blocks, each with an MoE MLP")
    n_heads: int = Field(default=4, ge=1, description="attention heads per block")
    n_experts: int = Field(default=8, ge=2, description="experts per MoE block")
    top_k: int = Field(default=1, ge=1, description="experts each token is sent to")
    d_expert: int = Field(default=256, ge=1, description="hidden width of each expert MLP")
    seq_len: int = Field(default=64, ge=2, description="tokens per training sequence")
    n_train_seqs: int = Field(default=16384, ge=1, description="training sequences taken from the wiki corpus")
    n_test_seqs: int = Field(default=512, ge=1, description="held-out sequences for the reported loss")
    steps: int = Field(default=2000, ge=1, description="optimizer steps")
    batch_size: int = Field(default=32, ge=1, description="sequences per step")
    lr: float = Field(default=3e-3, gt=0, description="peak AdamW learning rate (linear warm-up, cosine decay)")
    warmup: int = Field(default=100, ge=0, description="warm-up steps")
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW weight decay")
    balance_coef: float = Field(default=0.01, ge=0, description="weight of the load-balancing loss")
    seed: int = Field(default=0, description="seed for initialisation and batch order")


class Expert(nn.Module):
    def __init__(self, d_model: int, d_hidden: int):
        super().__init__()
        self.up = nn.Linear(d_model, d_hidden)
        self.down = nn.Linear(d_hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class MoEBlock(nn.Module):
    """Router + experts. forward(x [B, T, d]) -> (y [B, T, d], router logits [B*T, E])."""

    def __init__(self, d_model: int, n_experts: int, top_k: int, d_expert: int):
        super().__init__()
        if top_k > n_experts:
            raise AnatomistError(f"top_k ({top_k}) exceeds n_experts ({n_experts})")
        self.top_k = top_k
        self.gate = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList(Expert(d_model, d_expert) for _ in range(n_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.reshape(-1, x.shape[-1])  # [N, d]
        logits = self.gate(flat)  # [N, E]
        weights, chosen = logits.softmax(-1).topk(self.top_k, dim=-1)  # [N, k]
        if self.top_k > 1:  # Mixtral: renormalise over the chosen experts
            weights = weights / weights.sum(-1, keepdim=True)
        # top-1 keeps the raw probability (Switch), so the LM loss still reaches the router
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            rows, slot = (chosen == e).nonzero(as_tuple=True)
            if rows.numel():
                out.index_add_(0, rows, weights[rows, slot, None] * expert(flat[rows]))
        return out.view_as(x), logits


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        if d_model % n_heads:
            raise AnatomistError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, d_head]
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: MoELMConfig):
        super().__init__()
        self.input_norm = nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg.d_model, cfg.n_heads)
        self.post_attention_norm = nn.LayerNorm(cfg.d_model)
        self.mlp = MoEBlock(cfg.d_model, cfg.n_experts, cfg.top_k, cfg.d_expert)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + self.attn(self.input_norm(x))
        y, router_logits = self.mlp(self.post_attention_norm(x))
        return x + y, router_logits


class MoELM(nn.Module):
    """forward(ids [B, T]) -> next-token logits [B, T, vocab]; `vocab` maps our ids to SmolLM2 ids."""

    def __init__(self, cfg: MoELMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.vocab: torch.Tensor
        self.register_buffer("vocab", torch.full((cfg.vocab_size,), -1, dtype=torch.long))
        for p in self.parameters():
            if p.ndim == 2:
                nn.init.normal_(p, std=0.02)

    def forward_with_router(self, ids: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits [B, T, V] and each layer's router logits [B*T, E]."""
        if ids.ndim != 2 or ids.shape[1] > self.cfg.seq_len:
            raise AnatomistError(
                f"MoELM takes token ids [batch, seq <= {self.cfg.seq_len}], got shape {list(ids.shape)}"
            )
        x = self.embed(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        routers = []
        for layer in self.layers:
            x, r = layer(x)
            routers.append(r)
        return self.lm_head(self.norm(x)), routers

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.forward_with_router(ids)[0]


def balance_loss(router_logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Switch-Transformer load balancing: E * sum_e (share of dispatches to e) * (mean prob of e); 1 if uniform."""
    n_experts = router_logits.shape[-1]
    probs = router_logits.softmax(-1)  # [N, E]
    chosen = probs.topk(top_k, dim=-1).indices  # [N, k]
    dispatch = F.one_hot(chosen, n_experts).float().sum(1).mean(0) / top_k  # [E], sums to 1
    return n_experts * (dispatch * probs.mean(0)).sum()


def lm_losses(model: MoELM, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(next-token cross-entropy in nats, mean load-balancing loss over layers) on ids [B, T]."""
    logits, routers = model.forward_with_router(ids[:, :-1])
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    bal = torch.stack([balance_loss(r, model.cfg.top_k) for r in routers]).mean()
    return ce, bal


@torch.no_grad()
def eval_loss(model: MoELM, ids: torch.Tensor, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats) over held-out ids [n, T]."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(ids), batch_size):
        ce, _ = lm_losses(model, ids[i : i + batch_size])
        n = ids[i : i + batch_size, 1:].numel()
        total, count = total + ce.item() * n, count + n
    return total / count


def unigram_loss(train: torch.Tensor, test: torch.Tensor, vocab_size: int) -> float:
    """Cross-entropy (nats) of the test targets under the training unigram distribution (add-one smoothed)."""
    counts = torch.bincount(train[:, 1:].reshape(-1), minlength=vocab_size).double() + 1.0
    logp = (counts / counts.sum()).log()
    return float(-logp[test[:, 1:].reshape(-1)].mean())


def build_vocab(smol_ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Our vocabulary: UNK, then the `vocab_size - 1` most frequent SmolLM2 ids. Returns [vocab_size] SmolLM2 ids."""
    counts = torch.bincount(smol_ids.reshape(-1))
    top = counts.argsort(descending=True)[: vocab_size - 1]
    top = top[counts[top] > 0]
    vocab = torch.full((vocab_size,), -1, dtype=torch.long)
    vocab[1 : 1 + len(top)] = top
    return vocab


def remap(smol_ids: torch.Tensor, vocab: torch.Tensor) -> torch.Tensor:
    """SmolLM2 ids -> our ids (UNK for tokens outside the vocabulary)."""
    lookup = torch.full((int(max(smol_ids.max().item(), vocab.max().item())) + 1,), UNK, dtype=torch.long)
    known = vocab >= 0
    lookup[vocab[known]] = torch.arange(len(vocab))[known]
    return lookup[smol_ids]


def train_moe_lm(
    cfg: MoELMConfig,
    train: torch.Tensor,
    test: torch.Tensor,
    vocab: torch.Tensor,
    log: Callable[[str], None] = print,
) -> tuple[MoELM, dict[str, float]]:
    """Train on our ids [n, seq_len]; returns the model and its metrics (held-out loss vs unigram)."""
    if train.ndim != 2 or train.shape[1] != cfg.seq_len:
        raise AnatomistError(f"training ids must be [n, {cfg.seq_len}], got {list(train.shape)}")
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    model = MoELM(cfg)
    model.vocab.copy_(vocab)
    decay = [p for p in model.parameters() if p.ndim == 2]
    rest = [p for p in model.parameters() if p.ndim != 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.95),
    )

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    for step in range(cfg.steps):
        batch = train[torch.randint(len(train), (cfg.batch_size,), generator=gen)]
        ce, bal = lm_losses(model, batch)
        loss = ce + cfg.balance_coef * bal
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"step {step:5d}  ce {ce.item():.3f}  balance {bal.item():.3f}")
    model.eval()
    metrics = {
        "test_loss": eval_loss(model, test),
        "unigram_loss": unigram_loss(train, test, cfg.vocab_size),
        "unk_rate": float((test == UNK).float().mean()),
        "test_balance": _eval_balance(model, test),
    }
    return model, metrics


@torch.no_grad()
def _eval_balance(model: MoELM, ids: torch.Tensor) -> float:
    _, routers = model.forward_with_router(ids[:256])
    return float(torch.stack([balance_loss(r, model.cfg.top_k) for r in routers]).mean())
