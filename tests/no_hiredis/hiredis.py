"""Hides the installed hiredis: with this directory first on ``PYTHONPATH``, redis-py (in the
test process and in every worker subprocess it starts) falls back to its pure-Python protocol
parser and packer. ``.ci/run`` runs the suite once this way, once with hiredis.
"""

raise ImportError("hiredis is hidden (tests/no_hiredis is on PYTHONPATH)")
