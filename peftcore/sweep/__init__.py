"""Scripted GLUE sweeps: methods × hyper-parameters × seeds × few-shot sizes × tasks, written
once in a sweep file, run (and resumed) on one machine or a Ray cluster, with a SQLite
results store, tables and plots. `python -m peftcore sweep run|status|report FILE`.

    from peftcore import sweep
    sweep.run("glue.yaml")            # or resume it: the same call
    df = sweep.load("glue.yaml")      # every trial (a DataFrame with pandas installed)
    sweep.summary("glue.yaml")        # the table's numbers
"""
from .report import load, status_text, summary, write_reports
from .runner import run
from .spec import SweepError, available_methods, parse

__all__ = ["run", "load", "summary", "write_reports", "status_text", "parse",
           "available_methods", "SweepError"]
