# Training jobs: the MLflow store (at start), the distilled students, and one `fedbt run` per job.


onstart:
    # Create the MLflow store and one experiment per study before any job starts, so parallel jobs never race
    # on the schema. A start hook, not a rule: a marker file in the DAG would rerun every job when it changes.
    if TRACKING_ON:
        experiments = " ".join(f"--experiment {shlex.quote(s)}" for s in sorted(config["studies"]))
        shell(f"{FEDBT} track-init --uri {shlex.quote(TRACKING_URI)} {experiments} > /dev/null")


rule distill_student:
    """Build a distilled student once; every `distill` job of every study uses it."""
    input:
        lambda wc: student_inputs(wc.student),
    output:
        student_flag("{student}"),
    params:
        flags=lambda wc: student_flags(wc.student),
        out=lambda wc, output: str(Path(output[0]).parent),
    threads: config.get("threads", 1)
    resources:
        gpu=1,
    log:
        f"{RESULTS}/runs/_students/{{student}}.log",
    shell:
        "{GPU_ENV} OMP_NUM_THREADS={threads} {FEDBT} distill {params.flags} --out {params.out} > {log} 2>&1"


# One `fedbt run` from the base config and a job's `--set`s, one thread budget per job (also GPU slot claiming).
FEDBT_RUN = (
    "{GPU_ENV} OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} "
    "{FEDBT} run {BASE_CONFIG} --out {params.out} {params.sets} > {log} 2>&1"
)


rule starting_model:
    """Build a starting model once (a centralised `fedbt run`); the data sets that name it start from its model/."""
    output:
        start_metrics("{start}"),
    params:
        sets=lambda wc: set_flags(start_overrides(wc.start)),
        out=lambda wc, output: str(Path(output[0]).parent),
    threads: config.get("threads", 1)
    resources:
        gpu=1,
    log:
        f"{RESULTS}/runs/_start/{{start}}.log",
    shell:
        FEDBT_RUN


def _run_inputs(wildcards) -> list[str]:
    job = JOBS[f"{RESULTS}/runs/{wildcards.study}/{wildcards.data}/{wildcards.variant}/seed{wildcards.seed}"]
    student = variant_spec(job.variant, f"variants.{job.variant}").get("student")
    start = start_of(job.data)
    return ([student_flag(student)] if student else []) + ([start_metrics(start)] if start else []) + token_inputs(job)


def _run_sets(wildcards) -> str:
    job = JOBS[f"{RESULTS}/runs/{wildcards.study}/{wildcards.data}/{wildcards.variant}/seed{wildcards.seed}"]
    return set_flags(job_overrides(job))


rule run:
    """One federated run; its output is metrics.json (a killed run resumes from its checkpoint on rerun)."""
    input:
        _run_inputs,
    output:
        f"{RESULTS}/runs/{{study}}/{{data}}/{{variant}}/seed{{seed}}/metrics.json",
    wildcard_constraints:
        study="[^/]+",
        data="[^/]+",
        variant="[^/]+",
        seed=r"\d+",
    params:
        sets=_run_sets,
        out=lambda wc, output: str(Path(output[0]).parent),
    threads: config.get("threads", 1)
    resources:
        gpu=1,
    log:
        f"{RESULTS}/runs/{{study}}/{{data}}/{{variant}}/seed{{seed}}.log",
    shell:
        FEDBT_RUN
