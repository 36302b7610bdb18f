"""Checkpoint formats, loading errors and the tokenizer."""
import json
import re

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config as HFConfig
from transformers import GPT2Model as HFGPT2Model

from flags import UserError
from models.gpt2 import GPT2Model
from models.tokenizer import load_tokenizer
from tests.conftest import TINY, save_hf_gpt2
from training.model_setup import build_gpt2
from training.settings import ModelSettings


def copy_checkpoint(source, target, edit_tensors=None, edit_config=None):
    """A copy of `source` with its tensors or config.json changed."""
    target.mkdir()
    tensors = load_file(source / "model.safetensors")
    config = json.loads((source / "config.json").read_text())
    save_file(edit_tensors(tensors) if edit_tensors else tensors, target / "model.safetensors")
    (target / "config.json").write_text(json.dumps(edit_config(config) if edit_config else config))
    return target


def test_loads_pytorch_bin_and_bare_gpt2model_checkpoints(tmp_path):
    torch.manual_seed(0)
    reference = HFGPT2Model(HFConfig(**TINY)).eval()  # no "transformer." prefix, no LM head
    reference.config.to_json_file(tmp_path / "config.json")
    # The original OpenAI-converted files also store each layer's causal mask as a buffer.
    state = reference.state_dict() | {"h.0.attn.bias": torch.ones(1, 1, 128, 128).tril()}
    torch.save(state, tmp_path / "pytorch_model.bin")
    model = GPT2Model.from_pretrained(tmp_path).eval()
    input_ids = torch.randint(0, 50257, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids)["last_hidden_state"], reference(input_ids).last_hidden_state,
                                   atol=1e-5, rtol=0)


def test_sizes_come_from_the_checkpoint(tiny_checkpoint):
    model = GPT2Model.from_pretrained(tiny_checkpoint[0], hidden_dropout_prob=0.0)
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 2, 4)
    assert config.max_position_embeddings == 128 and config.hidden_dropout_prob == 0.0
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())


def test_missing_tensor_is_named(tiny_checkpoint, tmp_path):
    def drop(tensors):
        del tensors["transformer.h.1.mlp.c_fc.bias"]
        return tensors
    broken = copy_checkpoint(tiny_checkpoint[0], tmp_path / "broken", edit_tensors=drop)
    with pytest.raises(UserError, match=r"broken/model\.safetensors does not match the GPT-2 that config\.json "
                                        r"describes \(2 layers, hidden size 64\), 1 problem\(s\): missing: "
                                        r"h\.1\.mlp\.c_fc\.bias \(256,\); the weights and config\.json must come"):
        GPT2Model.from_pretrained(broken)


def test_tensor_of_another_size_is_named(tiny_checkpoint, tmp_path):
    def resize(tensors):
        tensors["transformer.h.0.attn.c_proj.weight"] = torch.zeros(64, 32)
        tensors["transformer.extra.weight"] = torch.zeros(3)
        return tensors
    broken = copy_checkpoint(tiny_checkpoint[0], tmp_path / "broken", edit_tensors=resize)
    with pytest.raises(UserError) as error:
        GPT2Model.from_pretrained(broken)
    assert "2 problem(s)" in str(error.value) and "\n" not in str(error.value)
    assert "wrong shape: h.0.attn.c_proj.weight is (64, 32), expected (64, 64)" in str(error.value)
    assert "unexpected: extra.weight (3,)" in str(error.value)


def test_config_of_another_size_is_refused(tiny_checkpoint, tmp_path):
    def grow(config):
        return {**config, "n_layer": 3}
    broken = copy_checkpoint(tiny_checkpoint[0], tmp_path / "broken", edit_config=grow)
    with pytest.raises(UserError, match=r"\(3 layers, hidden size 64\), 12 problem\(s\): missing: "
                                        r"h\.2\.ln_1\.weight \(64,\); missing: h\.2\.ln_1\.bias \(64,\); "
                                        r"missing: .*; \.\.\.; the weights"):
        GPT2Model.from_pretrained(broken)


def test_unsupported_activation_is_refused(tiny_checkpoint, tmp_path):
    broken = copy_checkpoint(tiny_checkpoint[0], tmp_path / "broken",
                             edit_config=lambda config: {**config, "activation_function": "relu"})
    with pytest.raises(UserError, match=r"broken/config\.json has activation_function='relu'; this GPT-2 "
                                        r"implements only \('gelu_new', 'gelu_pytorch_tanh'\): use a checkpoint"):
        GPT2Model.from_pretrained(broken)


def test_directory_that_does_not_exist(tmp_path):
    with pytest.raises(UserError, match="no-such-checkpoint does not exist"):
        GPT2Model.from_pretrained(tmp_path / "no-such-checkpoint")


def test_directory_without_config_or_weights(tmp_path):
    with pytest.raises(UserError, match="has no config.json"):
        GPT2Model.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(HFConfig(**TINY).to_dict()))
    with pytest.raises(UserError, match=r"has config\.json but no weights \(model\.safetensors or "
                                        r"pytorch_model\.bin\): download or copy the checkpoint again"):
        GPT2Model.from_pretrained(tmp_path)


def test_unreachable_hub_says_how_to_load_locally(monkeypatch, tmp_path):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError) as error:
        GPT2Model.from_pretrained("gpt2-medium")
    assert re.search(r"could not download 'gpt2-medium' from the Hugging Face hub, and it is not in the cache "
                     rf"{re.escape(str(tmp_path))} \(LocalEntryNotFoundError\); .*`hf download gpt2-medium "
                     r"config\.json model\.safetensors --local-dir DIR`, then .*--model_path DIR", str(error.value))
    assert "\n" not in str(error.value)


def test_tokenizer_pads_with_end_of_text():
    tokenizer = load_tokenizer()
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 50256
    assert tokenizer.convert_tokens_to_ids(["yes", "no"]) == [8505, 3919]
    batch = tokenizer(["a b", "hello there world"], padding=True)
    assert batch["input_ids"][0][-1] == 50256 and batch["attention_mask"][0] == [1, 1, 0]


def test_tokenizer_directory_without_bpe_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="must hold vocab.json and merges.txt"):
        load_tokenizer(tmp_path)


def test_tokenizer_without_local_files_or_hub_says_where_to_get_them(monkeypatch, tmp_path):
    import models.tokenizer

    monkeypatch.setattr(models.tokenizer, "PROJECT_TOKENIZER", tmp_path / "missing")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError, match=r"no GPT-2 tokenizer found: .*missing lacks vocab\.json and merges\.txt, "
                                        r".*run `bash setup.sh` .*`hf download gpt2 vocab\.json merges\.txt "
                                        r"--local-dir "):
        load_tokenizer()


def test_keep_layers_equals_a_model_built_from_the_bottom_layers(tmp_path):
    """--keep_layers 2 of a 4-layer checkpoint: the reference GPT-2 of 2 layers holding that checkpoint's
    embeddings, bottom 2 layers and final LayerNorm computes what our truncated model computes."""
    deep = save_hf_gpt2(tmp_path / "deep", **{**TINY, "n_layer": 4})
    shallow = HFGPT2Model(HFConfig(**{**TINY, "n_layer": 2}, attn_implementation="eager")).eval()
    kept = {name.removeprefix("transformer."): tensor for name, tensor in deep.state_dict().items()
            if not re.match(r"transformer\.h\.[23]\.|lm_head", name)}
    shallow.load_state_dict(kept)
    settings = ModelSettings(model_path=tmp_path / "deep", keep_layers=2)
    model = build_gpt2(settings).eval()
    assert settings.num_layers == 2 and len(model.layers) == 2 and model.config.num_hidden_layers == 2
    ids, mask = torch.randint(0, 1000, (2, 9)), torch.ones(2, 9, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        ours = model(ids, mask)["last_hidden_state"]
        reference = shallow(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(ours[mask.bool()], reference[mask.bool()], atol=1e-5, rtol=0)


def test_keep_layers_is_checked_against_the_checkpoint_at_start_up(tiny_checkpoint):
    with pytest.raises(UserError, match=r"^--keep_layers 3: must be in \[0, 2\] \(the model has 2 layers; 0 keeps "
                                        r"them all\)$"):
        ModelSettings(model_path=tiny_checkpoint[0], keep_layers=3)
    assert ModelSettings(model_size="gpt2-medium", keep_layers=6).num_layers == 6
