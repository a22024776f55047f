"""The key/value-cache helpers pick the argument and output names of the installed transformers."""

from __future__ import annotations

import inspect

import torch
from transformers.modeling_outputs import BaseModelOutputWithPast

from tokensafe.kv_cache import cache_argument, returned_cache, shared_prefix_cache


class NewStyle(torch.nn.Module):
    def forward(self, input_ids=None, cache=None, use_cache=False):
        return input_ids


class OldStyle(torch.nn.Module):
    def forward(self, input_ids=None, past_key_values=None, use_cache=False):
        return input_ids


class PassThrough(NewStyle):  # a wrapper whose forward names neither argument
    def forward(self, *args, **kwargs):
        return super().forward(*args, **kwargs)


def test_cache_argument_follows_the_forward_signature():
    marker = object()
    assert cache_argument(NewStyle(), marker) == {"cache": marker}
    assert cache_argument(OldStyle(), marker) == {"past_key_values": marker}
    assert cache_argument(PassThrough(), marker) == {"cache": marker}
    assert cache_argument(torch.nn.Identity(), marker) == {"past_key_values": marker}  # nothing named: old default


def test_cache_argument_matches_the_installed_llama(tokenizer):
    from tokensafe.testing import tiny_llama

    model = tiny_llama(tokenizer)
    decoder = model.get_decoder()
    (name,) = cache_argument(decoder, None)
    assert name in inspect.signature(type(decoder).forward).parameters
    # The helper's name really carries the cache: the shared prefix run once, then the rest of each row, equals one
    # full run of every row.
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 7, 11, 12, 13]])
    full = decoder(input_ids=ids).last_hidden_state
    cache = shared_prefix_cache(decoder, ids, 3)
    assert list(cache) == [name]
    rest = decoder(input_ids=ids[:, 3:], use_cache=True, **cache).last_hidden_state
    assert rest.shape == (2, 3, full.size(-1))
    assert torch.allclose(full[:, 3:], rest, atol=1e-5)


def test_returned_cache_reads_either_output_field():
    marker = object()
    output = BaseModelOutputWithPast(last_hidden_state=torch.zeros(1))
    field = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"
    output[field] = marker
    assert returned_cache(output) is marker
