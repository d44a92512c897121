#!/usr/bin/env python3
"""Makes tests/data/hf-arch: for each architecture two tiny checkpoints written by transformers itself
(random init, fixed seed; the second variant saved in bfloat16), with transformers' own prefill logits and
16 greedy tokens for fixed input ids, and the PyTorch ONNX export of the prefill graph where the exporter
manages (checked on onnxruntime against transformers' tokens; the outcome goes into manifest.json).

Run where torch + transformers are installed (the device machine):
    python3 tools/models/make_arch_refs.py OUTDIR [arch ...]
Everything is computed on the CPU in float32 with eager attention. A bf16 variant is rounded to bf16 first,
so its references are the f32 computation over the bf16 values that the checkpoint holds.
"""
import json, os, sys, time, traceback

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM
from safetensors.torch import save_file

INPUT_IDS = [1, 17, 205, 42, 99, 7, 212, 88, 3, 140, 21, 2]
V = 256


def llama_like(**kw):
    base = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
                bos_token_id=1, eos_token_id=2, pad_token_id=0)
    base.update(kw)
    return base


# (arch, variant name, dtype, config kwargs). Variants differ in the switches the architecture has.
VARIANTS = {
    "qwen3": [
        ("a", "float32", llama_like(head_dim=16)),
        ("b", "bfloat16", llama_like(attention_bias=True, tie_word_embeddings=True, num_key_value_heads=1)),
    ],
    "qwen3_moe": [
        ("a", "float32", llama_like(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True)),
        ("b", "bfloat16", llama_like(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, norm_topk_prob=False, mlp_only_layers=[0], head_dim=16)),
    ],
    "qwen2_moe": [
        ("a", "float32", llama_like(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=48, norm_topk_prob=False)),
        ("b", "bfloat16", llama_like(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24, shared_expert_intermediate_size=40, norm_topk_prob=True, mlp_only_layers=[1], tie_word_embeddings=True)),
    ],
    "mixtral": [
        ("a", "float32", llama_like(num_local_experts=4, num_experts_per_tok=2)),
        ("b", "bfloat16", llama_like(num_local_experts=3, num_experts_per_tok=1, sliding_window=4)),
    ],
    "gemma2": [
        ("a", "float32", llama_like(head_dim=16, query_pre_attn_scalar=12, sliding_window=4, final_logit_softcapping=3.0, attn_logit_softcapping=2.0, tie_word_embeddings=True)),
        ("b", "bfloat16", llama_like(head_dim=8, query_pre_attn_scalar=8, sliding_window=5, final_logit_softcapping=None, attn_logit_softcapping=None, layer_types=["full_attention", "sliding_attention"])),
    ],
    "gemma3_text": [
        ("a", "float32", llama_like(head_dim=16, query_pre_attn_scalar=16, sliding_window=4, layer_types=["sliding_attention", "full_attention"], tie_word_embeddings=True)),
        ("b", "bfloat16", llama_like(head_dim=8, query_pre_attn_scalar=12, sliding_window=3, layer_types=["sliding_attention", "full_attention"], final_logit_softcapping=3.0, attn_logit_softcapping=2.0,
                                     rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0}, "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
    ],
    "phi": [
        ("a", "float32", llama_like(num_key_value_heads=4, partial_rotary_factor=0.5, hidden_act="gelu_new")),
        ("b", "bfloat16", llama_like(num_key_value_heads=2, partial_rotary_factor=0.75, qk_layernorm=True, hidden_act="gelu_new")),
    ],
    "stablelm": [
        ("a", "float32", llama_like(num_attention_heads=2, num_key_value_heads=2, partial_rotary_factor=0.25, use_qkv_bias=True)),
        ("b", "bfloat16", llama_like(partial_rotary_factor=0.5, qk_layernorm=True, use_parallel_residual=True)),
    ],
    "gpt_neox": [
        ("a", "float32", llama_like(rotary_pct=0.25, use_parallel_residual=True, hidden_act="gelu")),
        ("b", "bfloat16", llama_like(rotary_pct=1.0, use_parallel_residual=False, hidden_act="gelu_new", attention_bias=False)),
    ],
    "gptj": [
        ("a", "float32", dict(vocab_size=V, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_inner=64, n_positions=128, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)),
        ("b", "bfloat16", dict(vocab_size=V, n_embd=32, n_layer=2, n_head=4, rotary_dim=8, n_inner=None, n_positions=128, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)),
    ],
    "gpt_bigcode": [
        ("a", "float32", dict(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=128, multi_query=True, bos_token_id=1, eos_token_id=2)),
        ("b", "bfloat16", dict(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_inner=None, n_positions=128, multi_query=False, activation_function="gelu", bos_token_id=1, eos_token_id=2)),
    ],
    "starcoder2": [
        ("a", "float32", llama_like(use_bias=True, hidden_act="gelu_pytorch_tanh")),
        ("b", "bfloat16", llama_like(use_bias=True, sliding_window=4, num_key_value_heads=1, tie_word_embeddings=True)),
    ],
    "olmo": [
        ("a", "float32", llama_like()),
        ("b", "bfloat16", llama_like(clip_qkv=0.3, attention_bias=True)),
    ],
    "olmo2": [
        ("a", "float32", llama_like()),
        ("b", "bfloat16", llama_like(num_key_value_heads=4, tie_word_embeddings=True)),
    ],
    "cohere": [
        ("a", "float32", llama_like(logit_scale=0.0625, use_qk_norm=False)),
        ("b", "bfloat16", llama_like(logit_scale=0.5, use_qk_norm=True, num_key_value_heads=4)),
    ],
    "granite": [
        ("a", "float32", llama_like(embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.0078125, logits_scaling=8.0)),
        ("b", "bfloat16", llama_like(embedding_multiplier=6.0, residual_multiplier=0.5, attention_multiplier=0.25, logits_scaling=0.5, tie_word_embeddings=True, attention_bias=True)),
    ],
    "nemotron": [
        ("a", "float32", llama_like(partial_rotary_factor=0.5, hidden_act="relu2")),
        ("b", "bfloat16", llama_like(partial_rotary_factor=1.0, hidden_act="relu2", attention_bias=True, mlp_bias=True)),
    ],
    "falcon": [
        ("a", "float32", dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2, new_decoder_architecture=True, bias=False, alibi=False, parallel_attn=True, bos_token_id=1, eos_token_id=2, max_position_embeddings=128)),
        ("b", "bfloat16", dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, multi_query=True, new_decoder_architecture=False, bias=False, alibi=False, parallel_attn=True, bos_token_id=1, eos_token_id=2, max_position_embeddings=128)),
        ("c", "float32", dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, multi_query=False, new_decoder_architecture=False, bias=True, alibi=True, parallel_attn=False, bos_token_id=1, eos_token_id=2, max_position_embeddings=128)),
    ],
    "bloom": [
        ("a", "float32", dict(vocab_size=V, hidden_size=32, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2)),
        ("b", "bfloat16", dict(vocab_size=V, hidden_size=32, n_layer=2, n_head=2, apply_residual_connection_post_layernorm=True, bos_token_id=1, eos_token_id=2)),
    ],
    "opt": [
        ("a", "float32", dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, max_position_embeddings=128, word_embed_proj_dim=32, do_layer_norm_before=True, bos_token_id=1, eos_token_id=2, pad_token_id=0)),
        ("b", "bfloat16", dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, ffn_dim=64, max_position_embeddings=128, word_embed_proj_dim=16, do_layer_norm_before=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)),
    ],
    "deepseek_v3": [
        ("a", "float32", llama_like(num_key_value_heads=4, q_lora_rank=None, kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=8, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=16, first_k_dense_replace=1, n_group=2, topk_group=1, routed_scaling_factor=2.5, norm_topk_prob=True, rope_interleave=True)),
        ("b", "bfloat16", llama_like(num_key_value_heads=4, q_lora_rank=24, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, moe_intermediate_size=16, first_k_dense_replace=0, n_group=1, topk_group=1, routed_scaling_factor=1.0, norm_topk_prob=False, rope_interleave=False)),
    ],
}


def randomize(model, seed):
    """Weights std 0.15 (matrices), vectors perturbed by 0.1 around their init (norm scales near 1, biases near 0),
    so activations are not flat and every bias and norm scale matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(model.named_parameters()) + [(n, b) for n, b in model.named_buffers() if "correction_bias" in n]:
            if not p.is_floating_point():
                continue
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def greedy_ort(path, ids, n):
    import onnxruntime as ort
    import numpy as np
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    seq = list(ids)
    first = None
    for _ in range(n):
        out = s.run(None, {s.get_inputs()[0].name: np.array([seq], dtype=np.int64)})[0]
        if first is None:
            first = out
        seq.append(int(out[0, -1].argmax()))
    return first, seq[len(ids):]


class Prefill(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids):
        return self.m(input_ids=input_ids, use_cache=False).logits


def make(out, arch, name, dtype, kw, seed, manifest, t0):
    tag = f"{arch}-{name}"
    d = os.path.join(out, tag)
    rec = {"arch": arch, "variant": name, "dtype": dtype, "seed": seed}
    manifest.append(rec)
    try:
        torch.manual_seed(seed)
        cfg = AutoConfig.for_model(arch, **kw)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
        model.eval()
        randomize(model, seed)
        if dtype == "bfloat16":
            # NOTE: only what the checkpoint holds (parameters, persistent buffers) is rounded; computed buffers
            # (RoPE inv_freq, embed_scale) stay float32, as when transformers loads the bf16 file and runs in f32.
            saved = set(model.state_dict().keys())
            with torch.no_grad():
                for n, p in list(model.named_parameters()) + list(model.named_buffers()):
                    if p.is_floating_point() and n in saved:
                        p.copy_(p.to(torch.bfloat16).float())
        ids = torch.tensor([INPUT_IDS])
        with torch.no_grad():
            logits = model(input_ids=ids).logits.float()
            model.generation_config.eos_token_id = None
            model.generation_config.pad_token_id = 0
            gen = model.generate(ids, max_new_tokens=16, min_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)[:, len(INPUT_IDS):]
        rec["generated"] = gen[0].tolist()
        rec["class"] = type(model).__name__
        if dtype == "bfloat16":
            model = model.to(torch.bfloat16)
        model.save_pretrained(d)
        save_file({"input_ids": ids.to(torch.int64).contiguous(), "logits": logits.contiguous(), "generated_ids": gen.to(torch.int64).contiguous()},
                  os.path.join(d, "reference.safetensors"))
        rec["files"] = sorted(os.listdir(d))
        rec["bytes"] = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    except Exception as e:
        rec["error"] = f"{type(e).__name__}: {e}"[:500]
        traceback.print_exc()
        return
    # ONNX: the first variant of each architecture, in float32, while time allows.
    if name != "a" or time.time() - t0 > 360:
        rec["onnx"] = "not tried (" + ("first variant only" if name != "a" else "time budget") + ")"
        return
    try:
        model = model.float()
        p = os.path.join(out, "onnx", f"{tag}.onnx")
        os.makedirs(os.path.dirname(p), exist_ok=True)
        torch.onnx.export(Prefill(model), (ids,), p, dynamo=False, opset_version=17, input_names=["input_ids"], output_names=["logits"],
                          dynamic_axes={"input_ids": {1: "seq"}, "logits": {1: "seq"}})
        first, toks = greedy_ort(p, INPUT_IDS, 16)
        diff = float((torch.from_numpy(first) - logits).abs().max())
        rec["onnx"] = {"exported": True, "bytes": os.path.getsize(p), "ort_prefill_max_abs": diff, "ort_tokens_match": toks == rec["generated"], "ort_tokens": toks}
    except Exception as e:
        rec["onnx"] = {"exported": False, "why": f"{type(e).__name__}: {e}"[:400]}


README_HEAD = """# Tiny checkpoints written by transformers, with transformers' own outputs (external reference)

Made by `tools/models/make_arch_refs.py` on the device machine ({date}), transformers {transformers},
torch {torch}, CPU, float32, eager attention:

    python3 tools/models/make_arch_refs.py OUT

For each architecture the script builds the model from a transformers config class (`AutoConfig.for_model`),
randomizes it with a fixed seed (matrices N(0, 0.15²); vectors — norm scales, biases, DeepSeek's
`e_score_correction_bias` — perturbed by N(0, 0.1²) around their init so every one of them matters) and saves it
with `save_pretrained` (safetensors). Variant `b` (and only it) is bfloat16: its weights are rounded to bf16
first, so its references are the float32 computation over exactly the bf16 values in the file. Nobody on this
project wrote these weights or the code that computed the references.

`reference.safetensors` in each folder:
- `input_ids` int64 [1, 12] = {ids}
- `logits` float32 [1, 12, 256]: transformers' prefill logits for `input_ids`
- `generated_ids` int64 [1, 16]: `generate(input_ids, max_new_tokens=16, do_sample=False)` with its KV cache, no EOS stop

Tolerance: atol 1e-4 + rtol 1e-4. There is no tokenizer (vocabulary 256); tests feed ids.
Some random models greedily repeat one token (noted in `manifest.json`'s `generated`); their logits still differ
everywhere, and the logits row is the strict check for them.

PyTorch's ONNX exporter (TorchScript, opset 17) was tried on variant `a` of each architecture: it fails on
transformers 5's mask construction (`aten::diff`) for most; where it managed, onnxruntime ran the export and
greedy-decoded 16 tokens (full re-prefill each step). Those .onnx files are not kept here (the tests check
tapml's own export on onnxruntime against transformers' tokens instead). `manifest.json` holds everything the
script recorded.

"""


def write_readme(out, info):
    """The folder's README: provenance, then one row per checkpoint (from manifest.json's records)."""
    rows = []
    for c in info["checkpoints"]:
        if "error" in c:
            rows.append(f"| `{c['arch']}-{c['variant']}` | — | {c['dtype']} | — | not made: {c['error'][:120]} |")
            continue
        o = c.get("onnx")
        if isinstance(o, dict):
            o = (f"exported; onnxruntime prefill max_abs {o['ort_prefill_max_abs']:.1e}, 16 tokens {'match' if o['ort_tokens_match'] else 'DIFFER'}"
                 if o.get("exported") else "exporter failed: " + o["why"].split(" to ONNX")[0].split(":")[-1].strip())
        rows.append(f"| `{c['arch']}-{c['variant']}` | {c['class']} | {c['dtype']} | {c['bytes']:,} | {o} |")
    head = README_HEAD.format(date=info["date"], transformers=info["transformers"], torch=info["torch"], ids=" ".join(map(str, info["input_ids"])))
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(head + "| checkpoint | class | dtype | bytes | PyTorch ONNX export |\n| --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n")


def main():
    out = sys.argv[1]
    only = sys.argv[2:]
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    manifest = []
    t0 = time.time()
    for i, (arch, variants) in enumerate(VARIANTS.items()):
        if only and arch not in only:
            continue
        for j, (name, dtype, kw) in enumerate(variants):
            make(out, arch, name, dtype, kw, 1000 + 10 * i + j, manifest, t0)
            print(f"{time.time() - t0:6.1f}s {arch}-{name}: {manifest[-1].get('error') or manifest[-1].get('generated')}", flush=True)
    info = {"transformers": transformers.__version__, "torch": torch.__version__, "input_ids": INPUT_IDS,
            "date": time.strftime("%Y-%m-%d", time.gmtime()), "command": "python3 tools/models/make_arch_refs.py OUT", "checkpoints": manifest}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(info, f, indent=1)
    write_readme(out, info)


if __name__ == "__main__":
    main()
