"""Shipped MetaSchedule tuning logs (installed as ``lego_tvm.tuning_logs``).

Layout: ``<target key>/<model>-b<batch>/`` with MetaSchedule's JSON database and a
``manifest.json``; see ``lego_tvm/tuning.py``.
"""
