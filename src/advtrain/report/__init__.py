"""Reports for training runs: markdown tables, training-curve figures and RUN_DIR/report.md; multi-seed
comparisons of several methods (grid: reading and aggregation; html_report: one self-contained HTML page); the
terminal tables and figures of the analyses that `advtrain.eval` computes."""

from advtrain.report.analysis_tables import diagnose_text, inequality_text, invariance_text, vulnerability_text
from advtrain.report.diagnose_figures import write_diagnose_figures
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
from advtrain.report.inequality_figures import write_inequality_figures
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
from advtrain.report.vulnerability_figures import write_vulnerability_figure

__all__ = [
    "Cell",
    "Summary",
    "attack_label",
    "comparison_table",
    "comparison_text",
    "diagnose_text",
    "eval_rows",
    "fmt_acc",
    "fmt_eps",
    "fmt_float",
    "group_cells",
    "inequality_text",
    "invariance_text",
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
    "vulnerability_text",
    "write_csv",
    "write_diagnose_figures",
    "write_html_report",
    "write_inequality_figures",
    "write_run_report",
    "write_vulnerability_figure",
]
