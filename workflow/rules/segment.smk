# Segmentation (batteryNET): train a residual 3-D U-Net with DDP on the training samples, then
# segment every sample by distributed sliding-window inference -> results/{sample}/labels.zarr
# (+ uncertainty.zarr). Input per sample: denoised.zarr (segment.input: denoised) or volume.zarr.
import json

from batterytwin.segment.pretrained import is_pretrained, shipped_file

SEG = config["segment"]
SEGMENT_UNCERTAINTY = bool(SEG["uncertainty"])
SEGMENT_INPUT = "denoised.zarr" if SEG["input"] == "denoised" else "volume.zarr"


# label store per sample: segment.label_stores, else samples.<name>.labels (a label image is imported to
# results/<name>/hand_labels.zarr, a .zarr store is used as is), else the phantom's truth
SEGMENT_LABELS = {
    s: SEG["label_stores"].get(s) or label_store(s, "labels") or f"{sample_dir(s)}/truth.zarr" for s in SAMPLES
}
# training samples: segment.train_samples, else those with role train/both that have labels
SEGMENT_TRAIN = list(SEG["train_samples"]) or [
    s
    for s in SAMPLES
    if SAMPLE_SPECS[s]["role"] in ("train", "both")
    and (is_synthetic(s) or SAMPLE_SPECS[s].get("labels") or s in SEG["label_stores"])
]
# validation: segment.val_samples, else held-out synthetic samples (role analyse: they have truth);
# plus, for every sample with samples.<name>.val_labels, its held-out labelled voxels
SEGMENT_VAL = list(SEG["val_samples"]) or [
    s for s in SYNTHETIC if SAMPLE_SPECS[s]["role"] == "analyse"
]
# segment.pseudo_labels: gmm -- training samples without labels (no label store found above: the
# truth.zarr fallback of a sample that is not synthetic) train on their GMM label store instead.
SEGMENT_METHOD = SEG["method"]
SEGMENT_PSEUDO = []
if SEG["pseudo_labels"] == "gmm":
    SEGMENT_PSEUDO = [
        s
        for s in (list(SEG["train_samples"]) or [s for s in SAMPLES if SAMPLE_SPECS[s]["role"] in ("train", "both")])
        if not is_synthetic(s) and SEGMENT_LABELS[s] == f"{sample_dir(s)}/truth.zarr"
    ]
    SEGMENT_LABELS.update({s: f"{sample_dir(s)}/gmm_labels.zarr" for s in SEGMENT_PSEUDO})
    SEGMENT_TRAIN = SEGMENT_TRAIN + [s for s in SEGMENT_PSEUDO if s not in SEGMENT_TRAIN]
SEGMENT_VAL_LABELS = {s: label_store(s, "val_labels") for s in SAMPLES if label_store(s, "val_labels")}
_SEG_STORES = ["labels.zarr"] + (["uncertainty.zarr"] if SEGMENT_UNCERTAINTY else [])
SEGMENT_TARGETS = expand("results/{sample}/{store}", sample=SAMPLES, store=_SEG_STORES)
_SEG_PAIRS = (
    [("--volume", "--labels", s, SEGMENT_LABELS[s]) for s in SEGMENT_TRAIN]
    + [("--val-volume", "--val-labels", s, SEGMENT_LABELS[s]) for s in SEGMENT_VAL]
    + [("--val-volume", "--val-labels", s, path) for s, path in SEGMENT_VAL_LABELS.items()]
)
SEGMENT_DATA_ARGS = [
    arg for fv, fl, s, lab in _SEG_PAIRS for arg in (fv, f"{sample_dir(s)}/{SEGMENT_INPUT}", fl, lab)
]
SEGMENT_VOLUME_INPUTS = sorted({f"{sample_dir(s)}/{SEGMENT_INPUT}" for _, _, s, _ in _SEG_PAIRS})
SEGMENT_LABEL_INPUTS = sorted({lab for _, _, _, lab in _SEG_PAIRS})


rule train_seg:
    input:
        volumes=SEGMENT_VOLUME_INPUTS,
        labels=SEGMENT_LABEL_INPUTS,
        # segment.train.init_from: fine-tuning starts from that model (a changed file retrains); the name
        # "pretrained" is the shipped batteryNET (train-seg resolves the name and checks its digest)
        **({"init_from": str(shipped_file()) if is_pretrained(SEG["train"]["init_from"]) else SEG["train"]["init_from"]}
           if SEG["train"].get("init_from") else {}),
    output:
        model="results/models/segment/model.pt",
        metrics="results/models/segment/metrics.json",
    params:
        data=SEGMENT_DATA_ARGS,
        cfg=json.dumps({k: SEG[k] for k in ("model", "train", "infer")}),
        checkpoint_dir=SEG["train"]["checkpoint_dir"],
    log:
        "logs/models/train_seg.log",
    message:
        "Train the segmentation network on {SEGMENT_TRAIN} (validation: {SEGMENT_VAL})"
    conda:
        "../../envs/gpu.yaml"
    threads: THREADS("train_seg")
    resources:
        **RES("train_seg"),
    shell:
        "{resources.mpi} -n {resources.tasks} batterytwin train-seg {params.data:q}"
        " --config-json {params.cfg:q} --checkpoint-dir {params.checkpoint_dir:q}"
        " --model-out {output.model:q} --metrics-out {output.metrics:q} > {log:q} 2>&1"


# the output layout of a label store: segment.infer.chunk/shard, else the run's store settings
_SEGMENT_INFER = dict(SEG["infer"], chunk=SEG["infer"]["chunk"] or config["store"]["chunk"],
                      shard=SEG["infer"]["shard"] or config["store"]["shard"])
# segment.method: network -> the trained model's sliding window; pretrained -> the shipped batteryNET's
# (zero-shot: no training rule); gmm -> label-free (no training)
_SEGMENT_GMM_CFG = json.dumps({"infer": _SEGMENT_INFER, "method": "gmm", "gmm": SEG["gmm"]})


rule segment:
    input:
        volume=f"results/{{sample}}/{SEGMENT_INPUT}",
        **({"model": rules.train_seg.output.model} if SEGMENT_METHOD == "network" else {}),
        **({"model": str(shipped_file())} if SEGMENT_METHOD == "pretrained" else {}),
    output:
        labels=directory("results/{sample}/labels.zarr"),
        **({"uncertainty": directory("results/{sample}/uncertainty.zarr")} if SEGMENT_UNCERTAINTY else {}),
    params:
        cfg=_SEGMENT_GMM_CFG if SEGMENT_METHOD == "gmm" else json.dumps({"infer": _SEGMENT_INFER}),
        model=lambda w, input: ["--model", input.model] if SEGMENT_METHOD == "network"
        else ["--model", "pretrained"] if SEGMENT_METHOD == "pretrained" else [],
        uncertainty=lambda w, output: ["--uncertainty", output.uncertainty] if SEGMENT_UNCERTAINTY else [],
    log:
        "logs/{sample}/segment.log",
    message:
        f"Segment {{wildcards.sample}} ({{input.volume}}) with {dict(network='the trained model', pretrained='the shipped batteryNET (zero-shot)').get(SEGMENT_METHOD, 'a Gaussian mixture (label-free)')}"
    conda:
        "../../envs/gpu.yaml"
    threads: THREADS("segment")
    resources:
        **RES("segment"),
    shell:
        "{resources.mpi} -n {resources.tasks} batterytwin segment --input {input.volume:q}"
        " {params.model:q} --output {output.labels:q} {params.uncertainty:q}"
        " --config-json {params.cfg:q} > {log:q} 2>&1"


rule segment_gmm:
    input:
        volume=f"results/{{sample}}/{SEGMENT_INPUT}",
    output:
        labels=directory("results/{sample}/gmm_labels.zarr"),
    params:
        cfg=_SEGMENT_GMM_CFG,
    log:
        "logs/{sample}/segment_gmm.log",
    message:
        "Pseudo-labels of {wildcards.sample}: label-free GMM segmentation of {input.volume}"
    conda:
        "../../envs/gpu.yaml"
    threads: THREADS("segment")
    resources:
        **RES("segment"),
    shell:
        "{resources.mpi} -n {resources.tasks} batterytwin segment --input {input.volume:q}"
        " --output {output.labels:q} --config-json {params.cfg:q} > {log:q} 2>&1"
