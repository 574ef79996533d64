"""Metrics and official-scorer re-implementations."""

from tasks.metrics.vqa_normalize import normalize_answer, process_digit_article, process_punctuation

__all__ = ["normalize_answer", "process_digit_article", "process_punctuation"]
