"""Steps of a few tokens replayed from CUDA graphs: on a GPU, a step costs one launch, not hundreds.

On a GPU a decoder's step is bound by the host that launches its kernels, not by the device: with random weights
of the default pair's shapes on an H200, a step of the 0.5B draft took 25.0 ms and one of the 1.5B target 28.9 ms
(c = 0.88; ``benchmarks/results/cuda_h200/draft_cost.json``), so speculation could not pay. A CUDA graph records a
step's kernels once and replays them all in one call. The graph needs fixed shapes and addresses, so this runner
keeps the KV cache in buffers of a fixed capacity (its DynamicCache's layers are views of their first slots: the
rest of the runner, and the transformers forward for prompts, work on it unchanged), and a captured step (the
lean :class:`~specadapt.models.decode_step.DecodeStep`) writes its tokens' keys and values at slots held in a
device tensor and attends over the whole capacity through a mask. Before each replay the tokens, their positions
and slots, and the mask are copied into the graph's input buffers.

Every block of up to 16 tokens (draft steps, the draft's catch-up, verifications) replays a graph, one per block
width, captured the first time that width runs; prompts take the transformers forward, and the next step copies
what it appended into the buffers. A cache that outgrows the capacity gets new buffers (and captures anew); a
change of batch size switches to that size's buffers and graphs, kept for the last few sizes and handed on to
the model's next runner (the next batch) when this one is done. Without CUDA
(``capture=False``) the same buffers and full-capacity steps run eagerly: what the tests check on a CPU.

The target runs the lean step too on a GPU, so its logits are transformers' forward's up to float rounding, not
to the bit (the CUDA tests check greedy output identical to transformers' ``generate`` in fp32). Buffers hold
the full capacity for every kept batch size: for the default target at 8 rows and 2048 slots, about 0.5 GB.
"""

from __future__ import annotations

import warnings
import weakref

import torch
from transformers import PreTrainedModel

from .decode_step import MAX_TOKENS as LEAN_MAX_TOKENS
from .decode_step import DecodeStep
from .prefix import PrefixStore
from .runner import ModelRunner

MIN_CAPACITY = 512  # slots; the capacity doubles past it, so a long generation captures a few graphs, not many
KEPT_BATCH_SIZES = 4  # buffers and graphs kept for this many batch sizes (see GraphedRunner._slab_for)


# A model's buffers and graphs between runners: a runner takes them when it starts (a batch; the engine starts one
# per generate call) and gives them back when it is collected, so later batches do not capture again. Two runners
# of one model at once never share buffers: the second starts with none.
_idle: "weakref.WeakKeyDictionary[PreTrainedModel, dict[int, _Slab]]" = weakref.WeakKeyDictionary()


def _give_back(model_ref: "weakref.ref[PreTrainedModel]", slabs: "dict[int, _Slab]") -> None:
    model = model_ref()
    if model is not None and slabs:
        _idle[model] = slabs


def capacity_for(length: int) -> int:
    """Slots to allocate for a cache that must hold ``length``: a power of two, at least :data:`MIN_CAPACITY`."""
    return max(MIN_CAPACITY, 1 << (length - 1).bit_length())


class _SlotWriter:
    """The captured step's store: writes the block at the slots in ``block.slots`` (a device tensor), returns all
    slots (the mask hides the ones not in the cache)."""

    def __init__(self, slab: "_Slab", block: "_Block") -> None:
        self.slab, self.block = slab, block

    def update(self, keys: torch.Tensor, values: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.slab.keys[layer], self.slab.values[layer]
        k.index_copy_(2, self.block.slots, keys)
        v.index_copy_(2, self.block.slots, values)
        return k, v


class _Block:
    """One block width's input buffers (tokens, positions, the slots it writes) and its captured graph."""

    def __init__(self, rows: int, n: int, device: torch.device) -> None:
        self.tokens = torch.zeros((rows, n), dtype=torch.long, device=device)
        self.positions = torch.zeros((rows, n), dtype=torch.long, device=device)
        self.slots = torch.zeros(n, dtype=torch.long, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out: tuple[torch.Tensor, torch.Tensor] | None = None


class _Slab:
    """Key/value buffers [b, kv_heads, capacity, d] per layer, the mask over them, and a graph per block shape."""

    def __init__(self, step: DecodeStep, like: torch.Tensor, rows: int, capacity: int) -> None:
        self.step, self.rows, self.capacity = step, rows, capacity
        self.device = like.device
        shape = (rows, step.kv_heads, capacity, step.head_dim)
        layers = len(step.model.model.layers)
        self.keys = [torch.zeros(shape, dtype=like.dtype, device=self.device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=like.dtype, device=self.device) for _ in range(layers)]
        self.mask = torch.zeros((rows, capacity), dtype=torch.bool, device=self.device)
        self.columns = torch.arange(capacity, device=self.device)
        self.blocks: dict[tuple[int, int], _Block] = {}  # (width, logits kept) -> its buffers and graph
        self.pool = None  # the graphs share one memory pool: they never run at once, and outputs are copied out

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

    def run(self, tokens: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, keep: int, capture: bool):
        """The block ``tokens`` [b, n] at the last n of the ``mask.shape[1]`` slots: logits [b, keep, V] (fp32) and
        hidden states [b, keep, H]."""
        n, length = tokens.shape[1], mask.shape[1]
        block = self.blocks.get((n, keep))
        if block is None:
            block = self.blocks[(n, keep)] = _Block(self.rows, n, self.device)
        block.tokens.copy_(tokens)
        block.positions.copy_(positions)
        block.slots.copy_(self.columns[length - n : length])
        self.mask[:, length:] = False
        self.mask[:, :length] = mask.bool()
        if not capture:
            return self._body(block, keep)
        if block.graph is None:
            self._capture(block, keep)
        block.graph.replay()
        return block.out[0].clone(), block.out[1].clone()

    def _body(self, block: _Block, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Query i sees the real slots up to its own, and always its own (a hole's query then reads finite values
        # nobody uses; see DecodeStep).
        slots = block.slots[:, None]
        attend = (self.mask[:, None, :] & (self.columns <= slots)) | (self.columns == slots)
        return self.step.run(block.tokens, block.positions, attend[:, None], _SlotWriter(self, block), keep)

    def _capture(self, block: _Block, keep: int) -> None:
        # Warm-up on a side stream first, as torch's CUDA-graph recipe asks; it writes the slots the replay rewrites.
        current = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(2):
                self._body(block, keep)
        current.wait_stream(side)
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            block.out = self._body(block, keep)
        block.graph = graph


class GraphedRunner(ModelRunner):
    """A :class:`ModelRunner` whose blocks of up to 16 tokens run over fixed buffers, replaying CUDA graphs on a GPU
    (``capture``; default: on CUDA); see the module."""

    def __init__(self, model: PreTrainedModel, want_hidden: bool = False, capture: bool | None = None,
                 prefixes: PrefixStore | None = None) -> None:
        super().__init__(model, want_hidden=want_hidden, lean_steps=True, prefixes=prefixes)
        self.capture = model.device.type == "cuda" if capture is None else capture
        self.slab: _Slab | None = None  # the buffers in use
        self._slabs: dict[int, _Slab] = _idle.pop(model, None) or {}  # batch size -> its buffers and graphs
        weakref.finalize(self, _give_back, weakref.ref(model), self._slabs)
        # The cache's length while its layers' views are out of date (None: they are current). Steps and rollbacks
        # only move this; the views are remade when something reads the cache (a prompt, rows joining or leaving):
        # remaking them for every layer at every step cost the host about as much as launching the step's graph.
        self._length: int | None = None

    def _expose(self) -> None:
        if self._length is not None:
            self.slab.expose(self.cache, self._length)
            self._length = None

    def add_rows(self, n: int) -> None:
        self._expose()
        super().add_rows(n)

    def fill_rows(self, rows, seqs) -> list[int]:
        self._expose()
        return super().fill_rows(rows, seqs)

    def select_rows(self, rows: torch.Tensor) -> None:
        self._expose()
        super().select_rows(rows)

    def _crop(self, slots: int) -> None:
        if self._length is None:
            super()._crop(slots)
        else:
            self._length -= slots

    @torch.inference_mode()
    def forward(
        self, tokens: torch.Tensor, valid: torch.Tensor | None = None, keep: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        n = tokens.shape[1]
        held = self.cache.get_seq_length() if self._length is None else self._length
        if self.lean is None or n > LEAN_MAX_TOKENS or held == 0 or held != self.mask.shape[1]:
            self._expose()
            return super().forward(tokens, valid, keep)  # a prompt: the transformers forward appends to the cache
        positions = self._append(tokens, valid)
        length = held + n
        slab = self._slab_for(held, length)
        try:
            logits, hidden = slab.run(tokens, positions, self.mask, keep, self.capture)
        except RuntimeError as e:  # a model whose step cannot be captured (say, a host sync in a custom layer)
            if not self.capture:
                raise
            warnings.warn(f"a step of {type(self.model).__name__} could not be captured in a CUDA graph ({e}); "
                          "running it eagerly", stacklevel=2)
            self.capture = False
            logits, hidden = slab.run(tokens, positions, self.mask, keep, False)
        self._length = length
        return logits, hidden if self.want_hidden else None

    def _slab_for(self, held: int, length: int) -> _Slab:
        """Buffers that hold the cache's ``held`` slots with room for ``length``, the cache copied in when something
        else (a prompt, a row change) replaced its tensors. One set per batch size is kept, with its graphs, for the
        last :data:`KEPT_BATCH_SIZES` sizes: a server's batch size goes up and down as requests come and go, and
        each return to a size would otherwise capture every graph again."""
        rows = self.mask.shape[0]
        slab = self.slab
        if self._length is not None and slab.capacity >= length:
            return slab  # the last step left the cache in these buffers, and only rollbacks came since
        self._expose()
        if slab is None or slab.rows != rows or slab.capacity < length:
            slab = self._slabs.pop(rows, None)
            if slab is None or slab.capacity < length:
                slab = _Slab(self.lean, self.cache.layers[0].keys, rows, capacity_for(length))
            self._slabs[rows] = slab  # the most recently used last
            while len(self._slabs) > KEPT_BATCH_SIZES:
                self._slabs.pop(next(iter(self._slabs)))
            self.slab = slab
        if not slab.holds(self.cache, rows, held):
            slab.load(self.cache, held)
        return slab


def make_runner(model: PreTrainedModel, want_hidden: bool = False, exact: bool = False,
                prefixes: PrefixStore | None = None) -> ModelRunner:
    """The engine's runner for a model. On a GPU, its steps replay CUDA graphs where the architecture has a lean
    step; on a CPU, the draft (``exact=False``) takes the lean step and the target (``exact=True``) transformers'
    own forward, so target-only output is transformers' to the bit (a prompt whose prefix came from ``prefixes``
    was fed in two passes: the same values up to rounding)."""
    if model.device.type == "cuda" and DecodeStep.for_model(model) is not None:
        return GraphedRunner(model, want_hidden=want_hidden, prefixes=prefixes)
    return ModelRunner(model, want_hidden=want_hidden, lean_steps=not exact, prefixes=prefixes)
