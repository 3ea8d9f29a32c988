"""The peak memory of one LoRA training step on a GPU, from the model's config and the batch's shape: no GPU needed.

The step (forward, loss heads, backward) runs under torch's FakeTensorMode: every op computes the shape and dtype
of its output, never its values, so a 5.77B step costs seconds of one CPU core. A dispatch mode adds up the bytes
of the tensor storages alive after each op (views share their storage) and keeps the peak. The one thing a fake
tensor cannot know is how many positions a boolean mask selects (the DualFFN routes text and audio positions
that way); the mode computes the batch's integer and boolean tensors for real on the host alongside (a few kB)
and hands the fake ops their counts.

Decoder layers are alike, so what a step allocates grows linearly in their number: copies of the model with one
and two layers are traced and the line extended to all of them (tests/test_memory.py checks it against a full
trace, and the traced bytes against torch's MemTracker on real tensors). The rest is counted from the parameters:
the bf16 weights; per trained parameter its fp32 master copy, fp32 gradient partition and AdamW's two moments
(16 bytes, split over the ranks by ZeRO-2); and DeepSpeed's gradient buckets.

A card fits the step when the total plus FRAGMENTATION of it plus CONTEXT_BYTES stays within the card's memory.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

GiB = 2**30
FRAGMENTATION = 0.10  # the caching allocator's rounding and fragmentation, a share of the peak
CONTEXT_BYTES = GiB  # the CUDA context, NCCL and cuBLAS workspaces: outside torch's allocator
OPTIMIZER_BYTES = 16  # a trained parameter: fp32 master, fp32 gradient partition, AdamW exp_avg and exp_avg_sq
_SHADOWED = 10**7  # integer tensors up to this many elements are computed for real alongside (masks, ids)


@dataclass(frozen=True)
class StepMemory:
    """Bytes at the peak of one training step on one rank."""
    weights: int  # parameters and buffers, bf16 (LoRA weights included)
    optimizer: int  # the trained parameters' fp32 state on this rank
    buckets: int  # DeepSpeed's gradient reduction buffers
    activations: int  # held by the forward for the backward (and the loss)
    temporaries: int  # the rest of the peak: the backward's working tensors and the trained weights' gradients

    @property
    def total(self) -> int:
        return self.weights + self.optimizer + self.buckets + self.activations + self.temporaries

    def needs(self) -> float:
        """Bytes of card memory the step needs, with the allocator's and the CUDA context's share."""
        return self.total * (1 + FRAGMENTATION) + CONTEXT_BYTES

    def fits(self, card_bytes: float) -> bool:
        return self.needs() <= card_bytes


class _StepTracer(TorchDispatchMode):
    """Inside a FakeTensorMode: counts live storage bytes and their peak, and gives data-dependent ops (boolean
    indexing, nonzero, .item()) the values of the small integer tensors they read, computed for real."""

    def __init__(self, fake_mode):
        super().__init__()
        self.fake_mode = fake_mode
        self.values = WeakIdKeyDictionary()  # fake tensor -> its real value
        self.seen = WeakIdKeyDictionary()  # storages counted
        self.live = self.peak = 0

    def real(self, t):
        if type(t) is torch.Tensor:  # a host tensor given as an input (the batch)
            return t
        return self.values.get(t)

    def _fake_of(self, value: torch.Tensor) -> torch.Tensor:
        out = self.fake_mode.from_tensor(value)
        self.values[out] = value
        self._count(out)
        return out

    def _long_indices(self, indices):
        out = []
        for i in indices:
            if i is not None and i.dtype == torch.bool:
                with _disable_current_modes():
                    cols = self._need(i).nonzero().unbind(1)
                out += [self._fake_of(c.clone()) for c in cols]
            else:
                out.append(i)
        return out

    def _need(self, t) -> torch.Tensor:
        value = self.real(t)
        if value is None:
            raise RuntimeError("the memory trace met a data-dependent op on a tensor computed from float values")
        return value

    def _count(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        if storage in self.seen:
            return
        n = storage.nbytes()
        self.seen[storage] = n
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, n)

    def _free(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        aten = torch.ops.aten
        if func is aten.nonzero.default:
            with _disable_current_modes():
                return self._fake_of(self._need(args[0]).nonzero())
        if func is aten._local_scalar_dense.default:
            return self._need(args[0]).item()
        if func in (aten.index.Tensor, aten.index_put_.default, aten.index_put.default,
                    aten._index_put_impl_.default) and any(i is not None and i.dtype == torch.bool for i in args[1]):
            args = (args[0], self._long_indices(args[1]), *args[2:])
        out = func(*args, **kwargs)
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        for t in outputs:
            self._count(t)
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        if (len(outputs) == 1 and not outputs[0].is_floating_point() and outputs[0].numel() <= _SHADOWED
                and inputs and all(not t.is_floating_point() and self.real(t) is not None for t in inputs)):
            def value(x):
                return self.real(x) if isinstance(x, torch.Tensor) else x
            with _disable_current_modes():
                self.values[outputs[0]] = func(*tree_map(value, args), **tree_map(value, kwargs))
        return out


def trace_step(model, batch, loss) -> tuple[int, int]:
    """(bytes alive when the forward and loss are done, peak bytes) that one forward + backward of BATCH through
    MODEL allocates, weights not counted. MODEL is on the meta device, in the dtype it trains in; LOSS(model,
    batch) returns the scalar the step differentiates."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    fake = FakeTensorMode(allow_non_fake_inputs=True)
    with fake:
        model = model.to_empty(device="cpu")
    model.train()
    tracer = _StepTracer(fake)
    for t in [*model.parameters(), *model.buffers()]:  # a view of a weight (its transpose) is not new memory
        tracer.seen[t.untyped_storage()] = 0
    with fake, tracer:
        value = loss(model, batch)
        activations = tracer.live
        value.backward()
    return activations, tracer.peak


def step_memory(build_model, layers: int, batch, loss, world: int = 1, ds_config: dict | None = None) -> StepMemory:
    """The peak of one step of the model BUILD_MODEL(n) returns with n decoder layers (on the meta device, LoRA
    applied, in its training dtype) with LAYERS layers, on one of WORLD ranks under the DeepSpeed config
    DS_CONFIG (its zero_optimization bucket sizes)."""
    full = build_model(layers)
    weights = sum(t.numel() * t.element_size() for t in [*full.parameters(), *full.buffers()])
    trained = sum(p.numel() for p in full.parameters() if p.requires_grad)
    del full
    (a1, p1), (a2, p2) = (trace_step(build_model(n), batch, loss) for n in (1, 2))
    activations = a1 + (layers - 1) * (a2 - a1)
    peak = p1 + (layers - 1) * (p2 - p1)
    zero = (ds_config or {}).get("zero_optimization", {})
    bucket = int(float(zero.get("reduce_bucket_size", 5e8)))
    buckets = bucket * 2 * (2 if zero.get("overlap_comm", False) else 1)  # bf16, a second one to overlap
    return StepMemory(weights=weights, optimizer=-(-trained * OPTIMIZER_BYTES // world), buckets=buckets,
                      activations=activations, temporaries=peak - activations)
