"""Shakespeare sonnet generation with GPT-2: fine-tune as a language model on sonnets 1-131, complete
each held-out sonnet from its first 3 lines, keep the best epochs by dev chrF, write the course's files.

    python sonnet_generation.py --use_gpu
"""
import math
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

import evaluation
from config import END_OF_TEXT_ID
from course.metrics import mbr_select, sonnet_metrics
from course.sonnets import read_sonnets, write_sonnets
from datasets import BATCH_PADDING, EpochBatches, TokenizedDataset, seeded_sample, sonnet_text
from flags import (FREE, FlagParser, UserError, flag_of, require, require_input_file, require_range, require_writable,
                   setting, settings_from_flags, settings_parser, shown, user_errors_end_in_one_line)
from models.decoding import DecodingConfig, generate
from models.gpt2 import GPT2Model
from modules.losses import language_model_loss, unlikelihood_loss
from training.checkpoints import seed_everything
from training.device import autocast, choose_device, to_device
from training.distributed import all_reduce_sum, gather_objects, is_main, items_for_this_process, write_on_main
from training.inference import DevOutputs
from training.loop import Task, train_and_restore_best
from training.model_setup import apply_strategy, build_gpt2, count_parameters, tokenizer_for
from training.run_dir import plan_run, require_separate_run_paths
from training.settings import SHARED_GROUPS, ScriptSettings
from training.summary import Outcome, finish

SONNET_LINES = 14
PROMPT_LINES = 3  # a held-out sonnet gives its first 3 lines
DECODINGS = ("greedy", "sample", "beam", "contrastive", "mbr", "pool")
LINE_END_TEXTS = (",", ".", ";", ":", "!", "?", "\n")
# The course's decoding: top-p sampling at temperature 1.2; room for a whole sonnet.
COURSE_DECODING = {"temperature": 1.2, "top_p": 0.9, "max_new_tokens": 256}


@dataclass(frozen=True)
class SonnetSettings:
    """The task: its files, the training loss, and which decoding writes the sonnets."""
    sonnet_path: Path = setting(Path("data/sonnets.txt"), "training sonnets", on_resume=FREE)
    held_out_dev_path: Path = setting(Path("data/sonnets_held_out_dev.txt"), "first lines of the dev sonnets",
                                      on_resume=FREE)
    gold_dev_path: Path = setting(Path("data/TRUE_sonnets_held_out_dev.txt"), "the whole dev sonnets",
                                  on_resume=FREE)
    held_out_path: Path = setting(Path("data/sonnets_held_out.txt"), "first lines of the test sonnets",
                                  aliases=("--held_out_sonnet_path",), on_resume=FREE)
    sonnet_dev_out: Path = setting(Path("predictions/generated_sonnets_dev.txt"), "generated dev sonnets",
                                   on_resume=FREE)
    sonnet_out: Path = setting(Path("predictions/generated_sonnets.txt"), "generated test sonnets", on_resume=FREE)
    unlikelihood: float = setting(0.0, "weight of the token-level unlikelihood loss against repeating earlier "
                                       "tokens")
    decoding: str = setting("sample", "mbr: pick among --mbr_samples samples by chrF; pool: greedy, beam, "
                                      "contrastive and the samples together, picked the same way",
                            choices=DECODINGS, on_resume=FREE, changes_results=True)
    mbr_samples: int = setting(8, "samples for --decoding mbr and pool", on_resume=FREE, changes_results=True)

    def __post_init__(self) -> None:
        for name in ("sonnet_path", "held_out_dev_path", "gold_dev_path", "held_out_path"):
            require_input_file(self, name)
        for name in ("sonnet_dev_out", "sonnet_out"):
            require_writable(self, name)
        # The course's dev command points both at the dev files: one file then, written once.
        if self.sonnet_out.resolve() == self.sonnet_dev_out.resolve():
            require(self, "sonnet_out", self.held_out_path.resolve() == self.held_out_dev_path.resolve(),
                    f"is also --sonnet_dev_out, the completions of --held_out_dev_path {self.held_out_dev_path}; "
                    f"the completions of --held_out_path {self.held_out_path} need a file of their own")
        require_range(self, "unlikelihood", 0, note="0 turns it off")
        require_range(self, "mbr_samples", 1)

    def candidate_strategies(self) -> list[str]:
        """The decodings whose outputs compete for each sonnet (one, unless MBR picks among several)."""
        return {"mbr": ["sample"] * self.mbr_samples,
                "pool": ["greedy", "beam", "contrastive"] + ["sample"] * self.mbr_samples}.get(self.decoding,
                                                                                             [self.decoding])


@dataclass(frozen=True)
class Settings(ScriptSettings):
    task: SonnetSettings
    decoding: DecodingConfig  # its strategy and max_lines are set for each batch of prompts

    def __post_init__(self) -> None:
        super().__post_init__()
        task = self.task
        outputs = {"--sonnet_dev_out": task.sonnet_dev_out, "--sonnet_out": task.sonnet_out}
        if task.sonnet_out.resolve() == task.sonnet_dev_out.resolve():  # one file, written once (SonnetSettings)
            del outputs["--sonnet_out"]
        require_separate_run_paths(
            self, {"--sonnet_path": task.sonnet_path, "--held_out_dev_path": task.held_out_dev_path,
                   "--gold_dev_path": task.gold_dev_path, "--held_out_path": task.held_out_path},
            outputs, (self.run_directory(),) if self.train.epochs > 0 else ())

    def run_directory(self) -> Path:
        """Where the run trains: --run_dir, by default runs/sonnets."""
        return self.run.run_dir or Path("runs") / "sonnets"


def build_parser() -> FlagParser:
    return settings_parser(Settings, "sonnet_generation.py", __doc__, {
        "decoding": {"skip": ("strategy", "max_lines"), "defaults": COURSE_DECODING},
        "train": {"defaults": {"keep_best": 3}},
        "strategy": {"skip": ("ulmfit",)},
        "run": {"helps": {"run_dir": "the run's directory (default: runs/sonnets)"}},
    }, last=SHARED_GROUPS)


def get_settings(argv: list[str]) -> Settings:
    """The settings the flags ask for, every value checked, before any data or model is loaded."""
    return settings_from_flags(Settings, build_parser().parse_args(argv))


def read_dev_sonnets(task: SonnetSettings) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """The dev prompts and their gold sonnets, the same numbers in both: the chrF scored after every epoch
    compares each gold sonnet with the one generated from its prompt."""
    prompts, gold = read_sonnets(task.held_out_dev_path, PROMPT_LINES), read_sonnets(task.gold_dev_path)
    missing = sorted(prompts.keys() - gold.keys())
    if missing:
        raise UserError(f"--held_out_dev_path {task.held_out_dev_path}: sonnet(s) {', '.join(map(str, missing))} "
                        f"are not in --gold_dev_path {task.gold_dev_path}, so they cannot be scored")
    unprompted = sorted(gold.keys() - prompts.keys())
    if unprompted:
        raise UserError(f"--gold_dev_path {task.gold_dev_path}: sonnet(s) {', '.join(map(str, unprompted))} have "
                        f"no prompt in --held_out_dev_path {task.held_out_dev_path}, so nothing is generated to "
                        "score against them")
    return prompts, gold


def token_ids_containing(tokenizer: PreTrainedTokenizerBase, texts: tuple[str, ...]) -> list[int]:
    """Ids of the vocabulary tokens that end with one of `texts` (for line breaks and line-ending punctuation)."""
    return [i for token, i in tokenizer.get_vocab().items()
            if tokenizer.convert_tokens_to_string([token]).rstrip(" ").endswith(texts)]


def decoding_description(settings: Settings) -> str:
    """The decoding as the flags that chose it say it: --decoding (with its --mbr_samples), then each decoding flag
    given another value than its default."""
    task, decoding = settings.task, settings.decoding
    defaults = replace(DecodingConfig(), **COURSE_DECODING)
    words = [task.decoding, *([f"--mbr_samples {task.mbr_samples}"] if task.decoding in ("mbr", "pool") else [])]
    changed = [spec.name for spec in fields(decoding) if spec.name not in ("strategy", "max_lines")
               and getattr(decoding, spec.name) != getattr(defaults, spec.name)]
    words += [f"{flag_of(decoding, name)} {shown(getattr(decoding, name))}" for name in changed]
    return " ".join(words)


class SonnetWriter:
    """Completes sonnets from their first lines with the decoding the settings ask for (`description`)."""

    def __init__(self, model: GPT2Model, tokenizer: PreTrainedTokenizerBase, settings: Settings,
                 device: torch.device):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.strategies, self.decoding = settings.task.candidate_strategies(), settings.decoding
        self.seed, self.precision = settings.train.seed, settings.model.precision
        self.description = decoding_description(settings)
        self.line_break_ids = token_ids_containing(tokenizer, ("\n",))
        self.line_end_ids = token_ids_containing(tokenizer, LINE_END_TEXTS)

    def complete(self, prompts: dict[int, list[str]], desc: str = "sonnets") -> dict[int, list[str]]:
        """Each prompt's lines, unaltered, followed by the generated lines up to 14 in all. Under torchrun
        each process completes its share of the prompts and every process gets all the sonnets. `desc` names
        them on the progress bar."""
        mine = dict(items_for_this_process(list(prompts.items())))
        here = self.complete_here(mine, desc) if mine else {}
        completed = {number: sonnet for process_sonnets in gather_objects(here)
                     for number, sonnet in process_sonnets.items()}
        return {number: completed[number] for number in prompts}

    def complete_here(self, prompts: dict[int, list[str]], desc: str) -> dict[int, list[str]]:
        encoded = [self.tokenizer.encode(sonnet_text(lines)) for lines in prompts.values()]
        room = self.model.config.max_position_embeddings - max(map(len, encoded))
        if room < 1:
            number, ids = max(zip(prompts, encoded), key=lambda pair: len(pair[1]))
            raise UserError(f"prompt {number} is {len(ids)} tokens, which leaves no room in the model's context of "
                            f"{self.model.config.max_position_embeddings}")
        longest = max(map(len, encoded))  # left padding: generation continues every row at its last token
        input_ids = torch.tensor([[END_OF_TEXT_ID] * (longest - len(ids)) + ids for ids in encoded],
                                 device=self.device)
        mask = torch.tensor([[0] * (longest - len(ids)) + [1] * len(ids) for ids in encoded], device=self.device)
        max_lines = SONNET_LINES - min(len(lines) for lines in prompts.values())
        candidates = self.candidates(input_ids, mask, max_lines, min(room, self.decoding.max_new_tokens), desc)
        sonnets = {}
        for row, (number, lines) in enumerate(prompts.items()):
            texts = [self.tokenizer.decode(tokens[row]) for tokens in candidates]  # each ends before <|endoftext|>
            best = texts[mbr_select(texts)] if len(texts) > 1 else texts[0]
            generated = [line.rstrip() for line in best.split("\n") if line.strip()]
            sonnets[number] = lines + generated[:SONNET_LINES - len(lines)]
        return sonnets

    def candidates(self, input_ids: torch.Tensor, mask: torch.Tensor, max_lines: int, max_new_tokens: int,
                   desc: str) -> list[list[list[int]]]:
        """One list of new tokens per prompt for each candidate decoding, all prompts in one batch: a bar step
        is one candidate."""
        generator = torch.Generator(self.device).manual_seed(self.seed)
        outputs = []
        for strategy in tqdm(self.strategies, desc=f"{desc} ({self.description})", leave=False, disable=not is_main()):
            config = replace(self.decoding, strategy=strategy, max_lines=max_lines, max_new_tokens=max_new_tokens)
            with autocast(self.device, self.precision):
                outputs.append(generate(self.model, input_ids, mask, config, generator, self.line_break_ids,
                                        self.line_end_ids))
        return outputs


def build_model(settings: Settings) -> GPT2Model:
    """The language model that `settings` describe: GPT-2 with its fine-tuning strategy. Training builds it from
    the command's settings; predict.py builds a run's from the settings that run recorded."""
    model = build_gpt2(settings.model)
    apply_strategy(model, settings.strategy)
    return model


def sonnet_dataset(sonnets: dict[int, list[str]], tokenizer: PreTrainedTokenizerBase, max_len: int,
                   source: str) -> TokenizedDataset:
    tokens = []
    for number, lines in sonnets.items():
        ids = tokenizer.encode(sonnet_text(lines)) + [tokenizer.eos_token_id]
        if len(ids) > max_len:
            raise UserError(f"{source}: sonnet {number} is {len(ids)} tokens, longer than the model's context of "
                            f"{max_len}")
        tokens.append(ids)
    return TokenizedDataset([str(number) for number in sonnets], tokens, None)


@torch.no_grad()
def perplexity(model: GPT2Model, data: TokenizedDataset, batch_size: int, precision: str,
               device: torch.device) -> float:
    """exp of the mean next-token loss per real token over `data`."""
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0  # the sum stays on the device
    for batch in items_for_this_process(data.batches(batch_size, shuffle=False)):
        tokens = int(batch["attention_mask"][:, 1:].sum())  # counted on the host, before the copy
        batch = to_device(batch, device)
        with autocast(device, precision):
            hidden = model(batch["input_ids"], batch["attention_mask"], padding=BATCH_PADDING)["last_hidden_state"]
            loss = language_model_loss(model.hidden_state_to_token(hidden), batch["input_ids"],
                                       batch["attention_mask"])
        total, count = total + loss.double() * tokens, count + tokens
    counted = torch.tensor([count], dtype=torch.float64, device=device)
    total, count = all_reduce_sum(torch.cat([total.reshape(1), counted])).tolist()
    return math.exp(total / count) if total / count < 709 else math.inf  # exp overflows a float beyond 709


def sonnet_loss(model: GPT2Model, batch: dict[str, torch.Tensor], unlikelihood: float) -> torch.Tensor:
    hidden = model(batch["input_ids"], batch["attention_mask"], padding=BATCH_PADDING)["last_hidden_state"]
    logits = model.hidden_state_to_token(hidden)
    loss = language_model_loss(logits, batch["input_ids"], batch["attention_mask"])
    if unlikelihood:
        loss = loss + unlikelihood * unlikelihood_loss(logits, batch["input_ids"], batch["attention_mask"])
    return loss


def main(argv: list[str]) -> None:
    with user_errors_end_in_one_line("sonnet_generation.py"):
        settings = get_settings(argv).resolved()
        task, train = settings.task, settings.train
        dev_prompts, gold = read_dev_sonnets(task)
        sonnets = dict(seeded_sample(list(read_sonnets(task.sonnet_path).items()), train.train_limit, train.seed))
        test_prompts = read_sonnets(task.held_out_path, PROMPT_LINES)
        device = choose_device(settings.model.use_gpu, settings.model.precision, settings.model.deterministic)
        run = None
        if train.epochs > 0:
            data = {"--sonnet_path": task.sonnet_path, "--held_out_dev_path": task.held_out_dev_path,
                    "--gold_dev_path": task.gold_dev_path}
            run = plan_run(settings, settings.run_directory(), "sonnets", data,
                           ["sonnet_generation.py", *argv], device)
        seed_everything(train.seed)
        tokenizer = tokenizer_for(settings.model)
        model = build_model(settings)
        max_len = model.config.max_position_embeddings
        train_data = sonnet_dataset(sonnets, tokenizer, max_len, str(task.sonnet_path))
        gold_dev = sonnet_dataset(gold, tokenizer, max_len, str(task.gold_dev_path))
        model.to(device)
        print(f"{len(train_data)} training sonnets; {count_parameters(model)}")
        writer = SonnetWriter(model, tokenizer, settings, device)
        precision = settings.model.precision

        def dev_outputs_now() -> tuple[dict[int, list[str]], float]:
            model.eval()
            return (writer.complete(dev_prompts, "dev sonnets"),
                    perplexity(model, gold_dev, train.eval_batch_size, precision, device))

        dev_outputs = DevOutputs(dev_outputs_now)

        def evaluate() -> dict[str, float | str]:
            dev_sonnets, dev_perplexity = dev_outputs.after_epoch()
            metrics = sonnet_metrics(dev_sonnets, gold)
            return {"chrf": metrics["chrf"], "perplexity": dev_perplexity,
                    "rhyme_accuracy": metrics["rhyme_accuracy"], "distinct_2": metrics["distinct_2"],
                    "decoding": writer.description}  # a resume may decode otherwise: each score says how

        log = None
        if run is not None:
            log = train_and_restore_best(model, run, train, precision, model.config.num_hidden_layers,
                                         EpochBatches(train_data, train.batch_size, train.seed),
                                         Task(lambda batch: sonnet_loss(model, batch, task.unlikelihood), evaluate,
                                              "chrf"))
        model.eval()
        dev_sonnets, dev_perplexity = dev_outputs.restored(run, log, exact=not settings.strategy.lora)
        write_on_main(write_sonnets, task.sonnet_dev_out, dev_sonnets)
        if task.sonnet_out.resolve() != task.sonnet_dev_out.resolve():  # one file if both name it (see SonnetSettings)
            write_on_main(write_sonnets, task.sonnet_out, writer.complete(test_prompts, "test sonnets"))
        metrics = evaluation.grade_sonnets(task.sonnet_dev_out, task.gold_dev_path)
        metrics["perplexity"] = dev_perplexity
        print("dev " + ", ".join(f"{name} {value:.4f}" for name, value in metrics.items())
              + f" (this run's decoding: {writer.description})")
        finish([Outcome("sonnets", run, log, {task.sonnet_dev_out: task.held_out_dev_path,
                                              task.sonnet_out: task.held_out_path},
                        ("sonnets", task.sonnet_dev_out, task.gold_dev_path))])


if __name__ == "__main__":
    main(sys.argv[1:])
