"""Config overrides that shrink the R-50-FPN configs into models the CPU tests can afford."""

# R-18-FPN at a quarter of its width with a GroupNorm trunk (trainable from scratch: no pretrained
# weights offline, as configs/shapes/ does) and narrow heads; fewer proposals and sampled RoIs.
SMALL_FPN_OPTS: list[str] = [
    *("MODEL.BACKBONE.CONV_BODY", "R-18-FPN", "MODEL.BACKBONE.FREEZE_CONV_BODY_AT", "0"),
    *("MODEL.RESNETS.NORM", "GN", "MODEL.RESNETS.BACKBONE_OUT_CHANNELS", "64"),
    *("MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.WIDTH_PER_GROUP", "16"),
    *("MODEL.GROUP_NORM.NUM_GROUPS", "8"),
    *("MODEL.ROI_BOX_HEAD.MLP_HEAD_DIM", "256", "MODEL.ROI_MASK_HEAD.CONV_LAYERS", "(64, 64)"),
    *("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "64", "MODEL.RPN.POST_NMS_TOP_N_TRAIN", "300"),
    *("MODEL.RPN.FPN_POST_NMS_TOP_N_TRAIN", "300", "MODEL.RPN.FPN_POST_NMS_TOP_N_TEST", "300"),
    *("MODEL.DEVICE", "cpu"),
]
