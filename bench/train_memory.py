"""Host memory per rank while a sharded training run builds its model: ours against every rank loading it.

    PYTHONSAFEPATH=1 .venv/bin/python bench/train_memory.py                 # 1B shape (24 layers), 2 ranks, CPU
    PYTHONSAFEPATH=1 .venv/bin/python bench/train_memory.py --layers 6      # the same width, smaller

A random Llama of LLaMA-1B's width (hidden 2048, MLP 5504, 16 heads, vocabulary 32000) is saved
once in bf16, as checkpoints ship. Then, under torchrun with 2 ranks (gloo, CPU), in turn:

- baseline: what the training workload did before and what a plain `from_pretrained` + FSDP2
  script does: every rank loads the whole model in fp32, then shards it;
- ours: `alpaca_jobs.train.model.build`: rank 0 alone loads it, every rank builds it on the meta
  device, shards it, and receives its shard tensor by tensor.

Each rank reports its peak RSS (ru_maxrss) before and after the build; the figure is the growth.
The ratio is the node's total growth, baseline over ours.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

GiB = 2**30


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def worker(mode: str, folder: Path) -> None:
    import torch
    import torch.distributed as dist

    from alpaca_jobs.models import ModelFiles, load_causal_lm
    from alpaca_jobs.train import distributed, model

    dist.init_process_group("gloo")
    topology = distributed.topology_from_env()
    files = ModelFiles(folder)
    before = peak_rss()
    if mode == "baseline":
        built = load_causal_lm(files, dtype=torch.float32, attn_implementation="sdpa")
        distributed.shard(built, bf16=False)
    else:
        model.build(files, "sdpa", topology, torch.device("cpu"), max_seq_length=256, lora=None,
                    gradient_checkpointing=False, bf16=False)
    grew = peak_rss() - before
    everyone = distributed.gather_objects(grew)
    if topology.is_main:
        print(json.dumps({"mode": mode, "grew": everyone}), flush=True)
    dist.destroy_process_group()


def save_model(folder: Path, layers: int) -> int:
    import torch
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, **{f"w{i}": i + 4 for i in range(60)}}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    config = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5504, num_hidden_layers=layers,
                         num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=2048,
                         pad_token_id=3, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("meta"):
        parameters = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return parameters


def run(mode: str, folder: Path) -> list[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in {"RANK", "WORLD_SIZE", "LOCAL_RANK"}}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONSAFEPATH="1")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
                          __file__, "--worker", mode, "--folder", str(folder)],
                         env=env, check=True, capture_output=True, text=True)
    line = next(line for line in out.stdout.splitlines() if line.startswith("{"))
    return json.loads(line)["grew"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=24, help="decoder layers (24: LLaMA-1B's depth)")
    parser.add_argument("--worker", choices=["baseline", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.folder)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        parameters = save_model(folder, args.layers)
        fp32 = parameters * 4
        results = {mode: run(mode, folder) for mode in ("baseline", "ours")}
    print(f"Llama {parameters / 1e9:.2f}B parameters ({args.layers} layers of LLaMA-1B's width), {fp32 / GiB:.2f} GiB in "
          "fp32, 2 ranks (torchrun, gloo, CPU); peak RSS growth while building the sharded model:")
    for mode, grew in results.items():
        print(f"  {mode:8s}: " + ", ".join(f"rank {r} {g / GiB:.2f} GiB ({g / fp32:.2f}x the model)" for r, g in enumerate(grew))
              + f"; node {sum(grew) / GiB:.2f} GiB")
    ratio = sum(results["baseline"]) / sum(results["ours"])
    print(json.dumps({"bench": "train_memory", "ours": {"rank_growth_gib": [round(g / GiB, 3) for g in results["ours"]]},
                      "baseline": {"rank_growth_gib": [round(g / GiB, 3) for g in results["baseline"]]},
                      "ratio": round(ratio, 3), "model_fp32_gib": round(fp32 / GiB, 3)}))


if __name__ == "__main__":
    main()
