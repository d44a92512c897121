#!/usr/bin/env python3
"""PyTorch/transformers peer for `tapml bench llm|llm-large` on the GPU machine (test tooling, never a tapml
runtime dependency). Loads the same Hugging Face folder the tapml bench wrote (/tmp/tapml-bench-llama-125m,
/tmp/tapml-bench-llama-4x4096) and prints prefill and decode tokens/s with the same prompt length and decode steps.

  python3 tools/bench/torch_llm.py --model /tmp/tapml-bench-llama-125m --dtype f32 --prompt 64 --new 33 --mode eager
  ... --mode compile   # torch.compile(mode="reduce-overhead") over a static cache, CUDA graphs
  ... --context 2048   # decode rate averaged over a 2,000-token generation (eager)
  ... --dtype float16  # the same checkpoint in f16 (or the -f16 copy `bench llm-weights` writes: the same values)

One line per measurement: `peer: <model> <dtype> <mode> prefill P tokens/s decode D tokens/s (prompt N, new M)`.
"""
import argparse, os, sys, time

import torch
from transformers import AutoModelForCausalLM


STEADY_S = 1.5  # seconds of GPU work before measuring: an idle GPU lowers its clocks (tapml's bench does the same)


def sync():
    torch.cuda.synchronize()


def eager(model, ids, new):
    """Greedy decode with the dynamic KV cache, as `model.generate` does, timed per phase."""
    with torch.inference_mode():
        sync(); t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
        past = out.past_key_values
        sync(); t1 = time.perf_counter()
        for _ in range(new - 1):
            out = model(input_ids=tok, past_key_values=past, use_cache=True)
            past = out.past_key_values
            tok = out.logits[:, -1:].argmax(-1)
        sync(); t2 = time.perf_counter()
    return t1 - t0, t2 - t1


def compiled(model, ids, new, runs):
    """torch.compile(mode="reduce-overhead") decode over a StaticCache (CUDA graphs), the recipe transformers documents."""
    from transformers import StaticCache
    n = ids.shape[1]
    max_len = n + new + 8
    dev = ids.device

    def make_cache():
        try:
            return StaticCache(config=model.config, max_batch_size=1, max_cache_len=max_len, device=dev, dtype=model.dtype)
        except TypeError:
            return StaticCache(config=model.config, max_cache_len=max_len)

    step = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)

    def once():
        cache = make_cache()
        sync(); t0 = time.perf_counter()
        pos = torch.arange(n, device=dev)
        out = model(input_ids=ids, past_key_values=cache, cache_position=pos, use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
        sync(); t1 = time.perf_counter()
        for i in range(new - 1):
            torch.compiler.cudagraph_mark_step_begin()
            p = torch.tensor([n + i], device=dev)
            out = step(input_ids=tok, past_key_values=cache, cache_position=p, use_cache=True)
            tok = out.logits[:, -1:].argmax(-1).clone()
        sync(); t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    best = None
    with torch.inference_mode():
        # Two warm-ups (compile, graph capture), then more until the GPU has been busy STEADY_S (its clocks up, as for
        # tapml's bench), then the measured runs, each phase its best.
        once(); once()
        t = time.perf_counter()
        while time.perf_counter() - t < STEADY_S:
            once()
        for _ in range(runs):
            r = once()
            best = r if best is None else (min(best[0], r[0]), min(best[1], r[1]))
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16", "float32", "float16", "bfloat16"],
                    help="weights and activations: the checkpoint converted at load (float16: an f32 checkpoint rounded to nearest, "
                         "the values of the -f16 copy tapml's bench writes)")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=33, help="tokens generated: the prefill's + (new - 1) decode steps")
    ap.add_argument("--mode", default="eager", choices=["eager", "compile"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--context", type=int, default=0, help="if set: generate this many tokens (eager) and report the average decode rate")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("peer: no CUDA device", file=sys.stderr); return 2
    a.dtype = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}.get(a.dtype, a.dtype)
    dt = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=dt, attn_implementation="sdpa").cuda().eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, vocab, (1, a.prompt), generator=g).cuda()
    new = a.context or a.new
    name = os.path.basename(a.model.rstrip("/"))
    if a.mode == "eager":
        eager(model, ids[:, :4], 2)  # warm-up, then until the GPU has been busy STEADY_S (its clocks up)
        t = time.perf_counter()
        while time.perf_counter() - t < STEADY_S:
            eager(model, ids, new if not a.context else 33)
        best = None
        for _ in range(1 if a.context else a.runs):
            r = eager(model, ids, new)
            best = r if best is None else (min(best[0], r[0]), min(best[1], r[1]))  # each phase its best run, as tapml's bench
    else:
        best = compiled(model, ids, new, a.runs)
    pre, dec = best
    print(f"peer: {name} {a.dtype} {a.mode} prefill {a.prompt / pre:.0f} tokens/s decode {(new - 1) / dec:.1f} tokens/s "
          f"(prompt {a.prompt}, new {new}, torch {torch.__version__}, {torch.cuda.get_device_name()})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
