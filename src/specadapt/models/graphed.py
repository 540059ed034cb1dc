"""The draft's one-token step replayed from a CUDA graph: on a GPU, a step costs one launch, not hundreds.

On a GPU the draft's step is bound by the host that launches its kernels, not by the device: with random weights
of the default pair's shapes on an H200, a step of the 0.5B draft took 25.0 ms and one of the 1.5B target 28.9 ms
(c = 0.88; ``benchmarks/results/cuda_h200/draft_cost.json``), so speculation could not pay. A CUDA graph records a
step's kernels once and replays them all in one call. The graph needs fixed shapes and addresses, so this runner
keeps the KV cache in buffers of a fixed capacity (its DynamicCache's layers are views of their first slots: the
rest of the runner, and the transformers forward for prompts, work on it unchanged), and the captured step writes
the new token's keys and values at a slot held in a device tensor and attends over the whole capacity through a
mask. Before each replay the token, its position, its slot and the mask are copied into the graph's input buffers.

Blocks of 2 to 16 tokens (the first draft step of a round, which feeds the tokens the draft has not seen) run the
same code eagerly, into the same buffers; prompts take the transformers forward, and the next step copies what it
appended into the buffers. A change of batch size or a cache that outgrows the capacity allocates new buffers and
captures again. Without CUDA (``capture=False``) the same buffers and full-capacity step run eagerly: what the tests
check on a CPU.
"""

from __future__ import annotations

import warnings

import torch
from transformers import PreTrainedModel

from .decode_step import MAX_TOKENS as LEAN_MAX_TOKENS
from .decode_step import DecodeStep
from .runner import ModelRunner

MIN_CAPACITY = 512  # slots; the capacity doubles past it, so a long generation captures a few graphs, not many


def capacity_for(length: int) -> int:
    """Slots to allocate for a cache that must hold ``length``: a power of two, at least :data:`MIN_CAPACITY`."""
    return max(MIN_CAPACITY, 1 << (length - 1).bit_length())


class _Writer:
    """A :class:`~specadapt.models.decode_step.KVStore` over the buffers for an eager block at slots [start, start+n):
    it returns views of the first start+n slots, so attention sees only the cache."""

    def __init__(self, slab: "_Slab", start: int) -> None:
        self.slab, self.start = slab, start

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.start + keys.shape[2]
        k, v = self.slab.keys[layer], self.slab.values[layer]
        k[:, :, self.start : end] = keys
        v[:, :, self.start : end] = values
        return k[:, :, :end], v[:, :, :end]


class _SlotWriter:
    """The captured step's store: writes the token at the slot in ``slot`` (a device tensor), returns all slots."""

    def __init__(self, slab: "_Slab") -> None:
        self.slab = slab

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.slab.keys[layer], self.slab.values[layer]
        k.index_copy_(2, self.slab.slot, keys)
        v.index_copy_(2, self.slab.slot, values)
        return k, v


class _Slab:
    """Key/value buffers [b, kv_heads, capacity, d] per layer, the one-token step's input buffers, and its graph."""

    def __init__(self, step: DecodeStep, like: torch.Tensor, rows: int, capacity: int) -> None:
        self.step, self.rows, self.capacity = step, rows, capacity
        layers = len(step.model.model.layers)
        shape = (rows, step.kv_heads, capacity, step.head_dim)
        make = dict(dtype=like.dtype, device=like.device)
        self.keys = [torch.zeros(shape, **make) for _ in range(layers)]
        self.values = [torch.zeros(shape, **make) for _ in range(layers)]
        device = like.device
        self.tokens = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.positions = torch.zeros((rows, 1), dtype=torch.long, device=device)
        self.mask = torch.zeros((rows, capacity), dtype=torch.bool, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.columns = torch.arange(capacity, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: tuple[torch.Tensor, torch.Tensor] | None = None

    def holds(self, cache, rows: int, length: int) -> bool:
        """Whether the cache's layers are views of these buffers' first ``length`` slots, for ``rows`` rows."""
        if rows != self.rows or length > self.capacity:
            return False
        return all(
            layer.keys.data_ptr() == k.data_ptr() and layer.values.data_ptr() == v.data_ptr()
            and layer.keys.shape[0] == rows and layer.keys.shape[2] == length and layer.keys.stride() == k.stride()
            for layer, k, v in zip(cache.layers, self.keys, self.values)
        )

    def load(self, cache, length: int) -> None:
        """Copy the cache's ``length`` slots into the buffers (a clone first where they overlap, as after the runner
        dropped leading columns) and make its layers views of them."""
        for layer, k, v in zip(cache.layers, self.keys, self.values):
            for src, dst in ((layer.keys, k), (layer.values, v)):
                same = src.untyped_storage().data_ptr() == dst.untyped_storage().data_ptr()
                dst[:, :, :length] = src.clone() if same else src
        self.expose(cache, length)

    def expose(self, cache, length: int) -> None:
        for layer, k, v in zip(cache.layers, self.keys, self.values):
            layer.keys, layer.values = k[:, :, :length], v[:, :, :length]

    def one_token(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, capture: bool):
        """The one-token step at slot ``mask.shape[1] - 1``: logits [b, 1, V] (fp32) and hidden states [b, 1, H]."""
        length = mask.shape[1]
        self.tokens.copy_(tokens)
        self.positions.copy_(positions)
        self.mask[:, length:] = False
        self.mask[:, :length] = mask.bool()
        self.slot.fill_(length - 1)
        if not capture:
            return self._body()
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.out[0].clone(), self.out[1].clone()

    def _body(self) -> tuple[torch.Tensor, torch.Tensor]:
        # A token always sees its own slot (a hole's query then reads finite values nobody uses; see DecodeStep).
        attend = (self.mask | (self.columns == self.slot))[:, None, None, :]
        return self.step.run(self.tokens, self.positions, attend, _SlotWriter(self), 1)

    def _capture(self) -> None:
        # Warm-up on a side stream first, as torch's CUDA-graph recipe asks; it writes the slot the replay rewrites.
        current = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(2):
                self._body()
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.out = self._body()
        self.graph = graph


class GraphedRunner(ModelRunner):
    """A :class:`ModelRunner` for the draft on a GPU: its one-token steps replay a CUDA graph (see the module)."""

    def __init__(self, model: PreTrainedModel, want_hidden: bool = False, capture: bool | None = None) -> None:
        super().__init__(model, want_hidden=want_hidden, lean_steps=True)
        self.capture = model.device.type == "cuda" if capture is None else capture
        self.slab: _Slab | None = None

    @torch.inference_mode()
    def forward(
        self, tokens: torch.Tensor, valid: torch.Tensor | None = None, keep: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = tokens.shape[1]
        held = self.cache.get_seq_length()
        if self.lean is None or n > LEAN_MAX_TOKENS or held == 0 or held != self.mask.shape[1]:
            return super().forward(tokens, valid, keep)  # a prompt: the transformers forward appends to the cache
        if valid is None:
            valid = torch.ones_like(tokens)
        self.mask = torch.cat([self.mask, valid.long()], dim=1)
        positions = (self.mask.cumsum(1) - 1).clamp_min(0)[:, -n:]
        length = held + n
        slab = self._slab_for(held, length)
        if n == 1 and keep == 1:
            try:
                logits, hidden = slab.one_token(tokens, positions, self.mask, self.capture)
            except RuntimeError as e:  # a model whose step cannot be captured (say, a host sync in a custom layer)
                if not self.capture:
                    raise
                warnings.warn(f"the draft's step could not be captured in a CUDA graph ({e}); running it eagerly",
                              stacklevel=2)
                self.capture = False
                slab.graph = None
                logits, hidden = slab.one_token(tokens, positions, self.mask, False)
        else:
            attend = self.lean._attention_mask(self.mask, n)
            logits, hidden = self.lean.run(tokens, positions, attend, _Writer(slab, held), keep)
        slab.expose(self.cache, length)
        return logits, hidden if self.want_hidden else None

    def _slab_for(self, held: int, length: int) -> _Slab:
        """Buffers that hold the cache's ``held`` slots with room for ``length``; new ones when the batch size
        changed or the cache outgrew them, the cache copied in when something else (a prompt, a row change)
        replaced its tensors."""
        rows = self.mask.shape[0]
        slab = self.slab
        if slab is None or slab.rows != rows or slab.capacity < length:
            slab = self.slab = _Slab(self.lean, self.cache.layers[0].keys, rows, capacity_for(length))
        if not slab.holds(self.cache, rows, held):
            slab.load(self.cache, held)
        return slab


def draft_runner(model: PreTrainedModel, want_hidden: bool = False) -> ModelRunner:
    """The engine's runner for a draft: its steps CUDA-graphed on a GPU, the lean step elsewhere."""
    if model.device.type == "cuda" and DecodeStep.for_model(model) is not None:
        return GraphedRunner(model, want_hidden=want_hidden)
    return ModelRunner(model, want_hidden=want_hidden, lean_steps=True)
