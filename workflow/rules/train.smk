# Training jobs: the MLflow store (at start), the distilled students, the starting models and one `fedbt run`
# per job. Each is one process with `threads` CPU threads; on Slurm, one sbatch job with RESOURCES.


onstart:
    # Create the MLflow store, one experiment per scenario and each study's filter before any job starts, so
    # parallel jobs never race on the schema. A start hook, not a rule: a marker file would rerun every job.
    if PLAN.tracking_on:
        shell("fedbt track-init {TRACK_INIT}")


rule distill_student:
    """Build a distilled student once; every `distill` job of every study uses it."""
    input:
        lambda wc: PLAN.student_inputs(wc.student),
    output:
        LAYOUT.student_flag("{student}"),
    params:
        flags=lambda wc: PLAN.student_flags(wc.student),
        out=lambda wc, output: str(Path(output[0]).parent),
    threads: config.get("threads", 1)
    resources:
        gpu=RESOURCES["gpu"],
        mem_mb=RESOURCES["mem_mb"],
        runtime=RESOURCES["runtime"],
    log:
        LAYOUT.student_log("{student}"),
    message:
        "fedbt distill: student {wildcards.student}"
    conda:
        "../envs/fedbt.yaml"
    shell:
        "OMP_NUM_THREADS={threads} fedbt distill {params.flags} --out {params.out} > {log} 2>&1"


rule starting_model:
    """Build a starting model once (a centralised `fedbt run`); the data sets that name it start from its model/."""
    output:
        LAYOUT.start_metrics("{start}"),
    params:
        sets=lambda wc: set_flags(PLAN.start_sets(wc.start)),
        out=lambda wc, output: str(Path(output[0]).parent),
    threads: config.get("threads", 1)
    resources:
        gpu=RESOURCES["gpu"],
        mem_mb=RESOURCES["mem_mb"],
        runtime=RESOURCES["runtime"],
    log:
        LAYOUT.start_log("{start}"),
    message:
        "fedbt run: starting model {wildcards.start}"
    conda:
        "../envs/fedbt.yaml"
    shell:
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} fedbt run --out {params.out} {params.sets} > {log} 2>&1"


rule run:
    """One federated run; its output is metrics.json (a killed run resumes from its checkpoint on rerun). In a study
    with lr_from it waits for the other study's runs and starts at the grid point they chose on dev."""
    input:
        lambda wc: PLAN.run_inputs(PLAN.job(wc.study, wc.data, wc.variant, wc.seed)),
    output:
        LAYOUT.run_metrics("{study}", "{data}", "{variant}", "{seed}"),
    wildcard_constraints:
        study="[^/]+",
        data="[^/]+",
        variant="[^/]+",
        seed=r"\d+",
    params:
        sets=lambda wc: set_flags(PLAN.job_sets(PLAN.job(wc.study, wc.data, wc.variant, wc.seed))),
        choose=lambda wc: PLAN.choose_flag(PLAN.job(wc.study, wc.data, wc.variant, wc.seed)),
        out=lambda wc, output: str(Path(output[0]).parent),
    threads: config.get("threads", 1)
    resources:
        gpu=RESOURCES["gpu"],
        mem_mb=RESOURCES["mem_mb"],
        runtime=RESOURCES["runtime"],
    log:
        LAYOUT.run_log("{study}", "{data}", "{variant}", "{seed}"),
    message:
        "fedbt run: {wildcards.study}/{wildcards.data}/{wildcards.variant}/seed{wildcards.seed}"
    conda:
        "../envs/fedbt.yaml"
    shell:
        "OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads} fedbt run --out {params.out} {params.sets} {params.choose}"
        " > {log} 2>&1"
