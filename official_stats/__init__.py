"""Official statistics: "Pupil attendance in schools" measures, views, disclosure control and EES release.

Layout (pure domain rules first, I/O at the edge):

- :mod:`official_stats.periods`: academic years, terms, ISO weeks, the second half of the summer term.
- :mod:`official_stats.measures`: DfE's session arithmetic, rates, persistent and severe absence.
- :mod:`official_stats.scope`: who and what is counted (age, phase, complete extracts, opt-outs).
- :mod:`official_stats.views`: National / Regional / Local authority views by phase and characteristics,
  daily and over weeks, terms and the year to date.
- :mod:`official_stats.disclosure`: primary and secondary suppression.
- :mod:`official_stats.ees`: EES-ready CSV and ``.meta.csv`` files.
- :mod:`official_stats.screener`: a port of DfE's eesyscreener checks.
- :mod:`official_stats.contracts`: the Delta tables this package writes (registered with storage.tables).
- :mod:`official_stats.incremental`: the aggregation run over Delta (only touched dates are recomputed).
- :mod:`official_stats.release`: embargo, 09:30 release, pre-release access, the scheduler.
"""
