# Token caches: every text data set is tokenised once per (tokenizer, max_length), by one `fedbt tokenize` job,
# before the training jobs that read it fan out (they memory-map the cache; see fedbt/data/tokens.py). Jobs that
# read the same data with the same model source and length share one `tokenize` job.

import hashlib

# The overrides that decide what a job reads; the method, seed and federation settings do not.
TOKEN_KEYS = ("scenario", "model.", "data.corpus", "data.task", "data.data_dir", "evaluation.task",
              "local.objective", "sources", "plugins")


def _token_sets(job) -> list[str] | None:
    """The `--set`s of the `fedbt tokenize` job a run depends on (None: nothing to tokenise, e.g. images)."""
    sets = [item for item in job_overrides(job) if item.startswith(TOKEN_KEYS)]
    objective = next((s.split("=", 1)[1] for s in sets if s.startswith("local.objective=")), "mlm")
    if objective in ("mim", "image_classification"):
        return None
    start = start_of(job.data)
    if start is not None:  # a starting model saves its base model's tokenizer: tokenise with that one
        base = config["starting_models"][start]["overrides"]["model.source"]
        sets = [s for s in sets if not s.startswith("model.source=")] + [f"model.source={yaml_value(base)}"]
    return sets + ["method.name=fedavg", "method.options={}", "tracking.enabled=false", "name=tokenize"]


def token_stamp_of(job) -> str | None:
    sets = _token_sets(job)
    if sets is None:
        return None
    digest = hashlib.sha1("\n".join(sorted(sets)).encode()).hexdigest()[:16]
    return f"{RESULTS}/cache/stamps/{digest}.json"


TOKEN_JOBS = {stamp: job for job in JOBS.values() if (stamp := token_stamp_of(job)) is not None}


def token_inputs(job) -> list[str]:
    """The token-cache stamp a run waits for (none for image data)."""
    stamp = token_stamp_of(job)
    return [stamp] if stamp else []


rule tokenize:
    """Tokenise a data set once (a token cache under results/cache/tokens/); its runs memory-map it."""
    output:
        f"{RESULTS}/cache/stamps/{{stamp}}.json",
    params:
        sets=lambda wc: set_flags(_token_sets(TOKEN_JOBS[f"{RESULTS}/cache/stamps/{wc.stamp}.json"])),
    threads: 1
    log:
        f"{RESULTS}/cache/stamps/{{stamp}}.log",
    shell:
        "{FEDBT} tokenize {BASE_CONFIG} {params.sets} --stamp {output} > {log} 2>&1"
