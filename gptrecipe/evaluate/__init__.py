"""Evaluation: in-context learning (zero / one / few-shot) over JSONL or builtin tasks, and corpus metrics."""
