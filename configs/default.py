"""Defaults every config starts from; a config overrides only what differs.

Not a run of its own: see effnet_lite0.py, effnet_b0.py, mobilenet_v2.py, smoke.py.
The recipe: stage 1 trains the new head on a frozen backbone (BatchNorm frozen),
stage 2 unfreezes the last blocks, stage 3 everything at a lower learning rate.
"""

import ml_collections

from flowers_jax.data.defaults import data_config


def stage(name, *, epochs, train, lr, warmup_epochs=0.0, bn="frozen", lr_scale="", end_lr_ratio=0.01):
    """One training stage. train/lr_scale take selectors (see flowers_jax/optim.py):
    all, head, backbone, stem, top, last_blocks:K, re:REGEX."""
    return ml_collections.ConfigDict(
        dict(
            name=name,
            epochs=epochs,
            train=train,
            lr=lr,
            warmup_epochs=warmup_epochs,
            bn=bn,
            lr_scale=lr_scale,
            end_lr_ratio=end_lr_ratio,
        )
    )


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # Model: a name from flowers_jax.models.names(), and where its weights come from
    # ("keras:EfficientNetB0", "torch:efficientnet_lite0", a file, or "" for random init).
    c.model = "efficientnet_lite0"
    c.pretrained = "torch:efficientnet_lite0"
    c.num_classes = 104
    c.dtype = "float32"  # compute dtype; "bfloat16" on TPU/GPU. Parameters stay float32.
    # Layer implementations (flowers_jax/models/kernels.py): "auto" uses the hand-written XLA:CPU layers
    # on the CPU backend only and flax's nn.Conv / nn.BatchNorm elsewhere; "cpu" / "xla" force one.
    # Same variables either way. depthwise_impl overrides the depthwise convolution alone ("shift",
    # "conv"; "auto" follows kernels).
    c.kernels = "auto"
    c.depthwise_impl = "auto"
    # BatchNorm running-average momentum: None is the architecture's (Keras's: 0.99, MobileNetV2 0.999);
    # short runs want ~0.9.
    c.bn_momentum = ml_collections.config_dict.placeholder(float)
    # Head dropout and stochastic depth ("drop-connect": the rate rises linearly over the blocks toward
    # it); None is the architecture's (dropout 0.2-0.5 by size; drop-connect 0.2 for EfficientNet/Lite,
    # 0 for MobileNetV2).
    c.dropout_rate = ml_collections.config_dict.placeholder(float)
    c.drop_connect_rate = ml_collections.config_dict.placeholder(float)
    c.seed = 0

    c.data = data_config()
    c.batch_size = 64  # global, over all devices and hosts

    # Stages run in the order of `stage_order` (ConfigDict keys have no order of their own);
    # `--config.stage_order=all` runs just one.
    c.stage_order = "head,top,all"
    c.stages = ml_collections.ConfigDict()
    c.stages.head = stage("head", epochs=3, train="head", lr=1e-3, warmup_epochs=0.5)
    c.stages.top = stage("top", epochs=5, train="head,last_blocks:4", lr=5e-4, warmup_epochs=0.5)
    c.stages.all = stage("all", epochs=12, train="all", lr=2e-4, warmup_epochs=1.0, bn="train", lr_scale="backbone=0.5")

    c.optimizer = ml_collections.ConfigDict(
        dict(
            name="adamw",
            b1=0.9,
            b2=0.999,
            momentum=0.9,
            weight_decay=1e-5,
            weight_decay_exclude=r"(bias|scale)$",
            # "zero", or "pretrained": L2-SP (Li et al. 2018), the backbone decays toward the pretrained
            # weights (the head, new, toward zero); needs config.pretrained.
            decay_to="zero",
            grad_clip_norm=1.0,
        )
    )
    c.label_smoothing = 0.1
    # Mixup / CutMix of each training batch in the step (flowers_jax/mixing.py): Beta(alpha, alpha),
    # 0 = off; both > 0: one of the two per batch, with probability 0.5 each. E.g. 0.2 / 1.0.
    c.mixup_alpha = 0.0
    c.cutmix_alpha = 0.0
    c.class_weights = "none"  # or "balanced"
    c.ema_decay = 0.0  # e.g. 0.999: evaluate an exponential moving average of the parameters

    c.early_stopping = ml_collections.ConfigDict(dict(patience=3, min_delta=1e-3))
    c.checkpoint = ml_collections.ConfigDict(dict(every_steps=200, max_to_keep=2))
    c.log_every_steps = 20

    # --mode eval / predict: test-time augmentation ("", "flip", "crops", "flip,crops") and the
    # prediction-collapse guard's thresholds (see flowers_jax/guard.py).
    # calibration: "auto" uses <workdir>/calibration.json when there is one (refusing one of another
    # checkpoint or size), "off" ignores it.
    c.eval = ml_collections.ConfigDict(
        dict(tta="", guard_max_share_ratio=5.0, guard_min_histogram_entropy=0.5, calibration="auto")
    )
    # --mode calibrate (flowers_jax/trust.py): "not sure" below the threshold that keeps at most
    # target_risk errors among the answered val photos, by the score with the lowest val AURC ("auto")
    # or a named one (msp, margin, max_logit); "not one of my flowers" when the open-set score (one of
    # abstain.OPENSET_SCORES; relative Mahalanobis measured best on held-out species) is below the value
    # that keeps known_recall of val photos.
    # add_species: the page's "Add a species" (flowers_jax/personalise.py): margin and scale of the
    # added species' discriminant, chosen on the leave-20-classes-out run's val photos
    # (benchmarks/personalise.py; README "Add a species").
    c.trust = ml_collections.ConfigDict(
        dict(
            target_risk=0.02,
            selective_score="auto",
            openset_score="relative_mahalanobis",
            known_recall=0.96,
            add_species=dict(margin=100.0, scale=8.887),
        )
    )
    return c
