"""Configs: a typed schema of maskrcnn_benchmark-style keys, YAML files and command-line overrides.

Example::

    from detector.config import load_config

    cfg = load_config("configs/e2e_mask_rcnn_R_50_FPN_1x.yaml", ["SOLVER.BASE_LR", "0.01"])
    cfg.MODEL.RPN.NMS_THRESH  # 0.7, type-checked, read-only

See `detector.config.defaults` for every key and `detector.config.config` for the loading rules.
"""

from detector.config.config import (
    ConfigError,
    as_config,
    as_node,
    dump_config,
    get_cfg,
    load_config,
    merge_opts,
    save_config,
    unlocked,
    validate,
)
from detector.config.defaults import AmpDtype, Config, LRScheduler, Norm, WarmupMethod

__all__ = [
    "AmpDtype",
    "Config",
    "ConfigError",
    "as_config",
    "as_node",
    "LRScheduler",
    "Norm",
    "WarmupMethod",
    "dump_config",
    "get_cfg",
    "load_config",
    "merge_opts",
    "save_config",
    "unlocked",
    "validate",
]
