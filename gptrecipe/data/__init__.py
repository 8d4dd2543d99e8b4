"""Data for pretraining: readers, embedded corpora, the mixture config, token shards and the batch loader.

    cfg = DataConfig()                                   # shakespeare 0.6, kjv 0.25, chatterbot 0.15
    data = prepare_data(cfg, tokenizer)                  # tokenized once, cached as memmap shards
    loader = BatchLoader(data, block_size=256, seed=1337)
    x, y = loader.get_batch(step, micro_step, micro_batch_size, grad_accum_steps, rank, world_size)
"""

from .corpora import chatterbot_conversations
from .loader import BatchLoader
from .mixture import CorpusConfig, DataConfig, corpora_from_paths, default_corpora
from .readers import DataError, read_documents
from .shards import CorpusTokens, PreparedData, TokenShards, prepare_data

__all__ = ["BatchLoader", "CorpusConfig", "CorpusTokens", "DataConfig", "DataError", "PreparedData",
           "TokenShards", "chatterbot_conversations", "corpora_from_paths", "default_corpora", "prepare_data",
           "read_documents"]
