from __future__ import annotations

import pytest
import torch

from alpaca_jobs.train.model import ModelError, check_max_length, ensure_pad_token


def test_added_pad_row_is_the_mean_of_the_others() -> None:
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i + 3 for i in range(20)}}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")), eos_token="</s>", unk_token="<unk>"
    )
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    assert ensure_pad_token(model, tokenizer) is True
    pad = tokenizer.pad_token_id
    assert pad == len(vocab) and model.config.pad_token_id == pad
    torch.testing.assert_close(model.get_input_embeddings().weight[pad], before_in.mean(0))
    torch.testing.assert_close(model.get_output_embeddings().weight[pad], before_out.mean(0))
    torch.testing.assert_close(model.get_input_embeddings().weight[:pad], before_in)
    assert ensure_pad_token(model, tokenizer) is False, "a second call changes nothing"


def test_sequence_length_beyond_the_model_names_the_field() -> None:
    from transformers import LlamaConfig

    check_max_length(LlamaConfig(max_position_embeddings=512), 512)
    with pytest.raises(ModelError, match="maxSeqLength is 4096 but the base model takes at most 512"):
        check_max_length(LlamaConfig(max_position_embeddings=512), 4096)
