# Input and parameter functions of degradation.smk (kept apart from the rules, as the Snakemake linter asks).


def _deg_train_args(train):
    """Model/training flags for train-degradation from a config mapping (keys as in the schema)."""
    flags = {
        "steps": "--steps", "batch_size": "--batch-size", "lr": "--lr", "warmup": "--warmup",
        "p_uncond": "--p-uncond", "ema_decay": "--ema-decay", "seed": "--seed",
        "checkpoint_every": "--checkpoint-every", "timesteps": "--timesteps", "schedule": "--schedule",
        "soh_center": "--soh-center", "soh_scale": "--soh-scale", "blocks": "--blocks", "emb_dim": "--emb-dim",
        "cond_dim": "--cond-dim", "cond_layers": "--cond-layers", "cond_heads": "--cond-heads",
        "patch": "--patch", "rows_per_token": "--rows-per-token", "threads": "--threads", "device": "--device",
    }
    args = []
    for key, flag in flags.items():
        if key in train:
            args += [flag, str(train[key])]
    if "widths" in train:
        args += ["--widths", ",".join(str(w) for w in train["widths"])]
    if "attention" in train:
        args += ["--attention", ",".join("1" if a else "0" for a in train["attention"])]
    return args


def _deg_sample_args(sample):
    flags = {"samples": "--samples", "sampler": "--sampler", "ddim_steps": "--ddim-steps", "guidance": "--guidance",
             "seed": "--seed", "batch": "--batch", "level": "--level", "threshold": "--threshold",
             "synthetic": "--synthetic", "threads": "--threads", "device": "--device"}
    return [x for key, flag in flags.items() if key in sample for x in (flag, str(sample[key]))]


def _deg_sweep_args():
    return ["--curve-length", str(DEG.get("curve_length", 16)), "--cycles-per-point", str(DEG.get("cycles_per_point", 1)),
            "--base-row", str(DEG.get("base_row", 0)), "--test-fraction", str(DEG.get("test_fraction", 0.25)),
            "--split-seed", str(DEG.get("split_seed", 0))]


def _real_train_files(wildcards):
    return [os.path.join(DEG_REAL_DIR, f) for f in DEG_REAL["train_sets"][wildcards.trainset]]
