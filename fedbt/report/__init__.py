"""The report: paper-style tables (Markdown, LaTeX) and figures (PNG, PDF) from finished run directories.

``spec`` (what to build, written by the pipeline), ``runs`` (reading ``metrics.json``), ``tables``,
``figures``, ``costs`` (weight-free bert-base ratios and layer schedules), ``paper`` (the paper's numbers) and
``build`` (everything at once: :func:`fedbt.report.build.build_report`).
"""
