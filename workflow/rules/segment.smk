# Segmentation (batteryNET): train a residual 3-D U-Net with DDP on the training samples, then
# segment every sample by distributed sliding-window inference -> results/{sample}/labels.zarr
# (+ uncertainty.zarr). Input per sample: denoised.zarr (segment.input: denoised) or volume.zarr.
import json

from batterytwin.segment.pretrained import is_pretrained, shipped_file

SEGMENT_METHOD = PLAN.segment.method
SEGMENT_INPUT = PLAN.segment.input
SEGMENT_UNCERTAINTY = PLAN.segment.uncertainty
# training and validation samples and their label stores: workflow_plan.plan_segment
SEGMENT_TRAIN = PLAN.segment.train
SEGMENT_VAL = PLAN.segment.val
SEGMENT_TARGETS = expand(
    "results/{sample}/{store}",
    sample=SAMPLES,
    store=["labels.zarr"] + (["uncertainty.zarr"] if SEGMENT_UNCERTAINTY else []),
)


rule train_seg:
    input:
        volumes=PLAN.segment.volume_inputs(),
        labels=PLAN.segment.label_inputs(),
        # segment.train.init_from: fine-tuning starts from that model (a changed file retrains); the name
        # "pretrained" is the shipped batteryNET (train-seg resolves the name and checks its digest)
        **({"init_from": str(shipped_file()) if is_pretrained(SEG["train"]["init_from"]) else SEG["train"]["init_from"]}
           if SEG["train"].get("init_from") else {}),
    output:
        model="results/models/segment/model.pt",
        metrics="results/models/segment/metrics.json",
    params:
        data=PLAN.segment.data_args(),
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
        logged(
            "{resources.mpi} -n {resources.tasks} batterytwin train-seg {params.data:q}"
            " --config-json {params.cfg:q} --checkpoint-dir {params.checkpoint_dir:q}"
            " -o {output.model:q} --metrics {output.metrics:q}"
        )


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
        logged(
            "{resources.mpi} -n {resources.tasks} batterytwin segment -i {input.volume:q}"
            " {params.model:q} -o {output.labels:q} {params.uncertainty:q} --config-json {params.cfg:q}"
        )


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
        logged(
            "{resources.mpi} -n {resources.tasks} batterytwin segment -i {input.volume:q}"
            " -o {output.labels:q} --config-json {params.cfg:q}"
        )
