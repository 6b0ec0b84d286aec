"""Aggregation and presentation stages: tables, figures, statistics, the GLUE submission."""
