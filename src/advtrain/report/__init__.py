"""Reports for training runs: markdown tables, training-curve figures and RUN_DIR/report.md."""

from advtrain.report.figures import save_figure, training_curves
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
    "attack_label",
    "comparison_table",
    "comparison_text",
    "eval_rows",
    "fmt_acc",
    "fmt_eps",
    "fmt_float",
    "markdown_table",
    "read_checkpoint_info",
    "read_config",
    "read_eval",
    "read_metrics",
    "render_run_report",
    "save_figure",
    "text_table",
    "training_curves",
    "write_run_report",
]
