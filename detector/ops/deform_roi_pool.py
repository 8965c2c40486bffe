"""Placeholder: this op is being written."""

def deform_roi_pool(*args, **kwargs):
    raise NotImplementedError("deform_roi_pool is not implemented yet")


def deform_ps_roi_pool(*args, **kwargs):
    raise NotImplementedError("deform_ps_roi_pool is not implemented yet")


