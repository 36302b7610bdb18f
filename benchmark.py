"""Benchmark our GPT-2 against Hugging Face transformers' GPT2LMHeadModel holding the same weights:
training throughput (forward + backward of the language-modelling loss), the whole paraphrase training
step against the usual way (full-vocabulary logits, torch's AdamW) with the Quora epoch it projects,
greedy and top-p decoding speed (with the limit memory bandwidth sets), and the AdamW step against
torch.optim.AdamW (fused and foreach).

    python benchmark.py                                   # 124M shape, random weights, CPU or GPU
    python benchmark.py --device cuda --dtype bfloat16 --model_size gpt2-medium --compile

On a GPU it also prints each model's peak memory for one training step."""
import argparse
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
import torch.nn.functional as F
import transformers

import paraphrase_detection
from config import END_OF_TEXT_ID, PRESETS
from datasets import BATCH_PADDING
from models.classification import GPT2Classifier
from models.decoding import DecodingConfig, generate, greedy_decode
from models.gpt2 import GPT2Model
from optimizer import AdamW

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# (CPU, GPU) defaults; the CPU ones finish in a few minutes on two cores at the 124M shape.
RUN_DEFAULTS = {
    "batch_size": (4, 8), "seq_len": (128, 1024), "warmup": (2, 5), "iters": (5, 20),
    "gen_batch": (4, 8), "prompt_len": (32, 32), "new_tokens": (64, 256), "gen_iters": (2, 3),
    "adam_iters": (10, 20), "para_iters": (2, 10),
}
PARAPHRASE_BATCHES = ([8, 64], [8, 64, 256])
ADAMW_SETTINGS = dict(lr=6e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_size", default="gpt2", choices=list(PRESETS), help="shape of the random weights")
    parser.add_argument("--model_path", help="a Hugging Face GPT-2 checkpoint directory to use instead")
    parser.add_argument("--device", type=torch.device, default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="autocast dtype for both")
    parser.add_argument("--dropout", type=float, default=0.1, help="dropout of both models while training")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile each layer of both models for the training comparison")
    parser.add_argument("--seed", type=int, default=1337)
    for name, (cpu, gpu) in RUN_DEFAULTS.items():
        parser.add_argument(f"--{name}", type=int, help=f"default {cpu} on CPU, {gpu} on GPU")
    parser.add_argument("--para_batches", type=int, nargs="+",
                        help=f"paraphrase step batch sizes; default {PARAPHRASE_BATCHES[0]} on CPU, "
                             f"{PARAPHRASE_BATCHES[1]} on GPU")
    args = parser.parse_args()
    on_gpu = args.device.type == "cuda"
    args.para_batches = args.para_batches or PARAPHRASE_BATCHES[on_gpu]
    for name, (cpu, gpu) in RUN_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, gpu if on_gpu else cpu)
    return args


def write_random_checkpoint(model_size: str, directory: str) -> str:
    shape = PRESETS[model_size]
    config = transformers.GPT2Config(n_embd=shape["hidden_size"], n_layer=shape["num_hidden_layers"],
                                     n_head=shape["num_attention_heads"])
    transformers.GPT2LMHeadModel(config).save_pretrained(directory)
    return directory


def load_models(args: argparse.Namespace) -> tuple[GPT2Model, transformers.GPT2LMHeadModel]:
    """Both models read one checkpoint directory, so they hold the same weights."""
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model_path or write_random_checkpoint(args.model_size, tmp)
        ours = GPT2Model.from_pretrained(path, hidden_dropout_prob=args.dropout,
                                         attention_probs_dropout_prob=args.dropout, attn_implementation="sdpa")
        theirs = transformers.GPT2LMHeadModel.from_pretrained(
            path, dtype=torch.float32, attn_implementation="sdpa",
            embd_pdrop=args.dropout, resid_pdrop=args.dropout, attn_pdrop=args.dropout)
    return ours.to(args.device), theirs.to(args.device)


def our_lm_loss(model: GPT2Model, ids: torch.Tensor) -> torch.Tensor:
    logits = model.hidden_state_to_token(model(ids)["last_hidden_state"])
    # Shift the targets rather than the logits and upcast the logits: the same work transformers does.
    targets = F.pad(ids[:, 1:], (0, 1), value=-100)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)


def their_lm_loss(model: transformers.GPT2LMHeadModel, ids: torch.Tensor) -> torch.Tensor:
    return model(ids, labels=ids).loss


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(fns: dict[str, Callable[[], Any]], warmup: int, iters: int,
                      device: torch.device) -> tuple[dict[str, float], dict[str, Any]]:
    """Mean seconds per call of each function, and its last result. The functions take turns, so a
    change in clock speed or background load during the run affects them all alike, and the order
    flips every round, so none always runs right after another (whose freed memory it may inherit)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    totals, results = dict.fromkeys(fns, 0.0), {}
    for i in range(iters):
        for name, fn in list(fns.items())[::-1 if i % 2 else 1]:
            synchronize(device)
            start = time.perf_counter()
            results[name] = fn()
            synchronize(device)
            totals[name] += time.perf_counter() - start
    return {name: total / iters for name, total in totals.items()}, results


def bench_training(ours: GPT2Model, theirs: transformers.GPT2LMHeadModel, args: argparse.Namespace,
                   amp: Callable[[], AbstractContextManager]) -> dict[str, float]:
    """Tokens per second of forward + backward of the full-vocabulary language-modelling loss."""
    ids = torch.randint(0, ours.config.vocab_size, (args.batch_size, args.seq_len), device=args.device)
    ours.eval()
    theirs.eval()
    with torch.no_grad(), amp():  # without dropout the losses must agree: a check that the weights match
        print(f"same-weights check, eval-mode loss: ours {our_lm_loss(ours, ids).item():.5f}, "
              f"transformers {their_lm_loss(theirs, ids).item():.5f}")
    ours.train()
    theirs.train()
    if args.compile:  # the same scope for both: each layer, as the task scripts' --compile does
        ours.compile_layers()
        for block in theirs.transformer.h:
            block.compile()

    def step(model: torch.nn.Module, loss_fn: Callable) -> Callable[[], None]:
        def run() -> None:
            model.zero_grad(set_to_none=True)
            with amp():
                loss = loss_fn(model, ids)
            loss.backward()
        return run

    steps = {"ours": step(ours, our_lm_loss), "transformers": step(theirs, their_lm_loss)}
    times, _ = interleaved_times(steps, args.warmup, args.iters, args.device)
    tokens = args.batch_size * args.seq_len
    results = {name: tokens / seconds for name, seconds in times.items()}
    for name, seconds in times.items():
        print(f"train {name:>12}: {seconds * 1e3:9.1f} ms/iter  {tokens / seconds:9.1f} tokens/s")
    if args.device.type == "cuda":  # one more step each, alone, for its peak memory
        for name, run in steps.items():
            ours.zero_grad(set_to_none=True)
            theirs.zero_grad(set_to_none=True)
            torch.cuda.reset_peak_memory_stats(args.device)
            run()
            results[f"{name} peak GiB"] = torch.cuda.max_memory_allocated(args.device) / 2**30
            print(f"train {name:>12}: peak memory {results[f'{name} peak GiB']:.2f} GiB")
    for model in (ours, theirs):  # free the gradients' memory for what follows
        model.zero_grad(set_to_none=True)
    return results


def bench_decoding(ours: GPT2Model, theirs: transformers.GPT2LMHeadModel, args: argparse.Namespace,
                   amp: Callable[[], AbstractContextManager]) -> tuple[dict[str, float], bool]:
    """New tokens per second of batched greedy decoding (prefill included), and whether our cached
    decoding produced exactly transformers' tokens."""
    # The end-of-text token stays out of the prompts: transformers treats it as padding.
    prompt = torch.randint(0, END_OF_TEXT_ID, (args.gen_batch, args.prompt_len), device=args.device)
    mask = torch.ones_like(prompt)
    ours.eval()
    theirs.eval()

    def decoders(new_tokens: int) -> dict[str, Callable[[], torch.Tensor]]:
        return {
            "ours cache": lambda: greedy_decode(ours, prompt, new_tokens, use_cache=True),
            "ours recompute": lambda: greedy_decode(ours, prompt, new_tokens, use_cache=False),
            "transformers": lambda: theirs.generate(
                prompt, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens,
                min_new_tokens=new_tokens, use_cache=True, pad_token_id=END_OF_TEXT_ID),
        }

    with torch.inference_mode(), amp():
        # Warm up with short runs: a full-length one without the cache would cost as much as the timed run.
        interleaved_times(decoders(4), 0, 1, args.device)
        times, outputs = interleaved_times(decoders(args.new_tokens), 0, args.gen_iters, args.device)
    tokens = args.gen_batch * args.new_tokens
    for name, seconds in times.items():
        print(f"decode {name:>14}: {seconds:8.2f} s  {tokens / seconds:9.1f} new tokens/s")
    identical = torch.equal(outputs["ours cache"], outputs["transformers"])
    return {name: tokens / seconds for name, seconds in times.items()}, identical


def decode_bound(model: GPT2Model, args: argparse.Namespace) -> float:
    """New tokens per second that no implementation can beat at small batches, where a decoding step is
    limited by reading every weight from memory once: the bandwidth of summing 512 MiB, divided by the
    bytes of the weights, times the batch."""
    data = torch.ones(2**27, device=args.device)
    seconds, _ = interleaved_times({"sum": data.sum}, 1, 5, args.device)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return data.numel() * data.element_size() / seconds["sum"] / weight_bytes * args.gen_batch


def bench_adamw(model: torch.nn.Module, args: argparse.Namespace) -> dict[str, float]:
    """Seconds per step of our AdamW and torch's fused and foreach AdamW over the model's parameters, with
    weight decay (nanoGPT's settings) and without (the task scripts' default)."""
    params = list(model.parameters())
    for p in params:  # any gradient will do: the step costs the same whatever the values
        p.grad = torch.randn_like(p)
    times = {}
    for decay in (ADAMW_SETTINGS["weight_decay"], 0.0):
        settings = {**ADAMW_SETTINGS, "weight_decay": decay}
        optimizers = {"ours": AdamW(params, **settings),
                      "torch fused": torch.optim.AdamW(params, **settings, fused=True),
                      "torch foreach": torch.optim.AdamW(params, **settings, foreach=True)}
        measured, _ = interleaved_times({name: opt.step for name, opt in optimizers.items()},
                                        1, args.adam_iters, args.device)
        for name, seconds in measured.items():
            print(f"AdamW step, weight decay {decay:g}, {name:>13}: {seconds * 1e3:9.1f} ms")
            times[f"{name}, decay {decay:g}"] = seconds
    for p in params:
        p.grad = None
    return times


def paraphrase_batch(batch_size: int, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """Right-padded prompts of 30 to 60 tokens (the course's Quora prompts average about 45) and labels."""
    lengths = torch.randint(30, 61, (batch_size,))
    ids = torch.randint(0, END_OF_TEXT_ID, (batch_size, int(lengths.max())))
    mask = (torch.arange(ids.size(1)) < lengths[:, None]).long()
    batch = {"input_ids": ids.masked_fill(mask == 0, END_OF_TEXT_ID), "attention_mask": mask,
             "labels": torch.randint(0, 2, (batch_size,))}
    return {name: tensor.to(args.device) for name, tensor in batch.items()}


def bench_paraphrase(ours: GPT2Model, theirs: transformers.GPT2LMHeadModel, args: argparse.Namespace,
                     amp: Callable[[], AbstractContextManager]) -> dict[int, dict[str, float]]:
    """Pairs per second of a whole paraphrase training step at each batch size: ours is the task script's
    (the cloze head's two label-word logits, our AdamW); the usual way scores the last real token's
    full-vocabulary logits with transformers' GPT2LMHeadModel and steps torch.optim.AdamW at its defaults."""
    model = GPT2Classifier(ours, 2, label_token_ids=paraphrase_detection.NO_YES).train()
    theirs.train()
    label_tokens = torch.tensor(paraphrase_detection.NO_YES, device=args.device)

    def our_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model(batch["input_ids"], batch["attention_mask"], padding=BATCH_PADDING)["logits"]
        return F.cross_entropy(logits.float(), batch["labels"])

    def their_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = theirs(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        last = logits[torch.arange(len(logits), device=args.device), batch["attention_mask"].sum(1) - 1]
        return F.cross_entropy(last.float(), label_tokens[batch["labels"]])

    def step(module: torch.nn.Module, loss_fn: Callable, optimizer: torch.optim.Optimizer,
             batch: dict[str, torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            with amp():
                loss = loss_fn(batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return run

    results = {}
    for batch_size in args.para_batches:
        batch = paraphrase_batch(batch_size, args)
        steps = {"ours": step(model, our_loss, AdamW(model.parameters(), lr=1e-5), batch),
                 "usual": step(theirs, their_loss, torch.optim.AdamW(theirs.parameters(), lr=1e-5), batch)}
        times, _ = interleaved_times(steps, 1, args.para_iters, args.device)
        results[batch_size] = {name: batch_size / seconds for name, seconds in times.items()}
        for name, seconds in times.items():
            print(f"paraphrase step, batch {batch_size:>3}, {name:>5}: {seconds * 1e3:9.1f} ms  "
                  f"{batch_size / seconds:9.1f} pairs/s  (a Quora epoch: "
                  f"{paraphrase_detection.FULL_QUORA_PAIRS / (batch_size / seconds) / 60:.1f} min)")
    return results


def bench_sampling(ours: GPT2Model, theirs: transformers.GPT2LMHeadModel, args: argparse.Namespace,
                   amp: Callable[[], AbstractContextManager]) -> dict[str, float]:
    """New tokens per second of top-p sampling (the course's sonnet decoding: p 0.9, temperature 1.2)."""
    prompt = torch.randint(0, END_OF_TEXT_ID, (args.gen_batch, args.prompt_len), device=args.device)
    mask = torch.ones_like(prompt)
    config = DecodingConfig(strategy="sample", temperature=1.2, top_p=0.9, max_new_tokens=args.new_tokens)
    ours.eval()
    theirs.eval()
    samplers = {
        "ours": lambda: generate(ours, prompt, mask, config),
        "transformers": lambda: theirs.generate(
            prompt, attention_mask=mask, do_sample=True, temperature=1.2, top_p=0.9, top_k=0,
            max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=END_OF_TEXT_ID),
    }
    with torch.inference_mode(), amp():
        times, _ = interleaved_times(samplers, 1, args.gen_iters, args.device)
    tokens = args.gen_batch * args.new_tokens
    for name, seconds in times.items():
        print(f"sample top-p {name:>12}: {seconds:8.2f} s  {tokens / seconds:9.1f} new tokens/s")
    return {name: tokens / seconds for name, seconds in times.items()}


def describe(ours: GPT2Model, theirs: transformers.GPT2LMHeadModel, args: argparse.Namespace) -> None:
    on_gpu = args.device.type == "cuda"
    name = torch.cuda.get_device_name(args.device) if on_gpu else f"{torch.get_num_threads()} threads"
    c = ours.config
    print(f"device {args.device} ({name}) | dtype {args.dtype} | torch {torch.__version__} "
          f"| transformers {transformers.__version__}")
    print(f"model {args.model_path or args.model_size + ' (random weights)'}: {c.num_hidden_layers} layers, "
          f"{c.num_attention_heads} heads, hidden {c.hidden_size}, vocab {c.vocab_size}, "
          f"context {c.max_position_embeddings} | {sum(p.numel() for p in ours.parameters()) / 1e6:.2f}M "
          f"parameters (transformers counts {theirs.num_parameters() / 1e6:.2f}M)")
    print(f"training: batch {args.batch_size} x {args.seq_len} tokens, train mode with dropout {args.dropout} "
          f"in both, warmup {args.warmup}, iters {args.iters} | decoding: batch {args.gen_batch}, prompt "
          f"{args.prompt_len}, {args.new_tokens} new tokens, {args.gen_iters} timed run(s) | AdamW: "
          f"{args.adam_iters} steps")


def print_table(rows: list[tuple[str, float, float, float]]) -> None:
    print(f"\n{'what':<52}{'ours':>12}{'reference':>12}{'ratio':>8}")
    for what, ours, reference, ratio in rows:
        print(f"{what:<52}{ours:>12.1f}{reference:>12.1f}{ratio:>8.2f}")


def main() -> None:
    args = parse_args()
    torch.manual_seed(args.seed)
    transformers.logging.set_verbosity_error()  # keep the report readable
    transformers.logging.disable_progress_bar()
    dtype = DTYPES[args.dtype]

    def amp() -> AbstractContextManager:
        return torch.autocast(args.device.type, dtype=dtype, enabled=dtype != torch.float32)

    ours, theirs = load_models(args)
    describe(ours, theirs, args)
    decode, identical = bench_decoding(ours, theirs, args, amp)  # first: --compile applies to training only
    sampling = bench_sampling(ours, theirs, args, amp)
    bound = decode_bound(ours, args)
    train = bench_training(ours, theirs, args, amp)
    paraphrase = bench_paraphrase(ours, theirs, args, amp)
    del theirs  # the optimizers' state needs the room on large models
    adamw = bench_adamw(ours, args)

    memory = [("train peak GiB: ours / transformers", train["ours peak GiB"], train["transformers peak GiB"],
               train["ours peak GiB"] / train["transformers peak GiB"])] if "ours peak GiB" in train else []
    decay = f"{ADAMW_SETTINGS['weight_decay']:g}"
    print_table([
        ("train tokens/s: ours / transformers", train["ours"], train["transformers"],
         train["ours"] / train["transformers"]),
        *memory,
        *[(f"paraphrase step pairs/s, batch {size}: ours / usual", rates["ours"], rates["usual"],
           rates["ours"] / rates["usual"]) for size, rates in paraphrase.items()],
        ("decode tokens/s: cache / recompute", decode["ours cache"], decode["ours recompute"],
         decode["ours cache"] / decode["ours recompute"]),
        ("decode tokens/s: cache / transformers", decode["ours cache"], decode["transformers"],
         decode["ours cache"] / decode["transformers"]),
        ("decode tokens/s: cache / memory-bound limit", decode["ours cache"], bound, decode["ours cache"] / bound),
        ("sample top-p tokens/s: ours / transformers", sampling["ours"], sampling["transformers"],
         sampling["ours"] / sampling["transformers"]),
        *[(f"AdamW ms/step, decay {d}: torch {kind} / ours", adamw[f"ours, decay {d}"] * 1e3,
           adamw[f"torch {kind}, decay {d}"] * 1e3, adamw[f"torch {kind}, decay {d}"] / adamw[f"ours, decay {d}"])
          for d in (decay, "0") for kind in ("fused", "foreach")],
    ])
    biggest = max(paraphrase)
    minutes = paraphrase_detection.FULL_QUORA_PAIRS / paraphrase[biggest]["ours"] / 60
    print(f"projected Quora epoch ({paraphrase_detection.FULL_QUORA_PAIRS:,} pairs) at batch {biggest}: "
          f"{minutes:.1f} min")
    note = "" if dtype == torch.float32 else " (exact match is expected in float32 only)"
    print(f"greedy tokens of ours (cache) and transformers identical: {'yes' if identical else 'NO'}{note}")


if __name__ == "__main__":
    main()
