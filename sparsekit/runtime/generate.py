"""Own the decode loop: prefill, then decode from a static KV cache, one step per token.

``DecodeSession`` holds everything a decode needs in fixed buffers — the prompt, the input token,
the generated tokens, transformers' ``StaticCache`` (whose write position is a device tensor) — so
one decode step touches no host state. In ``mode="graph"`` (CUDA only) that step is captured once
as a ``torch.cuda.CUDAGraph`` and replayed per token; greedy argmax inside the graph writes the
next token into the input buffer, so the host only enqueues replays. The prefill (fixed prompt
length) is captured too when it can be; otherwise it runs eagerly. In ``mode="eager"`` the same
step runs as plain PyTorch (CPU, or GPU for comparison).

``compile=True`` runs the decode step's model forward through ``torch.compile`` (inductor, no
graphs of its own) before it is captured: the decoder-layer glue (RMSNorm, rotary, residual adds,
SiLU product, cache writes) becomes a few fused kernels instead of hundreds of small ones, the way
gpt-fast and TEAL's own benchmark run. The prefill forward (fixed prompt length) is compiled the
same way unless ``compile_prefill=False``: at a short prompt its glue costs as much as the weight
reads. The sparse ops enter the compiled graphs as opaque custom ops (their fake implementations
are registered in ``sparsekit.ops``). If compiling fails, that forward runs uncompiled and
``notes`` says why.

Greedy decoding; EOS is ignored, so every run generates exactly ``max_new_tokens`` tokens.
"""
from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, field

import torch
from torch import nn

MODES = ("graph", "eager")


@dataclass
class RunTiming:
    """One prompt -> ``max_new_tokens`` run. Times in milliseconds, synchronised with the device."""

    ttft_ms: float
    latency_ms: float
    new_tokens: int
    step_ms: list[float] = field(default_factory=list)  # per decode step (tokens 2..N), when measured

    @property
    def tpot_ms(self) -> float:
        return (self.latency_ms - self.ttft_ms) / max(self.new_tokens - 1, 1)


def inductor_options() -> dict:
    """Inductor settings for the compiled forwards from env ``SPARSEKIT_INDUCTOR`` ("name=value,...",
    for experiments such as ``combo_kernels=1``; a value is cast to the setting's type). Empty by default."""
    import torch._inductor.config as cfg

    out = {}
    for item in os.environ.get("SPARSEKIT_INDUCTOR", "").split(","):
        name, _, value = (p.strip() for p in item.partition("="))
        if name:
            kind = type(getattr(cfg, name, ""))
            try:
                out[name] = bool(int(value)) if kind is bool else kind(value)
            except ValueError:
                raise ValueError(f"{name}={value!r} is not a {kind.__name__}") from None
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class DecodeSession:
    """Static-cache greedy decoding of ``batch_size`` prompts of ``prompt_len`` tokens."""

    def __init__(self, model: nn.Module, *, batch_size: int, prompt_len: int, max_new_tokens: int,
                 mode: str = "eager", graph_prefill: bool = True, compile: bool = False,
                 compile_backend: str = "inductor", compile_prefill: bool = True, inductor: dict | None = None):
        from transformers import StaticCache

        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        self.model = model
        self.device = next(model.parameters()).device
        if mode == "graph" and self.device.type != "cuda":
            raise ValueError("graph mode needs the model on a CUDA device")
        self.mode = mode
        self.batch_size, self.prompt_len, self.max_new_tokens = batch_size, prompt_len, max_new_tokens
        self.max_len = prompt_len + max_new_tokens
        b, dev = batch_size, self.device
        self.prompt = torch.zeros(b, prompt_len, dtype=torch.long, device=dev)
        self.token = torch.zeros(b, 1, dtype=torch.long, device=dev)          # input of the next decode step
        self.out = torch.zeros(b, max_new_tokens, dtype=torch.long, device=dev)  # generated tokens
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)                # next slot of ``out``
        self.cache = StaticCache(config=model.config, max_cache_len=self.max_len)
        self._prefill_mask = self._causal_mask()
        self._graph_prefill_wanted = graph_prefill
        self.prefill_graph: torch.cuda.CUDAGraph | None = None
        self.decode_graph: torch.cuda.CUDAGraph | None = None
        self.notes: list[str] = []
        self._steps_done = 0
        self.compiled = False  # the decode step runs compiled
        self.prefill_compiled = False
        self._decode_forward = self._decode_forward_eager
        self._prefill_forward = self._prefill_forward_eager
        if compile:
            self._compile(compile_backend, compile_prefill, inductor or {})
        if mode == "graph":
            self._capture()

    # ---- the two device programs -------------------------------------------------------------
    def _causal_mask(self) -> torch.Tensor | None:
        """The prefill's 4D mask (prompt at positions 0..P-1 of a max_len cache), built once."""
        impl = getattr(self.model.config, "_attn_implementation", "sdpa")
        if impl not in ("sdpa", "eager"):
            return None
        q = torch.arange(self.prompt_len, device=self.device)[:, None]
        k = torch.arange(self.max_len, device=self.device)[None, :]
        allowed = (k <= q)[None, None].expand(self.batch_size, 1, -1, -1)
        if impl == "sdpa":
            return allowed.contiguous()
        dtype = next(self.model.parameters()).dtype
        mask = torch.zeros(allowed.shape, dtype=dtype, device=self.device)
        return mask.masked_fill_(~allowed, torch.finfo(dtype).min)

    def _emit(self, logits: torch.Tensor) -> None:
        nxt = logits[:, -1, :].argmax(dim=-1).view(self.batch_size, 1)
        self.token.copy_(nxt)
        self.out.index_copy_(1, self.pos, nxt)
        self.pos.add_(1)

    def _prefill_forward_eager(self) -> torch.Tensor:
        kwargs = {"attention_mask": self._prefill_mask} if self._prefill_mask is not None else {}
        return self.model(input_ids=self.prompt, past_key_values=self.cache, use_cache=True,
                          logits_to_keep=1, **kwargs).logits

    def _prefill_body(self) -> None:
        self._emit(self._prefill_forward())

    def _decode_forward_eager(self) -> torch.Tensor:
        return self.model(input_ids=self.token, past_key_values=self.cache, use_cache=True).logits

    def _decode_body(self) -> None:
        self._emit(self._decode_forward())

    def _compile(self, backend: str, prefill: bool, inductor: dict) -> None:
        """Compile the decode (and prefill) forward and run each once (that is when compiling happens).
        ``inductor``: inductor settings (such as coordinate_descent_tuning); SPARSEKIT_INDUCTOR overrides them."""
        options = dict(inductor) if backend == "inductor" else {}
        if backend == "inductor":
            try:
                options.update(inductor_options())
            except ValueError as exc:  # a malformed experiment setting: compile with the given settings
                self.notes.append(f"SPARSEKIT_INDUCTOR ignored ({exc})")

        def attempt(fn, what: str):
            compiled = torch.compile(fn, backend=backend, dynamic=False)
            try:
                with torch._inductor.config.patch(options) if options else contextlib.nullcontext():
                    logits = compiled()
                _sync(self.device)
            except Exception as exc:  # an op inductor cannot handle here: keep that forward uncompiled
                _sync(self.device)
                self.notes.append(f"{what} runs uncompiled (torch.compile failed: {str(exc).splitlines()[0][:160]})")
                return None, fn()
            return compiled, logits

        self._reset_state()
        self._prefill_forward_eager()  # transformers allocates the cache layers lazily: not inside the graph
        self._reset_state()
        if prefill:
            compiled, logits = attempt(self._prefill_forward_eager, "prefill")
            if compiled is not None:
                self._prefill_forward, self.prefill_compiled = compiled, True
        else:
            logits = self._prefill_forward_eager()
        self._emit(logits)
        compiled, logits = attempt(self._decode_forward_eager, "decode")
        if compiled is not None:
            self._decode_forward, self.compiled = compiled, True
        self._reset_state()

    # ---- capture -------------------------------------------------------------------------------
    def _reset_state(self) -> None:
        self.cache.reset()
        self.pos.zero_()
        self.out.zero_()
        self._steps_done = 0

    def _capture(self) -> None:
        """Warm up on a side stream (lazy cache allocation, kernel JIT), then capture the steps."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._reset_state()
                self._prefill_body()
                for _ in range(min(2, self.max_new_tokens - 1)):
                    self._decode_body()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        self._reset_state()
        if self._graph_prefill_wanted and self._prefill_mask is not None:
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    self._prefill_body()
                self.prefill_graph = graph
            except Exception as exc:  # a host sync somewhere in the prefill path: keep it eager
                torch.cuda.synchronize(self.device)
                self.notes.append(f"prefill runs eagerly (CUDA-graph capture failed: {str(exc).splitlines()[0][:120]})")
        elif self._graph_prefill_wanted:
            self.notes.append("prefill runs eagerly (this attention implementation takes no prebuilt mask)")
        if self.max_new_tokens > 1:
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    self._decode_body()
                self.decode_graph = graph
            except Exception as exc:  # something in the step syncs with the host: say so, run eagerly
                torch.cuda.synchronize(self.device)
                self.notes.append(f"decode runs EAGERLY (CUDA-graph capture failed: {str(exc).splitlines()[0][:160]})")
        self._reset_state()

    # ---- running -------------------------------------------------------------------------------
    def set_prompt(self, input_ids: torch.Tensor) -> None:
        if tuple(input_ids.shape) != (self.batch_size, self.prompt_len):
            raise ValueError(f"prompt must have shape {(self.batch_size, self.prompt_len)}, got {tuple(input_ids.shape)}")
        self.prompt.copy_(input_ids)

    def reset(self) -> None:
        """Empty the cache and the generated tokens (buffers keep their addresses)."""
        self._reset_state()

    def prefill(self) -> None:
        """Run the prompt through the model and sample the first token (asynchronous on GPU)."""
        if self.prefill_graph is not None:
            self.prefill_graph.replay()
        else:
            self._prefill_body()
        self._steps_done = 1

    def step(self, eager: bool = False) -> None:
        """One decode step: feed the last token, sample the next (asynchronous on GPU).

        ``eager=True`` runs the step as plain PyTorch even in graph mode (same buffers, same result).
        """
        if self._steps_done >= self.max_new_tokens:
            raise RuntimeError("the static cache is full: call reset() and prefill() first")
        if self.decode_graph is not None and not eager:
            self.decode_graph.replay()
        else:
            self._decode_body()
        self._steps_done += 1

    def tokens(self) -> torch.Tensor:
        """Generated tokens so far, ``[batch, steps]`` on the CPU."""
        return self.out[:, : self._steps_done].cpu()

    def run(self, per_step: bool = False) -> RunTiming:
        """Reset, prefill, decode ``max_new_tokens - 1`` steps; TTFT and latency synchronised.

        ``per_step`` also times every decode step (CUDA events on GPU, so no extra syncs).
        """
        dev = self.device
        self.reset()
        _sync(dev)
        events = None
        step_ms: list[float] = []
        t0 = time.perf_counter()
        self.prefill()
        _sync(dev)
        t1 = time.perf_counter()
        n = self.max_new_tokens - 1
        if per_step and dev.type == "cuda":
            events = [torch.cuda.Event(enable_timing=True) for _ in range(n + 1)]
            events[0].record()
        for i in range(n):
            if per_step and events is None:
                s = time.perf_counter()
                self.step()
                step_ms.append((time.perf_counter() - s) * 1e3)
            else:
                self.step()
                if events is not None:
                    events[i + 1].record()
        _sync(dev)
        t2 = time.perf_counter()
        if events is not None:
            step_ms = [events[i].elapsed_time(events[i + 1]) for i in range(n)]
        return RunTiming(ttft_ms=(t1 - t0) * 1e3, latency_ms=(t2 - t0) * 1e3, new_tokens=self.max_new_tokens,
                         step_ms=step_ms)

    def close(self) -> None:
        """Drop graphs, cache and compiled code so the memory can go to the next model."""
        self.prefill_graph = self.decode_graph = None
        self.cache = None  # type: ignore[assignment]
        if self.compiled or self.prefill_compiled:
            # dynamo keys compiled code by the step's code object, shared by every session: drop it
            # so the next session compiles afresh instead of piling up guards (and hitting the limit)
            self._decode_forward = self._decode_forward_eager
            self._prefill_forward = self._prefill_forward_eager
            self.compiled = self.prefill_compiled = False
            torch._dynamo.reset()


@torch.inference_mode()
def greedy_generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, mode: str = "eager") -> torch.Tensor:
    """Generate ``max_new_tokens`` greedy tokens for ``input_ids`` [B, P] with the owned loop."""
    sess = DecodeSession(model, batch_size=input_ids.shape[0], prompt_len=input_ids.shape[1],
                         max_new_tokens=max_new_tokens, mode=mode)
    sess.set_prompt(input_ids.to(sess.device))
    sess.reset()
    sess.prefill()
    for _ in range(max_new_tokens - 1):
        sess.step()
    out = sess.tokens()
    sess.close()
    return out
