# fedbt-bench pipeline: `snakemake --cores all` reproduces every table and figure of the study in
# config/config.yaml (or --configfile config/paper.yaml); `snakemake --report results/report.html` bundles them.
# Rules only orchestrate the `fedbt` CLI, planned by fedbt/pipeline.py; see docs/pipeline.md and config/README.md.
from snakemake.utils import min_version, validate

min_version("9.0")


# The embedded default study, unless --configfile names another (which then replaces it instead of merging).
if not workflow.config_settings.configfiles:

    configfile: f"{workflow.basedir}/config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/tokens.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


rule all:
    """Every run of every study, then the tables and figures."""
    default_target: True
    input:
        REPORT_OUTPUTS["tables"],
        REPORT_OUTPUTS["figures"],
