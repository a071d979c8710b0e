"""A tiny Mixture-of-Experts language model, trained on the Wikipedia text in minutes on CPU.

No pretrained MoE ships offline, so the routes lens needs one whose router has learned something.
Architecture: pre-norm decoder-only transformer with learned positions; every MLP is an MoE block
(Switch/Mixtral style): a linear router `gate` [n_experts, d_model], softmax, the top-k experts
per token (small GELU MLPs), weighted by their router probabilities (renormalised over the chosen
ones when k > 1). A load-balancing loss (Switch Transformer: n_experts * sum_e f_e * P_e, which
is 1 at perfect balance) keeps every expert in use. Module names follow Hugging Face's
(`layers.3.mlp.gate`, `layers.3.mlp.experts`), so the routes lens finds these blocks the way it
finds OLMoE's or Mixtral's.

Data: the wiki corpus tokenised by SmolLM2's tokenizer into rows of `seq_len` (cached on disk).
The last `n_test_seqs` rows are held out. Vocabulary: the `vocab_size - 1` most frequent SmolLM2
tokens of the training rows plus one UNK; the model's `vocab` buffer maps our id i to its SmolLM2
id (-1 for UNK), so token strings and labels come from the SmolLM2 tokenizer.

Unlike the other toys, it has its own training loop (`train_moe_lm`: warm-up, gradient clipping,
a held-out loss next to the unigram baseline) and no ground truth.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from anatomist.core.errors import AnatomistError
from anatomist.core.io import load_tensors, save_tensors
from anatomist.core.packages import wiki_articles
from anatomist.core.paths import cache_dir
from anatomist.core.progress import progress
from anatomist.core.text import pack_rows
from anatomist.nets.assets import load_model
from anatomist.nets.toys.base import ToyConfig
from anatomist.nets.toys.ground_truth import GroundTruth

UNK = 0  # our id of the unknown token


class MoELMConfig(ToyConfig):
    """The tiny MoE LM: architecture, data and training recipe."""

    kind: Literal["moe_lm"] = Field(default="moe_lm", description="Toy family; selects the config class.")
    name: str = Field(default="moe-lm", description="Registry name of the toy; names the cache folder.")
    vocab_size: int = Field(default=2048, ge=2, description="the most frequent SmolLM2 tokens kept, plus one UNK")
    d_model: int = Field(default=64, ge=8, description="width of the residual stream")
    n_layers: int = Field(default=4, ge=1, description="transformer blocks, each with an MoE MLP")
    n_heads: int = Field(default=4, ge=1, description="attention heads per block")
    n_experts: int = Field(default=8, ge=2, description="experts per MoE block")
    top_k: int = Field(default=1, ge=1, description="experts each token is sent to")
    d_expert: int = Field(default=128, ge=1, description="hidden width of each expert MLP")
    seq_len: int = Field(default=64, ge=2, description="tokens per row (BOS + 63 tokens of running text)")
    n_test_seqs: int = Field(default=512, ge=1, description="rows at the end of the corpus held out")
    balance_coef: float = Field(default=0.01, ge=0, description="weight of the load-balancing loss")
    warmup: int = Field(default=50, ge=0, description="linear learning-rate warm-up steps before the cosine")
    steps: int = Field(default=800, gt=0, description="optimizer steps")
    batch_size: int = Field(default=32, gt=0, description="rows per step")
    lr: float = Field(default=3e-3, gt=0, description="peak AdamW learning rate")
    lr_schedule: Literal["constant", "cosine"] = Field(default="cosine", description="decay after the warm-up")
    weight_decay: float = Field(default=0.01, ge=0, description="AdamW weight decay (matrices only)")

    max_cpu_threads: ClassVar[int | None] = 1  # small matrices: a second thread only adds OpenMP waits

    def lr_at(self, step: int) -> float:
        return warmed_up(self, step, super().lr_at(step))

    def build(self) -> MoELM:
        torch.manual_seed(self.seed)
        return MoELM(self)

    def sample_batch(
        self, batch_size: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
    ) -> tuple[Tensor, Tensor]:
        """(inputs, next tokens): random training rows, our ids [batch, seq_len - 1] each."""
        return random_rows(self, batch_size, generator, device)

    def loss(self, output: Any, labels: Tensor) -> Tensor:
        """Next-token cross-entropy plus the weighted load-balancing loss."""
        return F.cross_entropy(output.logits.flatten(0, 1), labels.flatten()) + self.balance_coef * output.balance

    def ground_truth(self, model: nn.Module) -> GroundTruth:
        raise AnatomistError("moe-lm is trained on real text: it has no known ground truth")


class Expert(nn.Module):
    def __init__(self, d_model: int, d_hidden: int):
        super().__init__()
        self.up = nn.Linear(d_model, d_hidden)
        self.down = nn.Linear(d_hidden, d_model)

    def forward(self, x: Tensor) -> Tensor:
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

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
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

    def forward(self, x: Tensor) -> Tensor:
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

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x + self.attn(self.input_norm(x))
        y, router_logits = self.mlp(self.post_attention_norm(x))
        return x + y, router_logits


class MoELMOutput(NamedTuple):
    logits: Tensor  # [B, T, vocab]
    balance: Tensor  # scalar: the load-balancing loss, mean over layers
    router_logits: tuple[Tensor, ...]  # per layer [B*T, n_experts]


class MoELM(nn.Module):
    """forward(ids [B, T]) -> MoELMOutput; `vocab` maps our ids to SmolLM2 ids."""

    def __init__(self, cfg: MoELMConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.seq_len, cfg.d_model)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.vocab: Tensor
        self.register_buffer("vocab", torch.full((cfg.vocab_size,), -1, dtype=torch.long))
        for p in self.parameters():
            if p.ndim == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids: Tensor) -> MoELMOutput:
        if ids.ndim != 2 or ids.shape[1] > self.cfg.seq_len:
            raise AnatomistError(
                f"MoELM takes token ids [batch, seq <= {self.cfg.seq_len}], got shape {list(ids.shape)}"
            )
        x = self.embed(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        routers = []
        for layer in self.layers:
            x, r = layer(x)
            routers.append(r)
        balance = torch.stack([balance_loss(r, self.cfg.top_k) for r in routers]).mean()
        return MoELMOutput(self.lm_head(self.norm(x)), balance, tuple(routers))


def balance_loss(router_logits: Tensor, top_k: int) -> Tensor:
    """Switch-Transformer load balancing: E * sum_e (share of dispatches to e) * (mean prob of e); 1 if uniform."""
    n_experts = router_logits.shape[-1]
    probs = router_logits.softmax(-1)  # [N, E]
    chosen = probs.topk(top_k, dim=-1).indices  # [N, k]
    dispatch = F.one_hot(chosen, n_experts).float().sum(1).mean(0) / top_k  # [E], sums to 1
    return n_experts * (dispatch * probs.mean(0)).sum()


# --- data -------------------------------------------------------------------------------------


def build_vocab(smol_ids: Tensor, vocab_size: int) -> Tensor:
    """Our vocabulary: UNK, then the `vocab_size - 1` most frequent SmolLM2 ids. Returns [vocab_size] SmolLM2 ids."""
    counts = torch.bincount(smol_ids.reshape(-1))
    top = counts.argsort(descending=True, stable=True)[: vocab_size - 1]
    top = top[counts[top] > 0]
    vocab = torch.full((vocab_size,), -1, dtype=torch.long)
    vocab[1 : 1 + len(top)] = top
    return vocab


def remap(smol_ids: Tensor, vocab: Tensor) -> Tensor:
    """SmolLM2 ids -> our ids (UNK for tokens outside the vocabulary)."""
    lookup = torch.full((int(max(smol_ids.max().item(), vocab.max().item())) + 1,), UNK, dtype=torch.long)
    known = vocab >= 0
    lookup[vocab[known]] = torch.arange(len(vocab))[known]
    return lookup[smol_ids]


@functools.cache
def smollm2_tokenizer() -> Any:
    return load_model("smollm2").tokenizer


def wiki_rows(seq_len: int) -> Tensor:
    """The whole wiki corpus as SmolLM2 ids in rows of `seq_len` [n, seq_len], tokenised once and cached."""
    path = cache_dir("corpora") / f"wiki-smollm2-{seq_len}.safetensors"
    if path.is_file():
        return load_tensors(path, required=["ids"])["ids"]
    rows = pack_rows(wiki_articles()[1], smollm2_tokenizer(), seq_len, name="wiki")  # = load_corpus("wiki").tokenize
    save_tensors(path, {"ids": rows})
    return rows


@dataclass(frozen=True)
class LMData:
    vocab: Tensor  # [vocab_size] SmolLM2 id of each of our ids (-1: UNK)
    train: Tensor  # [n_train, seq_len] our ids
    test: Tensor  # [n_test, seq_len] our ids
    test_smol: Tensor  # [n_test, seq_len] the same tokens as SmolLM2 ids


@functools.cache
def lm_data(seq_len: int, vocab_size: int, n_test_seqs: int) -> LMData:
    rows = wiki_rows(seq_len)
    if len(rows) <= n_test_seqs:
        raise AnatomistError(
            f"the corpus has {len(rows)} rows of {seq_len} tokens; n_test_seqs={n_test_seqs} leaves none"
        )
    train_smol, test_smol = rows[:-n_test_seqs], rows[-n_test_seqs:]
    vocab = build_vocab(train_smol, vocab_size)
    return LMData(vocab, remap(train_smol, vocab), remap(test_smol, vocab), test_smol)


def warmed_up(cfg: Any, step: int, after: float) -> float:
    """The learning rate of a text LM toy: linear warm-up over `cfg.warmup` steps, then `after` (its schedule)."""
    return cfg.lr * (step + 1) / cfg.warmup if step < cfg.warmup else after


def random_rows(
    cfg: Any, batch_size: int, generator: torch.Generator | None, device: str | torch.device
) -> tuple[Tensor, Tensor]:
    """(inputs, next tokens) of a text LM toy: random training rows, our ids [batch, seq_len - 1] each."""
    train = lm_data(cfg.seq_len, cfg.vocab_size, cfg.n_test_seqs).train
    where = generator.device if generator is not None else torch.device("cpu")
    rows = train[torch.randint(len(train), (batch_size,), generator=generator, device=where).cpu()].to(device)
    return rows[:, :-1], rows[:, 1:]


def held_out(cfg: Any, n_seqs: int) -> tuple[Tensor, Tensor, Any]:
    """Held-out rows: (our ids, SmolLM2 ids) [n_seqs, seq_len] each, and the SmolLM2 tokenizer."""
    data = lm_data(cfg.seq_len, cfg.vocab_size, cfg.n_test_seqs)
    if not 1 <= n_seqs <= len(data.test):
        raise AnatomistError(f"n_seqs must be between 1 and the {len(data.test)} held-out rows, got {n_seqs}")
    return data.test[:n_seqs], data.test_smol[:n_seqs], smollm2_tokenizer()


# --- training ---------------------------------------------------------------------------------


@torch.no_grad()
def eval_loss(model: nn.Module, ids: Tensor, batch_size: int = 64) -> tuple[float, float]:
    """(mean next-token cross-entropy in nats, mean balance loss or 0 without a router) over rows of our ids [n, T]."""
    model.eval()
    device = next(model.parameters()).device
    ce, bal, count = 0.0, 0.0, 0
    for i in range(0, len(ids), batch_size):
        batch = ids[i : i + batch_size].to(device)
        out = model(batch[:, :-1])
        n = batch[:, 1:].numel()
        ce += F.cross_entropy(out.logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum").item()
        bal += float(getattr(out, "balance", 0.0)) * n
        count += n
    return ce / count, bal / count


def unigram_loss(train: Tensor, test: Tensor, vocab_size: int) -> float:
    """Cross-entropy (nats) of the test targets under the training unigram distribution (add-one smoothed)."""
    counts = torch.bincount(train[:, 1:].reshape(-1), minlength=vocab_size).double() + 1.0
    logp = (counts / counts.sum()).log()
    return float(-logp[test[:, 1:].reshape(-1)].mean())


def train_moe_lm(
    cfg: Any, device: str | torch.device = "cpu", log_every: int = 100
) -> tuple[nn.Module, float, dict[str, Any]]:
    """Train a text LM toy (this MoE, or `llama_lm`'s Llama: any config with this one's data and recipe
    fields, `build` and `loss`) on the wiki rows; returns (model, held-out loss, metrics incl. the unigram baseline)."""
    data = lm_data(cfg.seq_len, cfg.vocab_size, cfg.n_test_seqs)
    model = cfg.build().to(device)
    model.vocab.copy_(data.vocab)
    matrices = [p for p in model.parameters() if p.ndim == 2]
    others = [p for p in model.parameters() if p.ndim != 2]
    groups = [{"params": matrices, "weight_decay": cfg.weight_decay}, {"params": others, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    curve: list[tuple[int, float]] = []
    running = 0.0
    model.train()
    for step in progress(range(cfg.steps), total=cfg.steps, desc=f"training {cfg.name}"):
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(step)
        x, y = cfg.sample_batch(cfg.batch_size, gen, device)
        loss = cfg.loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # early steps of a transformer spike without it
        opt.step()
        running += loss.item()
        if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
            curve.append((step + 1, running / ((step % log_every) + 1)))
            running = 0.0
    wall = time.perf_counter() - start
    test_loss, test_balance = eval_loss(model, data.test)
    metrics = {
        "name": cfg.name,
        "steps": cfg.steps,
        "seed": cfg.seed,
        "device": str(device),
        "wall_time_s": round(wall, 3),
        "test_loss": test_loss,
        "unigram_loss": unigram_loss(data.train, data.test, cfg.vocab_size),
        "test_balance": test_balance,
        "unk_rate": float((data.test == UNK).float().mean()),
        "train_tokens": int(cfg.steps * cfg.batch_size * (cfg.seq_len - 1)),
        "loss_curve": curve,
    }
    model.eval()
    return model, test_loss, metrics
