# Input and parameter functions of degradation.smk (kept apart from the rules, as the Snakemake linter asks).


def _real_train_files(wildcards):
    return [os.path.join(DEG_REAL_DIR, f) for f in DEG_REAL["train_sets"][wildcards.trainset]]
