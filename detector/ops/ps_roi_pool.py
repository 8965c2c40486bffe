"""Placeholder: this op is being written."""

def ps_roi_pool(*args, **kwargs):
    raise NotImplementedError("ps_roi_pool is not implemented yet")


