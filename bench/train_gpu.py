"""Model FLOP utilisation of the training step on one GPU: FSDP2 + bf16, a Llama-shaped model.

    PYTHONSAFEPATH=1 python bench/train_gpu.py                      # 1.3B-shaped Llama, H100
    PYTHONSAFEPATH=1 python bench/train_gpu.py --size 7b --steps 4  # LLaMA-7B shape
    torchrun --nproc-per-node 8 bench/train_gpu.py --size 7b        # one node, all its GPUs

The model is randomly initialised (no weights are downloaded) and trained on Alpaca-shaped
examples (bench/packing.py's data). Both sides run full optimizer steps of a 128-example global
batch, sharded with FSDP2 (`fully_shard` per decoder layer), bf16 compute, fp32 master weights:

- baseline: Alpaca's batching: shuffled micro-batches of 4 padded to the longest, the model's own
  loss on every position;
- ours: the training workload's plan and step: packed micro-batches of 4 x 512 tokens, attention
  per example (flash-attn's varlen kernel when installed, else SDPA per example), the head only at
  response positions.

MFU counts only the useful FLOPs of real tokens: 6 x non-embedding parameters per token, the head
at the positions that predict a response token, and causal attention within each example. The
peak is dense bf16 (989 TFLOP/s for an H100 SXM; pass --peak-tflops for another GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from packing import alpaca_shaped, baseline_batches, our_batches  # noqa: E402

from alpaca_jobs.train import attention, collate, distributed  # noqa: E402
from alpaca_jobs.train.data import Example  # noqa: E402
from alpaca_jobs.train.step import loss_sum  # noqa: E402

SHAPES = {  # hidden, layers, heads, kv heads, intermediate
    "1b": (2048, 24, 16, 16, 5504),
    "3b": (3200, 26, 32, 32, 8640),
    "7b": (4096, 32, 32, 32, 11008),
}
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def useful_flops(examples: list[Example], hidden: int, layers: int, vocab: int, dense_params: int) -> float:
    """Forward + backward FLOPs the model must do for these examples, whatever the batching."""
    tokens = sum(len(e) for e in examples)
    head_positions = sum(e.num_targets for e in examples)
    attention_flops = sum(6 * layers * hidden * len(e) ** 2 for e in examples)  # causal: half of 12 L h s^2
    return 6 * dense_params * tokens + 6 * hidden * vocab * head_positions + attention_flops


def start_group() -> None:
    if "RANK" not in os.environ:  # a plain process: a group of one, so FSDP2 has a mesh
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    topology = distributed.topology_from_env()
    device = distributed.choose_device(topology, want_gpu=True)
    dist.init_process_group("nccl", device_id=device)


def build(size: str, vocab: int, attn: str) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, kv, inter = SHAPES[size]
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=2048)
    config._attn_implementation = attn
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config)
    distributed.shard(model, bf16=True)
    return model.train()


def timed_steps(model: torch.nn.Module, steps: list[list[collate.MicroBatch]], ours: bool) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    torch.cuda.synchronize()
    began = time.perf_counter()
    for micro_batches in steps:
        for b in micro_batches:
            b = b.to(torch.device("cuda"))
            if ours:
                loss, _ = loss_sum(model, b)
            else:
                loss = model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels, use_cache=False).loss
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SHAPES), default="1b")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per side (after one warm-up step)")
    parser.add_argument("--global-batch", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of one GPU (default: from its name)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench/train_gpu.py measures GPU utilisation and needs a CUDA GPU; none is visible here. "
              "For the CPU-side figures run bench/packing.py.", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name()
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    if peak is None:
        print(f"unknown GPU {name!r}: pass --peak-tflops", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True
    start_group()
    world, rank = dist.get_world_size(), dist.get_rank()

    count = (args.steps + 1) * args.global_batch
    examples = alpaca_shaped(count, args.vocab, args.max_length)
    per_step = [examples[s : s + args.global_batch] for s in range(0, count, args.global_batch)]
    mine = [step[rank::world] for step in per_step]  # each rank its share of every global batch
    base_steps = [baseline_batches(s, args.micro_batch, pad=0, seed=i) for i, s in enumerate(mine)]
    our_steps = [our_batches(s, args.micro_batch, args.max_length, len(s)) for s in mine]

    hidden, layers, *_ = SHAPES[args.size]
    results = {}
    for side, steps, attn, ours in (("baseline", base_steps, "sdpa", False), ("ours", our_steps, attention.choose(torch.device("cuda")), True)):
        model = build(args.size, args.vocab, attn)
        dense = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n)
        timed_steps(model, steps[:1], ours)  # warm-up: allocator, kernels, NCCL
        seconds = timed_steps(model, steps[1:], ours)
        flops = sum(useful_flops(s, hidden, layers, args.vocab, dense) for s in per_step[1:])
        tokens = sum(len(e) for s in per_step[1:] for e in s)
        results[side] = {"mfu": flops / seconds / (peak * 1e12 * world), "real_tokens_per_second": tokens / seconds,
                         "step_seconds": seconds / args.steps, "attention": attn}
        del model
        torch.cuda.empty_cache()
    if rank == 0:
        print(f"{name} x {world}, Llama {args.size} ({dense / 1e9:.2f}B dense parameters), bf16 FSDP2, global batch "
              f"{args.global_batch} Alpaca-shaped examples, peak {peak:.0f} TFLOP/s per GPU")
        for side, r in results.items():
            print(f"  {side:8s}: MFU {r['mfu']:.1%}, {r['real_tokens_per_second']:,.0f} real tokens/s, "
                  f"{r['step_seconds']:.2f} s per step ({r['attention']})")
        print(json.dumps({"bench": "train_gpu", "ours": results["ours"], "baseline": results["baseline"],
                          "ratio": round(results["ours"]["mfu"] / results["baseline"]["mfu"], 3),
                          "mfu": round(results["ours"]["mfu"], 4), "gpu": name}))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
