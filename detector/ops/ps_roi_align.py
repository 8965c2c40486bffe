"""Placeholder: this op is being written."""

def ps_roi_align(*args, **kwargs):
    raise NotImplementedError("ps_roi_align is not implemented yet")


