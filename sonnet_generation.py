"""Shakespeare sonnet generation with GPT-2: fine-tune as a language model on sonnets 1-131, complete
each held-out sonnet from its first 3 lines, keep the best epochs by dev chrF, write the course's files.

    python sonnet_generation.py --use_gpu
"""
import argparse
import math
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

import evaluation
from datasets import TokenizedDataset, read_sonnets, seeded_sample, sonnet_text
from models.decoding import DecodingConfig, generate, mbr_select
from models.gpt2 import GPT2Model
from modules.lora import merge_lora
from modules.losses import language_model_loss, unlikelihood_loss
from modules.prefix import add_prefix
from training import (Run, add_model_args, add_training_args, all_reduce_sum, autocast, build_gpt2, choose_device,
                      count_parameters, freeze_for_strategy, gather_objects, seed_everything, share, to_device,
                      tokenizer_for, train_and_restore_best, write_on_main)

SONNET_LINES = 14
DECODINGS = ("greedy", "sample", "beam", "contrastive", "mbr", "pool")
LINE_END_TEXTS = (",", ".", ";", ":", "!", "?", "\n")


def get_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sonnet_path", type=Path, default=Path("data/sonnets.txt"))
    parser.add_argument("--held_out_dev_path", type=Path, default=Path("data/sonnets_held_out_dev.txt"))
    parser.add_argument("--gold_dev_path", type=Path, default=Path("data/TRUE_sonnets_held_out_dev.txt"))
    parser.add_argument("--held_out_path", type=Path, default=Path("data/sonnets_held_out.txt"))
    parser.add_argument("--sonnet_dev_out", type=Path, default=Path("predictions/generated_sonnets_dev.txt"))
    parser.add_argument("--sonnet_out", type=Path, default=Path("predictions/generated_sonnets.txt"))
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--train_limit", type=int, default=0, help="train on a seeded sample of N sonnets (0: all)")
    parser.add_argument("--prefix_length", type=int, default=0,
                        help="prefix-tuning: train this many key/value positions per layer, GPT-2 frozen")
    parser.add_argument("--unlikelihood", type=float, default=0.0,
                        help="weight of the token-level unlikelihood loss against repeating earlier tokens")
    decoding = parser.add_argument_group("decoding")
    decoding.add_argument("--decoding", choices=DECODINGS, default="sample",
                          help="mbr: pick among --mbr_samples samples by chrF; pool: greedy, beam, contrastive "
                               "and the samples together, picked the same way")
    decoding.add_argument("--temperature", type=float, default=1.2)
    decoding.add_argument("--top_k", type=int, default=0)
    decoding.add_argument("--top_p", type=float, default=0.9)
    decoding.add_argument("--repetition_penalty", type=float, default=1.0)
    decoding.add_argument("--no_repeat_ngram", type=int, default=0)
    decoding.add_argument("--num_beams", type=int, default=4)
    decoding.add_argument("--length_penalty", type=float, default=1.0)
    decoding.add_argument("--contrastive_alpha", type=float, default=0.6)
    decoding.add_argument("--contrastive_k", type=int, default=4)
    decoding.add_argument("--mbr_samples", type=int, default=8)
    decoding.add_argument("--line_end_nudge", type=float, default=0.0,
                          help="logit bonus for punctuation and line breaks once a line has --line_length tokens")
    decoding.add_argument("--line_length", type=int, default=12)
    decoding.add_argument("--max_new_tokens", type=int, default=256)
    add_model_args(parser)
    add_training_args(parser)
    parser.set_defaults(keep_best=3)
    args = parser.parse_args()
    if args.prefix_length and (args.compile or args.activation_checkpointing):
        parser.error("--compile and --activation_checkpointing cover passes without the key/value cache; "
                     "prefix-tuning trains through it")
    return args


def decoding_config(args: argparse.Namespace, strategy: str, max_lines: int, max_new_tokens: int) -> DecodingConfig:
    return DecodingConfig(strategy=strategy, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          repetition_penalty=args.repetition_penalty, no_repeat_ngram=args.no_repeat_ngram,
                          num_beams=args.num_beams, length_penalty=args.length_penalty,
                          contrastive_alpha=args.contrastive_alpha, contrastive_k=args.contrastive_k,
                          max_new_tokens=max_new_tokens, max_lines=max_lines,
                          line_end_nudge=args.line_end_nudge, line_length=args.line_length)


def token_ids_containing(tokenizer: PreTrainedTokenizerBase, texts: tuple[str, ...]) -> list[int]:
    """Ids of the vocabulary tokens that end with one of `texts` (for line breaks and line-ending punctuation)."""
    return [i for token, i in tokenizer.get_vocab().items()
            if tokenizer.convert_tokens_to_string([token]).rstrip(" ").endswith(texts)]


class SonnetWriter:
    """Completes sonnets from their first lines with the decoding the flags ask for."""

    def __init__(self, model: GPT2Model, tokenizer: PreTrainedTokenizerBase, args: argparse.Namespace,
                 device: torch.device):
        self.model, self.tokenizer, self.args, self.device = model, tokenizer, args, device
        self.line_break_ids = token_ids_containing(tokenizer, ("\n",))
        self.line_end_ids = token_ids_containing(tokenizer, LINE_END_TEXTS)

    def complete(self, prompts: dict[int, list[str]]) -> dict[int, list[str]]:
        """Each prompt's lines, unaltered, followed by the generated lines up to 14 in all. Under torchrun
        each process completes its share of the prompts and every process gets all the sonnets."""
        mine = dict(share(list(prompts.items())))
        completed = {number: sonnet for shard in gather_objects(self.complete_here(mine) if mine else {})
                     for number, sonnet in shard.items()}
        return {number: completed[number] for number in prompts}

    def complete_here(self, prompts: dict[int, list[str]]) -> dict[int, list[str]]:
        encoded = [self.tokenizer.encode(sonnet_text(lines)) for lines in prompts.values()]
        room = self.model.config.max_position_embeddings - max(map(len, encoded))
        if room < 1:
            raise ValueError(f"a prompt of {max(map(len, encoded))} tokens leaves no room in the model's "
                             f"context of {self.model.config.max_position_embeddings}")
        longest = max(map(len, encoded))  # left padding: generation continues every row at its last token
        input_ids = torch.tensor([[50256] * (longest - len(ids)) + ids for ids in encoded], device=self.device)
        mask = torch.tensor([[0] * (longest - len(ids)) + [1] * len(ids) for ids in encoded], device=self.device)
        max_lines = SONNET_LINES - min(len(lines) for lines in prompts.values())
        candidates = self.candidates(input_ids, mask, max_lines, min(room, self.args.max_new_tokens))
        sonnets = {}
        for row, (number, lines) in enumerate(prompts.items()):
            texts = [self.tokenizer.decode(self.until_end_of_text(tokens[row])) for tokens in candidates]
            best = texts[mbr_select(texts)] if len(texts) > 1 else texts[0]
            generated = [line.rstrip() for line in best.split("\n") if line.strip()]
            sonnets[number] = lines + generated[:SONNET_LINES - len(lines)]
        return sonnets

    def until_end_of_text(self, tokens: list[int]) -> list[int]:
        """A fine-tuned model ends a sonnet with <|endoftext|>, as in training; nothing after it counts."""
        eos = self.tokenizer.eos_token_id
        return tokens[:tokens.index(eos)] if eos in tokens else tokens

    def candidates(self, input_ids: torch.Tensor, mask: torch.Tensor, max_lines: int,
                   max_new_tokens: int) -> list[list[list[int]]]:
        """One list of new tokens per prompt for each candidate decoding."""
        args = self.args
        generator = torch.Generator(self.device).manual_seed(args.seed)
        strategies = {"mbr": ["sample"] * args.mbr_samples,
                      "pool": ["greedy", "beam", "contrastive"] + ["sample"] * args.mbr_samples}
        outputs = []
        for strategy in strategies.get(args.decoding, [args.decoding]):
            config = decoding_config(args, strategy, max_lines, max_new_tokens)
            with autocast(self.device, args.precision):
                outputs.append(generate(self.model, input_ids, mask, config, generator, self.line_break_ids,
                                        self.line_end_ids))
        return outputs


def sonnet_dataset(sonnets: dict[int, list[str]], tokenizer: PreTrainedTokenizerBase, max_len: int,
                   source: str) -> TokenizedDataset:
    tokens = []
    for number, lines in sonnets.items():
        ids = tokenizer.encode(sonnet_text(lines)) + [tokenizer.eos_token_id]
        if len(ids) > max_len:
            raise ValueError(f"{source}: sonnet {number} is {len(ids)} tokens, longer than the context of {max_len}")
        tokens.append(ids)
    return TokenizedDataset([str(number) for number in sonnets], tokens, None)


@torch.no_grad()
def perplexity(model: GPT2Model, data: TokenizedDataset, args: argparse.Namespace, device: torch.device) -> float:
    """exp of the mean next-token loss per real token over `data`."""
    model.eval()
    total, count = 0.0, 0
    for batch in share(data.batches(args.batch_size, shuffle=False)):
        batch = to_device(batch, device)
        with autocast(device, args.precision):
            hidden = model(batch["input_ids"], batch["attention_mask"])["last_hidden_state"]
            loss = language_model_loss(model.hidden_state_to_token(hidden), batch["input_ids"],
                                       batch["attention_mask"])
        tokens = int(batch["attention_mask"][:, 1:].sum())
        total, count = total + loss.item() * tokens, count + tokens
    total, count = all_reduce_sum(torch.tensor([total, count], dtype=torch.float64, device=device)).tolist()
    return math.exp(total / count)


def sonnet_loss(model: GPT2Model, batch: dict[str, torch.Tensor], unlikelihood: float) -> torch.Tensor:
    logits = model.hidden_state_to_token(model(batch["input_ids"], batch["attention_mask"])["last_hidden_state"])
    loss = language_model_loss(logits, batch["input_ids"], batch["attention_mask"])
    if unlikelihood:
        loss = loss + unlikelihood * unlikelihood_loss(logits, batch["input_ids"], batch["attention_mask"])
    return loss


def main() -> None:
    args = get_args()
    device = choose_device(args.use_gpu, args.precision)
    seed_everything(args.seed)
    tokenizer = tokenizer_for(args)
    model = build_gpt2(args)
    max_len = model.config.max_position_embeddings
    sonnets = dict(seeded_sample(list(read_sonnets(args.sonnet_path).items()), args.train_limit, args.seed))
    train = sonnet_dataset(sonnets, tokenizer, max_len, str(args.sonnet_path))
    dev_prompts, gold = read_sonnets(args.held_out_dev_path), read_sonnets(args.gold_dev_path)
    gold_dev = sonnet_dataset(gold, tokenizer, max_len, str(args.gold_dev_path))
    test_prompts = read_sonnets(args.held_out_path)

    freeze_for_strategy(model, args, train_gpt=True)
    if args.prefix_length:
        add_prefix(model, args.prefix_length)
    model.to(device)
    print(f"{len(train)} training sonnets; {count_parameters(model)}")
    writer = SonnetWriter(model, tokenizer, args, device)

    def evaluate() -> dict[str, float]:
        model.eval()
        completed = writer.complete(dev_prompts)
        metrics = evaluation.sonnet_metrics(completed, gold)
        return {"chrf": metrics["chrf"], "perplexity": perplexity(model, gold_dev, args, device),
                "rhyme_accuracy": metrics["rhyme_accuracy"], "distinct_2": metrics["distinct_2"]}

    identity = {"task": "sonnets", "model": model.config.to_dict(), "prefix_length": args.prefix_length,
                "lora": [args.lora_rank, args.lora_targets, args.dora] if args.lora else None}
    run = Run(args.run_dir or Path("runs") / "sonnets", identity, device, args.resume)
    if args.epochs > 0:
        train_and_restore_best(model, args, args.lr, model.config.num_hidden_layers, run,
                               lambda epoch: train.batches(args.batch_size, shuffle=True, seed=args.seed + epoch),
                               -(-len(train) // args.batch_size),
                               lambda batch: sonnet_loss(model, batch, args.unlikelihood), evaluate, metric="chrf")
    if args.lora:
        merge_lora(model)
    model.eval()
    for prompts, path in ((dev_prompts, args.sonnet_dev_out), (test_prompts, args.sonnet_out)):
        write_on_main(evaluation.write_sonnets, path, writer.complete(prompts))
    metrics = evaluation.grade_sonnets(args.sonnet_dev_out, args.gold_dev_path)
    metrics["perplexity"] = perplexity(model, gold_dev, args, device)
    print("dev: " + ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()))


if __name__ == "__main__":
    main()
