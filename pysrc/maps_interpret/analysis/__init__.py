"""What is computed from maps: similarity measures (similarity.py), the sanity check of a run (sanity.py) and the
agreement between the models of a MAPS (compare.py, agreement.py: `maps-interpret-compare`)."""
