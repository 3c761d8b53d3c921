"""Evaluation reports: figures (matplotlib) and Markdown / self-contained HTML."""
