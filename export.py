"""Export a finished run's best model as a Hugging Face checkpoint directory, which `transformers` loads with
`from_pretrained` and our scripts read with --model_path:

    python export.py runs/sonnets exports/sonnets

A run that decides through the language-model head (sonnets, cloze paraphrase detection, cloze sentiment) becomes
a GPT2LMHeadModel; a linear head on the last token a GPT2ForSequenceClassification, where that computes exactly what
the run's does. LoRA and DoRA are merged into the weights. OUT_DIR gets config.json, model.safetensors, the
tokenizer's files and README.md, a model card: the task, base model, strategy, prompt, settings and dev metrics.
"""
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from torch import nn
from transformers import PreTrainedTokenizerBase

import classifier
import paraphrase_detection as para
from config import END_OF_TEXT_ID, GPT2Config
from course.files import ParaphraseExample, current_umask, some_of
from datasets import sonnet_text
from flags import (FlagParser, UserError, require, require_writable, settings_from_flags, settings_parser,
                   user_errors_end_in_one_line)
from models.classification import GPT2Classifier
from models.gpt2 import GPT2Model
from models.hf_checkpoint import to_hf_names
from models.tokenizer import TOKENIZER_FILES
from predict import best_model, class_names, demonstration_pairs, finished_run, finished_run_problem
from training.ensemble import Member
from training.model_setup import tokenizer_for
from training.run_dir import result_of
from training.settings import ModelSettings

LM_HEAD, SEQUENCE_CLASSIFICATION = "GPT2LMHeadModel", "GPT2ForSequenceClassification"
TASK_TITLES = {"sentiment-sst": "Sentiment classification, SST-5 (5 classes)",
               "sentiment-cfimdb": "Sentiment classification, CFIMDB (2 classes)",
               "paraphrase": "Paraphrase detection, Quora question pairs", "sonnets": "Shakespeare sonnet generation"}


@dataclass(frozen=True)
class ExportSettings:
    """What to export, and where."""
    run_dir: Path = field(metadata={"flag": "RUN_DIR"})
    out_dir: Path = field(metadata={"flag": "OUT_DIR"})

    def __post_init__(self) -> None:
        problem = finished_run_problem(self.run_dir)
        require(self, "run_dir", problem is None, problem or "")
        out, run = self.out_dir.resolve(), self.run_dir.resolve()
        require(self, "out_dir", out != run and run not in out.parents,
                f"is inside the run directory {self.run_dir}, whose files the run's --resume and --overwrite manage: "
                "give a directory outside it")
        require(self, "out_dir", not self.out_dir.exists() or self.out_dir.is_dir(), "is a file; give a new directory")
        held = sorted(path.name for path in self.out_dir.iterdir()) if self.out_dir.is_dir() else []
        require(self, "out_dir", not held, f"holds {some_of(held)}: give a new or empty directory, so that nothing "
                                           "is replaced")
        require_writable(self, "out_dir", directory=True)


@dataclass(frozen=True)
class Settings:
    export: ExportSettings


def build_parser() -> FlagParser:
    parser = settings_parser(Settings, "export.py", __doc__, {"export": {"skip": ("run_dir", "out_dir")}})
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run's directory")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="a new (or empty) directory for the export")
    return parser


def architecture_of(run: Member) -> str:
    """The transformers class that computes what the run's model computes, decided from its settings before any
    model is built; refused, with the reason, where there is none."""
    settings = run.settings
    advice = f"predict with it by `python predict.py {run.directory}`"
    if settings.strategy.prefix_length:
        raise UserError(f"{run.directory}: its prefix-tuning ({settings.strategy.prefix_length} trained key/value "
                        "positions per layer) cannot be merged into GPT-2's weights, and transformers' GPT-2 has no "
                        f"place for it; {advice}")
    if run.task == "sonnets":
        return LM_HEAD
    task = settings.task
    head = task.head if run.task == "paraphrase" else "cloze" if task.cloze else task.pooling
    if head == "cloze":
        return LM_HEAD
    if head != "last":
        raise UserError(f"{run.directory}: its head reads {head} pooling of the hidden states, and "
                        f"GPT2ForSequenceClassification reads the last token's alone; {advice}")
    return SEQUENCE_CLASSIFICATION


def sequence_classifier_tensors(run: Member, model: GPT2Classifier) -> dict[str, torch.Tensor]:
    """The run's linear head as GPT2ForSequenceClassification's `score` layer, which has no bias. There only
    `score` reads the final LayerNorm's output, so the head's bias b moves into that LayerNorm's bias as a shift
    δ with W·δ = b: the least-norm δ, found in float64, exact when the weight W has full row rank (as a trained
    head's has). Returns `score.weight` and the shifted `ln_f.bias`; refused, with the reason, when no shift
    gives b to float32 precision."""
    weight, bias = model.classifier.weight.detach().double(), model.classifier.bias.detach().double()
    layer_norm_bias = model.gpt.final_layer_norm.bias.detach().double()
    shifted = (layer_norm_bias + torch.linalg.pinv(weight) @ bias).float()
    if not torch.allclose(weight @ (shifted.double() - layer_norm_bias), bias, rtol=1e-5, atol=1e-6):
        raise UserError(f"{run.directory}: its head adds a bias to each class's logit, which "
                        "GPT2ForSequenceClassification's score layer lacks, and no shift of the final LayerNorm's "
                        f"output adds it: the head's {weight.shape[0]} rows of weights have rank "
                        f"{torch.linalg.matrix_rank(weight).item()}; predict with it by "
                        f"`python predict.py {run.directory}`")
    return {"score.weight": model.classifier.weight.detach().float().contiguous(),
            "transformer.ln_f.bias": shifted.contiguous()}


def hf_config(config: GPT2Config, architecture: str, labels: list[str] | None = None) -> transformers.GPT2Config:
    """transformers' config of our GPT-2 as `architecture` (with the classes' names `labels`, a classifier's)."""
    classes = {}
    if labels:
        classes = {"id2label": dict(enumerate(labels)), "label2id": {label: i for i, label in enumerate(labels)}}
    inner = None if config.intermediate_size == 4 * config.hidden_size else config.intermediate_size
    return transformers.GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.max_position_embeddings, n_embd=config.hidden_size,
        n_layer=config.num_hidden_layers, n_head=config.num_attention_heads, n_inner=inner,
        activation_function="gelu_new", resid_pdrop=config.hidden_dropout_prob, embd_pdrop=config.hidden_dropout_prob,
        attn_pdrop=config.attention_probs_dropout_prob, layer_norm_epsilon=config.layer_norm_eps,
        initializer_range=config.initializer_range, bos_token_id=END_OF_TEXT_ID, eos_token_id=END_OF_TEXT_ID,
        # GPT2ForSequenceClassification reads each row's last token that is not the pad token
        pad_token_id=config.pad_token_id, architectures=[architecture], **classes)


# -----------------------------------------------------------------------------
# the model card

def prompt_text(run: Member, demonstrations: list[ParaphraseExample]) -> str:
    """The run's prompt, each field shown as {name}."""
    settings = run.settings
    if run.task == "paraphrase":
        return para.prompt_template(settings.task, demonstrations, settings.train.seed).format(s1="{s1}", s2="{s2}")
    return classifier.sentence_template(settings.task).format(sentence="{sentence}")


def decision(run: Member, model: nn.Module, tokenizer: PreTrainedTokenizerBase,
             demonstrations: list[ParaphraseExample]) -> str:
    """How the run turns an input into its output, in Markdown."""
    settings = run.settings
    if run.task == "sonnets":
        return (f"A prompt is a sonnet's first lines, each ended by a newline ({sonnet_text(['a', 'b'])!r} for two). "
                f"The run wrote its sonnets with `--decoding {settings.task.decoding}` and the decoding settings "
                "below, ending each at `<|endoftext|>` or after the 14th line.")
    prompt = prompt_text(run, demonstrations)
    names = class_names(run)
    text = f"Each input goes into this prompt (fields in braces):\n\n```text\n{prompt}\n```\n\n"
    if model.cloze:
        words = ", ".join(f"{name}: {tokenizer.decode([token])!r} (token {token})"
                          for name, token in zip(names, model.label_token_ids.tolist()))
        text += ("The class is the one whose label word has the highest next-token logit after the prompt's last "
                 f"token: {words}.")
    else:
        text += (f"The class is the largest of the model's logits ({', '.join(names)}). GPT2ForSequenceClassification "
                 "reads the last token that is not its pad token, `<|endoftext|>` (50256): end no input with it. "
                 "Its score layer has no bias, so the run's head bias is folded into the final LayerNorm's bias: "
                 "this model's GPT-2 is the run's but for that shift.")
    if run.task == "paraphrase" and settings.task.symmetric:
        text += " The run averages the logits of both orders of a pair ({s1} and {s2} swapped)."
    return text


def describe_model(model: ModelSettings) -> str:
    source = f"the checkpoint in `{model.model_path}`" if model.model_path else f"`{model.model_size}`"
    base = f"{source}'s shape, randomly initialised" if model.init == "random" else f"{source}, pre-trained"
    return base + (f"; its bottom {model.keep_layers} layers only" if model.keep_layers else "")


def describe_strategy(run: Member) -> str:
    strategy = run.settings.strategy
    if strategy.lora:
        text = (f"{'DoRA' if strategy.dora else 'LoRA'} (rank {strategy.lora_rank}, alpha {strategy.lora_alpha:g}, on "
                f"{strategy.lora_targets}), merged into the weights")
    elif strategy.train_top_layers:
        text = f"the top {strategy.train_top_layers} layers and the final LayerNorm"
    elif run.task.startswith("sentiment") and run.settings.task.fine_tune_mode == "last-linear-layer":
        text = "the head alone (GPT-2 frozen)"
    else:
        text = "all of GPT-2"
    return text + ("; ULMFiT's gradual unfreezing" if strategy.ulmfit else "")


def model_card(run: Member, architecture: str, gpt: GPT2Config, description: str, out_dir: Path,
               best_epoch: int) -> str:
    """README.md of the export: what the run was, how it scored on dev, and how to use the model (`description`:
    its inputs and decision)."""
    result, model = result_of(run.record), run.settings.model
    pipeline = "text-generation" if architecture == LM_HEAD else "text-classification"
    base = [f"base_model: {model.model_size}"] if model.model_path is None and model.init == "pretrained" else []
    metrics = "\n".join(f"| {name} | {value:.4f} |" for name, value in result.best_metrics.items())
    return "\n".join(["---", "library_name: transformers", f"pipeline_tag: {pipeline}", *base, "---", ""]) + f"""
# {TASK_TITLES[run.task]}: GPT-2 fine-tuned by gpt2-finetune

Exported by `export.py` from the run in `{run.directory}`, at its best dev epoch ({best_epoch}, counting from 0, of
{result.epochs_trained} trained; picked by dev {result.metric}).

| | |
| --- | --- |
| task | {TASK_TITLES[run.task]} |
| base model | {describe_model(model)} |
| what trained | {describe_strategy(run)} |
| architecture | `{architecture}`: {gpt.num_hidden_layers} layers, hidden size {gpt.hidden_size} |

## Dev metrics

| metric | value |
| --- | --- |
{metrics}

## Inputs and outputs

{description}

```python
from transformers import AutoTokenizer, {architecture}

tokenizer = AutoTokenizer.from_pretrained({str(out_dir)!r})
model = {architecture}.from_pretrained({str(out_dir)!r})
```

## Settings

The run's settings (its `settings.json`, every default filled in):

```json
{json.dumps(run.record["settings"], indent=2)}
```
"""


# -----------------------------------------------------------------------------
# writing

def write_export(out_dir: Path, tensors: dict[str, torch.Tensor], config: transformers.GPT2Config,
                 tokenizer: PreTrainedTokenizerBase, card: str) -> list[str]:
    """Write the checkpoint into a new folder beside `out_dir`, then rename that to `out_dir` (which replaces an
    empty directory, and nothing else): a failure leaves no half-written export. Returns the files' names."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        os.chmod(staging, 0o777 & ~current_umask())  # mkdtemp makes it private; an export is not
        config.save_pretrained(staging)
        save_file(tensors, staging / "model.safetensors", metadata={"format": "pt"})
        tokenizer.save_pretrained(staging)  # tokenizer.json, for transformers
        for name in TOKENIZER_FILES:  # the BPE files, for our scripts' --model_path
            shutil.copyfile(Path(tokenizer.name_or_path) / name, staging / name)
        (staging / "README.md").write_text(card, encoding="utf-8")
        names = sorted(path.name for path in staging.iterdir())
        for name in names:  # readable by all, as the scripts' other outputs are (safetensors writes it private)
            os.chmod(staging / name, 0o666 & ~current_umask())
        os.rename(staging, out_dir)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"OUT_DIR {out_dir}: cannot be written ({error.strerror or error})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return names


def main(argv: list[str]) -> None:
    with user_errors_end_in_one_line("export.py"):
        settings = settings_from_flags(Settings, build_parser().parse_args(argv)).export
        run = finished_run(settings.run_dir, ModelSettings())  # on the CPU, in float32
        architecture = architecture_of(run)
        demonstrations = demonstration_pairs(run) if run.task == "paraphrase" else []
        tokenizer = tokenizer_for(run.settings.model)
        model, best_epoch = best_model(run, tokenizer, torch.device("cpu"))
        gpt = model if isinstance(model, GPT2Model) else model.gpt
        tensors, config = to_hf_names(gpt.state_dict(), gpt.config), hf_config(gpt.config, architecture)
        if architecture == SEQUENCE_CLASSIFICATION:
            tensors |= sequence_classifier_tensors(run, model)
            config = hf_config(gpt.config, architecture, class_names(run))
        card = model_card(run, architecture, gpt.config, decision(run, model, tokenizer, demonstrations),
                          settings.out_dir, best_epoch)
        tokenizer.model_max_length = gpt.config.max_position_embeddings  # transformers' truncation reads it
        written = write_export(settings.out_dir, tensors, config, tokenizer, card)
        result = result_of(run.record)
        print(f"wrote {settings.out_dir}: {', '.join(written)} ({architecture}: the best model of {run.directory}, "
              f"epoch {best_epoch}, dev {result.metric} {result.best_metrics[result.metric]:.4f})")
        tail = f"; or start a run from it with --model_path {settings.out_dir}" if architecture == LM_HEAD else ""
        print(f"next: load it with transformers' {architecture}.from_pretrained({str(settings.out_dir)!r}){tail}")


if __name__ == "__main__":
    main(sys.argv[1:])
