# Token caches: every text data set is tokenised once per (tokenizer, max_length), by one `fedbt tokenize` job,
# before the training jobs that read it fan out (they memory-map the cache; see fedbt/data/tokens.py). Jobs that
# read the same data with the same model source and length share one `tokenize` job (PLAN.token_jobs()).

TOKEN_JOBS = PLAN.token_jobs()


rule tokenize:
    """Tokenise a data set once (a token cache under results/cache/tokens/); its runs memory-map it."""
    output:
        LAYOUT.token_stamp("{stamp}"),
    params:
        sets=lambda wc, output: set_flags(TOKEN_JOBS[output[0]]),
    threads: 1
    resources:
        mem_mb=RESOURCES["mem_mb"],
        runtime=RESOURCES["runtime"],
    log:
        LAYOUT.token_log("{stamp}"),
    message:
        "fedbt tokenize: token cache {wildcards.stamp}"
    conda:
        "../envs/fedbt.yaml"
    shell:
        "fedbt tokenize {params.sets} --stamp {output} > {log} 2>&1"
