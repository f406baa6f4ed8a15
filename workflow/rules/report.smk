# The report: paper-style tables and figures from the finished runs.

from fedbt.report.spec import output_files

REPORT_OUTPUTS = output_files(list(config["studies"]), RESULTS)
REPORT_SPEC = json.dumps(report_spec(), sort_keys=True)


def _captioned(paths: list[str], category: str) -> list:
    """Mark outputs for `snakemake --report`, each with the caption of its kind (workflow/report/*.rst)."""
    marked = []
    for path in paths:
        stem = Path(path).stem
        study = next((s for s in config["studies"] if stem == s or stem.startswith(f"{s}_")), None)
        kind = stem.removeprefix(f"{study}_") if study and stem != study else ("table" if study else stem)
        caption = f"{workflow.basedir}/workflow/report/{kind}.rst"
        subcategory = config["studies"][study]["title"] if study else "Method"
        marked.append(report(path, caption=caption, category=category, subcategory=subcategory))
    return marked


rule report:
    """All tables (Markdown + LaTeX) and figures (PNG + PDF) of every study."""
    input:
        [job.metrics for job in JOBS.values()],
    output:
        _captioned(REPORT_OUTPUTS["tables"], "Tables"),
        _captioned(REPORT_OUTPUTS["figures"], "Figures"),
    params:
        spec=REPORT_SPEC,
        out=RESULTS,
    log:
        f"{RESULTS}/runs/.report.log",
    shell:
        "MPLBACKEND=Agg {FEDBT} report --spec {params.spec:q} --out {params.out} > {log} 2>&1"
