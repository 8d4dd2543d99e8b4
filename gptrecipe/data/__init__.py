"""Data: readers, embedded corpora, mixture config, token shards and the batch loader."""

from .corpora import chatterbot_conversations
from .loader import BatchLoader
from .mixture import CorpusConfig, DataConfig, corpora_from_paths, default_corpora
from .readers import DataError, read_documents
from .shards import CorpusTokens, PreparedData, TokenShards, prepare_data

__all__ = ["BatchLoader", "CorpusConfig", "CorpusTokens", "DataConfig", "DataError", "PreparedData", "TokenShards",
           "chatterbot_conversations", "corpora_from_paths", "default_corpora", "prepare_data", "read_documents"]
