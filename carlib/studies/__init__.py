"""Studies: named questions over scientific parameters (specs), study parameters from notebooks and files,
running a study over seeds, statistics and verdicts across seeds, the sweep runner (grid × seeds through
papermill), the notebook runner, and the HTML report."""
