"""Static-cache forward passes for the planner's fast decoding path.

`StaticDecoder` runs the Qwen2.5-VL language model over a key/value cache preallocated once
per `Planner.plan` call, sized from the prompt and the longest answer the planner can write.
Each batch row writes its keys and values at its own columns (rows that feed forced text run
ahead of the others without padding columns), and the attention mask is a per-row bitmap of
the columns written so far. The per-token step (one token per active row) updates the cache
in place; compiled (`torch.compile`, CUDA graphs in mode "reduce-overhead") it reads the
whole cache, so its shapes change only with the number of active rows; eager, it reads the
columns used so far (rounded up to 64). Rows that have finished are moved out of the active
prefix of the cache (`keep`), so they stop costing work.

The cache is our own rather than transformers' `StaticCache`: that one writes every row at the
same columns (a shared counter in transformers 5.24, `cache_position` in 5.17), so rows
feeding different amounts of forced text would need padding columns, and its interface differs
between the two versions this project runs on (5.24 here, 5.17 on the GPU machine). Text
tokens after the prompt take the same mrope position on all three axes, as in the reference.

The model's own decoder layers, norms, rotary embedding and output head do the arithmetic
(LoRA adapters injected into them run too); only the cache, the mask and the single-query
attention call (`decode_sdpa`) are ours.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

SUPPORTED_ATTENTION = ("sdpa", "eager")
DECODE_ATTENTION = "autovla_decode_sdpa"


def decode_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA for the per-token step: with one query per row, the query heads that share a
    key/value head are packed into that head's query rows, so the keys and values are read
    as they are instead of being repeated per query head (transformers repeats them when the
    step is compiled, which copies the whole cache every step). Anything else: the library's
    sdpa."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    n, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    if q_len != 1 or heads == kv_heads or dropout:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    packed = query.reshape(n, kv_heads, heads // kv_heads, dim)
    out = torch.nn.functional.scaled_dot_product_attention(
        packed, key, value, attn_mask=attention_mask, scale=scaling
    )  # the mask [n, 1, 1, L] is shared by all heads
    return out.reshape(n, heads, 1, dim).transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(DECODE_ATTENTION, decode_sdpa)


class RowCache:
    """Keys and values [slots, kv_heads, length, head_dim] per layer, written at per-row columns.

    The model's attention layers call `update`; before each forward the decoder sets `cols`
    ([n, w] column of every fed token of the first n slots; None: columns 0 ... w-1) and
    `kv_len` (how many columns the attention reads).
    """

    is_compileable = True

    def __init__(
        self,
        layers: int,
        slots: int,
        kv_heads: int,
        length: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ):
        shape = (slots, kv_heads, length, head_dim)
        self.slot_idx = torch.arange(slots, device=device)
        self.head_idx = torch.arange(kv_heads, device=device)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.length = length
        self.cols: torch.Tensor | None = None
        self.kv_len = length

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, w = key_states.shape[0], key_states.shape[2]
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if self.cols is None:  # the prompt: columns 0 ... w-1 of the first n rows
            keys[:n, :, :w] = key_states
            values[:n, :, :w] = value_states
        else:
            # In place on the whole buffer (not a view of it), so a compiled step writes the
            # new columns instead of copying the cache.
            where = (
                self.slot_idx[:n, None, None],
                self.head_idx[None, :, None],
                self.cols[:, None],
            )
            keys.index_put_(where, key_states)
            values.index_put_(where, value_states)
        return keys[:n, :, : self.kv_len], values[:n, :, : self.kv_len]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.kv_len

    def tensors(self) -> list[torch.Tensor]:
        return [*self.keys, *self.values]


def prompt_embeds(model: Any, input_ids: torch.Tensor, video: Any) -> torch.Tensor:
    """Token embeddings of a prompt batch with the video placeholders replaced by the vision
    encoder's output (`get_video_features(..., return_dict=True)`), as the model's own forward
    does; works with transformers versions with and without `mm_encoder_outputs`."""
    embeds = model.model.get_input_embeddings()(input_ids)
    feats = video.pooler_output if hasattr(video, "pooler_output") else video
    if isinstance(feats, (list, tuple)):
        feats = torch.cat(list(feats), dim=0)
    feats = feats.to(embeds.device, embeds.dtype)
    mask = (input_ids == model.config.video_token_id).unsqueeze(-1).to(embeds.device)
    if int(mask.sum()) * embeds.shape[-1] != feats.numel():
        raise ValueError(
            f"{int(mask.sum())} video placeholder tokens but {feats.shape[0]} video features"
        )
    return embeds.masked_scatter(mask, feats)


def cache_kwarg(module: torch.nn.Module) -> str:
    """The name of a text model's (or decoder layer's) cache argument: `cache` in newer
    transformers, `past_key_values` before."""
    params = inspect.signature(module.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class StaticDecoder:
    """Prefill, forced-text chunks and the per-token step over a `RowCache`.

    Per slot it keeps on the device: `valid` [slots, length] (columns written), `col` (next
    free column) and `pos` (next text position, the same for the three mrope axes). Slot i
    holds batch row `rows[i]`; the first `n` slots are the active ones.
    """

    def __init__(self, model: Any, slots: int, length: int, compile_mode: str | None = None):
        lm = model.model.language_model
        cfg = lm.config
        impl = getattr(cfg, "_attn_implementation", None) or "eager"
        if impl not in SUPPORTED_ATTENTION:
            raise ValueError(
                f"fast decoding needs sdpa or eager attention, the model uses {impl!r} "
                "(use decoding='reference')"
            )
        self.model, self.lm = model, lm
        self.additive_mask = impl == "eager"
        self._impl = impl
        if impl == "sdpa":
            _register_attention()
        param = next(lm.parameters())
        self.dtype, self.device = param.dtype, param.device
        heads = cfg.num_attention_heads
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        self.cache = RowCache(
            cfg.num_hidden_layers,
            slots,
            cfg.num_key_value_heads,
            length,
            head_dim,
            self.dtype,
            self.device,
        )
        self.length, self.slots = length, slots
        self.valid = torch.zeros(slots, length, dtype=torch.bool, device=self.device)
        self.col = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.pos = torch.zeros(slots, dtype=torch.long, device=self.device)
        self.rows = list(range(slots))
        self.n = slots
        self._cache_kw = cache_kwarg(lm.layers[0])
        self.hi = 0  # an upper bound of the columns written so far (host side)
        self._step_fn = self._step
        self.compiled = compile_mode is not None
        if compile_mode is not None:
            if self.device.type == "cuda":
                for t in (*self.cache.tensors(), self.valid, self.col, self.pos):
                    torch._dynamo.mark_static_address(t)
            self._step_fn = torch.compile(self._step, mode=compile_mode, dynamic=None)

    def reset(self, n: int) -> None:
        """Start a new batch of n rows (a decoder kept between calls for compiled steps)."""
        self.valid.zero_()
        self.hi = 0
        self.col.zero_()
        self.pos.zero_()
        self.rows = list(range(n))
        self.n = n

    # --- the layers ----------------------------------------------------------------------
    def _mask(self, allowed: torch.Tensor | None) -> torch.Tensor | None:
        if allowed is None or not self.additive_mask:
            return allowed
        zero = torch.zeros((), dtype=self.dtype, device=allowed.device)
        return torch.where(allowed, zero, torch.finfo(self.dtype).min)

    def _layers(
        self, embeds: torch.Tensor, position_ids: torch.Tensor, allowed: torch.Tensor | None
    ) -> torch.Tensor:
        """Hidden states after the final norm; `allowed` [n, 1, w, kv_len] bool, or None for
        plain causal attention over the w new columns (sdpa only)."""
        lm = self.lm
        hidden = embeds
        pe = lm.rotary_emb(hidden, position_ids)
        mask = self._mask(allowed)
        kw = {self._cache_kw: self.cache}
        for layer in lm.layers:
            hidden = layer(
                hidden, attention_mask=mask, position_embeddings=pe, use_cache=True, **kw
            )
            if isinstance(hidden, tuple):
                hidden = hidden[0]
        return lm.norm(hidden)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(hidden)

    # --- phases ----------------------------------------------------------------------------
    def prefill(
        self, embeds: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Run the prompt [B, P] of the first B slots; logits [B, V] at its last token."""
        b, p = attention_mask.shape
        dev = self.device
        real = attention_mask.to(device=dev, dtype=torch.bool)
        allowed = None  # no padding: causal attention, as the library does it (is_causal)
        if self.additive_mask or not bool(real.all()):
            i = torch.arange(p, device=dev)
            causal = i[None, :] <= i[:, None]  # [P, P]: key j <= query i
            # Pad queries (left padding) see themselves only: finite values, never read by
            # a real token.
            eye = torch.eye(p, dtype=torch.bool, device=dev)
            allowed = ((causal[None] & real[:, None, :]) | eye)[:, None]
        self.cache.cols = None
        self.cache.kv_len = p
        hidden = self._layers(embeds, position_ids, allowed)
        self.cache.kv_len = self.length
        self.valid[:b, :p] = real
        self.hi = p
        self.col[:b] = p
        self.pos[:b] = position_ids[0, :, -1] + 1
        self.n = b
        return self._logits(hidden[:, -1])

    def repeat_rows(self, times: int) -> None:
        """Row r of the first n slots becomes rows r*times ... r*times + times-1 (sampling)."""
        if times == 1:
            return
        n = self.n
        for t in (*self.cache.tensors(), self.valid, self.col, self.pos):
            t[: n * times] = t[:n].repeat_interleave(times, 0)
        self.n = n * times
        self.rows = list(range(self.n))

    def _kv_len(self, extra: int) -> int:
        """Columns the next forward reads: all of them for a compiled step (fixed shapes), else
        the used ones rounded up (a fast plan in a cache sized for reasoning reads less)."""
        self.hi += extra
        if self.compiled:
            return self.length
        return min(self.length, -(-self.hi // 64) * 64)

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        """Feed one token per active slot ([n] ids); logits [n, V] (valid until the next step:
        a compiled step on a GPU reuses its output memory)."""
        self.cache.kv_len = self._kv_len(1)
        if self.compiled and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        if self._impl != "sdpa":
            return self._step_fn(ids)
        cfg = self.lm.config  # the attention layers read the implementation from it
        cfg._attn_implementation_internal = DECODE_ATTENTION
        try:
            return self._step_fn(ids)
        finally:
            cfg._attn_implementation_internal = self._impl

    def _step(self, ids: torch.Tensor) -> torch.Tensor:
        n, kv = ids.shape[0], self.cache.kv_len
        slots = self.cache.slot_idx[:n]
        col, pos = self.col[:n], self.pos[:n]
        # Updates go to whole buffers (index_put_), not to views: see RowCache.update.
        self.valid.index_put_((slots, col), torch.ones_like(col, dtype=torch.bool))
        self.cache.cols = col[:, None]
        embeds = self.lm.embed_tokens(ids[:, None])
        position_ids = pos[None, :, None].expand(3, n, 1)
        hidden = self._layers(embeds, position_ids, self.valid[:n, None, None, :kv])
        self.col.index_put_((slots,), col + 1)
        self.pos.index_put_((slots,), pos + 1)
        return self._logits(hidden[:, -1])

    def feed(self, chunks: Sequence[Sequence[int]]) -> torch.Tensor:
        """Feed token lists of different lengths to the active slots (an empty list: nothing);
        logits [n, V] at each slot's last fed token (rows fed nothing: undefined)."""
        n = self.n
        assert len(chunks) == n
        dev = self.device
        width = max(len(c) for c in chunks)
        kv = self._kv_len(width)
        ids = torch.zeros(n, width, dtype=torch.long)
        lens = torch.tensor([len(c) for c in chunks])
        for i, c in enumerate(chunks):
            ids[i, : len(c)] = torch.tensor(list(c), dtype=torch.long)
        ids, lens = ids.to(dev), lens.to(dev)
        col, pos, valid = self.col[:n], self.pos[:n], self.valid[:n, :kv]
        offs = torch.arange(width, device=dev)
        cols = (col[:, None] + offs[None]).clamp(max=kv - 1)  # pads of short rows
        real = offs[None] < lens[:, None]  # [n, w]
        # Query i of a row sees the written columns and the chunk's columns up to its own.
        cols_all = torch.arange(kv, device=dev)
        in_chunk = (cols_all[None, None] >= col[:, None, None]) & (
            cols_all[None, None] <= cols[:, :, None]
        )  # [n, w, L]
        allowed = valid[:, None, :] | in_chunk
        self.cache.cols, self.cache.kv_len = cols, kv
        embeds = self.lm.embed_tokens(ids)
        position_ids = (pos[:, None] + offs[None])[None].expand(3, -1, -1)
        hidden = self._layers(embeds, position_ids, allowed[:, None])
        valid.scatter_(1, cols, real | valid.gather(1, cols))
        col.add_(lens)
        pos.add_(lens)
        last = (lens - 1).clamp(min=0)
        return self._logits(hidden[torch.arange(n, device=dev), last])

    def keep(self, slots: Sequence[int]) -> None:
        """Keep only these active slots (in this order) as the new active prefix."""
        if list(slots) == list(range(self.n)):
            return
        idx = torch.tensor(list(slots), dtype=torch.long, device=self.device)
        k = len(slots)
        for t in (*self.cache.tensors(), self.valid, self.col, self.pos):
            t[:k] = t.index_select(0, idx)
        self.rows = [self.rows[s] for s in slots]
        self.n = k
