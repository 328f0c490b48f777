"""Reports for training runs: markdown tables, training-curve figures and RUN_DIR/report.md; multi-seed
comparisons of several methods (grid: reading and aggregation; html_report: one self-contained HTML page)."""

from advtrain.report.figures import save_figure, training_curves
from advtrain.report.grid import (
    Cell,
    Summary,
    group_cells,
    read_cell,
    read_groups,
    summarize,
    summary_markdown,
    write_csv,
)
from advtrain.report.html_report import write_html_report
from advtrain.report.run_report import (
    read_checkpoint_info,
    read_config,
    read_eval,
    read_metrics,
    render_run_report,
    write_run_report,
)
from advtrain.report.tables import (
    attack_label,
    comparison_table,
    comparison_text,
    eval_rows,
    fmt_acc,
    fmt_eps,
    fmt_float,
    markdown_table,
    text_table,
)

__all__ = [
    "Cell",
    "Summary",
    "attack_label",
    "comparison_table",
    "comparison_text",
    "eval_rows",
    "fmt_acc",
    "fmt_eps",
    "fmt_float",
    "group_cells",
    "markdown_table",
    "read_cell",
    "read_checkpoint_info",
    "read_config",
    "read_eval",
    "read_groups",
    "read_metrics",
    "render_run_report",
    "save_figure",
    "summarize",
    "summary_markdown",
    "text_table",
    "training_curves",
    "write_csv",
    "write_html_report",
    "write_run_report",
]
