"""Model FLOP utilisation of the training step on one GPU: FSDP2 + bf16, a Llama-shaped model.

    PYTHONSAFEPATH=1 python bench/train_gpu.py --size 7b            # LLaMA-7B shape, one GPU
    PYTHONSAFEPATH=1 python bench/train_gpu.py --size 1b --steps 2  # smaller, quicker
    torchrun --nproc-per-node 8 bench/train_gpu.py --size 7b        # one node, all its GPUs

The model is randomly initialised (no weights are downloaded) and trained on Alpaca-shaped
examples (bench/packing.py's data). Both sides run full optimizer steps of a 128-example global
batch, sharded with FSDP2 (`fully_shard` per decoder layer), bf16 compute, fp32 master weights
and fp32 AdamW state, in this process, one after the other:

- baseline: Alpaca's batching: shuffled micro-batches of 4 padded to the longest, the model's own
  loss on every position, SDPA attention with a padding mask;
- ours: the training workload's plan and step: packed micro-batches of 4 x 512 tokens, attention
  per example (flash-attn's varlen kernel when installed, else PyTorch's varlen flash kernel), the
  head only at response positions, gradients reduced as the trainer reduces them.

MFU counts only the useful FLOPs of real tokens: 6 x non-embedding parameters per token, the head
at the positions that predict a response token, and causal attention within each example. The
peak is the datasheet's dense bf16 rate (989 TFLOP/s for H100/H200 SXM; --peak-tflops for another
GPU); the script also measures a large bf16 matmul on the same GPU and reports MFU against that.

Before timing, it checks that the packed attention it will time equals causal SDPA run per
example, and stops with a non-zero exit when it does not, or when no CUDA GPU is visible.
"""

from __future__ import annotations

import os

# Before torch touches CUDA: a 7B model's fp32 state fills most of one GPU, and fixed-size
# segments would fragment what activations need.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from packing import alpaca_shaped, baseline_batches, our_batches  # noqa: E402

from alpaca_jobs.train import attention, collate, distributed  # noqa: E402
from alpaca_jobs.train.data import Example  # noqa: E402
from alpaca_jobs.train.step import loss_sum  # noqa: E402

SHAPES = {  # hidden, layers, heads, kv heads, intermediate
    "tiny": (256, 2, 4, 4, 688),  # a smoke test of the script itself, not a figure
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


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def start_group(device_type: str) -> torch.device:
    if "RANK" not in os.environ:  # a plain process: a group of one, so FSDP2 has a mesh
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    topology = distributed.topology_from_env()
    device = distributed.choose_device(topology, want_gpu=device_type == "cuda")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    return device


def matmul_tflops(n: int = 8192, repeats: int = 10) -> float:
    """The bf16 matrix rate this GPU reaches on random data: the practical ceiling beside the datasheet's."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    began, ended = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    began.record()
    for _ in range(repeats):
        a @ b
    ended.record()
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (began.elapsed_time(ended) / 1e3) / 1e12


def check_packed_attention(attn: str, device: torch.device) -> str:
    """The packed kernel must equal causal SDPA per example (fp32 reference); returns which kernel ran."""
    if attn != attention.NAME:
        return attn
    gen = torch.Generator(device=device).manual_seed(1)
    lengths = [37, 200, 1, 91, 155]
    bounds = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    q, k, v = (torch.randn(1, 8, sum(lengths), 128, device=device, generator=gen) for _ in range(3))
    def run() -> torch.Tensor:
        return attention.packed_sdpa(torch.nn.Module(), *(t.bfloat16() for t in (q, k, v)), None, scaling=128**-0.5,
                                     cu_seq_lens_q=bounds, max_length_q=max(lengths))[0]

    try:
        out = run()
    except (RuntimeError, TypeError) as exc:  # a varlen API this torch spells differently: time the fallback
        print(f"torch's varlen attention failed here ({exc}); falling back to SDPA per example", file=sys.stderr)
        attention.ALLOW_TORCH_VARLEN = False
        out = run()
    edges = bounds.tolist()
    ref = torch.cat([torch.nn.functional.scaled_dot_product_attention(q[:, :, a:b].double(), k[:, :, a:b].double(),
                     v[:, :, a:b].double(), is_causal=True) for a, b in zip(edges[:-1], edges[1:])], dim=2).transpose(1, 2)
    error = float((out.double() - ref).norm() / ref.norm())
    kernel = "torch varlen flash" if attention.torch_varlen_usable(q.bfloat16()) else "SDPA per example"
    if not error < 2e-2:  # bf16 operands land near 4e-3; NaN fails too
        raise SystemExit(f"packed attention ({kernel}) differs from per-example SDPA: relative error {error:.3g}")
    print(f"packed attention check: {kernel}, relative error vs fp64 per-example SDPA {error:.1e}", flush=True)
    return f"{attn} ({kernel})"


def build(size: str, vocab: int, attn: str, device: torch.device, compile_layers: bool = False) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, kv, inter = SHAPES[size]
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=2048)
    config._attn_implementation = attn
    torch.manual_seed(0)
    with device:
        model = LlamaForCausalLM(config)
    if compile_layers:  # per decoder layer, before sharding, as torchtitan does
        for layer in distributed.decoder_layers(model):
            layer.compile(dynamic=True)
    distributed.shard(model, bf16=True)
    return model.train()


def timed_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: list[list[collate.MicroBatch]],
                ours: bool, device: torch.device) -> list[float]:
    """Seconds of each optimizer step."""
    world = dist.get_world_size()
    seconds = []
    for micro_batches in steps:
        sync(device)
        began = time.perf_counter()
        for i, b in enumerate(micro_batches):
            b = b.to(device)
            if ours:
                distributed.set_gradient_sync(model, distributed.sync_this_micro_step(world, i, len(micro_batches)))
                loss, _ = loss_sum(model, b)
            else:
                loss = model(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels, use_cache=False).loss
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        seconds.append(time.perf_counter() - began)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per side")
    parser.add_argument("--warmup-steps", type=int, default=1, help="untimed optimizer steps first (allocator, kernels, compilation)")
    parser.add_argument("--global-batch", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=4, help="examples per padded micro-batch (baseline)")
    parser.add_argument("--pack-micro-batch", type=int, help="packed rows hold this many x --max-length tokens "
                        "(default: --micro-batch)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--sides", default="baseline,ours", help="comma-separated: baseline, ours")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of one GPU (default: from its name)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each decoder layer of our side")
    parser.add_argument("--smoke-cpu", action="store_true", help="run the script's code paths on the CPU (gloo, "
                        "no figure): a check of the script where no GPU is lent")
    args = parser.parse_args()
    sides = [s for s in args.sides.split(",") if s]
    if not set(sides) <= {"baseline", "ours"} or not sides:
        parser.error("--sides takes baseline, ours or both")
    if args.smoke_cpu:
        return run(args, sides, torch.device("cpu"), "CPU", args.peak_tflops or 1.0)
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
    return run(args, sides, torch.device("cuda"), name, peak)


def run(args: argparse.Namespace, sides: list[str], device_type: torch.device, name: str, peak: float) -> int:
    device = start_group(device_type.type)
    world, rank = dist.get_world_size(), dist.get_rank()
    measured = matmul_tflops() if device.type == "cuda" else peak
    our_attn = check_packed_attention(attention.choose(device), device)

    warm = args.warmup_steps
    count = (args.steps + warm) * args.global_batch
    examples = alpaca_shaped(count, args.vocab, args.max_length)
    per_step = [examples[s : s + args.global_batch] for s in range(0, count, args.global_batch)]
    mine = [step[rank::world] for step in per_step]  # each rank its share of every global batch
    pack_micro = args.pack_micro_batch or args.micro_batch
    batches = {
        "baseline": [baseline_batches(s, args.micro_batch, pad=0, seed=i) for i, s in enumerate(mine)],
        "ours": [our_batches(s, pack_micro, args.max_length, len(s)) for s in mine],
    }
    attn_of = {"baseline": ("sdpa", "sdpa with padding mask"), "ours": (attention.choose(device), our_attn)}

    hidden, layers, *_ = SHAPES[args.size]
    flops = sum(useful_flops(s, hidden, layers, args.vocab, 0) for s in per_step[warm:])  # completed below, once dense is known
    tokens = sum(len(e) for s in per_step[warm:] for e in s)
    results: dict[str, dict[str, object]] = {}
    dense = 0
    for side in sides:
        model = optimizer = None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        try:
            model = build(args.size, args.vocab, attn_of[side][0], device, args.compile and side == "ours")
            dense = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "lm_head" not in n)
            fused = device.type == "cuda"
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused)
            timed_steps(model, optimizer, batches[side][:warm], side == "ours", device)
            each = timed_steps(model, optimizer, batches[side][warm:], side == "ours", device)
            seconds = sum(each)
        except torch.OutOfMemoryError as exc:
            print(f"{side}: out of GPU memory with the {args.size} shape ({exc}); try a smaller --size", file=sys.stderr)
            results[side] = {"error": "out of memory"}
            continue
        finally:
            del model, optimizer
            gc.collect()  # FSDP's module state holds reference cycles: free the last side's GPU memory now
            if device.type == "cuda":
                torch.cuda.empty_cache()
        total = flops + 6 * dense * tokens
        results[side] = {
            "mfu": total / seconds / (peak * 1e12 * world),
            "mfu_of_measured_matmul": total / seconds / (measured * 1e12 * world),
            "real_tokens_per_second": tokens / seconds,
            "step_seconds": seconds / args.steps,
            # Robust to a step that recompiles (a new shape under --compile) or hits a slow moment.
            "median_step_mfu": statistics.median(
                (useful_flops(s, hidden, layers, args.vocab, dense) / t) / (peak * 1e12 * world)
                for s, t in zip(per_step[warm:], each, strict=True)),
            "each_step_seconds": [round(t, 3) for t in each],
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
            "attention": attn_of[side][1],
            "micro_batch": pack_micro if side == "ours" else args.micro_batch,
            "compiled": args.compile and side == "ours",
        }
    total = flops + 6 * dense * tokens
    if rank == 0:
        print(f"{name} x {world}, Llama {args.size} ({dense / 1e9:.2f}B dense parameters, "
              f"{total / tokens / 1e9:.1f} GFLOP per real token), bf16 FSDP2, global batch {args.global_batch} "
              f"Alpaca-shaped examples, peak {peak:.0f} TFLOP/s per GPU (datasheet), {measured:.0f} measured bf16 matmul")
        for side, r in results.items():
            if "error" in r:
                print(f"  {side:8s}: {r['error']}")
                continue
            print(f"  {side:8s}: MFU {r['mfu']:.1%} (median step {r['median_step_mfu']:.1%}; "
                  f"{r['mfu_of_measured_matmul']:.1%} of the measured matmul rate), "
                  f"{r['real_tokens_per_second']:,.0f} real tokens/s, {r['step_seconds']:.2f} s per step, "
                  f"peak {r['peak_memory_gib'] or 0:.1f} GiB, attention {r['attention']}")
        ok = {s: r for s, r in results.items() if "error" not in r}
        ratio = round(ok["ours"]["mfu"] / ok["baseline"]["mfu"], 3) if len(ok) == 2 else None
        print(json.dumps({"bench": "train_gpu", "ours": results.get("ours"), "baseline": results.get("baseline"),
                          "ratio": ratio, "mfu": round(ok["ours"]["mfu"], 4) if "ours" in ok else None, "gpu": name,
                          "size": args.size, "dense_parameters": dense, "matmul_tflops": round(measured, 1),
                          "peak_tflops": peak}))
    dist.destroy_process_group()
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
