"""What a run leaves in the MAPS: atomic files (writers.py), the staging folder (staging.py), the maps of a
finished pass (results.py) in their image's space (space.py), the data group (groups.py), interpret.json
(provenance.py) and the figures (figures.py)."""
