"""Read the run directories of a multi-method, multi-seed comparison and aggregate them over seeds.

A *cell* is one training run (an `advtrain train` run directory, or one cell of `advtrain compare`'s grid);
a *group* is the cells that differ only by their seed: one row of the comparison table. Everything here
only reads files and computes numbers (`cells`: reading and grouping; `summary`: aggregation over seeds, the
table and the CSV); `advtrain.report.html_report` draws them::

    groups = group_cells([read_cell(run) for run in runs])     # or read_groups({label: [run, ...]})
    summary = summarize(groups)                                 # refuses mixed evaluation protocols
    print(summary_markdown(summary))
    write_csv(groups, out / "results.csv")                      # one tidy row per cell × checkpoint × attack
"""

from advtrain.report.grid.cells import (
    CHECKPOINT_ORDER,
    IGNORED_KEYS,
    IGNORED_SECTIONS,
    Cell,
    group_cells,
    read_cell,
    read_groups,
)
from advtrain.report.grid.summary import (
    CSV_COLUMNS,
    Column,
    Cost,
    GroupSummary,
    Protocol,
    ResultKey,
    Stat,
    Summary,
    accuracies,
    common_protocol,
    family,
    mean_curve,
    strongest_attack,
    summarize,
    summary_markdown,
    summary_rows,
    validation_robust_key,
    write_csv,
)

__all__ = [
    "CHECKPOINT_ORDER",
    "CSV_COLUMNS",
    "IGNORED_KEYS",
    "IGNORED_SECTIONS",
    "Cell",
    "Column",
    "Cost",
    "GroupSummary",
    "Protocol",
    "ResultKey",
    "Stat",
    "Summary",
    "accuracies",
    "common_protocol",
    "family",
    "group_cells",
    "mean_curve",
    "read_cell",
    "read_groups",
    "strongest_attack",
    "summarize",
    "summary_markdown",
    "summary_rows",
    "validation_robust_key",
    "write_csv",
]
