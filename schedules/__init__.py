"""Hand-written schedules of lego-tvm, one module per target family.

Installed, this folder is the package ``lego_tvm.schedules``.
"""
