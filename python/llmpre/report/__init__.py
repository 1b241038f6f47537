"""``llmpre report RUN_DIR``: plots and a text summary of a finished or running run."""

from llmpre.report.plots import write_report

__all__ = ["write_report"]
