"""Placeholder: this op is being written."""

def deform_conv2d(*args, **kwargs):
    raise NotImplementedError("deform_conv2d is not implemented yet")


