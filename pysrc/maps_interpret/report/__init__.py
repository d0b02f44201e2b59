"""The report of a run (--save_figures): one self-contained HTML page over every folder the run published
(run_report.py gathers, page.py writes the page)."""
