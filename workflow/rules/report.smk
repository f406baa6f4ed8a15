# The report: paper-style tables and figures from the finished runs.


rule report:
    """All tables (Markdown + LaTeX) and figures (PNG + PDF) of every study."""
    input:
        PLAN.metrics_files(),
    output:
        captioned([t for t in REPORT_OUTPUTS["tables"] if t.endswith(".html")], "Tables"),
        [t for t in REPORT_OUTPUTS["tables"] if not t.endswith(".html")],
        captioned(REPORT_OUTPUTS["figures"], "Figures"),
    params:
        spec=json.dumps(PLAN.report_spec(), sort_keys=True),
        out=lambda wc, output: str(Path(output[0]).parents[1]),
    resources:
        mem_mb=2000,
        runtime=30,
    log:
        LAYOUT.report_log,
    message:
        "fedbt report: tables and figures of {} studies".format(len(config["studies"]))
    conda:
        "../envs/fedbt.yaml"
    shell:
        "MPLBACKEND=Agg fedbt report --spec {params.spec:q} --out {params.out} > {log} 2>&1"
