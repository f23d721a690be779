"""batteryNET segmentation: a residual 3-D U-Net trained with DDP, distributed sliding-window inference.

Modules (a pure core, then thin drivers):

- :mod:`.config`   -- the ``segment`` config section, its defaults and validation.
- :mod:`.model`    -- network factory (MONAI residual ``UNet`` by default, ``SegResNet``, ``SwinUNETR``).
- :mod:`.loss`     -- Dice + cross-entropy that ignore unlabelled voxels (255), decomposable over ranks.
- :mod:`.data`     -- lazy patch sampling from zarr stores, class-aware, augmented, seeded per sample.
- :mod:`.window`   -- sliding-window inference on a globally fixed window grid with Gaussian blending.
- :mod:`.train`    -- ``batterytwin train-seg``: DDP training, checkpoints, preemption, metrics.
- :mod:`.infer`    -- ``batterytwin segment``: ranks own whole output shards of ``labels.zarr``.
"""
